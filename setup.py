"""What pyproject.toml cannot say: which packages to install, and where to build.

* Packages are discovered (``structtoken``, ``analysis`` and every subpackage), and ``assets/`` is
  installed as the data-only package ``structtoken_assets`` (its files: ``[tool.setuptools.package-data]``),
  so that :mod:`structtoken.assets` finds the embedded sets in an install as in a checkout.
* ``app.py`` is installed as the module ``structtoken_app``, so that the ``structtoken-app`` command
  (``[project.scripts]`` in pyproject.toml) runs the app from an install (the shipped examples stay in the
  checkout: an installed app offers none).
* setuptools' ``build/`` and ``*.egg-info`` go to a temporary folder removed when the build ends,
  so ``pip install .`` or ``pip wheel .`` leaves nothing in the source tree.
"""

import atexit
import shutil
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """``build_py`` that builds the module ``structtoken_app`` from the checkout's ``app.py``."""

    def find_modules(self) -> list[tuple[str, str, str]]:
        return [("", "structtoken_app", "app.py")]


_scratch = tempfile.mkdtemp(prefix="structtoken-build-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)

setup(
    packages=[*find_packages(include=["structtoken", "structtoken.*", "analysis", "analysis.*"]), "structtoken_assets"],
    package_dir={"structtoken_assets": "assets"},
    py_modules=["structtoken_app"],
    cmdclass={"build_py": BuildPy},
    options={"build": {"build_base": _scratch}, "egg_info": {"egg_base": _scratch}},
)

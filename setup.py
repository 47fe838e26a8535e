"""What pyproject.toml cannot say: which packages to install, and where to build.

``pip install .`` puts one import name into site-packages, ``structtoken``; the checkout keeps its
top-level folders (DESIGN.md), mapped into it:

* ``structtoken/`` -> ``structtoken`` (the model library) and every subpackage;
* ``analysis/`` -> ``structtoken.analysis`` (the analysis layer: its modules import each other
  relatively, so the same files are ``analysis`` in a checkout and ``structtoken.analysis`` installed);
* ``app.py`` -> the module ``structtoken.app`` (the ``structtoken-app`` command);
* ``assets/`` -> the data-only package ``structtoken._assets`` (its files: ``[tool.setuptools.package-data]``:
  the embedded sets, the report the app's curves come from, the example photos), so that
  :mod:`structtoken.assets` finds them in an install as in a checkout.

The library modules still import nothing from ``structtoken.analysis`` or the app (tested).
setuptools' ``build/`` and ``*.egg-info`` go to a temporary folder removed when the build ends,
so ``pip install .`` or ``pip wheel .`` leaves nothing in the source tree.
"""

import atexit
import shutil
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """``build_py`` that also builds the module ``structtoken.app`` from the checkout's ``app.py``."""

    def find_modules(self) -> list[tuple[str, str, str]]:
        return [("structtoken", "app", "app.py")]


_scratch = tempfile.mkdtemp(prefix="structtoken-build-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)

setup(
    packages=[
        *find_packages(include=["structtoken", "structtoken.*"]),
        *(f"structtoken.{name}" for name in find_packages(include=["analysis", "analysis.*"])),
        "structtoken._assets",
    ],
    package_dir={"structtoken.analysis": "analysis", "structtoken._assets": "assets"},
    py_modules=["structtoken.app"],
    cmdclass={"build_py": BuildPy},
    options={"build": {"build_base": _scratch}, "egg_info": {"egg_base": _scratch}},
)

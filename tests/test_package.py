"""The library as a package: layering (structtoken never imports analysis) and the wheel's contents."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_structtoken_imports_nothing_from_analysis_or_app() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_modules(p) & {"analysis", "app", "gradio"})
        for p in sorted((ROOT / "structtoken").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_analysis_metrics_reexports_the_confusion_metrics() -> None:
    import analysis.metrics as A
    import structtoken.metrics as S

    for name in S.__all__:
        assert getattr(A, name) is getattr(S, name), name


def test_declared_dependencies_cover_the_runtime_imports() -> None:
    """Every third-party module imported by structtoken and analysis is declared in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_req_name(r) for r in project["dependencies"]}
    extras = {_req_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    dist_of = {"PIL": "pillow", "yaml": "pyyaml"}  # import name -> distribution name, where they differ
    local = {"structtoken", "analysis"}
    imported: set[str] = set()
    for pkg in ("structtoken", "analysis"):
        for p in (ROOT / pkg).rglob("*.py"):
            imported |= _imported_modules(p)
    third_party = {m for m in imported - local if m not in sys.stdlib_module_names}
    missing = sorted(m for m in third_party if dist_of.get(m, m).lower() not in declared)
    assert missing == [], f"imported but not declared in [project].dependencies: {missing}"
    assert "gradio" in extras and "gradio" not in declared  # the UI is an optional extra
    pinned = _requirements(ROOT / "requirements.txt")
    assert declared <= set(pinned), f"declared but not in requirements.txt: {sorted(declared - set(pinned))}"


def _req_name(req: str) -> str:
    for sep in ("[", "=", "<", ">", "!", "~", ";", " "):
        req = req.split(sep)[0]
    return req.strip().lower().replace("_", "-")


def _requirements(path: Path) -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return {_req_name(ln): ln for ln in lines if ln and not ln.startswith("-")}


def _tree_state() -> tuple[str, list[str]]:
    """``git status`` of the checkout and the build artefacts at its root (ignored or not)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    artefacts = sorted(p.name for p in ROOT.iterdir() if p.name in ("build", "dist") or p.suffix == ".egg-info")
    return status, artefacts


@pytest.mark.slow
def test_wheel_holds_every_module_resource_and_the_embedded_set(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    before = _tree_state()
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    # one import name: structtoken (analysis/ -> structtoken/analysis/, app.py -> structtoken/app.py, assets/ ->
    # structtoken/_assets/), plus the distribution's metadata
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"structtoken"}, tops
    expected = {
        installed_as + "/" + str(p.relative_to(ROOT / folder)).replace(os.sep, "/")
        for folder, installed_as in (("structtoken", "structtoken"), ("analysis", "structtoken/analysis"))
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".json") and "__pycache__" not in p.parts
    }
    assert "structtoken/heads/cse.py" in expected and "structtoken/resources/released_models.json" in expected
    assert "structtoken/analysis/analyses/__init__.py" in expected
    assert expected - names == set()
    data = {
        "structtoken/_assets/" + str(p.relative_to(ROOT / "assets")).replace(os.sep, "/")
        for p in [
            *(ROOT / "assets" / "camvid").glob("*.safetensors"),
            ROOT / "assets/camvid/report/metrics.json",
            *(ROOT / "assets" / "examples").glob("*.jpg"),
        ]
    }
    assert {"structtoken/_assets/camvid/camvid_set.safetensors", "structtoken/_assets/examples/chelsea.jpg"} <= data
    assert data - names == set()
    assert not any(n.startswith("structtoken/_assets/camvid/v2/") for n in names)  # run results stay in the checkout
    assert "structtoken/app.py" in names  # app.py, for the structtoken-app command
    assert _tree_state() == before, "building the wheel left files in the tree"
    assert before[1] == []

    # the console commands, installed from the wheel (dependencies from this environment), outside the checkout
    site = tmp_path / "site"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheels[0]),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scripts = _console_scripts()
    assert sorted((site / "bin").iterdir()) == sorted(site / "bin" / name for name in scripts)
    clean = {**env, "PYTHONPATH": str(site)}
    for name in scripts:
        argv = [str(site / "bin" / name), "--help"]
        if name == "structtoken-app":  # that one would serve: its module is imported instead, from the install
            pytest.importorskip("gradio")
            probe = (
                "import structtoken.app as A, structtoken.analysis.service as S; print(A.__file__, S.__file__); "
                "print(*[p.name for p, _ in A.example_entries('street')]); print(A.Explorer is S.Explorer)"
            )
            argv = [sys.executable, "-c", probe]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=clean, timeout=300)
        assert out.returncode == 0 and out.stdout.strip(), (name, out.stderr[-2000:])
        if name == "structtoken-app":
            files, examples, same = out.stdout.strip().splitlines()[-3:]
            assert all(f.startswith(str(site)) for f in files.split()), files  # the installed copies
            assert "street_synthetic.jpg" in examples.split(), examples  # the installed app offers the examples
            assert same == "True"


def _console_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_console_commands_point_at_the_command_lines() -> None:
    """predict, evaluate, report, the dataset tool and the app, each a ``main`` of the checkout."""
    import importlib

    scripts = _console_scripts()
    assert {"structtoken-predict", "structtoken-evaluate", "structtoken-report", "structtoken-app"} <= set(scripts)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        if module == "structtoken.app":  # installed from app.py (setup.py)
            pytest.importorskip("gradio")
            module = "app"
        module = module.replace("structtoken.analysis", "analysis")  # installed from analysis/ (setup.py)
        assert callable(getattr(importlib.import_module(module), func)), name


def test_embedded_sets_are_found_in_the_checkout_then_in_an_install(tmp_path: Path, monkeypatch) -> None:
    import structtoken.assets as A

    assert A.EMBEDDED["camvid"] == ROOT / "assets" / "camvid" / "camvid_set.safetensors"  # this checkout
    assert A.INSTALLED_ASSETS == ROOT / "structtoken" / "_assets"  # where setup.py installs assets/
    installed = tmp_path / "site" / "structtoken" / "_assets"
    (installed / "camvid").mkdir(parents=True)
    (installed / "camvid" / "x.safetensors").write_bytes(b"")
    monkeypatch.setattr(A, "INSTALLED_ASSETS", installed)
    assert A.asset_path("camvid/x.safetensors") == installed / "camvid" / "x.safetensors"  # not in the checkout
    assert A.asset_path("examples") == ROOT / "assets" / "examples"  # the checkout first
    monkeypatch.setattr(A, "CHECKOUT_ASSETS", tmp_path / "no-checkout")
    assert A.asset_path("camvid") == installed / "camvid"  # folders too
    assert A.asset_path("camvid/missing.safetensors") == tmp_path / "no-checkout" / "camvid" / "missing.safetensors"


def test_the_embedded_set_stays_within_its_budget_and_readme_says_its_size() -> None:
    """Issue 23: the shipped set (seven heads) is at most 35 MB, and README gives its size."""
    from structtoken.assets import EMBEDDED

    size = EMBEDDED["camvid"].stat().st_size
    assert size <= 35e6, size
    assert f"{size / 1e6:.1f} MB" in (ROOT / "README.md").read_text()

"""The Hugging Face Space: what ``scripts/deploy_space.py`` uploads, its front matter, and the upload calls
(huggingface_hub replaced by a recorder: no network)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "deploy_space.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_space", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_space = _load_script()


@pytest.fixture(scope="module")
def dry_run() -> dict[str, int]:
    """The dry run's ``path -> bytes``, from the command line as a user runs it."""
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "someone/structtoken-explorer", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines and all(re.fullmatch(r"[^\t]+\t\d+", ln) for ln in lines), lines[:5]
    assert "dry run: nothing sent" in run.stderr
    return {path: int(size) for path, size in (ln.split("\t") for ln in lines)}


def _tracked(*prefixes: str) -> set[str]:
    return {p for p in deploy_space.tracked_files(ROOT) if p.startswith(prefixes)}


def test_dry_run_lists_the_app_the_packages_the_set_and_the_examples(dry_run: dict[str, int]) -> None:
    files = set(dry_run)
    assert {"app.py", "requirements.txt", "README.md", "LICENSE"} <= files
    packages = {p for p in _tracked("structtoken/", "analysis/") if p.endswith((".py", ".json"))}
    assert "structtoken/segmentor.py" in packages and "analysis/service.py" in packages
    assert packages <= files  # every module and resource of both packages
    assert {"assets/camvid/camvid_set.safetensors", "assets/camvid/report/metrics.json"} <= files
    assert {p for p in _tracked("assets/camvid/") if p.count("/") == 2} <= files  # assets/camvid/*
    examples = {p for p in _tracked("assets/examples/") if p.endswith(".jpg")}
    assert examples and examples <= files
    for path, size in dry_run.items():
        assert (ROOT / path).stat().st_size == size, path


def test_dry_run_leaves_out_tests_benches_outputs_and_data(dry_run: dict[str, int]) -> None:
    for path in dry_run:
        top = path.split("/")[0]
        assert top not in {"tests", "bench", "scripts", "outputs", "runs", "data", "shared", ".ci", ".git"}, path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
        assert top in {"structtoken", "analysis", "assets", "docs"} or "/" not in path, path
    assert not any(p.endswith((".pt", ".pth", ".html")) for p in dry_run)
    # images: the examples (none from CamVid) and README's picture only
    pictures = {p for p in dry_run if p.lower().endswith((".png", ".jpg", ".jpeg"))}
    assert all(p.startswith(("assets/examples/", "docs/img/")) for p in pictures), pictures
    assert sum(dry_run.values()) < 40 * 2**20


def test_untracked_files_never_go_up(tmp_path: Path) -> None:
    """Outside git every file is a candidate; inside, only tracked ones (outputs, runs stay home)."""
    (tmp_path / "structtoken").mkdir()
    (tmp_path / "structtoken" / "a.py").write_text("x = 1\n")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "b.png").write_bytes(b"png")
    assert [p for p, _ in deploy_space.space_files(tmp_path)] == ["structtoken/a.py"]
    if shutil.which("git") is None:
        return
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "app.py").write_text("")
    subprocess.run(["git", "add", "app.py"], cwd=tmp_path, check=True)
    assert [p for p, _ in deploy_space.space_files(tmp_path)] == ["app.py"]  # a.py is untracked


def test_front_matter_agrees_with_requirements() -> None:
    meta = deploy_space.front_matter((ROOT / "README.md").read_text(encoding="utf-8"))
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == deploy_space.pinned(requirements, "gradio")
    assert re.fullmatch(r"\"3\.\d+\"", meta["python_version"])  # quoted: YAML reads 3.10 as 3.1
    assert meta["app_file"] == "app.py"
    assert deploy_space.front_matter_problems(ROOT) == []


def test_front_matter_drift_is_caught(tmp_path: Path) -> None:
    for name in ("README.md", "requirements.txt", "pyproject.toml", "app.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(re.sub(r"sdk_version: .*", "sdk_version: 5.0.0", text, count=1), encoding="utf-8")
    assert any("sdk_version" in p for p in deploy_space.front_matter_problems(tmp_path))
    readme.write_text(re.sub(r"python_version: .*", "python_version: 3.10", text, count=1), encoding="utf-8")
    assert any("quoted" in p for p in deploy_space.front_matter_problems(tmp_path))
    readme.write_text(re.sub(r"python_version: .*", 'python_version: "3.8"', text, count=1), encoding="utf-8")
    assert any("requires-python" in p for p in deploy_space.front_matter_problems(tmp_path))
    readme.write_text("# no front matter\n", encoding="utf-8")
    assert deploy_space.front_matter_problems(tmp_path) != []


def test_deploy_creates_a_gradio_space_and_uploads_the_dry_run_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Recorder:
        def __init__(self, token: str | None = None) -> None:
            calls.append(("init", (), {"token": token}))

        def create_repo(self, *args: Any, **kwargs: Any) -> str:
            calls.append(("create_repo", args, kwargs))
            return "https://huggingface.co/spaces/someone/st"

        def upload_folder(self, **kwargs: Any) -> None:
            calls.append(("upload_folder", (), kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    url = deploy_space.deploy("someone/st", ROOT)
    assert url.endswith("someone/st")
    (_, args, create), (_, _, upload) = calls[1], calls[2]
    assert args == ("someone/st",)
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio" and create["exist_ok"] is True
    assert upload["repo_type"] == "space" and Path(upload["folder_path"]) == ROOT
    assert upload["allow_patterns"] == [p for p, _ in deploy_space.space_files(ROOT)]
    assert not any(set(p) & set("*?[") for p in upload["allow_patterns"])  # exact paths, no wildcard


# ------------------------------------------------------------------------------ ZeroGPU's progress
STEPS: list[tuple[float | None, str | None]] = []


class RecordingProgress:
    """A stand-in for ``gr.Progress`` that survives pickling (as gradio's does) and records the steps."""

    def __call__(self, frac: float | None, desc: str | None = None) -> None:
        STEPS.append((frac, desc))


def test_progress_steps_survive_zerogpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``spaces`` installed, ``spaces.GPU`` pickles the function's arguments into a GPU worker; the
    progress callback must go with them, so the page still shows the steps, not a bare "processing"."""
    import pickle
    import types

    import numpy as np

    pytest.importorskip("gradio")
    import app
    from analysis.service import Explorer
    from tests.helpers import save_tiny_set

    wrapped: list[str] = []

    def gpu(duration: int = 60) -> Any:
        def decorate(fn: Any) -> Any:
            wrapped.append(fn.__name__)

            def in_worker(*args: Any, **kwargs: Any) -> Any:  # ZeroGPU: args cross a process boundary
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                return fn(*args, **kwargs)

            return in_worker

        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    tiny = save_tiny_set(tmp_path / "tiny.safetensors", classes=("road", "sky", "car", "tree"), palette=())
    ui = app.ExplorerUI(Explorer())
    assert wrapped == ["_analyze"]  # the service call runs under spaces.GPU
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    STEPS.clear()
    out = ui.analyze_image(image, None, "prediction", checkpoint=str(tiny), progress=RecordingProgress())
    assert out[5]  # the summary
    descs = [d for _, d in STEPS]
    assert any(d and d.startswith("loading model") for d in descs), descs
    assert "running the backbone and heads" in descs and "drawing figures" in descs, descs

"""README as the front page: short, its Python runs as written, its commands and links exist, and
docs/api.md lists the ``/analyze`` inputs and outputs the running app has."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_LINES = 200


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.MULTILINE)


def test_readme_is_a_front_page() -> None:
    text = _text(README)
    assert len(text.splitlines()) <= MAX_LINES
    sections = _sections(text)
    for needed in ("Quick start", "What the app shows", "Models", "The library", "Results", "Documentation"):
        assert needed in sections, sections
    picture = re.search(r"!\[[^\]]*\]\((docs/img/[^)]+\.png)\)", text)
    assert picture, "README shows no picture of the app"
    png = ROOT / picture.group(1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000


def test_results_block_is_marked_for_the_generator() -> None:
    """The lead's generator replaces what lies between the markers, inside the Results section."""
    text = _text(README)
    assert text.count("<!-- results:begin -->") == 1 and text.count("<!-- results:end -->") == 1
    results = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    inside = results.split("<!-- results:begin -->", 1)[1].split("<!-- results:end -->", 1)[0]
    assert re.search(r"^\| head \|", inside, flags=re.MULTILINE)  # the headline table


def test_quick_start_runs_what_ci_runs() -> None:
    quick = _text(README).split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in _blocks(quick, "bash")[0].splitlines() if ln.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("pip install -r requirements.txt") and commands[0].endswith("python app.py")
    ci = [ln.strip() for ln in _text(ROOT / ".ci" / "run").splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[1].endswith(ci[-1]) and ci[-1] == "python3 -m pytest -q"
    assert "requirements-dev.txt" in commands[1] and "requirements-dev.txt" in " ".join(ci)


def test_links_resolve() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.name}: {target}"
    linked = set(re.findall(r"\(docs/([\w-]+\.md)", _text(README)))
    assert {p.name for p in DOCS.glob("*.md")} <= linked  # every page is reachable from README


def test_commands_shown_exist() -> None:
    """Every ``python -m MODULE`` and ``python PATH.py`` in README's and the docs' shell blocks names a module
    or a file of this repository (what they do is tested where each lives)."""
    shown = "\n".join(b for p in [README, *DOCS.glob("*.md")] for b in _blocks(_text(p), "bash"))
    modules = set(re.findall(r"python3? -m ([\w.]+)", shown)) - {"pip", "pytest"}
    scripts = set(re.findall(r"python3? ((?:[\w-]+/)*[\w-]+\.py)", shown))
    assert {"structtoken.data", "analysis"} <= modules and "scripts/deploy_space.py" in _text(DOCS / "deployment.md")
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, module
    for script in sorted(scripts):
        assert (ROOT / script).is_file(), script


@pytest.mark.slow
def test_readme_python_runs_as_written(tmp_path: Path) -> None:
    """README's ```python blocks, in order, as one script run from the repository root (where the packages
    are importable, as after ``pip install .``), offline."""
    code = "\n\n".join(_blocks(_text(README), "python"))
    assert code.strip()
    script = tmp_path / "readme_example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.Size([1, 11, 23, 30])" in run.stdout  # the embedded set's token grid for a 360x480 image


@pytest.mark.slow
def test_readme_figure_command(tmp_path: Path) -> None:
    out = tmp_path / "comparison.png"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_figure.py"), "--out", str(out), "--width", "600"],
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    from PIL import Image

    with Image.open(out) as im:
        assert im.width == 600 and im.mode == "P"
    assert "street_synthetic.jpg" in run.stdout


# ------------------------------------------------------------------------------------- docs/api.md
def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells, stripped of backticks) of the first table under ``## heading``."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")][2:]
    return [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in rows]


def test_api_doc_lists_the_apps_inputs_and_outputs_in_order() -> None:
    pytest.importorskip("gradio")
    import app
    from analysis.service import Explorer

    info = app.build_demo(Explorer()).get_api_info()
    endpoint = info["named_endpoints"]["/analyze"]
    doc = _text(DOCS / "api.md")
    inputs = _table(doc, "Inputs")
    assert [r[0] for r in inputs] == [str(i) for i in range(1, len(inputs) + 1)]
    assert [r[1] for r in inputs] == [p["parameter_name"] for p in endpoint["parameters"]]
    outputs = _table(doc, "Outputs")
    assert len(outputs) == len(endpoint["returns"]) == len(app.OUTPUT_NAMES)
    assert f"A tuple of {len(outputs)}" in doc and f"its {len(outputs)} outputs" in _text(README)
    assert [r[1] for r in outputs] == list(app.OUTPUT_NAMES)
    assert [r[2] for r in outputs] == [r["component"] for r in endpoint["returns"]]

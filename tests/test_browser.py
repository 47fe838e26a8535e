"""The app in a real browser: Debian's chromium driven by playwright (never ``playwright install``).

Launches ``app.py`` in-process on a tiny model set, uploads an image, runs every analysis and checks
that the maps rendered (the figure and overlay images decoded with a real size, plotly holds the
expected traces: one heatmap per head, stage and class for the grids) and that no error toast
appeared; then checks that a bad image does give a readable error toast and the page recovers.
Screenshots go to ``tests/artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),  # inside gradio's queue
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from analysis.analyses import ANALYSES as REGISTRY  # noqa: E402
from tests.helpers import save_tiny_set, serve_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
EXAMPLE = ROOT / "assets" / "examples" / "street_synthetic.jpg"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANALYSES = {  # analysis key -> radio label
    "comparison": "Paper comparison",
    "prediction": "Prediction",
    "probe": "Deep-supervision probe",
    "attention": "Token–feature attention",
}
ANALYSIS_TITLES = {key: a.title for key, a in REGISTRY.items()}  # the summary's heading per analysis
WAIT_MS = 300_000  # generous: the CI box may be busy (a slow page is not a broken one)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    classes = ("road", "sky", "car", "tree")
    tiny = save_tiny_set(tmp_path_factory.mktemp("browser_set") / "tiny_set.safetensors", classes=classes, palette=())
    with serve_app(tiny) as (url, _app):
        yield url


@pytest.fixture(scope="module")
def page(app_url: str) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(app_url)
        pg.wait_for_selector("#st-run", timeout=WAIT_MS)
        pg.js_errors = errors  # type: ignore[attr-defined]
        try:
            yield pg
        finally:
            browser.close()


def _summary_title(pg: Any) -> str:
    loc = pg.locator("#st-summary h3")
    return loc.first.inner_text() if loc.count() else ""


def _wait_for_summary(pg: Any, title: str) -> None:
    pg.wait_for_function(
        "t => { const h = document.querySelector('#st-summary h3'); return h && h.innerText.trim() === t; }",
        arg=title,
        timeout=WAIT_MS,
    )
    # the queue is idle again: no pending progress bars / spinners
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)


IMG_LOADED = "s => { const i = document.querySelector(s + ' img'); return !!i && i.complete && i.naturalWidth > 0; }"


def _img_ok(pg: Any, selector: str) -> bool:
    return bool(pg.evaluate(IMG_LOADED, selector))


def _wait_img(pg: Any, selector: str) -> None:
    pg.wait_for_function(IMG_LOADED, arg=selector, timeout=WAIT_MS)


def _clear_image(pg: Any) -> None:
    remove = pg.locator("#st-image button[aria-label='Remove Image']")
    if remove.count():
        remove.first.click()


def _error_toasts(pg: Any) -> list[str]:
    return [t.inner_text() for t in pg.locator(".toast-body.error").all()]


def _download(pg: Any, elem_id: str, dest: Path, tries: int = 30) -> bytes:
    """Click a download button until the browser receives its file (the PDF comes in a follow-up step)."""
    for _ in range(tries):
        try:
            with pg.expect_download(timeout=5_000) as info:
                pg.locator(f"#{elem_id}").click()
            path = dest / info.value.suggested_filename
            info.value.save_as(path)
            return path.read_bytes()
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"#{elem_id} gave no download")


PLOT_TRACES = """() => { const d = document.querySelector('#st-plot .js-plotly-plot');
  if (!d || !d.data) return null;
  // plotly decodes the binary-encoded z arrays into its full data once drawn; count their rows
  return d._fullData.map(t => [t.type, t.z && t.z.length !== undefined ? t.z.length : -1]); }"""
FIGURE = """() => { const i = document.querySelector('#st-figure img');
  return i ? [i.getAttribute('src') || '', i.naturalWidth, i.naturalHeight] : null; }"""


def _check_rendered(pg: Any, name: str) -> None:
    pg.get_by_role("tab", name="Figure").click()
    _wait_img(pg, "#st-figure")
    src, width, height = pg.evaluate(FIGURE)
    assert src and width > 100 and height > 50, f"{name}: figure not drawn ({src!r}, {width}x{height})"
    pg.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"), full_page=True)
    pg.get_by_role("tab", name="Interactive").click()
    pg.wait_for_selector("#st-plot .js-plotly-plot .main-svg", timeout=WAIT_MS)
    pg.wait_for_function(f"() => ({PLOT_TRACES})()?.length > 0", timeout=WAIT_MS)
    traces = pg.evaluate(PLOT_TRACES)
    kinds = {t[0] for t in traces}
    expected = {"prediction": {"image"}, "attention": {"heatmap"}}.get(name, {"heatmap"})
    assert kinds == expected, f"{name}: plotly traces {kinds}"
    assert all(rows > 0 for _, rows in traces), f"{name}: an empty trace in {traces[:4]}"
    if name in ("comparison", "probe"):  # one heatmap per (head, stage, class): 2 or 3 heads x 4 stages x 4 rows
        assert len(traces) == {"comparison": 2, "probe": 3}[name] * 4 * 4, f"{name}: {len(traces)} traces"
    assert pg.locator("#st-plot .main-svg").count() > 0
    # a mosaic wider than the column must scroll sideways, not be clipped
    sw, cw, moved = pg.evaluate(
        "() => { const e = document.querySelector('#st-plot'); const b = e.scrollLeft; e.scrollLeft = 1e6;"
        " const m = e.scrollLeft; e.scrollLeft = b; return [e.scrollWidth, e.clientWidth, m]; }"
    )
    assert sw <= cw + 2 or moved > 0, f"{name}: interactive plot clipped ({sw} px in {cw} px, not scrollable)"
    pg.locator("#st-plot").screenshot(path=str(ARTIFACTS / f"browser_{name}_interactive.png"))
    pg.get_by_role("tab", name="Overlay").click()
    _wait_img(pg, "#st-overlay")
    assert _img_ok(pg, "#st-overlay")
    pg.get_by_role("tab", name="Figure").click()


def test_every_analysis_renders(page: Any, tmp_path: Path) -> None:
    pg = page
    pg.locator("#st-image input[type=file]").set_input_files(str(EXAMPLE))
    _wait_for_summary(pg, ANALYSIS_TITLES["comparison"])  # the upload runs the default analysis
    for key, label in ANALYSES.items():
        if key != "comparison":
            pg.locator("#st-analysis label", has_text=label).click()
            _wait_for_summary(pg, ANALYSIS_TITLES[key])
        _check_rendered(pg, key)
        assert _error_toasts(pg) == [], f"{key}: error toast {_error_toasts(pg)}"
        if key == "comparison":
            assert _download(pg, "st-dl-pdf", tmp_path).startswith(b"%PDF-")
            assert _download(pg, "st-dl-png", tmp_path).startswith(b"\x89PNG")
            assert _download(pg, "st-dl-npz", tmp_path).startswith(b"PK")
    # the controls were filled from the result
    assert pg.locator("#st-classes .token").count() > 0
    assert pg.js_errors == [], pg.js_errors


def test_controls_rerun_the_analysis(page: Any) -> None:
    pg = page
    pg.locator("#st-analysis label", has_text="Paper comparison").click()
    _wait_for_summary(pg, ANALYSIS_TITLES["comparison"])
    pg.locator("#st-normalize label", has_text="softmax").click()
    summary_says = "() => /normalisation: softmax/i.test(document.querySelector('#st-summary').innerText)"
    pg.wait_for_function(summary_says, timeout=WAIT_MS)
    pg.get_by_role("button", name="Analyze").click()
    _wait_for_summary(pg, ANALYSIS_TITLES["comparison"])
    assert _error_toasts(pg) == []
    pg.screenshot(path=str(ARTIFACTS / "browser_softmax.png"), full_page=True)


def test_bad_image_shows_a_readable_error_and_the_page_recovers(page: Any, tmp_path: Path) -> None:
    pg = page
    one = tmp_path / "one_pixel.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(one)
    _clear_image(pg)
    pg.locator("#st-image input[type=file]").set_input_files(str(one))
    pg.wait_for_selector(".toast-body.error", timeout=WAIT_MS)
    text = " ".join(_error_toasts(pg))
    assert "too small" in text and "internal error" not in text, text
    pg.wait_for_function("() => document.querySelector('#st-summary').innerText.includes('No result')")
    pg.screenshot(path=str(ARTIFACTS / "browser_error.png"))  # the viewport, where the toast is
    for close in pg.locator(".toast-body.error .toast-close").all():
        close.click()
    _clear_image(pg)
    pg.locator("#st-image input[type=file]").set_input_files(str(EXAMPLE))
    _wait_for_summary(pg, ANALYSIS_TITLES["comparison"])
    assert _img_ok(pg, "#st-figure")

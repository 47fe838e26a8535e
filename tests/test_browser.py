"""The app in a real browser: Debian's chromium driven by playwright (never ``playwright install``).

Launches ``app.py`` in-process on the embedded CamVid set at a 1400x900 viewport, uploads an image,
runs every analysis and checks what a person sees: the figure decoded and displayed at least 1000 px
wide with map cells at least 64 px (the comparison), plotly holding the expected traces, nothing in
the results area wider than its box without a scrollbar, the class chips following a new image, and a
bad upload's message staying in the results area after a toast would have faded. Screenshots go to
``tests/artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
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
from playwright import sync_api  # noqa: E402 - in requirements-dev.txt: a broken install must fail

from analysis.analyses import ANALYSES as REGISTRY  # noqa: E402
from analysis.service import Explorer  # noqa: E402
from tests.helpers import serve_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
EXAMPLE = ROOT / "assets" / "examples" / "street_synthetic.jpg"
OTHER = ROOT / "assets" / "examples" / "coffee.jpg"  # mostly Tree for the street model
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANALYSES = {"comparison": REGISTRY["comparison"].label} | {k: a.label for k, a in REGISTRY.items()}
"""analysis key -> radio label, the default analysis first."""
VIEWPORT = {"width": 1400, "height": 900}
STAGES = 6  # the embedded set: input, 4 blocks, output
ANALYSIS_TITLES = {key: a.title for key, a in REGISTRY.items()}  # the summary's heading per analysis
EMBEDDED_HEADS = Explorer().describe_model("camvid").heads
WAIT_MS = int(os.environ.get("STRUCTTOKEN_BROWSER_WAIT_MS", "300000"))  # generous: the CI box may be busy


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with serve_app(Path("camvid")) as (url, _app):  # the embedded set: what a visitor gets
        yield url


@pytest.fixture(scope="module")
def page(app_url: str) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport=VIEWPORT)
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
  const n = a => (a && a.length !== undefined ? a.length : -1);
  return d._fullData.map(t => [t.type, t.type === 'bar' ? n(t.y) : n(t.z)]); }"""
PLOT_FILLS_COLUMN = """() => { const e = document.querySelector('#st-plot');
  const svg = e && e.querySelector('.js-plotly-plot .main-svg');
  return !!svg && svg.getBoundingClientRect().width >= 0.9 * e.clientWidth; }"""
FIGURE = """() => { const i = document.querySelector('#st-figure img');
  return i ? [i.getAttribute('src') || '', i.naturalWidth, i.naturalHeight] : null; }"""


def _check_rendered(pg: Any, name: str) -> None:
    pg.get_by_role("tab", name="Figure").first.click()
    _wait_img(pg, "#st-figure")
    src, width, height = pg.evaluate(FIGURE)
    assert src and width > 100 and height > 50, f"{name}: figure not drawn ({src!r}, {width}x{height})"
    pg.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"), full_page=True)
    pg.get_by_role("tab", name="Interactive").first.click()
    pg.wait_for_selector("#st-plot .js-plotly-plot .main-svg", timeout=WAIT_MS)
    pg.wait_for_function(f"() => ({PLOT_TRACES})()?.length > 0", timeout=WAIT_MS)
    # drawn while its tab was hidden (the analysis ran with the Figure tab open), the plot must still
    # take the column's width once its tab opens, not plotly's 700 px fallback
    pg.wait_for_function(PLOT_FILLS_COLUMN, timeout=WAIT_MS)
    traces = pg.evaluate(PLOT_TRACES)
    kinds = {t[0] for t in traces}
    expected = {"prediction": {"image"}, "attention": {"heatmap", "bar"}}.get(
        name, {"heatmap"}
    )  # attention: + entropy bars
    assert kinds == expected, f"{name}: plotly traces {kinds}"
    assert all(rows > 0 for _, rows in traces), f"{name}: an empty trace in {traces[:4]}"
    if name in ("comparison", "probe"):  # one heatmap per (head, stage, class): 2 or 3 heads x 6 stages x 4 rows
        # comparison: 2 heads x 4 classes; probe: 3 heads x 2 classes (its default, so each map stays large)
        assert len(traces) == {"comparison": 2 * 4, "probe": 3 * 2}[name] * STAGES, f"{name}: {len(traces)} traces"
    if name == "focus":  # one heatmap per (head, stage): every head of the embedded set x 6 stages
        assert len(traces) == len(EMBEDDED_HEADS) * STAGES, f"{name}: {len(traces)} traces"
    assert pg.locator("#st-plot .main-svg").count() > 0
    # a mosaic wider than the column must scroll sideways, not be clipped
    sw, cw, moved = pg.evaluate(
        "() => { const e = document.querySelector('#st-plot'); const b = e.scrollLeft; e.scrollLeft = 1e6;"
        " const m = e.scrollLeft; e.scrollLeft = b; return [e.scrollWidth, e.clientWidth, m]; }"
    )
    assert sw <= cw + 2 or moved > 0, f"{name}: interactive plot clipped ({sw} px in {cw} px, not scrollable)"
    pg.locator("#st-plot").screenshot(path=str(ARTIFACTS / f"browser_{name}_interactive.png"))
    pg.get_by_role("tab", name="Overlay").first.click()
    _wait_img(pg, "#st-overlay")
    assert _img_ok(pg, "#st-overlay")
    pg.get_by_role("tab", name="Figure").first.click()


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
    # the dataset curves follow the figure in their own event, and stay through a control change
    pg.wait_for_selector("#st-curves .js-plotly-plot .main-svg", timeout=WAIT_MS)
    pg.locator("#st-normalize label", has_text="softmax").click()
    summary_says = "() => /normalisation: softmax/i.test(document.querySelector('#st-summary').innerText)"
    pg.wait_for_function(summary_says, timeout=WAIT_MS)
    pg.wait_for_timeout(500)
    assert pg.locator("#st-curves .js-plotly-plot .main-svg").count() >= 1
    pg.get_by_role("button", name="Analyze").click()
    _wait_for_summary(pg, ANALYSIS_TITLES["comparison"])
    assert _error_toasts(pg) == []
    pg.screenshot(path=str(ARTIFACTS / "browser_softmax.png"), full_page=True)


OVERFLOWS = """() => { const root = document.querySelector('#st-results'); const bad = [];
  if (root.scrollWidth > root.clientWidth + 1) bad.push(['#st-results', root.scrollWidth, root.clientWidth]);
  for (const e of root.querySelectorAll('*')) {
    if (e instanceof SVGElement || e.clientWidth <= 2 || !e.getClientRects().length) continue;  // 1 px: visually hidden
    const ox = getComputedStyle(e).overflowX;
    if (e.scrollWidth > e.clientWidth + 8 && !['auto', 'scroll'].includes(ox))  // icons' padding: a few px
      bad.push([e.tagName, e.id, String(e.className).slice(0, 50), e.scrollWidth, e.clientWidth, ox]);
  }
  return bad; }"""
DISPLAYED = """() => { const i = document.querySelector('#st-figure img'); const r = i.getBoundingClientRect();
  return [r.width, i.naturalWidth, r.top, r.bottom]; }"""
CHIPS = "() => [...document.querySelectorAll('#st-classes .token')].map(t => t.innerText.trim())"


FIGURE_SRC = "() => { const i = document.querySelector('#st-figure img'); return i ? i.getAttribute('src') : ''; }"


def _upload(pg: Any, path: Path, title: str) -> None:
    """Upload ``path`` and wait for its result. The previous figure goes first (a new image clears the
    results), so the figure waited for is this image's, even when its file is the same (gradio serves
    files by content)."""
    _clear_image(pg)
    pg.wait_for_function(f"() => !({FIGURE_SRC})()", timeout=WAIT_MS)
    pg.locator("#st-image input[type=file]").set_input_files(str(path))
    _wait_img(pg, "#st-figure")
    _wait_for_summary(pg, title)


def _comparison_map_width() -> int:
    """One map's width in the comparison figure of :data:`EXAMPLE` (figure pixels), from the service."""
    from analysis.service import AnalysisRequest, Explorer

    image = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    fig = Explorer().analyze(AnalysisRequest(image, "camvid", "comparison", readout="head")).figure
    return fig.structtoken_cell_hw[1]


def test_the_comparison_figure_is_displayed_wide_and_nothing_overflows(page: Any) -> None:
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    pg.get_by_role("tab", name="Figure").first.click()
    pg.evaluate("() => window.scrollTo(0, 0)")
    shown, natural, top, bottom = pg.evaluate(DISPLAYED)
    # the static mosaic's maps (stages as rows, a column per class and head): what the server drew
    cell_w = _comparison_map_width()
    assert shown >= 1000, f"the figure is displayed {shown:.0f} px wide (natural {natural} px)"
    assert cell_w * shown / natural >= 110, f"maps {cell_w * shown / natural:.0f} px wide on screen"
    assert bottom <= VIEWPORT["height"], f"the figure ends at {bottom:.0f} px, below the window (top {top:.0f} px)"
    for tab in ("Figure", "Interactive", "Overlay"):
        pg.get_by_role("tab", name=tab).first.click()
        pg.wait_for_timeout(300)
        if tab == "Interactive":
            pg.wait_for_selector("#st-plot .js-plotly-plot .main-svg", timeout=WAIT_MS)
        over = pg.evaluate(OVERFLOWS)
        assert over == [], f"{tab}: overflowing without a scrollbar: {over}"
    # the plotly mosaic and the dataset curves fit their boxes: every panel and legend entry visible
    for sel in ("#st-plot", "#st-curves"):
        sw, cw = pg.evaluate(
            f"() => {{ const e = document.querySelector('{sel} .js-plotly-plot');"
            " return e ? [e.scrollWidth, e.parentElement.clientWidth] : [0, 0]; }"
        )
        assert sw <= cw + 2, f"{sel}: {sw} px in a {cw} px box"
    pg.get_by_role("tab", name="Figure").first.click()
    pg.screenshot(path=str(ARTIFACTS / "browser_layout_1400x900.png"))


def test_class_chips_follow_a_new_image(page: Any) -> None:
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    first = pg.evaluate(CHIPS)
    assert len(first) == 4, first
    _upload(pg, OTHER, ANALYSIS_TITLES["comparison"])
    pg.wait_for_function(f"() => JSON.stringify(({CHIPS})()) !== {json.dumps(json.dumps(first))}", timeout=WAIT_MS)
    second = pg.evaluate(CHIPS)
    assert second != first and "Tree" in second, (first, second)


def test_bad_image_shows_a_lasting_error_in_the_results_and_the_page_recovers(page: Any, tmp_path: Path) -> None:
    pg = page
    fake = tmp_path / "holiday.jpg"
    fake.write_text("a text file renamed .jpg\n")
    _clear_image(pg)
    pg.locator("#st-image input[type=file]").set_input_files(str(fake))
    pg.wait_for_selector("#st-error", state="visible", timeout=WAIT_MS)
    pg.wait_for_timeout(15_000)  # longer than a toast lives
    text = pg.locator("#st-error").inner_text()
    assert "not an image" in text and "holiday.jpg" in text and "internal error" not in text, text
    assert str(tmp_path) not in text and "/tmp" not in text, text
    pg.screenshot(path=str(ARTIFACTS / "browser_error.png"))
    one = tmp_path / "one_pixel.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(one)
    _clear_image(pg)
    pg.locator("#st-image input[type=file]").set_input_files(str(one))
    pg.wait_for_function(
        "() => /too small/.test(document.querySelector('#st-error')?.innerText || '')", timeout=WAIT_MS
    )
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    assert not pg.locator("#st-error").is_visible()
    assert _img_ok(pg, "#st-figure")


def _typed_picks(pg: Any, names: list[str], gap_ms: int = 100) -> None:
    """Pick ``names`` in the classes box by typing each and Enter, ``gap_ms`` apart."""
    pg.locator("#st-classes input").first.click()
    for name in names:
        pg.keyboard.type(name)
        pg.keyboard.press("Enter")
        pg.wait_for_timeout(gap_ms)
    pg.keyboard.press("Escape")


SHOWN = """() => { const m = /classes shown: ([^.]*)\\./.exec(document.querySelector('#st-summary').innerText);
  return m ? m[1].split(', ') : []; }"""


def test_class_picks_made_fast_all_end_in_the_figure(page: Any) -> None:
    """Picks 0.1 s apart, while the runs they start are still finishing: every one ends up in the last
    figure (a finished run must not put its shorter selection back into the chips)."""
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    reset = pg.locator("#st-auto-classes")
    chips = pg.evaluate(CHIPS)
    picks = [c for c in ("Sky", "Car", "Pole", "Pedestrian", "Fence", "SignSymbol") if c not in chips][:4]
    _typed_picks(pg, picks)
    pg.wait_for_function(
        f"() => {{ const s = ({SHOWN})(); return {json.dumps(picks)}.every(p => s.includes(p)); }}", timeout=60_000
    )
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)
    pg.wait_for_timeout(1000)  # nothing later takes a pick away
    assert set(picks) <= set(pg.evaluate(SHOWN)), pg.evaluate(SHOWN)
    assert set(picks) <= set(pg.evaluate(CHIPS)), pg.evaluate(CHIPS)
    reset.click()
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)


def test_the_pdf_button_works_when_clicked_before_the_figure_is_ready(page: Any, tmp_path: Path) -> None:
    pg = page
    _clear_image(pg)
    pg.wait_for_function(f"() => !({FIGURE_SRC})()", timeout=WAIT_MS)
    pg.locator("#st-image input[type=file]").set_input_files(str(OTHER))
    with pg.expect_download(timeout=120_000) as info:
        pg.locator("#st-dl-pdf").click()  # at once: the figure is not drawn yet
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.read_bytes()[:5] == b"%PDF-"
    _wait_img(pg, "#st-figure")


def test_the_baseline_control_puts_another_baseline_beside_structtoken(page: Any) -> None:
    """The comparison's "Compare with": choosing FCN redraws the figure with FCN beside the StructToken head."""
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    assert pg.locator("#st-baseline").first.is_visible()
    before = pg.evaluate(FIGURE_SRC)
    pg.locator("#st-baseline input").first.click()
    pg.locator("ul[role=listbox] li", has_text="FCN").first.click()
    _wait_for_summary(pg, "StructToken vs. FCN, block by block")
    pg.wait_for_function(f"() => ({FIGURE_SRC})() !== {json.dumps(before)}", timeout=WAIT_MS)
    assert _error_toasts(pg) == []
    pg.locator("#st-analysis label", has_text=ANALYSES["probe"]).click()
    _wait_for_summary(pg, ANALYSIS_TITLES["probe"])
    assert not pg.locator("#st-baseline").first.is_visible()  # only the comparison has it


COUNT_FIGURES = """() => { window.__figures = 0; if (window.__figureCounter) return;
  window.__figureCounter = new MutationObserver(ms => {
    window.__figures += ms.filter(m => m.attributeName === 'src').length; });
  window.__figureCounter.observe(document.querySelector('#st-figure'),
    {subtree: true, attributes: true, attributeFilter: ['src']}); }"""


def test_a_dropdown_pick_draws_the_figure_once_and_a_blur_not_at_all(page: Any) -> None:
    """Gradio's dropdown sends ``input`` on a pick and again when it loses focus: the page listens to the
    pick (``select``), so one pick is one analysis (one new figure), and opening a dropdown and leaving it
    without a pick redraws nothing."""
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    idle = "() => !document.querySelector('.progress-text, .eta-bar')"
    for elem in ("st-head", "st-block", "st-readout"):
        pg.wait_for_function(idle, timeout=WAIT_MS)
        pg.evaluate(COUNT_FIGURES)
        pg.locator(f"#{elem} input").first.click()
        pg.locator("ul[role=listbox] li:not([aria-selected=true])").first.click()
        pg.wait_for_function("() => window.__figures > 0", timeout=WAIT_MS)
        pg.wait_for_function(idle, timeout=WAIT_MS)
        pg.wait_for_timeout(1500)  # a second run would have drawn by now
        assert pg.evaluate("() => window.__figures") == 1, elem
    pg.evaluate(COUNT_FIGURES)
    pg.locator("#st-head input").first.click()  # open, then leave without a pick
    pg.locator("#st-summary").first.click()
    pg.wait_for_timeout(1500)
    assert pg.evaluate("() => window.__figures") == 0
    assert _error_toasts(pg) == []


def test_removing_the_image_while_it_is_analysed_leaves_no_figure(page: Any) -> None:
    """A run still going when the image is removed (here: a new analysis picked just before) must not put
    the removed image's figure back on the page."""
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    pg.locator("#st-analysis label", has_text=ANALYSES["attention"]).click()  # the slowest: it runs 3 sizes
    pg.wait_for_selector(".progress-text, .eta-bar", timeout=WAIT_MS)  # the run is under way
    pg.locator("#st-image button[aria-label='Remove Image']").first.click()
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)
    pg.wait_for_timeout(2000)  # a late result would have been drawn by now
    assert pg.evaluate(FIGURE_SRC) in ("", None)
    assert "Upload an image" in pg.locator("#st-summary").first.inner_text()
    pg.locator("#st-run").click()  # Analyze without an image: the notice asks for one
    pg.wait_for_selector("#st-error", state="visible", timeout=WAIT_MS)
    assert "Upload an image first" in pg.locator("#st-error").first.inner_text()


def test_a_readout_reason_does_not_outlive_its_set(page: Any) -> None:
    """A released set (offline here: its run fails) says which readouts it lacks; back on the embedded
    set, which has them all, the reason is gone and the error notice too."""
    pg = page
    pg.locator("#st-analysis label", has_text=ANALYSES["comparison"]).click()
    _upload(pg, EXAMPLE, ANALYSIS_TITLES["comparison"])
    readout_info = "() => document.querySelector('#st-readout')?.innerText || ''"
    pg.locator("#st-model input").first.click()
    pg.locator("ul[role=listbox] li", has_text="cse_vit-t_ade20k").first.click()
    pg.wait_for_function(f"() => /not available/.test(({readout_info})())", timeout=WAIT_MS)
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)
    pg.locator("#st-model input").first.click()
    pg.locator("ul[role=listbox] li", has_text="camvid").first.click()
    # (the single-head released set has no comparison: the page fell back to the prediction, and stays there)
    _wait_for_summary(pg, ANALYSIS_TITLES["prediction"])
    pg.wait_for_selector("#st-error", state="hidden", timeout=WAIT_MS)
    assert "not available" not in pg.evaluate(readout_info), pg.evaluate(readout_info)

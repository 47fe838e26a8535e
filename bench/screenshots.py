"""Screenshots of every analysis as a reader sees them, for a reviewer to look at (not a test).

    python bench/screenshots.py [--model camvid] [--image PATH] [--out outputs/screenshots]

Serves ``app.py`` in-process on 127.0.0.1, opens it in Debian's chromium (playwright, never
``playwright install``) at a 1400x900 viewport, analyses one image (default: the first CamVid val
frame when the dataset is present, else the synthetic street), and writes, per analysis,
``<analysis>.png`` (the viewport: what is above the fold) and ``<analysis>_full.png`` (the whole
page), plus ``<analysis>_interactive.png`` (the plotly tab) and ``error.png`` (a bad upload). Prints
the figure's displayed size per analysis. ``outputs/`` is gitignored: never commit screenshots (a
CamVid frame is research data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WAIT_MS = 600_000
FIGURE = """() => { const i = document.querySelector('#st-figure img'); if (!i) return null;
  const r = i.getBoundingClientRect(); return [r.width, r.height, i.naturalWidth, i.naturalHeight, r.top]; }"""


def _default_image() -> Path:
    val = ROOT.parent / "shared" / "data" / "camvid" / "val" / "images"
    frames = sorted(val.glob("*.jpg")) + sorted(val.glob("*.png")) if val.is_dir() else []
    return frames[0] if frames else ROOT / "assets" / "examples" / "street_synthetic.jpg"


def _wait_title(pg: object, title: str) -> None:
    pg.wait_for_function(  # type: ignore[attr-defined]
        "t => { const h = document.querySelector('#st-summary h3'); return h && h.innerText.trim() === t; }",
        arg=title,
        timeout=WAIT_MS,
    )
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="camvid")
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "screenshots")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    import app
    from analysis.analyses import ANALYSES
    from analysis.service import Explorer

    os.environ["STRUCTTOKEN_DEFAULT_MODEL"] = args.model
    image = args.image or _default_image()
    args.out.mkdir(parents=True, exist_ok=True)
    demo = app.build_demo(Explorer())
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    sizes = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport={"width": args.width, "height": args.height})
            pg.set_default_timeout(WAIT_MS)
            pg.goto(demo.local_url)
            pg.wait_for_selector("#st-run")
            pg.locator("#st-image input[type=file]").set_input_files(str(image))
            order = ["comparison", *(k for k in ANALYSES if k != "comparison")]
            for key in order:
                if key != "comparison":
                    pg.locator("#st-analysis label", has_text=ANALYSES[key].label).click()
                _wait_title(pg, ANALYSES[key].title)
                pg.get_by_role("tab", name="Figure").first.click()
                pg.wait_for_function(
                    "() => { const i = document.querySelector('#st-figure img');"
                    " return i && i.complete && i.naturalWidth > 0; }"
                )
                pg.wait_for_function(  # the dataset curves come in an event of their own, after the figure
                    "() => { const c = document.querySelector('#st-curves');"
                    " return !c || !c.offsetParent || c.querySelector('.main-svg'); }"
                )
                pg.evaluate("() => window.scrollTo(0, 0)")
                sizes[key] = pg.evaluate(FIGURE)
                pg.screenshot(path=str(args.out / f"{key}.png"))
                # the whole page in a window as tall as the page: a full-page screenshot of the usual window
                # catches the plots below the fold redrawing (empty) after its resize
                tall = pg.evaluate("() => document.body.scrollHeight")
                pg.set_viewport_size({"width": args.width, "height": tall})
                pg.wait_for_timeout(1500)
                pg.screenshot(path=str(args.out / f"{key}_full.png"))
                pg.set_viewport_size({"width": args.width, "height": args.height})
                pg.get_by_role("tab", name="Interactive").first.click()
                pg.wait_for_selector("#st-plot .js-plotly-plot .main-svg")
                pg.wait_for_timeout(500)
                pg.locator("#st-results").screenshot(path=str(args.out / f"{key}_interactive.png"))
                pg.get_by_role("tab", name="Figure").first.click()
            bad = args.out / "not_an_image.jpg"
            bad.write_text("this is a text file renamed .jpg\n")
            pg.locator("#st-analysis label", has_text=ANALYSES["comparison"].label).click()
            pg.locator("#st-image button[aria-label='Remove Image']").first.click()
            pg.locator("#st-image input[type=file]").set_input_files(str(bad))
            pg.wait_for_selector("#st-error", state="visible")
            pg.wait_for_timeout(15_000)  # a toast would have faded by now; the notice must not
            pg.screenshot(path=str(args.out / "error.png"))
            bad.unlink()
            browser.close()
    finally:
        demo.close()
    print(json.dumps({"image": image.name, "figure_displayed_wh_natural_wh_top": sizes}, indent=1))


if __name__ == "__main__":
    main()

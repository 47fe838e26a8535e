"""The page at the speed of thought, measured in a real browser (issue 25's targets).

    python bench/bench_browser.py [--root PATH] [--repeats 5] [--image PATH] [--json out.json]
    python bench/bench_browser.py --soak 200 --clients 2 --budget-mb 40   # the temp area under traffic

Starts ``python app.py`` from ``--root`` (default: this checkout; give another checkout, e.g. a
``git worktree`` of an older commit, to measure "before") on a free port and measures:

* ``cold_start_s``: ``python app.py`` to the first HTTP 200 of ``/``; beside it, what bounds it on this
  machine: ``bare_gradio_start_s``, a page of one image and one button served the same way (Gradio's
  import, build and launch, nothing of ours), and ``import_app_s``, ``python -c "import app"``;
* ``first_analysis_s``: after that 200, page opened, an image set, to the figure on screen; beside the
  two summed (``first_figure_s``), its floor on this machine, ``model_path_s``: a process that only imports
  the model stack and makes that first figure (no page, no server, no browser);
* per control (normalisation, readout, block, head), the pointer-down to the new figure loaded
  (the browser's own clock: ``performance.now()`` at pointer-down and at the figure's ``load``);
* ``new_image_s``: a new image (model loaded) to its figure on screen: the median over the shipped examples
  other than the first (``--image2`` first), each new to the cache; ``new_image_cached_s``: the first again;
* ``lost_picks``: four class picks made 0.1 s apart, and how many of them the final figure lacks;
* per analysis, the figure as displayed at 1400x900 with the sidebar open: its size, whether it fits
  the viewport height, and the width of one map on screen (the figure's map width scaled by
  displayed / natural width; the map width is read from the grid layout the analysis draws).

Debian's chromium through playwright (never ``playwright install``). The CPU is shared: say in the
numbers what else ran (the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
WAIT_MS = 300_000
TARGETS = {
    "cold_start_s": 4.0,
    "first_analysis_s": 2.0,
    "normalize_s": 0.3,
    "readout_s": 0.3,
    "block_s": 0.3,
    "head_s": 0.3,
    "baseline_s": 0.3,
    "new_image_s": 1.0,
    "lost_picks": 0,
    "map_px_min": 110,
}

# The figure's image: its src, and whether it is loaded
FIG_STATE = """() => { const i = document.querySelector('#st-figure img');
  return i ? [i.getAttribute('src') || '', i.complete && i.naturalWidth > 0] : ['', false]; }"""
# Time stamps in the page: pointer-down anywhere, and the figure's load
INSTALL_CLOCK = """() => {
  if (window.__stClock) return; window.__stClock = true;
  document.addEventListener('pointerdown', () => { window.__t0 = performance.now(); }, true);
  window.__loads = [];
  document.addEventListener('load', e => { if (e.target.closest && e.target.closest('#st-figure'))
    window.__loads.push([performance.now(), e.target.getAttribute('src')]); }, true);
}"""
TITLE_IS = "t => { const h = document.querySelector('#st-summary h3'); return h && h.innerText.trim() === t; }"
FIGURE_BOX = """() => { const i = document.querySelector('#st-figure img'); if (!i) return null;
  const r = i.getBoundingClientRect(); return [r.width, r.height, i.naturalWidth, i.naturalHeight, r.top]; }"""
GRID_CELLS = r"""
import json, sys
import numpy as np
sys.path.insert(0, ".")
from PIL import Image
import analysis.grid as G
from analysis.service import AnalysisRequest, Explorer
seen = []
orig = G.render_static
def spy(layout, *a, **k):
    seen.append(list(layout.cell_hw)); return orig(layout, *a, **k)
G.render_static = spy
import analysis.analyses.base as B, analysis.analyses.focus as Fo
for mod in (B, Fo):
    if hasattr(mod, "render_static"): mod.render_static = spy
e = Explorer(); img = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
out = {}
for a, an in e.analyses.items():
    seen.clear()
    r = e.analyze(AnalysisRequest(img, analysis=a, readout="head"))
    fig = r.figure
    drawn = getattr(fig, "structtoken_cell_hw", None)
    out[a] = {"cell_hw": list(drawn) if drawn else (seen[0] if seen else None), "label": an.label, "title": an.title,
              "figure_wh": [int(round(v)) for v in fig.get_size_inches() * fig.dpi] if fig is not None else None}
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


BARE_GRADIO = """
import gradio as gr
with gr.Blocks() as demo:
    image = gr.Image()
    gr.Button("Run").click(lambda x: x, image, image)
demo.launch(ssr_mode=False)
"""
"""The floor of ``cold_start_s``: the least page Gradio serves, launched as ``app.py`` launches its own."""
MODEL_PATH = """
import sys
from analysis.service import AnalysisRequest, Explorer, figure_png_bytes
request = AnalysisRequest(sys.argv[1], model="camvid", readout="head", interactive=False, curves=False)
figure_png_bytes(Explorer().analyze(request))
"""
"""The floor of ``cold_start_s + first_analysis_s``: a process that only imports the model stack (torch,
timm, the library) and makes the page's first figure (the set loaded, one image through the backbone and
every head, the comparison drawn as PNG), with no page, no server and no browser beside it."""


def start_app(root: Path, port: int, argv: tuple[str, ...] = ("app.py",)) -> tuple[subprocess.Popen, float]:
    """``python app.py`` (or ``python *argv``) in ``root``; returns (process, seconds to the first HTTP 200)."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.05)
        if time.perf_counter() - t0 > 300:
            proc.kill()
            raise RuntimeError("app.py did not answer in 300 s")


def _wait_idle(pg: Any) -> None:
    pg.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=WAIT_MS)


def _wait_new_figure(pg: Any, old_src: str) -> None:
    pg.wait_for_function(
        "old => { const i = document.querySelector('#st-figure img');"
        " return !!i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
        arg=old_src,
        timeout=WAIT_MS,
    )


def timed_click(pg: Any, locator: Any) -> float:
    """Pointer-down on ``locator`` to the new figure loaded, by the page's clock (s)."""
    _wait_idle(pg)
    old = pg.evaluate(FIG_STATE)[0]
    pg.evaluate("() => { window.__t0 = null; window.__loads = []; }")
    start = time.perf_counter()
    locator.click()
    _wait_new_figure(pg, old)
    wall = time.perf_counter() - start
    _wait_idle(pg)
    new = pg.evaluate(FIG_STATE)[0]
    # the load of the new figure (not a late load of an earlier one)
    t0, t1 = pg.evaluate("s => [window.__t0, (window.__loads.find(l => l[1] === s) || [null])[0]]", new)
    if t0 is None or t1 is None:  # the page's clock missed the event: the script's clock (a little longer)
        return wall
    return (t1 - t0) / 1000.0


def other_option(pg: Any, elem: str, i: int) -> Any:
    """Open the dropdown ``elem`` and return its ``i``-th option (cyclically) other than the chosen one."""
    pg.locator(f"#{elem} input").first.click()
    opts = pg.locator("ul[role=listbox] li:not([aria-selected=true])")
    pg.wait_for_function("() => document.querySelectorAll('ul[role=listbox] li').length > 1")
    return opts.nth(i % max(1, opts.count()))


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def soak(root: Path, requests: int, clients: int, budget_mb: float, image: Path) -> dict[str, Any]:
    """``python app.py`` under ``clients`` API clients making ``requests`` requests in all, each asking
    for every download (the heaviest disk use); the temp area's size sampled after each request; then
    SIGINT and the area checked gone. Returns the numbers."""
    import glob
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    before = set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "structtoken_app_*")))
    port = _free_port()
    os.environ["STRUCTTOKEN_TEMP_BUDGET_MB"] = str(budget_mb)
    proc, _cold = start_app(root, port)
    area = None
    sizes: list[int] = []
    errors = 0
    try:
        made = set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "structtoken_app_*"))) - before
        area = Path(made.pop()) if made else None
        analyses = ["comparison", "probe", "focus", "prediction", "attention"]

        def one(i: int) -> None:
            nonlocal errors
            c = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            try:
                c.predict(
                    handle_file(str(image)),
                    "camvid",
                    analyses[i % len(analyses)],
                    None,
                    [],
                    ["shared", "per_map", "softmax"][i % 3],
                    -1,
                    0.5,
                    None,
                    "head",
                    ["png", "pdf", "npz", "json"],
                    api_name="/analyze",
                )
            except Exception:
                errors += 1
            if area is not None:
                sizes.append(_tree_bytes(area))

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
    return {
        "requests": requests,
        "clients": clients,
        "errors": errors,
        "budget_mb": budget_mb,
        "temp_max_mb": round(max(sizes, default=0) / 1e6, 1),
        "temp_last_mb": round((sizes or [0])[-1] / 1e6, 1),
        "exit_code": rc,
        "temp_left_after_exit": bool(area and area.exists()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=HERE, help="the checkout whose app.py is measured")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image", type=Path, default=HERE / "assets" / "examples" / "street_synthetic.jpg")
    p.add_argument("--image2", type=Path, default=HERE / "assets" / "examples" / "coffee.jpg")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--before", type=Path, default=None, help="an earlier --json: print both against the targets")
    p.add_argument("--soak", type=int, default=0, help="instead: this many API requests asking for every download")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--budget-mb", type=float, default=40.0, help="the temp area's budget during --soak")
    args = p.parse_args()
    if args.soak:
        print(json.dumps(soak(args.root.resolve(), args.soak, args.clients, args.budget_mb, args.image), indent=1))
        return
    from playwright.sync_api import sync_playwright

    root = args.root.resolve()
    res: dict[str, Any] = {"root": str(root), "loadavg_before": _loadavg(), "cpus": os.cpu_count()}
    grid = json.loads(
        subprocess.run(
            [sys.executable, "-c", GRID_CELLS, str(args.image.resolve())],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    bare, res["bare_gradio_start_s"] = start_app(root, _free_port(), ("-c", BARE_GRADIO))
    bare.terminate()
    bare.wait()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import app"], cwd=root, check=True, capture_output=True)
    res["import_app_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    floor = [sys.executable, "-c", MODEL_PATH, str(args.image.resolve())]
    subprocess.run(floor, cwd=root, check=True, capture_output=True)
    res["model_path_s"] = round(time.perf_counter() - t0, 2)
    res["bare_gradio_start_s"] = round(res["bare_gradio_start_s"], 2)
    port = _free_port()
    proc, cold = start_app(root, port)
    res["cold_start_s"] = round(cold, 2)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport=VIEWPORT)
            pg.set_default_timeout(WAIT_MS)
            t0 = time.perf_counter()
            pg.goto(f"http://127.0.0.1:{port}/")
            pg.wait_for_selector("#st-run")
            pg.evaluate(INSTALL_CLOCK)
            pg.locator("#st-image input[type=file]").set_input_files(str(args.image))
            _wait_new_figure(pg, "")
            res["first_analysis_s"] = round(time.perf_counter() - t0, 2)
            res["first_figure_s"] = round(res["cold_start_s"] + res["first_analysis_s"], 2)
            _wait_idle(pg)
            keys = ("normalize_s", "readout_s", "block_s", "head_s", "baseline_s")
            times: dict[str, list[float]] = {k: [] for k in keys}
            norm = pg.locator("#st-normalize label")
            n_norm = norm.count()
            for i in range(args.repeats):
                times["normalize_s"].append(timed_click(pg, norm.nth((i + 1) % n_norm)))
            dropdowns = [("readout_s", "st-readout"), ("block_s", "st-block"), ("head_s", "st-head")]
            if pg.locator("#st-baseline").count() and pg.locator("#st-baseline").first.is_visible():
                dropdowns.append(("baseline_s", "st-baseline"))  # an app before the baseline control has none
            for key, elem in dropdowns:
                for i in range(args.repeats):
                    times[key].append(timed_click(pg, other_option(pg, elem, i)))
            for k, v in times.items():
                if not v:
                    continue
                res[k] = {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
            # new images (model loaded): each shipped example other than the first, new to the cache, then the
            # first one again (cached: its maps are kept, only the figure is drawn)
            fresh = [
                args.image2,
                *(q for q in sorted(args.image.parent.glob("*.jpg")) if q not in (args.image, args.image2)),
            ]
            new = []
            for img in [*fresh, args.image]:
                _wait_idle(pg)
                old = pg.evaluate(FIG_STATE)[0]
                remove = pg.locator("#st-image button[aria-label='Remove Image']")
                if remove.count():
                    remove.first.click()
                    _wait_idle(pg)
                t = time.perf_counter()
                pg.locator("#st-image input[type=file]").set_input_files(str(img))
                _wait_new_figure(pg, old)
                new.append(round(time.perf_counter() - t, 3))
            _wait_idle(pg)
            uncached = new[: len(fresh)]
            res["new_image_s"] = {
                "median": round(statistics.median(uncached), 3),
                "min": min(uncached),
                "max": max(uncached),
                "all": uncached,
                "images": [q.name for q in fresh],
            }
            res["new_image_cached_s"] = new[-1]
            # class picks 0.1 s apart: how many end up in the figure
            pg.locator("#st-classes input").first.click()
            opts = pg.locator("ul[role=listbox] li")
            labels = [opts.nth(i).get_attribute("aria-label") or "" for i in range(opts.count())]
            pg.keyboard.press("Escape")
            chips = pg.locator("#st-classes .token")
            current = [c.inner_text().strip() for c in chips.all()]
            wanted = [c for c in labels if c not in current][:4]
            box = pg.locator("#st-classes input").first
            box.click()
            for c in wanted:  # typed and chosen with Enter, 0.1 s apart
                t = time.perf_counter()
                pg.keyboard.type(c)
                pg.keyboard.press("Enter")
                pg.wait_for_timeout(max(0, 100 - 1000 * (time.perf_counter() - t)))
            pg.keyboard.press("Escape")
            pg.wait_for_timeout(1500)
            _wait_idle(pg)
            pg.wait_for_timeout(1500)
            _wait_idle(pg)
            # the chips after the runs settle are the classes of the last figure (the page sets them from it)
            shown = [c.inner_text().strip() for c in pg.locator("#st-classes .token").all()]
            picked = [c for c in wanted if any(c == s.split("\n")[-1].strip() for s in shown)]
            res["chips_after"] = shown
            res["picked"] = wanted
            res["lost_picks"] = len(wanted) - len(picked)
            boxes: dict[str, Any] = {}
            # figure sizes per analysis, as displayed
            for key, info in grid.items():
                pg.locator("#st-analysis label", has_text=info["label"]).first.click()
                pg.wait_for_function(
                    TITLE_IS,
                    arg=info["title"],
                    timeout=WAIT_MS,
                )
                _wait_idle(pg)
                pg.wait_for_function(
                    "() => { const i = document.querySelector('#st-figure img'); return !!i && i.complete; }"
                )
                pg.wait_for_timeout(300)
                box = pg.evaluate(FIGURE_BOX)
                entry: dict[str, Any] = {"displayed_wh": [round(box[0]), round(box[1])], "natural_wh": box[2:4]}
                entry["top_px"] = round(box[4])
                entry["fits_viewport_height"] = bool(box[4] + box[1] <= VIEWPORT["height"])  # all of it on screen
                if info.get("cell_hw") and box[2]:
                    entry["map_px"] = round(info["cell_hw"][1] * box[0] / box[2], 1)
                boxes[key] = entry
            res["figures"] = boxes
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    res["loadavg_after"] = _loadavg()
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    before = json.loads(args.before.read_text()) if args.before else None
    print(target_table(res, before))


def _headline(res: dict[str, Any], key: str) -> Any:
    """One number per target: a control's median, the first new image, the smallest map, or the value."""
    if key == "map_px_min":
        maps = [f["map_px"] for f in res.get("figures", {}).values() if f.get("map_px")]
        return min(maps) if maps else None
    if key == "first_figure_s" and key not in res:  # a run recorded before it was: derived
        parts = [_headline(res, k) for k in ("cold_start_s", "first_analysis_s")]
        return None if None in parts else round(sum(parts), 2)
    value = res.get(key)
    if isinstance(value, dict):
        return value.get("median", value.get("first"))
    return value


def target_table(after: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """Markdown: each target of :data:`TARGETS` with the measured figure (before and after when given)."""
    head = "| target | " + ("before | " if before else "") + "now | met |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, goal in TARGETS.items():
        now = _headline(after, key)
        met = now is not None and (now >= goal if key == "map_px_min" else now <= goal)
        cells = [f"{key} {'>=' if key == 'map_px_min' else '<='} {goal}"]
        if before:
            cells.append(str(_headline(before, key)))
        cells += [str(now), "yes" if met else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    context = (
        ("bare_gradio_start_s", "a bare Gradio page to HTTP 200 (the floor of cold_start_s on this machine)"),
        ("import_app_s", "python -c 'import app' (Gradio, torch, timm, the library: before the page is built)"),
        ("model_path_s", "the model stack alone, start to the first figure's PNG (the floor of the next line)"),
        (
            "first_figure_s",
            "python app.py to the first figure on screen (cold_start_s + first_analysis_s; targets: 6 s)",
        ),
    )
    for key, what in context:
        now = _headline(after, key)
        if now is not None:
            was = _headline(before, key) if before else None
            lines.append(f"\n{what}: {'' if was is None else f'{was} s -> '}{now} s")
    fits = {k: f.get("fits_viewport_height") for k, f in after.get("figures", {}).items()}
    lines.append(f"\nwhole figure on screen at 1400x900: {fits}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

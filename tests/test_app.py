"""The Gradio app through its API: ``gradio_client`` against ``app.py`` launched in-process on
127.0.0.1 (a random free port), pointed at a tiny model set via ``STRUCTTOKEN_DEFAULT_MODEL``.

Every analysis must come back with its outputs; every bad input must come back as a readable error
(or, for a huge image, a downscale notice), and the next request must still succeed.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),  # inside gradio's queue
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
]
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.helpers import save_tiny_set, serve_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "street_synthetic.jpg"
TIMEOUT = 120  # seconds; no request may hang
ANALYSES = ("prediction", "comparison", "probe", "attention")
PARAMS = [
    "image",
    "model",
    "analysis",
    "head",
    "classes",
    "normalize",
    "block",
    "opacity",
    "checkpoint",
    "readout",
    "baseline",
    "downloads",
]
EVERY_DOWNLOAD = ["png", "pdf", "npz", "json"]


CLASSES = ("road", "sky", "car", "tree")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_set(tmp_path_factory.mktemp("app_sets") / "tiny_set.safetensors", classes=CLASSES, palette=())


@pytest.fixture(scope="module")
def server(tiny_set: Path) -> Iterator[tuple[str, Any]]:
    """The app on 127.0.0.1, default model = the tiny set. Yields (url, the page's ExplorerUI)."""
    with serve_app(tiny_set) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: tuple[str, Any]) -> Client:
    return Client(server[0], verbose=False, download_files=False, httpx_kwargs={"timeout": TIMEOUT})


def analyze(
    client: Client,
    image: Any,
    model: str | None = None,
    analysis: str = "comparison",
    head: str | None = None,
    classes: list[str] | None = None,
    normalize: str = "shared",
    block: int = -1,
    opacity: float = 0.5,
    checkpoint: Any = None,
    readout: str = "raw",
    downloads: list[str] | None = EVERY_DOWNLOAD,
    baseline: str | None = None,
) -> tuple[Any, ...]:
    """Call ``/analyze`` with a deadline (a hung request fails the test instead of blocking it); every
    download is asked for unless ``downloads`` says otherwise."""
    img = handle_file(str(image)) if image is not None else None
    job = client.submit(
        img,
        model,
        analysis,
        head,
        classes or [],
        normalize,
        block,
        opacity,
        checkpoint,
        readout,
        baseline,
        downloads or [],
        api_name="/analyze",
    )
    return job.result(timeout=TIMEOUT)


def _path(x: Any) -> Path:
    """A returned file (``download_files=False``): gradio_client gives a dict with ``path``."""
    if isinstance(x, dict):
        x = x.get("path") or x.get("value")
        if isinstance(x, dict):
            x = x.get("path")
    assert isinstance(x, str) and x, f"expected a file, got {x!r}"
    return Path(x)


def _assert_ok(out: tuple[Any, ...], analysis: str) -> dict[str, Any]:
    figure, plot, overlay, _curves, table, summary, timings, png, pdf, npz, js = out
    assert len(out) == 11
    assert isinstance(summary, str) and summary.strip()
    assert isinstance(timings, dict) and "total" in timings and "app_total_s" in timings
    assert isinstance(plot, dict) and plot.get("type") == "plotly"
    assert _path(overlay).name.endswith((".png", ".webp"))
    assert isinstance(table, dict) and table["headers"] and table["data"]
    if analysis != "attention" or figure is not None:
        assert _path(figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _path(pdf).read_bytes()[:5] == b"%PDF-"
    with zipfile.ZipFile(_path(npz)) as z:
        assert "image.npy" in z.namelist()
    metrics = json.loads(_path(js).read_text())
    assert metrics["analysis"] == analysis
    return metrics


# ------------------------------------------------------------------------------------- endpoint
def test_analyze_is_a_named_endpoint(client: Client) -> None:
    api = client.view_api(print_info=False, return_format="dict")
    ep = api["named_endpoints"]["/analyze"]
    assert [p["parameter_name"] for p in ep["parameters"]] == PARAMS
    assert len(ep["returns"]) == 11
    assert set(api["named_endpoints"]) == {"/analyze"}  # the page's helper events stay private


def test_downloads_are_rendered_only_when_asked_for(client: Client) -> None:
    """A request without ``downloads`` writes only what it shows (the figure and the overlay); one that
    asks for the PDF gets the PDF alone, and the PNG download is the figure shown (written once)."""
    out = analyze(client, EXAMPLE, downloads=None)
    assert _path(out[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out[7:11] == (None, None, None, None)
    out = analyze(client, EXAMPLE, downloads=["pdf"])
    assert _path(out[8]).read_bytes()[:5] == b"%PDF-" and (out[7], out[9], out[10]) == (None, None, None)
    out = analyze(client, EXAMPLE, downloads=["png"])
    assert _path(out[7]) == _path(out[0])
    with pytest.raises(AppError, match="unknown download 'gif'"):
        analyze(client, EXAMPLE, downloads=["gif"])


def test_the_comparison_puts_any_baseline_beside_structtoken(client: Client) -> None:
    """The embedded set's seven heads: the paper's per-pixel peer by default, any baseline on request, all of the
    baselines without deep supervision with ``all``; a head that is no baseline is refused with the choices."""
    shown = {}
    for baseline in (None, "per_pixel_ds", "segmenter", "all"):
        out = analyze(client, EXAMPLE, "camvid", "comparison", readout="head", downloads=["json"], baseline=baseline)
        shown[baseline] = json.loads(_path(out[10]).read_text())["heads_shown"]
    assert shown == {
        None: ["cse", "per_pixel"],
        "per_pixel_ds": ["cse", "per_pixel_ds"],
        "segmenter": ["cse", "segmenter"],
        "all": ["cse", "per_pixel", "fcn", "segmenter"],
    }
    with pytest.raises(AppError, match="'sse' is not a baseline of this set; choose one of per_pixel, per_pixel_ds"):
        analyze(client, EXAMPLE, "camvid", "comparison", downloads=None, baseline="sse")


def test_ui_keys_match_the_service() -> None:
    import app
    from analysis.service import ANALYSES, NORMALIZATIONS, Explorer

    ui = app.ExplorerUI(Explorer())
    assert ui.analysis_labels == {key: a.label for key, a in ANALYSES.items()}  # from the registry
    assert set(app.NORMALIZATION_LABELS) == set(NORMALIZATIONS)


def test_importing_the_app_has_no_side_effects() -> None:
    """No demo built, no malloc tuning, no model loaded at import: ``main()`` does those."""
    import subprocess

    code = "import gc, app; assert not hasattr(app, 'demo'); assert not gc.get_freeze_count(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    text = (ROOT / "app.py").read_text()
    assert "\ntune_malloc()" not in text and "\ndemo = " not in text


@pytest.mark.parametrize("analysis", ANALYSES)
def test_every_analysis_returns_its_outputs(client: Client, tiny_set: Path, analysis: str) -> None:
    metrics = _assert_ok(analyze(client, EXAMPLE, analysis=analysis), analysis)
    assert metrics["model"] == str(tiny_set)
    assert metrics["selected_classes"]


def test_controls_reach_the_service(client: Client) -> None:
    out = analyze(
        client,
        EXAMPLE,
        analysis="comparison",
        head="sse",
        classes=["sky", "road"],
        normalize="softmax",
        block=1,
        opacity=0.3,
    )
    m = _assert_ok(out, "comparison")
    assert (m["head"], m["normalize"], m["block"]) == ("sse", "softmax", 1)
    assert m["selected_classes"] == ["sky", "road"]
    m = _assert_ok(analyze(client, EXAMPLE, analysis="attention", head="cse", block=2), "attention")
    assert (m["head"], m["attention_block"]) == ("cse", 2)
    # labels are accepted as well as keys
    m = _assert_ok(
        analyze(client, EXAMPLE, analysis="Paper comparison", head="StructToken-PWE", normalize="per map"), "comparison"
    )
    assert (m["head"], m["normalize"]) == ("pwe", "per_map")


def test_uploaded_checkpoint_overrides_the_model(client: Client, tiny_set: Path) -> None:
    ckpt = handle_file(str(tiny_set))
    out = analyze(client, EXAMPLE, model="camvid", analysis="prediction", checkpoint=ckpt)
    m = _assert_ok(out, "prediction")
    assert m["model"].endswith("tiny_set.safetensors") and m["model"] != str(tiny_set)  # the uploaded copy


# ------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    street = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    files: dict[str, Path] = {}
    files["text"] = d / "notes.txt"
    files["text"].write_text("this is not an image\n" * 20)
    files["text_as_png"] = d / "fake.png"
    files["text_as_png"].write_text("definitely not a PNG")
    full = d / "full.jpg"
    Image.fromarray(street).save(full, quality=90)
    files["corrupt"] = d / "corrupt.jpg"
    files["corrupt"].write_bytes(full.read_bytes()[:600])
    files["tiny_1x1"] = d / "one.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(files["tiny_1x1"])
    files["huge_6000x400"] = d / "huge.png"
    ramp = np.linspace(0, 255, 6000, dtype=np.float32)[None, :, None]
    huge = np.broadcast_to(ramp, (400, 6000, 3)).astype(np.uint8)
    Image.fromarray(huge).save(files["huge_6000x400"], optimize=True)
    files["rgba"] = d / "rgba.png"
    alpha = np.full((*street.shape[:2], 1), 255, np.uint8)
    alpha[:100] = 0
    Image.fromarray(np.concatenate([street, alpha], axis=2), "RGBA").save(files["rgba"])
    files["grey"] = d / "grey.png"
    Image.fromarray(street).convert("L").save(files["grey"])
    files["png16"] = d / "sixteen.png"
    a16 = (street[..., 0].astype(np.uint16) * 257 + rng.integers(0, 200, street.shape[:2])).astype(np.uint16)
    Image.fromarray(a16).save(files["png16"])  # mode I;16
    return files


# case -> (must fail, words one of which the message or summary contains)
BAD = {
    "text": (True, ("not an image",)),
    "text_as_png": (True, ("not an image",)),
    "corrupt": (True, ("truncated", "corrupt")),
    "tiny_1x1": (True, ("too small",)),
    "huge_6000x400": (False, ("downscaled",)),
    "rgba": (False, ("transparent",)),
    "grey": (False, ()),
    "png16": (False, ()),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_readable_and_the_next_request_works(
    client: Client, bad_files: dict[str, Path], case: str
) -> None:
    must_fail, words = BAD[case]
    if case == "png16":
        assert Image.open(bad_files[case]).mode.startswith("I;16")
    if must_fail:
        with pytest.raises(AppError) as err:
            analyze(client, bad_files[case], analysis="comparison")
        msg = str(err.value)
        assert "internal error" not in msg and len(msg) > 20, msg
        assert any(w in msg.lower() for w in words), msg
    else:
        out = analyze(client, bad_files[case], analysis="comparison")
        _assert_ok(out, "comparison")
        assert all(w in out[5].lower() for w in words), out[5]
    _assert_ok(analyze(client, EXAMPLE, analysis="prediction"), "prediction")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": "no_such_model"}, "unknown model"),
        ({"model": "/etc/hosts"}, "unknown model"),  # never a free server path
        ({"analysis": "histogram"}, "unknown analysis"),
        ({"normalize": "zscore"}, "unknown normalisation"),
        ({"head": "nope"}, "no head"),
        ({"block": 9}, "block 9"),
        ({"opacity": 3.0}, "opacity"),
        ({"classes": ["unicorn"]}, "unicorn"),
    ],
)
def test_bad_arguments_are_readable_errors(client: Client, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(AppError) as err:
        analyze(client, EXAMPLE, **kwargs)
    msg = str(err.value)
    assert "internal error" not in msg and words in msg, msg
    _assert_ok(analyze(client, EXAMPLE, analysis="prediction"), "prediction")


def test_missing_image_and_bad_checkpoint(client: Client, bad_files: dict[str, Path]) -> None:
    with pytest.raises(AppError, match="Upload an image"):
        analyze(client, None)
    with pytest.raises(AppError, match=r"\.safetensors or \.pth"):
        analyze(client, EXAMPLE, checkpoint=handle_file(str(bad_files["text"])))
    with pytest.raises(AppError) as err:  # right suffix, wrong content: the service says what is wrong
        fake = bad_files["text"].with_name("fake.safetensors")
        fake.write_text("not a checkpoint")
        analyze(client, EXAMPLE, checkpoint=handle_file(str(fake)))
    assert "internal error" not in str(err.value) and "safetensors" in str(err.value)


def test_the_api_cannot_make_the_server_read_its_own_files(
    server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files reach the app only as uploads. The handler refuses a server path with its own words, and
    over HTTP a raw path in the payload comes back as the event's error (not a 404 or a crash) without
    the service ever being asked."""
    import gradio as gr
    import httpx

    ui = server[1]
    for payload in ({"path": "/etc/hostname"}, "/etc/hostname"):
        with pytest.raises(gr.Error) as err:
            ui.analyze_image(payload, None, "prediction", progress=None)
        assert "'hostname' was not uploaded" in str(err.value.message)
    with pytest.raises(gr.Error, match="checkpoint 'passwd' was not uploaded"):
        ui.analyze_image(str(EXAMPLE), None, "prediction", checkpoint={"path": "/etc/passwd"}, progress=None)
    asked: list[Any] = []
    real = ui.explorer.analyze
    monkeypatch.setattr(ui.explorer, "analyze", lambda *a, **k: asked.append(a) or real(*a, **k))
    url = server[0].rstrip("/")
    for payload in ({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "/etc/hostname"):
        data = [payload, None, "prediction", None, [], "shared", -1, 0.5, None, "raw", None, []]
        r = httpx.post(f"{url}/gradio_api/call/analyze", json={"data": data}, timeout=TIMEOUT)
        assert r.status_code == 200, (r.status_code, r.text[:300])  # queued like any request, then refused
        stream = httpx.get(f"{url}/gradio_api/call/analyze/{r.json()['event_id']}", timeout=TIMEOUT).text
        assert "event: error" in stream and "event: complete" not in stream, stream[:500]
    assert asked == []  # the service never saw the path


def test_unexpected_exception_is_reported_and_the_server_survives(
    client: Client, server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server[1].explorer, "analyze", boom)
    with pytest.raises(AppError, match="internal error: RuntimeError: boom"):
        analyze(client, EXAMPLE)
    monkeypatch.undo()
    _assert_ok(analyze(client, EXAMPLE, analysis="prediction"), "prediction")


# ------------------------------------------------------------------------------------- no server
def _page(out: tuple[Any, ...]) -> dict[str, Any]:
    """The page analysis' outputs by name."""
    import app

    assert len(out) == len(app.PAGE_OUTPUT_NAMES)
    return dict(zip(app.PAGE_OUTPUT_NAMES, out, strict=True))


def _controls(out: tuple[Any, ...]) -> dict[str, Any]:
    """``refresh_controls``' updates by name."""
    import app

    names = [*app.CONTROL_NAMES, "focus_class", "class_mode", "focus_pick", "street_examples", "general_examples"]
    assert len(out) == len(names)
    return dict(zip(names, out, strict=True))


def test_controls_fit_the_set(tmp_path: Path, tiny_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app
    from analysis.service import Explorer

    ui = app.ExplorerUI(Explorer())

    only_cse = save_tiny_set(tmp_path / "only_cse.safetensors", extra_heads=(), classes=CLASSES, palette=())
    uploaded = {"path": str(only_cse)}  # as the page sends an uploaded checkpoint (preprocess=False)
    c = _controls(ui.refresh_controls("camvid", uploaded, "probe", None, -1, [], reset_classes=True))
    assert c["analysis"]["value"] == "prediction"  # probe and comparison need the per-pixel heads
    labels = dict((v, lab) for lab, v in c["analysis"]["choices"])
    assert labels["probe"].endswith("(n/a)") and labels["comparison"].endswith("(n/a)")
    assert "no Per-pixel and no Per-pixel + deep sup. head" in c["availability"]  # display names, not keys
    assert "Deep-supervision probe" in c["availability"] and "per_pixel" not in c["availability"]
    assert c["classes"]["choices"] == ["road", "sky", "car", "tree"] and c["classes"]["value"] == []
    assert c["head"]["choices"] == [("StructToken-CSE", "cse")]
    assert c["class_mode"] == "auto" and c["focus_pick"] is None  # a new set: automatic classes again
    # prediction uses neither the classes nor the normalisation nor the readout: disabled
    assert c["classes"]["interactive"] is False and c["normalize"]["interactive"] is False
    assert c["readout"]["interactive"] is False
    monkeypatch.setenv("STRUCTTOKEN_DEFAULT_MODEL", str(tiny_set))
    c = _controls(ui.refresh_controls(str(tiny_set), None, "attention", "pwe", 0, ["sky", "unicorn"]))
    assert c["classes"]["value"] == ["sky"] and c["classes"]["interactive"] is True
    assert c["availability"] == "" and c["normalize"]["interactive"] is False
    assert [v for _, v in c["head"]["choices"]] == ["cse", "sse"] and c["head"]["value"] == "cse"
    assert [v for _, v in c["block"]["choices"]] == [-1, 1, 2] and c["block"]["value"] == -1
    c = _controls(ui.refresh_controls(str(tiny_set), None, "comparison", "sse", 3, []))
    assert [v for _, v in c["block"]["choices"]] == [-1, 0, 1, 2, 3] and c["block"]["value"] == 3
    assert c["head"]["value"] == "sse" and c["normalize"]["interactive"] is True
    assert c["focus_class"]["visible"] is False
    # the comparison's baseline: the paper's per-pixel peer first, any baseline, or all of them side by side
    assert c["baseline"]["visible"] is True and c["baseline"]["value"] == "per_pixel"
    assert [v for _, v in c["baseline"]["choices"]] == ["per_pixel", "per_pixel_ds", "all"]
    kept = _controls(ui.refresh_controls(str(tiny_set), None, "comparison", "sse", 3, [], baseline="per_pixel_ds"))
    assert kept["baseline"]["value"] == "per_pixel_ds"
    probe = _controls(ui.refresh_controls(str(tiny_set), None, "probe", "sse", 3, [], baseline="per_pixel_ds"))
    assert probe["baseline"]["visible"] is False  # only the comparison has it
    c = _controls(ui.refresh_controls(str(tiny_set), None, "focus", "per_pixel", 1, []))
    assert c["focus_class"]["visible"] is True and c["block"]["interactive"] is False
    assert c["classes"]["interactive"] is False and c["readout"]["value"] == "raw"
    assert c["head"]["value"] == "per_pixel" and c["head"]["label"] == "Boundary from head"
    # the tiny set's classes (road, sky, car, tree) make it a street set: street examples shown
    assert c["street_examples"]["visible"] is True and c["general_examples"]["visible"] is False


def test_readouts_the_set_lacks_are_left_out_with_the_reason(tiny_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import app
    from analysis.service import Explorer

    monkeypatch.setenv("STRUCTTOKEN_DEFAULT_MODEL", str(tiny_set))
    explorer = Explorer()
    ui = app.ExplorerUI(explorer)
    info = explorer.describe_model(str(tiny_set))
    reasons = {"raw": None, "head": None, "fitted": "no fitted readouts beside this set"}

    @dataclasses.dataclass(frozen=True)
    class WithReadouts:
        base: Any
        readouts: dict[str, str | None]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.base, name)

    monkeypatch.setattr(explorer, "describe_model", lambda spec: WithReadouts(info, reasons))
    c = _controls(ui.refresh_controls(str(tiny_set), None, "comparison", None, -1, [], "fitted"))
    assert [v for _, v in c["readout"]["choices"]] == ["raw", "head"]
    assert c["readout"]["value"] == "head" and c["readout"]["interactive"] is True  # the page prefers head
    assert "no fitted readouts beside this set" in c["readout"]["info"]
    # back to a set that has every readout: the earlier reason is cleared ("" clears; None would keep it)
    reasons = {"raw": None, "head": None, "fitted": None}
    c = _controls(ui.refresh_controls(str(tiny_set), None, "comparison", None, -1, [], "fitted"))
    assert c["readout"]["info"] == "" and c["readout"]["value"] == "fitted"
    # before the service reports them: the readouts it accepts
    assert app.readout_reasons(info)["raw"] is None


def test_page_errors_stay_in_the_results_area_without_server_paths(
    tiny_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import tempfile

    import app
    from analysis.service import Explorer

    monkeypatch.setenv("STRUCTTOKEN_DEFAULT_MODEL", str(tiny_set))
    ui = app.ExplorerUI(Explorer())
    fake = Path(tempfile.mkdtemp()) / "fake.safetensors"  # where gradio keeps uploads: a temp folder
    fake.write_text("not a checkpoint")
    upload = {"path": str(fake)}
    args = [str(EXAMPLE), None, "comparison", None, [], "shared", -1, 0.5, upload, "raw", None, "auto", None]
    with caplog.at_level(logging.WARNING, logger="structtoken.app"):
        out = _page(ui.analyze_page(*args, progress=None))
    notice = out["error"]
    assert notice["visible"] is True and "fake.safetensors" in notice["value"]
    assert str(fake.parent) not in notice["value"] and tempfile.gettempdir() not in notice["value"]
    assert out["figure"] is None and out["state"] is None  # no figure, no state: the controls stay as they were
    assert out["table_box"]["visible"] is False  # no empty sections: the table's, and the curves' (their event)
    assert ui.page_curves(out["state"], ["camvid", "raw"])[1]["visible"] is False
    records = [r for r in caplog.records if r.name == "structtoken.app"]
    assert len(records) == 1 and records[0].exc_info is None  # one line, no traceback
    assert "\n" not in records[0].getMessage()
    # a text file renamed .jpg: a clear notice, not a broken picture
    text = tmp_path / "photo.jpg"
    text.write_text("hello, not a picture")
    out = _page(ui.analyze_page(str(text), *args[1:8], None, "raw", None, "auto", None, progress=None))
    assert "not an image" in out["error"]["value"] and str(tmp_path) not in out["error"]["value"]
    # the next run hides the notice
    out = _page(ui.analyze_page(str(EXAMPLE), *args[1:8], None, "raw", None, "auto", None, progress=None))
    assert out["error"]["visible"] is False and out["figure"]
    assert out["table_box"]["visible"] is True


def test_scrub_paths() -> None:
    import tempfile

    import app

    tmp = tempfile.gettempdir()
    msg = f"could not load model '{tmp}/gradio/ab12/set.pth': bad key in {tmp}/x/y/z.bin; see https://x.org/a/b"
    assert app.scrub_paths(msg) == "could not load model 'set.pth': bad key in z.bin; see https://x.org/a/b"
    assert app.scrub_paths("no report (/data/sets/report/metrics.json)", "/data/sets/set.safetensors") == (
        "no report (/data/sets/report/metrics.json)"
    )
    assert app.scrub_paths("at /data/sets/set.safetensors", "/data/sets/set.safetensors") == "at set.safetensors"


def test_automatic_classes_follow_the_image_until_the_user_picks(
    tiny_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app
    from analysis.service import Explorer

    monkeypatch.setenv("STRUCTTOKEN_DEFAULT_MODEL", str(tiny_set))
    ui = app.ExplorerUI(Explorer())
    base = [str(EXAMPLE), str(tiny_set), "comparison", None, ["car"], "shared", -1, 0.5, None, "raw", None]
    auto = _page(ui.analyze_page(*base, "auto", None, progress=None))["state"]
    user = _page(ui.analyze_page(*base, "user", None, progress=None))["state"]
    assert user["selected"] == ["car"]  # the user's pick is kept
    assert auto["selected"] != ["car"] and len(auto["selected"]) == 4  # the chips were only last time's pick
    focus = _page(ui.analyze_page(*[*base[:2], "focus", *base[3:]], "auto", "road", progress=None))["state"]
    assert focus["focus_class"] == "road"
    assert [c for _, c in focus["image_classes"]][:1] != []  # the focus-class choices, by area
    # a finished run leaves the user's chips alone (they may have picked more meanwhile), and sets
    # the automatic ones
    names = [*app.CONTROL_NAMES, "focus_class"]
    after_user = dict(zip(names, ui.controls_from_result(user, "user"), strict=True))
    assert "value" not in after_user["classes"]
    after_auto = dict(zip(names, ui.controls_from_result(auto, "auto"), strict=True))
    assert after_auto["classes"]["value"] == auto["selected"]


def test_examples_suit_the_set_and_say_when_out_of_domain() -> None:
    import app

    assert app.set_kind(["Sky", "Building", "Road", "Car"]) == "street"
    assert app.set_kind([f"class {i}" for i in range(150)]) == "general"
    street = app.example_entries("street")
    assert street[0][0].name == "street_synthetic.jpg"
    captions = dict((p.name, c) for p, c in street)
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        assert "out of domain" in captions[name], captions[name]
    assert "out of domain" not in captions["street_synthetic.jpg"]
    general = app.example_entries("general")
    assert all("out of domain" not in c for _, c in general)
    assert {p.name for p, _ in general} >= set(captions)


def test_argument_helpers() -> None:
    import gradio as gr

    import app
    from analysis.service import Explorer

    ui = app.ExplorerUI(Explorer())
    assert app._block_arg(None) is None and app._block_arg(-1) is None and app._block_arg("2") == 2
    with pytest.raises(gr.Error):
        app._block_arg(1.5)
    assert ui.analysis_key("Token–feature attention") == "attention"
    assert app._head_arg("Per-pixel + deep sup.") == "per_pixel_ds"
    with pytest.raises(gr.Error, match="unknown model"):
        ui.model_spec("../../etc/passwd", None)
    assert ui.model_spec(None, {"path": "/tmp/x/set.safetensors"}) == "/tmp/x/set.safetensors"


def test_examples_are_shipped_small_and_documented() -> None:
    import app

    shipped = sorted((ROOT / "assets" / "examples").glob("*.jpg"))
    assert len(shipped) >= 3
    assert all(p.stat().st_size < 200_000 for p in shipped)
    readme = (ROOT / "assets" / "examples" / "README.md").read_text()
    assert all(p.name in readme for p in shipped)
    examples = app.example_images()
    assert examples[0].name == "street_synthetic.jpg"
    assert all(p.parent == ROOT / "assets" / "examples" or "camvid" in str(p) for p in examples)


def test_temp_area_is_bounded_in_bytes_and_removed(tmp_path: Path) -> None:
    import os

    import app

    area = app.TempArea(tmp_path / "area", budget=10_000, owned=True)
    (tmp_path / "area").mkdir()
    made = []
    for i in range(8):
        d = area.new_folder()
        f = d / "out.bin"
        f.write_bytes(b"x" * 3_000)
        os.utime(f, (1_000 + i, 1_000 + i))  # oldest first
        made.append(f)
        area.trim()
        assert area.size() <= 10_000
    assert [f.exists() for f in made][-2:] == [True, True] and not made[0].exists()  # the oldest went
    assert len({f.parent for f in made}) == 8  # a folder of its own per request
    upload = tmp_path / "area" / "upload" / "img.png"  # an owned area trims Gradio's files too
    upload.parent.mkdir()
    upload.write_bytes(b"y" * 9_000)
    os.utime(upload, (1, 1))
    area.trim()
    assert not upload.exists()
    area.remove()
    assert not (tmp_path / "area").exists()
    # not owned: only the app's own folder is trimmed and removed
    shared = tmp_path / "shared"
    other = shared / "someone_else.bin"
    shared.mkdir()
    other.write_bytes(b"z" * 50_000)
    area = app.TempArea(shared, budget=1_000)
    (area.new_folder() / "x.bin").write_bytes(b"x" * 2_000)
    area.trim()
    area.remove()
    assert other.exists() and not area.outputs.exists()


def test_a_finished_requests_figure_is_freed_by_the_next_request(
    client: Client, server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matplotlib figures are reference cycles: without the app's collection before each request they
    pile up until a rare full collection, and the server's memory creeps up request by request."""
    import weakref

    explorer = server[1].explorer
    seen: list[weakref.ref] = []
    real = explorer.analyze

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        seen.append(weakref.ref(result.figure))
        return result

    monkeypatch.setattr(explorer, "analyze", spy)
    for _ in range(3):
        _assert_ok(analyze(client, EXAMPLE), "comparison")
    assert len(seen) == 3
    assert [ref() is None for ref in seen[:2]] == [True, True]  # gone once the next request has started


def test_malloc_tuning_applies_on_glibc() -> None:
    """In a child process: the settings would otherwise stay with the test process."""
    import platform
    import subprocess

    code = "from structtoken.devices import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(expected)


def test_malloc_settings_parse_the_override() -> None:
    from structtoken.devices import MALLOC_SETTINGS, malloc_settings

    assert malloc_settings("") == MALLOC_SETTINGS
    assert malloc_settings("mmap_threshold=0, arena_max=2") == {**MALLOC_SETTINGS, "mmap_threshold": 0, "arena_max": 2}
    assert malloc_settings("trim_threshold=0")["trim_threshold"] == 0
    assert malloc_settings("arena_max=3") == {**MALLOC_SETTINGS, "arena_max": 3}
    for bad in ("arena=2", "arena_max=-1", "mmap_threshold", "arena_max=two"):
        with pytest.raises(ValueError, match="STRUCTTOKEN_MALLOC"):
            malloc_settings(bad)


def test_app_script_sets_the_library_thread_policy() -> None:
    """app.py sets the OpenMP policy before torch loads (a literal, since structtoken imports torch):
    it must be structtoken.devices.CPU_THREAD_POLICY, and only when run as a script."""
    import ast

    from structtoken.devices import CPU_THREAD_POLICY

    tree = ast.parse(Path(__file__).resolve().parents[1].joinpath("app.py").read_text(encoding="utf-8"))
    first_imports = next(n for n in tree.body if isinstance(n, ast.If))
    assert ast.unparse(first_imports.test) == "__name__ == '__main__'"
    dicts = [ast.literal_eval(n) for n in ast.walk(first_imports) if isinstance(n, ast.Dict)]
    assert dicts == [CPU_THREAD_POLICY]
    torch_loaders = [
        n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("analysis")
    ]
    assert all(n.lineno > first_imports.end_lineno for n in torch_loaders)


def test_the_warm_up_leaves_the_first_example_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's first analysis of its first example, as the browser sends it (decoded pixels) and as the
    page asks for it (its first readout, no curves, no plot), finds the maps the warm-up computed; the
    dataset curves the page asks for next are drawn already (the embedded set, which ships a report)."""
    import gradio as gr

    import analysis.service as service
    import app
    from analysis.service import Explorer

    monkeypatch.delenv("STRUCTTOKEN_DEFAULT_MODEL", raising=False)
    explorer = Explorer()
    drawn: list[str] = []
    real = service.F.block_curves_plotly
    monkeypatch.setattr(service.F, "block_curves_plotly", lambda *a, **k: drawn.append(k["title"]) or real(*a, **k))
    app.warm_up(explorer)
    assert len(drawn) == 1
    first = app.example_entries("street")[0][0]
    pixels = np.asarray(Image.open(first).convert("RGB"))
    demo = app.build_demo(explorer)
    ui = demo.explorer_ui
    readout = next(c.value for c in demo.blocks.values() if getattr(c, "elem_id", None) == "st-readout")
    assert readout == "head"  # the page's readout control as it opens
    args = [pixels, "camvid", "comparison", None, None, "shared", -1, 0.5, None, readout, None, "auto", None, False]
    page = _page(ui.analyze_page(*args, progress=None))
    assert page["timings"]["cached"] is True and isinstance(page["curves"], type(gr.skip()))
    curves, _, _ = ui.page_curves(page["state"], None)
    assert curves is not None and len(drawn) == 1  # drawn by the warm-up, not again


def test_the_page_sends_the_plot_and_the_curves_only_when_needed(tmp_path: Path) -> None:
    """The interactive plot is built only with its tab open; the dataset curves come in an event of their own
    (the figure does not wait for plotly), sent only for a new set or readout, hidden after a refused run."""
    import gradio as gr

    import app
    from analysis.service import Explorer

    ui = app.ExplorerUI(Explorer())
    skip = type(gr.skip())
    base = [str(EXAMPLE), "camvid", "comparison", None, None, "shared", -1, 0.5, None, "head", None]
    first = _page(ui.analyze_page(*base, "auto", None, False, progress=None))
    assert first["plot"] is None and isinstance(first["curves"], skip) and first["state"]["has_curves"]
    curves, box, shown = ui.page_curves(first["state"], None)
    assert curves is not None and box["visible"] and shown == [first["state"]["spec"], "head"]
    per_map = [*base[:5], "per_map", *base[6:]]
    again = _page(ui.analyze_page(*per_map, "auto", None, True, progress=None))
    assert again["plot"] is not None  # the Interactive tab is open
    assert all(isinstance(x, skip) for x in ui.page_curves(again["state"], shown))  # same set and readout
    other = _page(ui.analyze_page(*[*base[:9], "fitted", None], "auto", None, False, progress=None))
    curves, box, shown2 = ui.page_curves(other["state"], shown)
    assert curves is not None and shown2 == [other["state"]["spec"], "fitted"]
    not_a_picture = tmp_path / "photo.jpg"
    not_a_picture.write_text("hello")
    refused = _page(ui.analyze_page(str(not_a_picture), *base[1:], "auto", None, False, progress=None))
    assert refused["state"] is None and ui.page_curves(refused["state"], shown2)[1]["visible"] is False


def test_a_page_run_whose_image_changed_meanwhile_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image removed (or replaced) while a page run goes on: that run's results are skipped, so the
    removed image's figure does not come back over the cleared page; another page's changes do not matter."""
    import functools
    import types

    import gradio as gr

    import app
    from analysis.service import Explorer

    ui = app.ExplorerUI(Explorer())
    skip = type(gr.skip())
    page, other = types.SimpleNamespace(session_hash="page"), types.SimpleNamespace(session_hash="other")
    args = [str(EXAMPLE), "camvid", "prediction", None, None, "shared", -1, 0.5, None, "head", None]
    args += ["auto", None, False]
    assert _page(ui.analyze_page(*args, progress=None, request=page))["state"] is not None
    run = ui.analyze_image

    def image_removed_meanwhile(*a: Any, **k: Any) -> Any:
        out = run(*a, **k)
        cleared = ui.new_image(None, page)  # the visitor removes the image while the model runs
        assert cleared[0] is None and "Upload an image" in cleared[5]
        return out

    monkeypatch.setattr(ui, "analyze_image", image_removed_meanwhile)
    assert all(isinstance(x, skip) for x in ui.analyze_page(*args, progress=None, request=page))
    assert _page(ui.analyze_page(*args, progress=None, request=other))["state"] is not None
    monkeypatch.setattr(ui, "analyze_image", run)
    assert _page(ui.analyze_page(*args, progress=None, request=page))["state"] is not None  # the next run shows
    # Gradio passes the page session only to parameters before any *args: every page run receives it
    from gradio.helpers import special_args

    for fn, n_inputs in ((ui.analyze_page, 14), (ui.new_image, 1)):
        inputs = special_args(fn, [None] * n_inputs, request=page)[0]
        assert inputs[n_inputs] is page, fn.__name__
    # and the progress tracker, so the service's steps (loading the set, the model pass) show on the page
    for fn in (ui.analyze_page, functools.partial(ui.download_page, "pdf")):
        assert special_args(fn, [None] * 14, request=page)[1] is not None, fn
    # without an image a page run changes nothing; the Analyze button's first step asks for one
    assert all(isinstance(x, skip) for x in ui.analyze_page(None, *args[1:], progress=None, request=page))
    assert app.ask_for_image(None)["value"].endswith(app.NO_IMAGE) and app.ask_for_image(None)["visible"]
    assert isinstance(app.ask_for_image(str(EXAMPLE)), skip)

"""Tests for analysis.service.Explorer: every analysis on a tiny saved set, describe_model, the caches
(through the public API only), the reading of awkward image inputs, and readable errors for every bad
input (matched whole)."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from analysis.service import (
    ANALYSES,
    NORMALIZATIONS,
    AnalysisError,
    AnalysisRequest,
    AnalysisResult,
    Explorer,
    load_image,
)
from structtoken import build_model, save_model
from tests.helpers import NAMES, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def set_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("set") / "set.safetensors"
    save_model(build_model(tiny_config()), path)
    return str(path)


@pytest.fixture(scope="module")
def cse_only(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("cse") / "cse.safetensors"
    save_model(build_model(tiny_config(extra_heads=())), path)
    return str(path)


@pytest.fixture
def fresh() -> Explorer:
    """An Explorer of its own, with empty caches."""
    return Explorer()


def analyze(image, model: str, analysis: str = "comparison", ex: Explorer | None = None, **kwargs) -> AnalysisResult:
    """Shorthand for ``ex.analyze(AnalysisRequest(...))`` (the module's shared Explorer by default)."""
    return (ex or _SHARED).analyze(AnalysisRequest(image, model, analysis, **kwargs))


_SHARED = Explorer()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _count_backbone(ex: Explorer, path: str) -> list[int]:
    """Wrap the backbone of ``ex``'s model of ``path`` with a call counter."""
    model = ex.model(path)
    calls: list[int] = []
    original = model.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.backbone.forward = counting
    return calls


# ------------------------------------------------------------------------------------ analyses
@pytest.mark.parametrize("analysis", ANALYSES)
def test_each_analysis_returns_its_outputs(fresh: Explorer, set_path: str, image: np.ndarray, analysis: str) -> None:
    r = analyze(image, set_path, analysis, fresh, device="cpu")
    assert isinstance(r, AnalysisResult)
    assert isinstance(r.figure, Figure)
    assert isinstance(r.plot, go.Figure)
    assert r.overlay.shape[0] >= 48 and r.overlay.shape[1] > 64 and r.overlay.dtype == np.uint8  # + legend
    assert r.curves is None  # no report next to the checkpoint
    assert r.table and all(len(row) == len(r.table_headers) for row in r.table)
    assert r.summary.startswith("### ") and "no dataset report" in r.summary
    assert r.classes == list(NAMES)
    n = ANALYSES[analysis].default_classes  # the probe shows 2 (3 heads a class), the others 4
    assert len(r.selected_classes) == n and set(r.selected_classes) <= set(NAMES)
    assert r.available == {"prediction": None, "comparison": None, "focus": None, "probe": None, "attention": None}
    assert r.maps["image"].shape == (48, 64, 3)
    assert r.maps["cse/stages"].shape == (4, 4, 3, 4)
    assert r.maps["per_pixel/stages"].shape == (4, 4, 3, 4)
    assert r.maps["pred/cse"].shape == (48, 64)
    assert r.maps["cse/attention"].shape == (2, 4, 32)
    np.savez_compressed(io.BytesIO(), **r.maps)  # the download works
    json.dumps(r.metrics, allow_nan=False)
    assert r.metrics["analysis"] == analysis
    assert set(r.timings) >= {"model_load", "backbone+heads", "figures", "total", "cached"}
    assert r.timings["cached"] is False


def test_comparison_and_probe_columns(set_path: str, image: np.ndarray) -> None:
    r = analyze(image, set_path, "comparison", head="sse", classes=["Road", "Car"], normalize="softmax", readout="head")
    assert r.selected_classes == ["Road", "Car"]
    assert [row[0] for row in r.table] == ["StructToken-SSE", "Per-pixel"]
    assert r.table_headers[1:] == ["input", "block 1", "block 2", "output"]
    assert all(row[-1] == 100.0 for row in r.table)  # the output agrees with itself
    p = analyze(image, set_path, "probe", block=1, readout="head", classes=["Road", "Car", "Sky", "Building"])
    assert [row[0] for row in p.table] == ["Per-pixel", "Per-pixel + deep sup.", "StructToken-CSE"]
    texts = [a.text for a in p.plot.layout.annotations]
    assert "block 1" in texts and "input" not in texts  # one column per head
    assert len(p.plot.data) == 3 * 4  # heads x rows, one column each
    one = analyze(image, set_path, "comparison", head="sse", baseline="per_pixel_ds", readout="head")
    assert [row[0] for row in one.table] == ["StructToken-SSE", "Per-pixel + deep sup."]  # the baseline asked for
    assert one.metrics["heads_shown"] == ["sse", "per_pixel_ds"] and one.metrics["baseline"] == "per_pixel_ds"
    assert "StructToken vs. Per-pixel + deep sup., block by block" in one.summary  # the title names it
    assert analyze(image, set_path, "comparison", head="sse", readout="head").metrics["baseline"] is None
    a = analyze(image, set_path, "attention", head="sse", block=1, classes=["Sky"])
    assert a.table_headers[-1] == "attention on token channels %"
    assert "sse/attention_block1" in a.maps


def test_cache_does_not_rerun_the_backbone(fresh: Explorer, set_path: str, image: np.ndarray) -> None:
    first = analyze(image, set_path, "comparison", fresh)
    assert first.timings["cached"] is False
    calls = _count_backbone(fresh, set_path)
    for kwargs in (
        {"analysis": "probe"},
        {"analysis": "comparison", "normalize": "per_map", "classes": ["Sky"]},
        {"analysis": "prediction", "opacity": 0.2},
    ):
        r = analyze(image, set_path, ex=fresh, **kwargs)
        assert r.timings["cached"] is True and r.timings["model_load"] == 0.0
    assert calls == []
    # the attention view measures the score spread at 1/4, 1/2 and 1x the image (three passes of its own,
    # once per image, head and block); asking again runs nothing
    analyze(image, set_path, ex=fresh, analysis="attention", block=1)
    assert calls == [1, 1, 1]
    analyze(image, set_path, ex=fresh, analysis="attention", block=1, classes=["Sky"])
    assert calls == [1, 1, 1]
    calls.clear()
    analyze(image[::-1].copy(), set_path, "comparison", fresh)  # another image: one more pass
    assert calls == [1]


@pytest.mark.parametrize(("threads", "env", "workers"), [(2, "", 2), (4, "", 2), (1, "", 1), (4, "1", 1), (1, "3", 3)])
def test_loaded_sets_run_the_fast_path_with_their_heads_side_by_side(
    set_path: str, monkeypatch: pytest.MonkeyPatch, threads: int, env: str, workers: int
) -> None:
    """The README's rule, as numbers: by default the heads run two side by side (one with one thread),
    ``STRUCTTOKEN_HEAD_WORKERS`` overrides; whatever this process's thread count is."""
    before = torch.get_num_threads()
    monkeypatch.setenv("STRUCTTOKEN_HEAD_WORKERS", env)
    torch.set_num_threads(threads)
    try:
        model = Explorer().model(set_path)
    finally:
        torch.set_num_threads(before)
    assert not model.cfg.exact_attention
    assert model.head_workers == workers


def test_head_workers_follow_the_environment(monkeypatch: pytest.MonkeyPatch, set_path: str) -> None:
    from structtoken.devices import head_workers

    monkeypatch.setenv("STRUCTTOKEN_HEAD_WORKERS", "1")
    assert head_workers() == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("STRUCTTOKEN_HEAD_WORKERS", bad)
        with pytest.raises(ValueError, match="STRUCTTOKEN_HEAD_WORKERS"):
            head_workers()
    with pytest.raises(AnalysisError, match="STRUCTTOKEN_HEAD_WORKERS"):  # a readable error, not a crash
        Explorer().model(set_path)


def test_concurrent_calls_share_one_pass(fresh: Explorer, set_path: str, image: np.ndarray) -> None:
    analyze(np.zeros((32, 32, 3), np.uint8), set_path, "prediction", fresh)  # load the model
    calls = _count_backbone(fresh, set_path)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda n: analyze(image, set_path, "comparison", fresh, normalize=n), [*NORMALIZATIONS, "shared"])
        )
    assert len(results) == 4 and all(isinstance(r.figure, Figure) for r in results)
    assert calls == [1]


def test_progress_callback(set_path: str, image: np.ndarray) -> None:
    seen: list[tuple[float, str]] = []
    _SHARED.analyze(AnalysisRequest(image, set_path, "prediction"), progress=lambda f, d: seen.append((f, d)))
    assert seen[-1][0] == 1.0 and all(0 <= f <= 1 and isinstance(d, str) for f, d in seen)


def test_shipped_report_gives_curves_and_probe(fresh: Explorer, tmp_path: Path, image: np.ndarray) -> None:
    torch.manual_seed(0)
    path = save_model(build_model(tiny_config()), tmp_path / "set.safetensors")
    block = {"miou": 0.3, "mask_ap": 0.4, "boundary_f1": 0.2}
    report = {
        h: {"input": block, "blocks": [block, {**block, "mask_ap": 0.5 + i}], "final": block}
        for i, h in enumerate(("cse", "per_pixel", "per_pixel_ds"))
    }
    report["probe"] = {"seeds": {"per_pixel": [0.50, 0.51, 0.49], "per_pixel_ds": [0.55, 0.56, 0.54]}}
    report["meta"] = {"model": "x"}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps(report))
    assert fresh.shipped_report(path)["meta"] == {"model": "x"}
    r = analyze(image, str(path), "probe", fresh)
    assert isinstance(r.curves, go.Figure)
    assert "deep supervision helps" in r.summary
    assert r.table_headers[0].startswith("head (dataset mask AP")
    assert r.metrics["probe"]["outcome"] == "helps"
    assert fresh.shipped_report(tmp_path / "nothing.safetensors") is None
    assert fresh.shipped_report("cse_vit-t_ade20k") is None


def test_dataset_curves_are_drawn_only_when_asked_for_and_once(
    fresh: Explorer, tmp_path: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request without curves (the page's: it draws them in an event of its own) draws none but says
    they exist; the first ask draws them, later asks and requests reuse that drawing; a changed report
    is drawn afresh."""
    import analysis.service as service

    torch.manual_seed(0)
    path = save_model(build_model(tiny_config()), tmp_path / "set.safetensors")
    block = {"miou": 0.3, "mask_ap": 0.4, "boundary_f1": 0.2}
    report = {h: {"input": block, "blocks": [block, block], "final": block} for h in ("cse", "per_pixel")}
    (tmp_path / "report").mkdir()
    metrics = tmp_path / "report" / "metrics.json"
    metrics.write_text(json.dumps(report))
    drawn: list[str] = []
    real = service.F.block_curves_plotly
    monkeypatch.setattr(service.F, "block_curves_plotly", lambda *a, **k: drawn.append(k["title"]) or real(*a, **k))
    r = fresh.analyze(AnalysisRequest(image, str(path), "comparison", readout="raw", curves=False))
    assert r.curves is None and r.curves_available and drawn == []
    assert isinstance(fresh.dataset_curves(str(path), "raw"), go.Figure) and len(drawn) == 1
    assert isinstance(analyze(image, str(path), "comparison", fresh, readout="raw").curves, go.Figure)
    assert isinstance(fresh.dataset_curves(str(path), "raw"), go.Figure) and len(drawn) == 1
    report["per_pixel"]["final"] = {**block, "miou": 0.9}
    metrics.write_text(json.dumps(report))
    os.utime(metrics, (1e9, 1e9))  # a different mtime, whatever the clock's resolution
    assert isinstance(fresh.dataset_curves(str(path), "raw"), go.Figure) and len(drawn) == 2


def test_report_over_seeds_gives_mean_curves_with_a_band(fresh: Explorer, tmp_path: Path, image: np.ndarray) -> None:
    torch.manual_seed(0)
    path = save_model(build_model(tiny_config()), tmp_path / "set.safetensors")

    def stat(values: list[float]) -> dict:
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": values}

    def entry(base: float) -> dict:
        s = {"miou": stat([base, base + 4.0]), "mask_ap": stat([base, base + 2.0]), "boundary_f1": stat([base] * 2)}
        return {"seeds": [0, 1], "input": s, "blocks": [s, s], "final": s}

    report = {
        "meta": {"model": "x", "heads": ["cse", "per_pixel"]},
        "readouts": {"head": {"cse": {"input": {}, "blocks": [{}, {}], "final": {}}}},
        "seeds": {"split": "val", "stages": {"head": {"per_pixel": entry(40.0), "cse": entry(50.0)}}},
        "reference": {"definition": "the label at the grid", "miou": 70.0, "mask_ap": 80.0, "boundary_f1": 50.0},
    }
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps(report))
    fig = fresh.dataset_curves(str(path), "head")
    assert "mean over training seeds" in fig.layout.title.text and "val" in fig.layout.title.text
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in lines[:2]] == ["StructToken-CSE (2 seeds)", "Per-pixel (2 seeds)"]  # the set's order
    assert len(bands) == len(lines) == 2 * 3  # a band behind each head's line, per metric
    cse_miou = lines[0]
    assert list(cse_miou.y) == [52.0, 52.0, 52.0]  # the mean over seeds at blocks 1, 2 and the output
    band = bands[0]
    assert max(band.y) == 54.0 and min(band.y) == 50.0  # the seeds' range
    # the report's resolution reference: a dotted line per metric, in percent like the curves
    refs = [t for t in fig.data if t.legendgroup == "reference"]
    assert [list(t.y) for t in refs] == [[70.0, 70.0], [80.0, 80.0], [50.0, 50.0]]
    assert [t.showlegend for t in refs] == [True, False, False] and refs[0].line.dash == "dot"
    assert fresh.dataset_curves(str(path), "raw") is None  # no seeds nor the set's own entries for raw


# ------------------------------------------------------------------------------------- images
def test_image_conversions() -> None:
    grey, notes = load_image(np.full((20, 30), 7, np.uint8))
    assert grey.shape == (20, 30, 3) and (grey == 7).all() and notes == []
    one, _ = load_image(np.full((20, 30, 1), 9, np.uint8))
    assert (one == 9).all()
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left opaque red, right transparent
    out, notes = load_image(rgba)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 20]) == (255, 255, 255)
    assert any("white" in n for n in notes)
    u16 = np.zeros((20, 30, 3), np.uint16)
    u16[0, 0] = 65535
    u16[0, 1] = 32768
    u16[0, 2] = 1000  # a clip to 255 would make this white
    out, _ = load_image(u16)
    assert tuple(out[0, 0]) == (255, 255, 255) and out[0, 1, 0] == 128 and out[0, 2, 0] == 4
    f01, _ = load_image(np.full((20, 30, 3), 0.5, np.float32))
    assert (f01 == 128).all()
    f255, notes = load_image(np.full((20, 30, 3), 200.0))
    assert (f255 == 200).all() and notes
    chw, notes = load_image(np.zeros((3, 20, 30), np.uint8))
    assert chw.shape == (20, 30, 3) and notes
    pil, _ = load_image(Image.new("LA", (30, 20), (100, 255)))
    assert pil.shape == (20, 30, 3) and (pil == 100).all()
    i16 = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    out, _ = load_image(i16)
    assert (out == 255).all()


def test_image_file_inputs(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(arr).save(png)
    out, _ = load_image(png)
    np.testing.assert_array_equal(out, arr)
    out, _ = load_image(str(png))
    np.testing.assert_array_equal(out, arr)
    out, _ = load_image(png.read_bytes())
    np.testing.assert_array_equal(out, arr)


def _bad_inputs(tmp_path: Path) -> dict[str, object]:
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image at all\n" * 10)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    return {
        "empty array": np.zeros((0, 0, 3), np.uint8),
        "empty rows": np.zeros((10, 0), np.uint8),
        "1x1": np.zeros((1, 1, 3), np.uint8),
        "thin": np.zeros((100, 8, 3), np.uint8),
        "5 channels": np.zeros((20, 20, 5), np.uint8),
        "4-D": np.zeros((2, 20, 20, 3), np.uint8),
        "strings": np.array([["a"] * 20] * 20),
        "all NaN": np.full((20, 20), np.nan),
        "complex": np.zeros((20, 20), np.complex64),
        "non-image file": text,
        "truncated PNG": truncated,
        "empty file": empty_file,
        "missing file": tmp_path / "missing.png",
        "None": None,
        "a number": 3.5,
    }


def test_bad_inputs_give_readable_errors(tmp_path: Path, set_path: str) -> None:
    messages = {}
    for name, bad in _bad_inputs(tmp_path).items():
        with pytest.raises(AnalysisError) as info:
            analyze(bad, set_path, "prediction")
        messages[name] = str(info.value)
        assert len(messages[name]) > 15, name
    assert "16x16" in messages["1x1"]
    assert "empty" in messages["empty array"]
    assert "not an image" in messages["non-image file"]
    assert "truncated or corrupt" in messages["truncated PNG"]
    assert "not found" in messages["missing file"]


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(AnalysisError, match="downscale it"):
        load_image(path)


def test_awkward_images_work_with_notices(set_path: str) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "grey": rng.integers(0, 256, (40, 50), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
        "uint16": rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16),
        "float": rng.random((40, 50, 3)),
    }
    for name, img in cases.items():
        r = analyze(img, set_path, "comparison")
        assert r.overlay.shape[0] >= 40 and r.overlay.shape[1] > 50 and r.overlay.shape[2] == 3, name  # + legend
    huge = rng.integers(0, 256, (100, 5000, 3), dtype=np.uint8)
    r = analyze(huge, set_path, "prediction")
    assert "downscaled from 5000x100 to 4096x81" in r.summary
    assert r.maps["image"].shape == (81, 4096, 3) and r.overlay.shape[1] > 4096  # the overlay + its legend


# ---------------------------------------------------------------------------------- requests
def test_probe_without_per_pixel_heads(cse_only: str, image: np.ndarray) -> None:
    probe = (
        "Deep-supervision probe is not available: this checkpoint has no Per-pixel and no Per-pixel + deep sup. "
        "head; the deep-supervision probe needs both the per-pixel baseline and its deeply supervised twin "
        "(the embedded CamVid set has them)"
    )
    with pytest.raises(AnalysisError, match=f"^{re.escape(probe)}$"):
        analyze(image, cse_only, "probe")
    comparison = (
        "StructToken vs. per-pixel baseline, block by block is not available: this checkpoint has no per-pixel "
        "baseline head; the paper comparison needs one (the embedded CamVid set has it)"
    )
    with pytest.raises(AnalysisError, match=f"^{re.escape(comparison)}$"):
        analyze(image, cse_only, "comparison")
    r = analyze(image, cse_only, "attention")
    assert r.available["probe"] and r.available["attention"] is None
    assert analyze(image, cse_only, "prediction").table


RELEASED = (
    "cse_vit-t_ade20k, pwe_vit-t_ade20k, sse_vit-t_ade20k, cse_vit-s_ade20k, pwe_vit-s_ade20k, sse_vit-s_ade20k, "
    "cse_vit-b_ade20k, pwe_vit-b_ade20k, sse_vit-b_ade20k, pwe_vit-l_ade20k, sse_vit-l_ade20k"
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"analysis": "histogram"},
            "unknown analysis 'histogram'; choose one of prediction, comparison, focus, probe, attention",
        ),
        ({"normalize": "zscore"}, "unknown normalisation 'zscore'; choose one of shared, per_map, softmax"),
        ({"readout": "logit"}, "unknown readout 'logit'; choose one of raw, head, fitted"),
        ({"head": "linear"}, "this set has no head 'linear'; its heads are cse, sse, pwe, per_pixel, per_pixel_ds"),
        (
            {"analysis": "comparison", "head": "per_pixel"},
            "'per_pixel' is not a StructToken head; for the comparison pick one of cse, sse, pwe "
            "(the per-pixel heads are always part of the grid)",
        ),
        (
            {"analysis": "attention", "head": "pwe"},
            "head 'pwe' has no class x channel attention; choose one of cse, sse",
        ),
        ({"analysis": "attention", "block": 5}, "block 5 does not exist: cse has blocks 1..2"),
        (
            {"analysis": "comparison", "block": 9},
            "block 9 does not exist: use 1..2 (0 = the input maps, 3 = the output)",
        ),
        ({"block": 1.5}, "block must be a whole number or None, got 1.5"),
        (
            {"analysis": "comparison", "baseline": "sse"},
            "'sse' is not a baseline of this set; choose one of per_pixel, per_pixel_ds "
            "(or 'all' for every baseline without deep supervision)",
        ),
        ({"opacity": 2}, "opacity must be in [0, 1], got 2"),
        ({"classes": ["Sky", "Unicorn"]}, "unknown class 'Unicorn'; valid classes: Sky, Building, Road, Car"),
        ({"model": "no-such-model"}, f"unknown model 'no-such-model': neither a file nor one of: {RELEASED}"),
        ({"model": ""}, "no model given: use 'camvid', a released model name or a checkpoint path"),
        ({"device": "tpu"}, "unknown device 'tpu'; choose one of auto, cpu, cuda"),
    ],
)
def test_bad_requests(set_path: str, image: np.ndarray, kwargs: dict, message: str) -> None:
    kwargs = {"model": set_path, **kwargs}
    with pytest.raises(AnalysisError, match=f"^{re.escape(message)}$"):
        _SHARED.analyze(AnalysisRequest(image, **kwargs))


def test_describe_model(set_path: str, cse_only: str, tmp_path: Path) -> None:
    ex = Explorer()
    info = ex.describe_model(set_path)
    assert (info.source, info.known, info.num_blocks) == ("ours", True, 2)
    assert info.heads == ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds") and info.classes == NAMES
    assert list(info.analyses) == list(ANALYSES)
    assert info.analyses["prediction"].heads == info.heads and info.analyses["prediction"].head_control == "Head"
    assert info.analyses["comparison"].heads == ("cse", "sse", "pwe")
    assert info.analyses["attention"].heads == ("cse", "sse")
    assert [b for _, b in info.analyses["comparison"].blocks] == [None, 0, 1, 2, 3]
    assert [b for _, b in info.analyses["attention"].blocks] == [None, 1, 2]
    assert all(a.reason is None for a in info.analyses.values())
    single = ex.describe_model(cse_only)
    assert single.analyses["probe"].reason == (
        "this checkpoint has no Per-pixel and no Per-pixel + deep sup. head; the deep-supervision probe needs both the "
        "per-pixel baseline and its deeply supervised twin (the embedded CamVid set has them)"
    )
    assert ex.describe_model("cse_vit-t_ade20k").source == "official"  # from the registry, nothing downloaded
    pth = tmp_path / "official.pth"
    pth.write_bytes(b"not read")
    assert (ex.describe_model(str(pth)).source, ex.describe_model(str(pth)).known) == ("official", False)
    assert ex.describe_model(str(tmp_path / "missing.safetensors")).source == "unknown"
    assert ex.cached_models() == []  # describing loads no weights


def test_model_cache_is_bounded(
    fresh: Explorer, set_path: str, cse_only: str, tmp_path: Path, image: np.ndarray
) -> None:
    third = save_model(build_model(tiny_config(extra_heads=("per_pixel",))), tmp_path / "third.safetensors")
    for p in (set_path, cse_only, str(third)):
        assert analyze(image, p, "prediction", fresh).timings["cached"] is False
    assert fresh.cached_models() == [cse_only, str(third)]  # the first set was evicted
    assert analyze(image, cse_only, "prediction", fresh).timings["cached"] is True
    reloaded = analyze(image, set_path, "prediction", fresh)  # its maps went with it
    assert reloaded.timings["cached"] is False and reloaded.timings["model_load"] > 0


def test_no_thread_leak(set_path: str, image: np.ndarray) -> None:
    """Many requests (new images, every analysis, cached and not) leave the thread count where the first
    one left it (its model's head workers): not one thread more."""
    ex = Explorer()
    analyze(image, set_path, "prediction", ex)
    before = threading.active_count()
    rng = np.random.default_rng(1)
    for i in range(24):
        img = image if i % 3 else rng.integers(0, 256, image.shape, dtype=np.uint8)
        analyze(img, set_path, list(ANALYSES)[i % len(ANALYSES)], ex)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def test_a_newly_registered_head_joins_the_analyses_by_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads come from their kind in structtoken.config.HEAD_NAMES, not from name lists: a static
    per-pixel head registered there is a comparison baseline; a deeply supervised twin makes a probe pair."""
    from analysis import roles
    from structtoken import config

    names = {**config.HEAD_NAMES, "fcn": ("fcn", False), "fcn_ds": ("fcn", True)}
    monkeypatch.setattr(config, "HEAD_NAMES", names)
    monkeypatch.setattr(roles, "HEAD_NAMES", names)
    heads = ["cse", "pwe", "per_pixel", "fcn", "fcn_ds", "linear"]
    assert roles.baseline_heads(heads) == ["per_pixel", "fcn"]
    assert roles.deep_supervision_pairs(heads) == [("fcn", "fcn_ds")]
    assert roles.structtoken_heads(heads) == ["cse", "pwe"] and roles.attention_heads(heads) == ["cse"]

    class Cfg:  # what the analyses read of a config
        pass

    cfg = Cfg()
    cfg.heads = tuple(heads)
    assert ANALYSES["comparison"].heads(cfg, "pwe") == ["pwe", "per_pixel"]  # the paper's peer
    assert ANALYSES["comparison"].heads(cfg, "pwe", "all") == ["pwe", "per_pixel", "fcn"]
    assert ANALYSES["comparison"].heads(cfg, "pwe", "fcn_ds") == ["pwe", "fcn_ds"]
    assert ANALYSES["probe"].heads(cfg, "cse") == ["fcn", "fcn_ds", "cse"]
    assert ANALYSES["prediction"].head_choices(cfg) == heads


def test_readouts_of_a_set_and_their_validation(set_path: str, image: np.ndarray, tmp_path: Path) -> None:
    from structtoken.readouts import (
        NO_FITTED_REASON,
        FittedReadouts,
        StageLens,
        fitted_input_channels,
        readouts_path,
    )

    ex = Explorer()
    info = ex.describe_model(set_path)  # not loaded yet: from the config and the files beside the set
    assert info.readouts == {"raw": None, "head": None, "fitted": NO_FITTED_REASON}
    fcn = tmp_path / "fcn.safetensors"
    torch.manual_seed(0)
    save_model(build_model(tiny_config(head="fcn", extra_heads=())), fcn)
    fcn_info = ex.describe_model(str(fcn))
    assert "feature channels" in fcn_info.readouts["raw"] and fcn_info.readouts["head"] is None
    # fitted unavailable: the chosen head cannot be shown, and the message says why
    with pytest.raises(AnalysisError, match=r"fitted readout is not available for .*no fitted readout file"):
        analyze(image, set_path, "comparison", ex=ex, readout="fitted")
    loaded = ex.describe_model(set_path)  # loaded now: judged from the set's heads and lenses
    assert loaded.readouts == info.readouts
    # raw: the per-pixel baseline has no raw readout (its channels are not classes): left out, and a
    # notice says why; head: every head, no such notice, the readout is named
    raw = analyze(image, set_path, "comparison", ex=ex, readout="raw")
    assert [row[0] for row in raw.table] == ["StructToken-CSE"]
    assert any(n.startswith("Per-pixel left out: no raw readout") for n in raw.metrics["notices"])
    head = analyze(image, set_path, "comparison", ex=ex, readout="head")
    assert "left out" not in head.summary and "**head** readout" in head.summary
    assert head.metrics["readout"] == "head" and head.table_headers[0].endswith("head readout)")
    assert raw.metrics["stage_agreement_percent"] != head.metrics["stage_agreement_percent"]
    # a set with a fitted file beside it offers fitted before it is loaded
    other = tmp_path / "set2.safetensors"
    torch.manual_seed(0)
    set2 = build_model(tiny_config()).eval()
    save_model(set2, other)
    k = tiny_config().num_classes
    with torch.no_grad():  # each stage's lens reads what the fitted readout reads there (its width)
        outs = set2(torch.zeros(1, 3, 64, 64)).heads
    lenses = {
        h: tuple(StageLens(torch.eye(k, w), torch.zeros(k)) for w in fitted_input_channels(set2.heads[h], outs[h]))
        for h in info.heads
    }
    FittedReadouts(lenses=lenses).save(readouts_path(other))
    assert Explorer().describe_model(str(other)).readouts["fitted"] is None
    fitted = analyze(image, str(other), "probe", ex=Explorer(), readout="fitted")
    assert fitted.metrics["readout"] == "fitted" and "**fitted** readout" in fitted.summary

"""Tests for analysis.service.analyze: every analysis on a tiny saved set, the caches, the reading
of awkward image inputs, and readable errors for every bad input."""

from __future__ import annotations

import io
import json
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

from analysis import service
from analysis.service import ANALYSES, NORMALIZATIONS, AnalysisError, AnalysisResult, analyze, load_image
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
def fresh():
    """Empty caches before and after the test."""
    service.clear_caches()
    yield
    service.clear_caches()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _count_backbone(path: str) -> list[int]:
    """Wrap the backbone of the cached model of ``path`` with a call counter."""
    entry = next(e for e in service._MODELS.values() if e.key[0] == str(Path(path).resolve()))
    calls: list[int] = []
    original = entry.model.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    entry.model.backbone.forward = counting
    return calls


# ------------------------------------------------------------------------------------ analyses
@pytest.mark.parametrize("analysis", ANALYSES)
def test_each_analysis_returns_its_outputs(fresh, set_path: str, image: np.ndarray, analysis: str) -> None:
    r = analyze(image, set_path, analysis, device="cpu")
    assert isinstance(r, AnalysisResult)
    assert isinstance(r.figure, Figure)
    assert isinstance(r.plot, go.Figure)
    assert r.overlay.shape == (48, 64, 3) and r.overlay.dtype == np.uint8
    assert r.curves is None  # no report next to the checkpoint
    assert r.table and all(len(row) == len(r.table_headers) for row in r.table)
    assert r.summary.startswith("### ") and "no dataset report" in r.summary
    assert r.classes == list(NAMES)
    assert len(r.selected_classes) == 4 and set(r.selected_classes) <= set(NAMES)
    assert r.available == {"prediction": None, "comparison": None, "probe": None, "attention": None}
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
    r = analyze(image, set_path, "comparison", head="sse", classes=["Road", "Car"], normalize="softmax")
    assert r.selected_classes == ["Road", "Car"]
    assert [row[0] for row in r.table] == ["StructToken-SSE", "Per-pixel"]
    assert r.table_headers[1:] == ["input", "block 1", "block 2", "output"]
    assert all(row[-1] == 100.0 for row in r.table)  # the output agrees with itself
    p = analyze(image, set_path, "probe", block=1)
    assert [row[0] for row in p.table] == ["Per-pixel", "Per-pixel + deep sup.", "StructToken-CSE"]
    texts = [a.text for a in p.plot.layout.annotations]
    assert "block 1" in texts and "input" not in texts  # one column per head
    assert len(p.plot.data) == 3 * 4  # heads x rows, one column each
    a = analyze(image, set_path, "attention", head="sse", block=1, classes=["Sky"])
    assert a.table_headers[-1] == "attention on token channels %"
    assert "sse/attention_block1" in a.maps


def test_cache_does_not_rerun_the_backbone(fresh, set_path: str, image: np.ndarray) -> None:
    first = analyze(image, set_path, "comparison")
    assert first.timings["cached"] is False
    calls = _count_backbone(set_path)
    for kwargs in (
        {"analysis": "probe"},
        {"analysis": "comparison", "normalize": "per_map", "classes": ["Sky"]},
        {"analysis": "attention", "block": 1},
        {"analysis": "prediction", "opacity": 0.2},
    ):
        r = analyze(image, set_path, **kwargs)
        assert r.timings["cached"] is True and r.timings["model_load"] == 0.0
    assert calls == []
    analyze(image[::-1].copy(), set_path, "comparison")  # another image: one more pass
    assert calls == [1]


def test_concurrent_calls_share_one_pass(fresh, set_path: str, image: np.ndarray) -> None:
    analyze(np.zeros((32, 32, 3), np.uint8), set_path, "prediction")  # load the model
    calls = _count_backbone(set_path)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda n: analyze(image, set_path, "comparison", normalize=n), [*NORMALIZATIONS, "shared"])
        )
    assert len(results) == 4 and all(isinstance(r.figure, Figure) for r in results)
    assert calls == [1]


def test_progress_callback(set_path: str, image: np.ndarray) -> None:
    seen: list[tuple[float, str]] = []
    analyze(image, set_path, "prediction", progress=lambda f, d: seen.append((f, d)))
    assert seen[-1][0] == 1.0 and all(0 <= f <= 1 and isinstance(d, str) for f, d in seen)


def test_shipped_report_gives_curves_and_probe(fresh, tmp_path: Path, image: np.ndarray) -> None:
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
    assert service.shipped_report(path)["meta"] == {"model": "x"}
    r = analyze(image, str(path), "probe")
    assert isinstance(r.curves, go.Figure)
    assert "deep supervision helps" in r.summary
    assert r.table_headers[0].startswith("head (dataset mask AP")
    assert r.metrics["probe"]["outcome"] == "helps"
    assert service.shipped_report(tmp_path / "nothing.safetensors") is None
    assert service.shipped_report("cse_vit-t_ade20k") is None


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
        assert r.overlay.shape == (40, 50, 3), name
    huge = rng.integers(0, 256, (100, 5000, 3), dtype=np.uint8)
    r = analyze(huge, set_path, "prediction")
    assert "downscaled from 5000x100 to 4096x81" in r.summary
    assert r.overlay.shape == (81, 4096, 3)


# ---------------------------------------------------------------------------------- requests
def test_probe_without_per_pixel_heads(cse_only: str, image: np.ndarray) -> None:
    with pytest.raises(AnalysisError, match="no per_pixel and no per_pixel_ds head"):
        analyze(image, cse_only, "probe")
    with pytest.raises(AnalysisError, match="no per-pixel baseline head; the paper comparison needs one"):
        analyze(image, cse_only, "comparison")
    r = analyze(image, cse_only, "attention")
    assert r.available["probe"] and r.available["attention"] is None
    assert analyze(image, cse_only, "prediction").table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"analysis": "histogram"}, "unknown analysis"),
        ({"normalize": "zscore"}, "unknown normalisation"),
        ({"head": "linear"}, "no head 'linear'"),
        ({"analysis": "comparison", "head": "per_pixel"}, "not a StructToken head"),
        ({"analysis": "attention", "head": "pwe"}, "no class x channel attention"),
        ({"analysis": "attention", "block": 5}, "block 5 does not exist"),
        ({"analysis": "comparison", "block": 9}, "block 9 does not exist"),
        ({"block": 1.5}, "whole number"),
        ({"opacity": 2}, "opacity"),
        ({"classes": ["Sky", "Unicorn"]}, "valid classes: Sky, Building, Road, Car"),
        ({"model": "no-such-model"}, "unknown model"),
        ({"model": ""}, "no model"),
        ({"device": "tpu"}, "."),
    ],
)
def test_bad_requests(set_path: str, image: np.ndarray, kwargs: dict, match: str) -> None:
    kwargs = {"model": set_path, **kwargs}
    with pytest.raises(AnalysisError, match=match):
        analyze(image, **kwargs)


def test_model_cache_is_bounded(fresh, set_path: str, cse_only: str, tmp_path: Path, image: np.ndarray) -> None:
    third = save_model(build_model(tiny_config(extra_heads=("per_pixel",))), tmp_path / "third.safetensors")
    for p in (set_path, cse_only, str(third)):
        analyze(image, p, "prediction")
    assert len(service._MODELS) == 2
    assert all(k[0][0] != str(Path(set_path).resolve()) for k in service._MAPS)


def test_no_thread_leak(set_path: str, image: np.ndarray) -> None:
    before = threading.active_count()
    analyze(image, set_path, "prediction")
    assert threading.active_count() <= before + 1

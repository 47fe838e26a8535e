"""Tests for analysis.maps: per-stage maps of every head from one backbone pass, normalisation,
class selection, upsampling and top channels (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from analysis.maps import (
    HeadMaps,
    ImageMaps,
    compute_maps,
    normalize_maps,
    resolve_classes,
    select_classes,
    stage_names,
    top_channels,
    upsample_maps,
)
from structtoken import build_model
from tests.helpers import HEADS, NAMES, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def maps(model, image) -> ImageMaps:
    return compute_maps(model, image)


def test_stage_names() -> None:
    assert stage_names(2) == ("input", "block 1", "block 2", "output")


def test_shapes_of_every_stage_of_every_head(maps: ImageMaps, image: np.ndarray) -> None:
    h, w = 5, 6  # ceil(70/16), ceil(90/16)
    assert maps.grid == (h, w)
    assert list(maps.heads) == list(HEADS)
    assert maps.image.shape == image.shape and maps.image.dtype == np.uint8
    np.testing.assert_array_equal(maps.image, image)  # no test_scale: the model saw the image as is
    assert maps.class_names == NAMES
    kinds = {"cse": "cse", "sse": "sse", "pwe": "pwe", "per_pixel": "per_pixel", "per_pixel_ds": "per_pixel"}
    for name, hm in maps.heads.items():
        assert isinstance(hm, HeadMaps)
        assert hm.kind == kinds[name]
        assert hm.stages.shape == (4, 4, h, w) and hm.stages.dtype == np.float32
        assert hm.stage_names == ("input", "block 1", "block 2", "output")
        assert hm.num_blocks == 2
        assert maps.pred[name].shape == (70, 90) and maps.pred[name].dtype == np.uint8
        p = maps.probs[name]
        assert p.shape == (4, 70, 90)
        np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(p.argmax(0), maps.pred[name])
    assert maps.heads["cse"].attention.shape == (2, 4, 32)
    assert maps.heads["sse"].attention.shape == (2, 4, 4 + 32)
    for name in ("pwe", "per_pixel", "per_pixel_ds"):
        assert maps.heads[name].attention is None
    for name in ("cse", "sse", "pwe"):
        assert maps.heads[name].block_features.shape == (2, 32, h, w)
    for name in ("per_pixel", "per_pixel_ds"):
        assert maps.heads[name].block_features is None
    assert maps.seconds > 0
    assert set(maps.probs) == set(HEADS) and len(maps.probs) == 5


def test_stages_are_the_head_outputs(model, image, maps: ImageMaps) -> None:
    with torch.no_grad():
        out = model(model.preprocess(image))
    for name, ho in out.heads.items():
        st = maps.heads[name].stages
        if "raw" in maps.heads[name].unavailable:  # per_pixel: no raw readout, so the stages are the head readout
            with torch.no_grad():
                want = [model.heads[name].readout(s, m, ho)[0].numpy() for s, m in enumerate(ho.stage_maps())]
            np.testing.assert_allclose(np.stack(want), st, rtol=1e-5, atol=1e-5)
            continue
        np.testing.assert_allclose(st[0], ho.tokens_init[0].numpy(), rtol=1e-6, atol=1e-6)
        for i, b in enumerate(ho.blocks):
            np.testing.assert_allclose(st[i + 1], b.tokens[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st[-1], ho.logits[0].numpy(), rtol=1e-6, atol=1e-6)
        bf = maps.heads[name].block_features
        if bf is not None:  # features *entering* each block
            np.testing.assert_allclose(bf[0], ho.features_init[0].numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(bf[1], ho.blocks[0].features[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(maps.pred[name], out.logits_by_head[name][0].argmax(0).numpy())


def test_one_backbone_pass_for_all_heads(model, image) -> None:
    calls = []
    original = model.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.backbone.forward = counting
    try:
        maps = compute_maps(model, image)
    finally:
        del model.backbone.forward
    assert len(calls) == 1
    assert len(maps.heads) == 5


def test_test_time_resize_gives_the_seen_image() -> None:
    torch.manual_seed(1)
    m = build_model(tiny_config(test_scale=(64, 48), extra_heads=("per_pixel",))).eval()
    img = np.random.default_rng(1).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    maps = compute_maps(m, img)
    assert maps.image.shape == (32, 64, 3)  # long side <= 64, short side <= 48
    assert maps.pred["cse"].shape == (32, 64)
    assert maps.grid == (2, 4)
    native = compute_maps(m, img, resize=False)
    assert native.image.shape == img.shape and native.grid == (7, 13)


def _synthetic_maps() -> ImageMaps:
    rng = np.random.default_rng(3)
    pred = np.zeros((8, 10), dtype=np.uint8)
    pred[:, 5:] = 2  # 40 px of class 2, 40 of class 0
    pred[0, :3] = 3  # 3 px of class 3 (taken from class 0)
    stages = rng.standard_normal((4, 4, 2, 3)).astype(np.float32)
    stages[-1, 1] += 5.0  # class 1 absent from pred but most probable on average
    hm = HeadMaps(stages=stages, stage_names=stage_names(2), attention=None, block_features=None, kind="cse")
    return ImageMaps(
        image=np.zeros((8, 10, 3), np.uint8),
        heads={"cse": hm},
        pred={"cse": pred},
        grid=(2, 3),
        seconds=0.0,
        class_names=NAMES,
    )


def test_select_classes_by_area_by_name_and_errors() -> None:
    m = _synthetic_maps()
    assert select_classes(m, "cse", k=2) == [2, 0]  # 40 px vs 37 px
    assert select_classes(m, "cse", k=3) == [2, 0, 3]
    assert select_classes(m, "cse", k=4) == [2, 0, 3, 1]  # absent class last
    assert select_classes(m, "cse", classes=["car", "Sky", 2, "car"]) == [3, 0, 2]  # case-insensitive, dedup
    with pytest.raises(ValueError, match="valid classes: Sky, Building, Road, Car"):
        select_classes(m, "cse", classes=["Sky", "Bicycle"])
    with pytest.raises(ValueError, match="unknown class 7"):
        select_classes(m, "cse", classes=[7])
    with pytest.raises(ValueError, match="unknown head"):
        select_classes(m, "sse")
    assert resolve_classes(NAMES, ["3"]) == [3]


def test_normalize_per_map_softmax_shared() -> None:
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((4, 3, 5, 6)) * 3 + 2).astype(np.float32)
    b = (rng.standard_normal((4, 3, 5, 6)) * 10).astype(np.float32)
    a[1, 2] = 7.0  # a constant map

    pm = normalize_maps(a, "per_map")
    assert pm.shape == a.shape and pm.dtype == np.float32
    assert pm.min() >= 0 and pm.max() <= 1
    mins, maxs = pm.min(axis=(2, 3)), pm.max(axis=(2, 3))
    np.testing.assert_allclose(mins, 0, atol=1e-6)
    np.testing.assert_allclose(np.delete(maxs.ravel(), 1 * 3 + 2), 1, atol=1e-6)
    assert np.all(pm[1, 2] == 0)  # constant map -> 0

    sm = normalize_maps(a, "softmax")
    np.testing.assert_allclose(sm.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sm, torch.from_numpy(a).softmax(1).numpy(), atol=1e-6)

    sh = normalize_maps({"x": a, "y": b}, "shared")
    assert set(sh) == {"x", "y"}
    for c in range(3):  # one range per class over every stage of both heads
        lo = min(a[:, c].min(), b[:, c].min())
        hi = max(a[:, c].max(), b[:, c].max())
        np.testing.assert_allclose(sh["x"][:, c], (a[:, c] - lo) / (hi - lo), atol=1e-5)
        np.testing.assert_allclose(sh["y"][:, c], (b[:, c] - lo) / (hi - lo), atol=1e-5)
        both = np.concatenate([sh["x"][:, c].ravel(), sh["y"][:, c].ravel()])
        assert both.min() == pytest.approx(0, abs=1e-6) and both.max() == pytest.approx(1, abs=1e-6)
    # a single head: the common range covers its stages
    single = normalize_maps(a, "shared")
    assert single.min() >= 0 and single.max() <= 1
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_maps(a, "zscore")
    with pytest.raises(ValueError, match="must be"):
        normalize_maps(a[0], "per_map")


def test_upsample_maps_matches_torch() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    up = upsample_maps(m, (70, 90))
    assert up.shape == (2, 3, 70, 90) and up.dtype == np.float32
    ref = TF.interpolate(torch.from_numpy(m), size=(70, 90), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(up, ref, atol=1e-6)
    assert upsample_maps(m[0, 0], (10, 12)).shape == (10, 12)
    np.testing.assert_allclose(upsample_maps(np.full((3, 4), 2.5), (9, 8)), 2.5)


def test_top_channels() -> None:
    attn = np.array([[0.9, 0.05, 0.5, 0.1, 0.3, 0.2], [0.0, 0.0, 0.1, 0.7, 0.2, 0.0]])
    ids, weights = top_channels(attn, 0, k=2)
    assert ids == [0, 2] and weights == pytest.approx([0.9, 0.5])
    ids, weights = top_channels(attn, 0, k=2, feature_offset=2)  # SSE: skip the token columns
    assert ids == [0, 2] and weights == pytest.approx([0.5, 0.3])
    ids, weights = top_channels(attn, 1, k=10, feature_offset=2)  # the zero-weight channel 3 is not listed
    assert ids == [1, 2, 0] and weights == pytest.approx([0.7, 0.2, 0.1])
    assert top_channels(attn, 1, k=10, feature_offset=2, min_weight=0.15)[0] == [1, 2]
    saturated = np.array([[0.0, 1.0, 0.0, 0.0]])
    assert top_channels(saturated, 0, k=6) == ([1], [1.0])
    with pytest.raises(ValueError):
        top_channels(attn, 2)


def test_readouts(maps: ImageMaps) -> None:
    from analysis.maps import READOUTS, readout_problem, readout_stages
    from structtoken.readouts import NO_FITTED_REASON
    from structtoken.readouts import READOUTS as MODEL_READOUTS

    assert READOUTS == MODEL_READOUTS == ("raw", "head", "fitted")
    assert readout_stages(maps, "cse") is maps.heads["cse"].stages  # raw: channel k is class k
    for h in HEADS:
        hm = maps.heads[h]
        head = readout_stages(maps, h, "head")
        assert head.shape == hm.stages.shape and head.dtype == np.float32
        # the head readout of the last block is the output; the output stage is the logits
        np.testing.assert_allclose(head[-2], hm.stages[-1], atol=1e-5)
        np.testing.assert_array_equal(head[-1], hm.stages[-1])
        # a random tiny set ships no fitted lens: the reason is recorded and raised
        assert readout_problem(maps, h, "fitted") == NO_FITTED_REASON
        with pytest.raises(ValueError, match=r"fitted readout of .* is unavailable: no fitted readout file"):
            readout_stages(maps, h, "fitted")
    assert not np.allclose(readout_stages(maps, "per_pixel_ds", "head")[1], maps.heads["per_pixel_ds"].stages[1])
    assert "not class maps by construction" in readout_problem(maps, "per_pixel", "raw")
    with pytest.raises(ValueError, match=r"^unknown readout 'lens'; choose one of raw, head, fitted$"):
        readout_stages(maps, "cse", "lens")
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        readout_problem(maps, "nope", "raw")


def test_fitted_readout_reads_what_each_stage_hands_on(model, image) -> None:
    from analysis.maps import readout_caveat, readout_problem, readout_stages
    from structtoken.readouts import FittedReadouts, StageLens

    k = model.cfg.num_classes
    with torch.no_grad():
        out = model(model.preprocess(image))
    lenses = {}
    for h in HEADS:  # 2 x the first K channels + k: StructToken's stages 0..N-1 read K + C channels
        widths = [m.shape[1] for m in model.heads[h].fitted_maps(out.heads[h])]
        lenses[h] = tuple(StageLens(2.0 * torch.eye(k, w), torch.arange(k, dtype=torch.float32)) for w in widths)
    model.fitted_readouts = FittedReadouts(lenses=lenses)
    try:
        m = compute_maps(model, image)
    finally:
        model.fitted_readouts = None
    for h in HEADS:
        assert readout_problem(m, h, "fitted") is None
        tokens = np.stack([t[0, :k].numpy() for t in model.heads[h].fitted_maps(out.heads[h])])
        want = 2.0 * tokens + np.arange(k, dtype=np.float32)[None, :, None, None]
        np.testing.assert_allclose(readout_stages(m, h, "fitted"), want, rtol=1e-5, atol=1e-5)
    assert lenses["cse"][0].weight.shape == (k, k + model.cfg.embed_dim) and lenses["cse"][-2].weight.shape == (k, k)
    # raw exists only where channel k is class k by construction: not per_pixel; nothing is left to caveat
    assert "not class maps by construction" in readout_problem(m, "per_pixel", "raw")
    assert all(readout_problem(m, h, "raw") is None for h in HEADS if h != "per_pixel")
    assert all(readout_caveat(m, h, r) is None for h in HEADS for r in ("raw", "head"))


def test_head_without_raw_readout_says_why() -> None:
    from analysis.maps import readout_problem, readout_stages

    torch.manual_seed(0)
    fcn = build_model(tiny_config(head="fcn", extra_heads=("per_pixel",))).eval()
    m = compute_maps(fcn, np.zeros((40, 50, 3), np.uint8))
    assert "feature channels" in readout_problem(m, "fcn", "raw")
    with pytest.raises(ValueError, match=r"raw readout of fcn is unavailable: .*feature channels"):
        readout_stages(m, "fcn", "raw")
    assert m.heads["fcn"].stages is readout_stages(m, "fcn", "head")  # stages fall back to the head readout
    assert m.heads["fcn"].stages.shape[1] == 4

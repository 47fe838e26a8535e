"""Model core: equivalence with the official implementation and the head contract."""

from __future__ import annotations

import json

import pytest
import torch
from official_reference import backbone as ref_backbone
from official_reference import encode_decode as ref_encode_decode
from official_reference import head as ref_head
from official_reference import random_official_state_dict
from safetensors.torch import load_file

from structtoken import ModelConfig, build_model, convert_official_state_dict
from structtoken.config import ConfigError
from structtoken.segmentor import slide_windows

FIXTURES = ["cse", "sse", "pwe"]


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """max |a - e| <= rel * max(1, max |e|): 1e-4 relative to the tensor's scale."""
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x scale {scale:.3g}"


def load_fixture(reference_dir, kind, exact=True):
    t = load_file(str(reference_dir / "fixtures" / f"dev_{kind}_vitt.safetensors"))
    meta = json.loads((reference_dir / "fixtures" / f"dev_{kind}_vitt.json").read_text())
    sd = {k.removeprefix("state_dict."): v.float() for k, v in t.items() if k.startswith("state_dict.")}
    cfg = ModelConfig(
        head=kind,
        embed_dim=meta["embed_dims"],
        depth=meta["backbone_num_layers"],
        num_heads=meta["num_heads"],
        num_blocks=meta["decode_head_num_layers"],
        num_classes=meta["num_classes"],
        image_size=(meta["image_h"], meta["image_w"]),
        exact_attention=exact,
    )
    model = build_model(cfg).eval()
    model.load_state_dict(convert_official_state_dict(sd))
    return t, meta, sd, model


def check_full_res(logits: torch.Tensor, t: dict, prefix: str) -> None:
    rows, cols = t[f"{prefix}.rows"], t[f"{prefix}.cols"]
    close(logits[:, :, rows][:, :, :, cols], t[f"{prefix}.sub"])
    agree = (logits.argmax(1).to(torch.uint8) == t[f"{prefix}.argmax"]).float().mean().item()
    assert agree >= 0.999, f"argmax agreement {agree:.5f}"
    sums = logits.double().sum((2, 3))
    ref = t[f"{prefix}.sum_hw"]
    assert ((sums - ref).abs() <= 1e-3 * ref.abs().clamp_min(1.0)).all()


@pytest.mark.reference
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("kind", FIXTURES)
def test_fixture_whole_image_runs(reference_dir, kind, exact):
    """Both the exact path and the fast path (fused attention, the default) stay within 1e-4 of the fixtures."""
    t, meta, _, model = load_fixture(reference_dir, kind, exact)
    assert all(blk.attn.fused_attn is not exact for blk in model.backbone.blocks)
    runs = [r for r in meta["runs"] if r["mode"] == "whole"]
    assert runs
    for run in runs:
        r = run["name"]
        with torch.no_grad():
            out = model(t[f"{r}.input"].float())
        close(out.features, t[f"{r}.backbone_out"])
        close(out.tokens_init, t[f"{r}.kernels_init"])
        assert len(out.blocks) == meta["decode_head_num_layers"]
        for i, block in enumerate(out.blocks):
            close(block.tokens, t[f"{r}.block{i}.kernels"])
            close(block.features, t[f"{r}.block{i}.features"])
        close(out.head_logits, t[f"{r}.head_out"])
        check_full_res(out.logits, t, f"{r}.seg_logits")


@pytest.mark.reference
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
def test_fixture_slide_run(reference_dir, exact):
    t, meta, _, model = load_fixture(reference_dir, "cse", exact)
    run = next(r for r in meta["runs"] if r["mode"] == "slide")
    boxes = [tuple(b) for b in run["crop_boxes_y1_y2_x1_x2"]]
    assert slide_windows(tuple(run["input_shape"][2:]), tuple(run["crop_size"]), tuple(run["stride"])) == boxes
    x = t["slide.input"].float()
    with torch.no_grad():
        for j, (y1, y2, x1, x2) in enumerate(boxes):
            close(model(x[:, :, y1:y2, x1:x2]).head_logits, t[f"slide.crop{j}.head_out"])
        logits = model.slide(x, crop=tuple(run["crop_size"]), stride=tuple(run["stride"]))
    check_full_res(logits, t, "slide.slide_logits")


@pytest.mark.reference
@pytest.mark.parametrize("kind", FIXTURES)
def test_independent_reference_matches_fixtures(reference_dir, kind):
    """The functional oracle used below reproduces the official tensors too."""
    t, meta, sd, _ = load_fixture(reference_dir, kind)
    with torch.no_grad():
        feats = ref_backbone(sd, t["main.input"].float(), (512, 512), meta["num_heads"])
        _, _, out = ref_head(sd, feats, kind)
    close(feats, t["main.backbone_out"])
    close(out, t["main.head_out"])


CASES = [
    # kind, embed, depth, heads, classes, image_size, blocks, input size, weight seed (fixed, so a failure reruns)
    ("cse", 64, 3, 1, 7, (96, 96), 3, (96, 96), 101),  # native grid
    ("sse", 64, 2, 1, 5, (96, 96), 2, (70, 130), 202),  # padding, resized pos-embed and tokens
    ("pwe", 128, 2, 2, 9, (80, 80), 1, (64, 144), 303),  # odd configured grid (5x5): align_corners tokens
    ("cse", 128, 2, 2, 3, (160, 160), 1, (50, 50), 404),  # 1 block: CSE without ffn2
    # 2x32 grid = 64 tokens = 8x8 table: pos-embed kept, tokens resized
    ("sse", 64, 1, 1, 4, (128, 128), 2, (32, 512), 505),
]


@pytest.mark.parametrize("kind,embed,depth,heads,classes,image_size,blocks,size,seed", CASES)
def test_matches_independent_reference_on_unseen_configs(
    kind, embed, depth, heads, classes, image_size, blocks, size, seed
):
    grid = (image_size[0] // 16, image_size[1] // 16)
    sd = random_official_state_dict(kind, embed, depth, classes, grid, blocks, seed=seed)
    cfg = ModelConfig(
        head=kind,
        embed_dim=embed,
        depth=depth,
        num_heads=heads,
        num_blocks=blocks,
        num_classes=classes,
        image_size=image_size,
        exact_attention=True,
    )
    model = build_model(cfg).eval()
    model.load_state_dict(convert_official_state_dict(sd))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        feats = ref_backbone(sd, x, image_size, heads)
        k0, ref_blocks, head_out = ref_head(sd, feats, kind)
        full = ref_encode_decode(sd, x, kind, image_size, heads)
    close(out.features, feats)
    close(out.tokens_init, k0)
    for ours, (tok, fea) in zip(out.blocks, ref_blocks, strict=True):
        close(ours.tokens, tok)
        close(ours.features, fea)
    close(out.head_logits, head_out)
    close(out.logits, full)


def test_pos_embed_not_resized_when_token_count_matches():
    """Official quirk: a 4x16 grid on an 8x8 config keeps the 8x8 table laid out row-major."""
    sd = random_official_state_dict("sse", 64, 1, 4, (8, 8), 1, seed=3)
    cfg = ModelConfig(head="sse", embed_dim=64, depth=1, num_heads=1, num_blocks=1, num_classes=4, image_size=128)
    model = build_model(cfg).eval()
    model.load_state_dict(convert_official_state_dict(sd))
    x = torch.randn(1, 3, 64, 256)
    with torch.no_grad():
        close(model.backbone(x), ref_backbone(sd, x, (128, 128), 1))


def test_sliding_window_matches_reference_averaging():
    sd = random_official_state_dict("pwe", 64, 1, 6, (4, 4), 1, seed=5)
    cfg = ModelConfig(head="pwe", embed_dim=64, depth=1, num_heads=1, num_blocks=1, num_classes=6, image_size=64)
    model = build_model(cfg).eval()
    model.load_state_dict(convert_official_state_dict(sd))
    x = torch.randn(1, 3, 100, 150)
    crop, stride = (64, 64), (40, 40)
    boxes = slide_windows((100, 150), crop, stride)
    assert boxes[-1] == (36, 100, 86, 150)  # last window shifted back to the border
    assert len(boxes) == 2 * 4  # rows (100-64+39)//40+1, cols (150-64+39)//40+1
    with torch.no_grad():
        ours = model.slide(x, crop=crop, stride=stride)
        total = torch.zeros(1, 6, 100, 150)
        count = torch.zeros(1, 1, 100, 150)
        for y1, y2, x1, x2 in boxes:
            total[:, :, y1:y2, x1:x2] += ref_encode_decode(sd, x[:, :, y1:y2, x1:x2], "pwe", (64, 64), 1)
            count[:, :, y1:y2, x1:x2] += 1
    close(ours, total / count)


def test_slide_windows_examples_from_readme():
    assert [b[2:] for b in slide_windows((512, 700), (512, 512), (341, 341))] == [(0, 512), (188, 700)]
    assert [b[2:] for b in slide_windows((640, 1000), (640, 640), (426, 426))] == [(0, 640), (360, 1000)]
    assert slide_windows((300, 200), (512, 512), (341, 341)) == [(0, 300, 0, 200)]


# ----------------------------------------------------------------------------- head contract
TINY = dict(embed_dim=32, depth=2, num_heads=2, num_blocks=3, num_classes=5, image_size=(64, 64))


@pytest.mark.parametrize("head", ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "linear"])
def test_head_contract_shapes(head):
    model = build_model(ModelConfig(head=head, **TINY)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 70, 90))
    h, w = 5, 6  # ceil(70/16), ceil(90/16)
    assert out.features.shape == (2, 32, h, w)
    assert out.logits.shape == (2, 5, 70, 90)
    assert out.head_logits.shape == (2, 5, h, w)
    assert out.tokens_init.shape == (2, 5, h, w)
    n = 0 if head == "linear" else 3
    assert len(out.blocks) == n
    for b in out.blocks:
        assert b.tokens.shape == (2, 5, h, w)
        if head in ("cse", "sse", "pwe"):
            assert b.features.shape == (2, 32, h, w)
        else:
            assert b.features is None
    if head == "cse":
        assert out.blocks[0].attention.shape == (2, 5, 32)
        torch.testing.assert_close(out.blocks[0].attention.sum(-1), torch.ones(2, 5))
    if head == "sse":
        assert out.blocks[0].attention.shape == (2, 5, 37)
    aux = out.heads[head].aux_logits
    assert len(aux) == (3 if head == "per_pixel_ds" else 0)
    if head == "per_pixel_ds":
        for a, b in zip(aux, out.blocks, strict=True):
            assert a is b.tokens


def test_model_set_shares_one_backbone_pass():
    cfg = ModelConfig(head="cse", extra_heads=("sse", "pwe", "per_pixel", "per_pixel_ds"), **TINY)
    model = build_model(cfg).eval()
    calls = []
    original = model.backbone.forward
    model.backbone.forward = lambda x: (calls.append(1), original(x))[1]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert len(calls) == 1
    assert set(out.heads) == {"cse", "sse", "pwe", "per_pixel", "per_pixel_ds"}
    assert out.primary == "cse"
    torch.testing.assert_close(out.logits, out.logits_by_head["cse"])


# ----------------------------------------------------------------------------- heads with ViT blocks of their own
def test_without_head_vit_blocks_the_set_is_as_before():
    model = build_model(ModelConfig(head="cse", extra_heads=("per_pixel",), **TINY)).eval()
    keys = list(model.state_dict())
    assert not model.head_vit and {k.split(".")[0] for k in keys} == {"backbone", "heads"}
    assert len(model.backbone.blocks) == TINY["depth"] and "backbone.blocks.1.attn.qkv.weight" in keys
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.head_features == {} and out.features_of("per_pixel") is out.features


def test_head_vit_blocks_are_per_head_copies_of_the_last_vit_blocks(tmp_path):
    """Split after block 1 of 3: the same seed builds the same weights as the unsplit set, so the heads' features
    are the full-depth backbone's and every output matches; the copies are independent tensors."""
    from structtoken import load_model, save_model
    from structtoken.evaluate import head_costs

    cfg = ModelConfig(head="per_pixel", extra_heads=("per_pixel_ds",), **(TINY | {"depth": 3}))
    torch.manual_seed(0)
    full = build_model(cfg).eval()
    torch.manual_seed(0)
    model = build_model(cfg.replace(head_vit_blocks=2)).eval()
    assert len(model.backbone.blocks) == 1 and list(model.head_vit) == ["per_pixel", "per_pixel_ds"]
    sd = model.state_dict()
    assert "backbone.blocks.1.attn.qkv.weight" not in sd
    for h in model.head_vit:
        for i in (0, 1):
            for name, v in full.backbone.blocks[1 + i].state_dict().items():
                assert torch.equal(sd[f"head_vit.{h}.blocks.{i}.{name}"], v)
        assert [b.drop_path1.drop_prob for b in model.head_vit[h].blocks] == [
            b.drop_path1.drop_prob for b in full.backbone.blocks[1:]
        ]
    a = model.head_vit["per_pixel"].blocks[0].attn.qkv.weight
    assert a.data_ptr() != model.head_vit["per_pixel_ds"].blocks[0].attn.qkv.weight.data_ptr()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref, out = full(x), model(x)
        for h in cfg.heads:
            assert torch.equal(out.features_of(h), ref.features)
            assert torch.equal(out.heads[h].logits, ref.heads[h].logits)
        assert out.features.shape == ref.features.shape  # the shared part's output (after block 1)
        with pytest.raises(ValueError, match="head_features"):
            model.forward_heads(out.features)
        loaded = load_model(save_model(model, tmp_path / "s.safetensors"))
        assert loaded.cfg.head_vit_blocks == 2
        for h in cfg.heads:
            assert torch.equal(loaded(x).heads[h].logits, out.heads[h].logits)
    model.set_exact_attention(True)
    assert not any(b.attn.fused_attn for t in model.head_vit.values() for b in t.blocks)
    costs = head_costs(model, (64, 64))
    per_pixel_alone = sum(p.numel() for p in model.heads["per_pixel"].parameters()) / 1e6
    assert costs["per_pixel"]["params_m"] > per_pixel_alone
    with pytest.raises(ConfigError, match="head_vit_blocks"):
        cfg.replace(head_vit_blocks=4)


def test_predict_multiscale_flip_returns_probabilities():
    model = build_model(ModelConfig(head="sse", **TINY)).eval()
    import numpy as np
    import torch.nn.functional as F

    from structtoken.segmentor import test_resize_shape

    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    ratios = (0.75, 1.0, 1.5)
    probs = model.predict(img, scale=None, ratios=ratios, flip=True)["sse"]
    assert probs.shape == (1, 5, 50, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 50, 70))
    # mmseg's aug-test written out: every ratio, each with its mirror, softmax averaged at the image's size
    x0 = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - torch.tensor(model.cfg.mean).view(1, 3, 1, 1)) / (
        torch.tensor(model.cfg.std).view(1, 3, 1, 1)
    )
    want = torch.zeros_like(probs)
    with torch.no_grad():
        for r in ratios:
            size = test_resize_shape(50, 70, (round(70 * r), round(50 * r)))  # mmseg's keep-ratio rule
            img_r = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=size, mode="bilinear")
            x = (img_r.round().clamp(0, 255) - x0.new_tensor(model.cfg.mean).view(1, 3, 1, 1)) / x0.new_tensor(
                model.cfg.std
            ).view(1, 3, 1, 1)
            for flip in (False, True):
                xi = x.flip(-1) if flip else x
                lg = model(xi).logits_by_head["sse"]
                lg = lg.flip(-1) if flip else lg
                want += F.interpolate(lg, size=(50, 70), mode="bilinear").softmax(1) / (2 * len(ratios))
    torch.testing.assert_close(probs, want, rtol=1e-4, atol=1e-5)
    # and the ratios and the flip each change the answer (the check above can tell them apart)
    assert (probs - model.predict(img, scale=None, ratios=ratios, flip=False)["sse"]).abs().max() > 1e-4
    assert (probs - model.predict(img, scale=None, ratios=(1.0,), flip=True)["sse"]).abs().max() > 1e-4


def _old_preprocess(image, cfg, scale):
    """The single-function preprocessing before resize_image / normalize were split out (reference)."""
    import numpy as np
    import torch.nn.functional as F

    from structtoken.segmentor import test_resize_shape

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    if scale is not None:
        size = test_resize_shape(image.shape[0], image.shape[1], scale)
        if size != tuple(image.shape[:2]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


@pytest.mark.parametrize("shape", [(50, 70), (64, 64), (37, 200), (300, 20)])
@pytest.mark.parametrize("scale", ["config", None, (96, 48), (64, 64)])
def test_preprocess_is_normalize_of_resize_bit_for_bit(shape, scale):
    import numpy as np

    cfg = ModelConfig(head="cse", test_scale=(128, 64), **TINY)
    model = build_model(cfg).eval()
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    bound = cfg.test_scale if scale == "config" else scale
    seen = model.resize_image(image, scale)
    assert seen.dtype == np.uint8 and seen.ndim == 3 and seen.shape[2] == 3
    if bound is not None:
        from structtoken.segmentor import test_resize_shape

        assert seen.shape[:2] == test_resize_shape(*shape, bound)
    x = model.preprocess(image, scale)
    assert torch.equal(x, model.normalize(seen))
    assert torch.equal(x, _old_preprocess(image, cfg, bound))
    # nothing to undo: the normalisation of the resized image is exactly invertible to it
    back = (x * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)).round()
    np.testing.assert_array_equal(back[0].permute(1, 2, 0).to(torch.uint8).numpy(), seen)


def test_preprocess_accepts_read_only_arrays_without_warning():
    import warnings

    import numpy as np

    model = build_model(ModelConfig(head="cse", **TINY)).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = model.preprocess(image, scale=(96, 48))
        y = model.normalize(image)
    assert x.shape == (1, 3, 48, 58)  # keep-ratio: 40x48 * min(96/48, 48/40) = 48x57.6
    assert y.shape == (1, 3, 40, 48)
    with pytest.raises(ValueError, match="uint8 RGB"):
        model.normalize(image.astype(np.float32))


def test_predict_cli_reads_with_the_one_reader_and_says_where_it_wrote(tmp_path, capsys):
    import warnings

    import numpy as np
    from PIL import Image

    from structtoken import save_model
    from structtoken.predict import main

    torch.manual_seed(0)
    ckpt = save_model(build_model(ModelConfig(head="cse", **TINY)), tmp_path / "set.safetensors")
    grey16 = np.full((40, 56), 1000, np.uint16)  # dark 16-bit: read as 1000/65535, not stretched to white
    Image.fromarray(grey16).save(tmp_path / "dark16.png")
    (tmp_path / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's "non-writable NumPy array"
        rc = main([str(tmp_path / "dark16.png"), str(tmp_path / "broken.jpg"), "--model", str(ckpt), "--out", str(out)])
    assert rc == 1  # one failure
    printed = capsys.readouterr()
    assert f"wrote {out / 'dark16_label.png'} and {out / 'dark16_color.png'}" in printed.out
    assert "error: broken.jpg is not an image" in printed.err
    label = np.asarray(Image.open(out / "dark16_label.png"))
    assert label.shape == (40, 56) and label.max() < 5
    color = np.asarray(Image.open(out / "dark16_color.png")).astype(int)
    # blend = 0.4 * image + 0.6 * palette; the image part is 0.4 * 4 (dark), not 0.4 * 255
    palette = np.asarray(build_model(ModelConfig(head="cse", **TINY)).cfg.class_palette())
    np.testing.assert_allclose(color, np.round(0.4 * 4 + 0.6 * palette[label]), atol=1)


# ----------------------------------------------------------------------------- fast path
def test_fast_path_is_the_default_and_switchable():
    cfg = ModelConfig(head="cse", **TINY)
    model = build_model(cfg).eval()
    assert not model.cfg.exact_attention
    assert all(blk.attn.fused_attn for blk in model.backbone.blocks)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = model(x).head_logits
        assert model.set_exact_attention(True) is model and model.cfg.exact_attention
        assert not cfg.exact_attention  # the caller's config is not mutated
        assert not any(blk.attn.fused_attn for blk in model.backbone.blocks)
        exact = model(x).head_logits
    close(fast, exact)


def _tied_logits(k: int, seed: int) -> torch.Tensor:
    """[2, k, 5, 7] logits on a coarse integer lattice, so the upsampled maps have many exact ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (2, k, 5, 7), generator=g).float() * 0.5


@pytest.mark.parametrize("k,chunk", [(150, 8), (150, 16), (11, 8), (3, 8), (17, 16), (37, 8)])
@pytest.mark.parametrize("size", [(80, 112), (37, 50), (5, 7)])
def test_upsample_argmax_equals_full_upsample_argmax(k, chunk, size):
    from structtoken.segmentor import upsample, upsample_argmax

    for logits in (_tied_logits(k, k), torch.randn(2, k, 5, 7, generator=torch.Generator().manual_seed(k))):
        full = upsample(logits, size)
        assert torch.equal(upsample_argmax(logits, size, chunk=chunk), full.argmax(1))
        # heads' logits come out of channels-last convolutions: same labels, same full upsample
        cl = logits.contiguous(memory_format=torch.channels_last)
        assert torch.equal(upsample(cl, size), full) and upsample(cl, size).is_contiguous()
        assert torch.equal(upsample_argmax(cl, size, chunk=chunk), full.argmax(1))
    with pytest.raises(ValueError, match="multiple of 8"):
        upsample_argmax(logits, size, chunk=4)


@pytest.mark.parametrize("seed", range(4))
def test_upsample_classes_equals_the_full_upsample(seed):
    """Same formula per plane; torch's kernel may round a plane differently by <= 1 ulp depending on where
    its vector loop and thread split fall, so equality is to float32 rounding (most cases are bit-equal)."""
    import random

    from structtoken.segmentor import upsample, upsample_classes

    rnd = random.Random(seed)
    for _ in range(10):
        b, k = rnd.choice((1, 2)), rnd.choice((11, 19, 150))
        h, w = rnd.randint(2, 33), rnd.randint(2, 33)
        size = (rnd.randint(h, 300), rnd.randint(w, 300))  # odd H*W too: planes off the 8-lane grid
        logits = torch.randn(b, k, h, w, generator=torch.Generator().manual_seed(rnd.randint(0, 999)))
        classes = rnd.sample(range(k), rnd.randint(1, min(k, 5)))
        got, full = upsample_classes(logits, size, classes), upsample(logits, size)[:, classes]
        torch.testing.assert_close(got, full, rtol=1.2e-7, atol=1e-6)


def test_output_upsamples_only_what_is_read():
    from structtoken.segmentor import upsample

    cfg = ModelConfig(head="cse", extra_heads=("sse", "per_pixel"), **{**TINY, "num_classes": 19})
    model = build_model(cfg).eval()
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = model(x)
        lazy = out.logits_by_head
        assert not lazy._full  # nothing upsampled by the forward itself
        assert out.out_size_of("sse") == (70, 90)
        labels = {h: out.labels(h) for h in cfg.heads}
        picked = out.class_maps([7, 2, 18], head="sse")
        assert not lazy._full  # labels / class maps never build [B, K, H, W]
        for h in cfg.heads:
            full = upsample(out.heads[h].logits, (70, 90))
            assert torch.equal(labels[h], full.argmax(1))
            assert torch.equal(out.logits_by_head[h], full)
        torch.testing.assert_close(picked, out.logits_by_head["sse"][:, [7, 2, 18]], rtol=1.2e-7, atol=1e-6)
        assert torch.equal(out.labels(), out.logits.argmax(1))
        assert set(lazy._full) == set(cfg.heads)
        assert sorted(lazy) == sorted(cfg.heads) and len(lazy) == 3


# ----------------------------------------------------------------------------- heads side by side
def test_single_threaded_pool_workers_run_one_thread_and_leave_the_rest_alone():
    import threading

    from structtoken.devices import in_single_threaded_pool, single_threaded_pool

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1, or the workers' setting could not be told from ours
    try:
        pool = single_threaded_pool(3)
        assert single_threaded_pool(3) is pool
        seen = list(pool.map(lambda _: (torch.get_num_threads(), in_single_threaded_pool()), range(6)))
        assert seen == [(1, True)] * 6
        later: list[int] = []  # a thread started afterwards takes the caller's count, not the workers'
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert torch.get_num_threads() == 2 and later == [2] and not in_single_threaded_pool()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="workers"):
        single_threaded_pool(0)


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_heads_side_by_side_equal_the_heads_in_turn(mode):
    cfg = ModelConfig(head="cse", extra_heads=("sse", "pwe", "per_pixel"), **{**TINY, "num_classes": 7})
    model = build_model(cfg).eval()
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    ctx = torch.inference_mode if mode == "inference" else torch.no_grad
    import threading

    ran_on: list[str] = []
    for head in model.heads.values():
        head.register_forward_pre_hook(lambda *_: ran_on.append(threading.current_thread().name))
    with ctx():
        in_turn = model(x)
        assert ran_on == [threading.current_thread().name] * 4
        ran_on.clear()
        assert model.set_head_workers(2) is model and model.head_workers == 2
        side = model(x)
        assert len(ran_on) == 4 and all(n.startswith("torch-1-thread") for n in ran_on)
    for name in cfg.heads:
        a, b = in_turn.heads[name], side.heads[name]
        close(b.logits, a.logits)
        assert len(a.blocks) == len(b.blocks)
        for ba, bb in zip(a.blocks, b.blocks, strict=True):
            close(bb.tokens, ba.tokens)
        assert b.logits.is_inference() == (mode == "inference")  # the caller's mode, carried into the workers
        # one thread per head: float32 rounding apart, so a near-tie may flip, but hardly ever
        assert (side.labels(name) == in_turn.labels(name)).float().mean() >= 0.999
    # with autograd on (training) the heads run in turn, on the caller's thread
    ran_on.clear()
    y = model(x)
    assert y.logits.requires_grad and ran_on == [threading.current_thread().name] * 4
    with pytest.raises(ValueError, match="head workers"):
        model.set_head_workers(0)

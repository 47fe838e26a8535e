"""Heads: the contract for every kind, the two new heads (fcn, segmenter), capacity matching at the
CamVid configuration, seeded initialisation and the camvid_v2_stage2 recipe."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from test_train import tiny_recipe, write_dataset

from structtoken import ModelConfig, build_model, load_model, save_model
from structtoken.config import COMPARED_HEADS, HEAD_KINDS, HEAD_NAMES, PARADIGMS, STRUCTTOKEN_HEADS
from structtoken.heads import STRUCTTOKEN_BLOCKS, FCNHead, SegmenterHead, StructTokenHead, build_head
from structtoken.readouts import readout_unavailable, stage_maps
from structtoken.train import V2_STAGE2_HEADS, Trainer, recipe, seed_head_inits

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = tuple(HEAD_NAMES)


def tiny_all(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_config(head=ALL[0], extra_heads=ALL[1:])).eval()


def test_registries_agree():
    assert set(HEAD_KINDS) == {kind for kind, _ in HEAD_NAMES.values()}
    assert HEAD_KINDS[:5] == ("cse", "sse", "pwe", "per_pixel", "linear")  # their index seeds their init
    assert set(STRUCTTOKEN_BLOCKS) == set(STRUCTTOKEN_HEADS)
    assert set(COMPARED_HEADS) == set(HEAD_NAMES) - {"linear"} == set(V2_STAGE2_HEADS)
    assert PARADIGMS["dynamic per-pixel"] == ("segmenter",)


@pytest.mark.parametrize("name", ALL)
def test_every_head_follows_the_contract(name):
    model = tiny_all()
    head = model.heads[name]
    k, c = model.cfg.num_classes, model.cfg.embed_dim
    with torch.no_grad():
        out = head(torch.randn(2, c, 3, 5))
    assert out.logits.shape == out.tokens_init.shape == (2, k, 3, 5)
    n = 0 if name == "linear" else model.cfg.num_blocks
    assert len(out.blocks) == n and out.num_stages == n + 2
    for b in out.blocks:
        assert b.tokens.shape == (2, k, 3, 5)
    maps = stage_maps(out)
    assert maps[-1] is out.logits
    width = c if out.stage_field == "features" else k
    assert [m.shape[1] for m in maps[:-1]] == [width] * (n + 1)


def test_fcn_blocks_are_its_layers_read_through_the_classifier():
    model = tiny_all()
    head = model.heads["fcn"]
    assert isinstance(head, FCNHead)
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        out = head(x)
    assert out.stage_field == "features" and torch.equal(out.features_init, x)
    assert torch.equal(out.tokens_init, head.classifier(x))
    for b in out.blocks:
        assert b.features.shape == (1, 32, 4, 4) and b.attention is None
        assert torch.equal(b.tokens, head.classifier(b.features))
    assert torch.equal(out.logits, out.blocks[-1].tokens)  # eval: dropout is off
    reason = readout_unavailable("fcn", head, "raw", None)
    assert "32 feature channels" in reason and "K = 4" in reason


def test_segmenter_masks_after_every_layer_and_cosines():
    model = tiny_all()
    head = model.heads["segmenter"]
    assert isinstance(head, SegmenterHead)
    with torch.no_grad():
        out = head(torch.randn(2, 32, 3, 4))
        raw = [head.cosine_readout(s, m, out) for s, m in enumerate(stage_maps(out))]
    assert readout_unavailable("segmenter", head, "raw") is not None  # no channel is a class
    assert out.classes_init.shape == (2, 4, 32)
    for b in out.blocks:
        assert b.features.shape == (2, 32, 3, 4) and b.classes.shape == (2, 4, 32)
    assert torch.equal(out.logits, out.blocks[-1].tokens)
    # mask_norm: LayerNorm over the K classes of every pixel
    torch.testing.assert_close(out.logits.mean(1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    # raw at block 1: cos(patch token, class embedding)
    p = out.blocks[0].features[0, :, 1, 2]
    cos = F.cosine_similarity(p[None], out.blocks[0].classes[0], dim=1)
    torch.testing.assert_close(raw[1][0, :, 1, 2], cos, atol=1e-6, rtol=0)
    assert all(r.abs().max() <= 1 + 1e-6 for r in raw[:-1])
    assert torch.equal(raw[-1], out.logits)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name):
    model = tiny_all()
    head = model.heads[name].train()
    out = head(torch.randn(2, 32, 4, 4))
    loss = F.cross_entropy(out.logits, torch.randint(0, 4, (2, 4, 4))) + sum(a.square().mean() for a in out.aux_logits)
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing
    if name in ("fcn", "segmenter"):
        assert all(p.grad.abs().sum() > 0 for p in head.parameters())


def test_new_heads_are_capacity_matched_at_the_camvid_config():
    cfg = recipe("camvid_v2_stage2").model
    assert (cfg.embed_dim, cfg.num_classes, cfg.token_grid, cfg.num_blocks) == (192, 11, (16, 16), 4)
    count = {h: sum(p.numel() for p in build_head(h, cfg).parameters()) for h in cfg.heads}
    assert (count["cse"], count["sse"], count["pwe"]) == (1_657_736, 2_876_808, 2_353_880)
    median = statistics.median(count[h] for h in STRUCTTOKEN_HEADS)
    for h in ("fcn", "segmenter"):
        assert 0.7 * median <= count[h] <= 1.3 * median, (h, count[h], median)
    assert (count["fcn"], count["segmenter"]) == (2_659_403, 1_892_758)


def test_seeded_init_is_deterministic_and_shared_by_kind():
    a, b = tiny_all(seed=1), tiny_all(seed=2)
    seed_head_inits(a, 5)
    seed_head_inits(b, 5)
    for name in ALL:
        if name == "linear":
            continue
        for (k, x), (_, y) in zip(a.heads[name].state_dict().items(), b.heads[name].state_dict().items(), strict=True):
            assert torch.equal(x, y), (name, k)
    seed_head_inits(b, 6)
    for name in ("fcn", "segmenter"):
        assert not torch.equal(
            a.heads[name].classifier.weight if name == "fcn" else a.heads[name].cls_emb,
            b.heads[name].classifier.weight if name == "fcn" else b.heads[name].cls_emb,
        )
    # segmenter's own init (mmseg's): class embeddings N(0, 0.02^2) (truncated at +-2, as torch's default)
    assert 0.01 < float(a.heads["segmenter"].cls_emb.detach().std()) < 0.03


def test_structtoken_head_is_one_skeleton():
    model = tiny_all()
    for kind in STRUCTTOKEN_HEADS:
        head = model.heads[kind]
        assert type(head) is StructTokenHead and head.kind == kind
        assert isinstance(head.blocks[0], STRUCTTOKEN_BLOCKS[kind])
    with pytest.raises(ValueError, match="cse, sse, pwe"):
        StructTokenHead("xyz", 32, 4, (4, 4))


def test_new_heads_round_trip_through_our_checkpoint(tmp_path):
    model = tiny_all()
    loaded = load_model(save_model(model, tmp_path / "s.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for name in ("fcn", "segmenter"):
        assert torch.equal(a.logits_by_head[name], b.logits_by_head[name])


# ----------------------------------------------------------------------------- the v2 stage-2 recipe
def test_v2_stage2_recipe_is_stage2_with_seven_heads_on_the_v2_set():
    v1, v2 = recipe("camvid_stage2"), recipe("camvid_v2_stage2")
    assert v2.model.heads == V2_STAGE2_HEADS
    assert v2.model.replace(head="cse", extra_heads=(), description="") == recipe("camvid_v2_stage1").model.replace(
        head="cse", extra_heads=(), description=""
    )
    d1, d2 = v1.to_dict(), v2.to_dict()
    d1.pop("model"), d2.pop("model"), d1.pop("recipe"), d2.pop("recipe")
    assert d1 == d2 and v2.freeze_backbone and v2.class_weights


def test_v2_stage2_two_iterations_train_all_seven_heads(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = tiny_recipe("camvid_v2_stage2")
    torch.manual_seed(3)
    stage1 = save_model(build_model(tc.model.replace(head="linear", extra_heads=())), tmp_path / "s1.safetensors")
    trainer = Trainer(tc, data, tmp_path / "run", torch.device("cpu"), init_from=str(stage1), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.run()
    after = load_model(final).state_dict()
    initial = load_model(stage1).state_dict()
    for k in before:
        if k.startswith("backbone."):
            assert torch.equal(after[k], initial[k]), k
    for name in V2_STAGE2_HEADS:
        keys = [k for k in before if k.startswith(f"heads.{name}.") and before[k].is_floating_point()]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), name
    assert ModelConfig.from_dict(load_model(final).cfg.to_dict()).heads == V2_STAGE2_HEADS


def test_init_from_a_trained_set_copies_the_backbone_only(tmp_path):
    """Starting stage 2 from a set with trained heads of the same names keeps the heads' seeded init."""
    data = write_dataset(tmp_path / "data")
    tc = tiny_recipe("camvid_stage2", head="per_pixel", extra_heads=("per_pixel_ds",))
    torch.manual_seed(11)
    trained = build_model(tc.model)
    for p in trained.heads.parameters():
        p.data.add_(1.0)
    src = save_model(trained, tmp_path / "set.safetensors")
    fresh = Trainer(tc, data, tmp_path / "a", torch.device("cpu"), progress=False).model.state_dict()
    init = Trainer(tc, data, tmp_path / "b", torch.device("cpu"), init_from=str(src), progress=False)
    got, ref = init.model.state_dict(), trained.state_dict()
    for k, v in got.items():
        if k.startswith("backbone."):
            assert torch.equal(v, ref[k]), k
        elif k.startswith("heads."):
            assert torch.equal(v, fresh[k]), k


@pytest.mark.parametrize("kind", STRUCTTOKEN_HEADS)
def test_structtoken_heads_start_as_the_official_init_weights(kind):
    """The official ``init_weights`` rules, one by one: tokens truncated normal std 0.02; Conv2d Kaiming normal
    fan-in (ReLU gain), zero bias; LayerNorm weight 1, bias 0; Linear truncated normal std 0.02, zero bias."""
    cfg = recipe("camvid_v2_stage2").model
    head = build_head(kind, cfg)
    head.linear_probe = torch.nn.Linear(256, 64)  # the Linear rule (the official heads hold none themselves)
    with torch.no_grad():  # disturb everything so that init_weights must set it
        for p in head.parameters():
            p.fill_(0.7)
    torch.manual_seed(0)
    with torch.no_grad():
        head.init_weights()
    head.requires_grad_(False)
    assert float(head.tokens.std()) == pytest.approx(0.02, rel=0.05)
    assert float(head.tokens.abs().max()) <= 2.0
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 10
    for m in convs:
        fan_in = m.weight[0].numel()
        if m.weight.numel() >= 4096:
            assert float(m.weight.std()) == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.1), m
        assert float(m.weight.mean().abs()) < 5 * (2.0 / fan_in / m.weight.numel()) ** 0.5  # centred
        assert torch.count_nonzero(m.bias) == 0
    norms = [m for m in head.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0 for m in norms)
    assert float(head.linear_probe.weight.std()) == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(head.linear_probe.bias) == 0


def test_seed_head_inits_uses_the_official_rules_for_structtoken_heads():
    model = tiny_all()
    seed_head_inits(model, 3)
    for kind in STRUCTTOKEN_HEADS:
        head = model.heads[kind]
        assert all(torch.count_nonzero(m.bias) == 0 for m in head.modules() if isinstance(m, torch.nn.Conv2d))
        conv = head.proj
        assert float(conv.weight.detach().std()) == pytest.approx((2.0 / conv.weight[0].numel()) ** 0.5, rel=0.15)


def test_head_costs_count_attention_on_either_path_and_leave_the_model_as_it_was():
    from structtoken.evaluate import head_costs

    model = tiny_all()
    model.set_exact_attention(False)
    fused = head_costs(model, (64, 64))
    assert not model.cfg.exact_attention and all(p.requires_grad for p in model.parameters())
    model.set_exact_attention(True)
    attn = [m for m in model.heads.modules() if hasattr(m, "fused_attn")]  # Segmenter's timm blocks follow it
    assert attn and not any(m.fused_attn for m in attn)
    assert head_costs(model, (64, 64)) == fused  # the counter sees the attention matmuls either way
    assert fused["segmenter"]["gflops"] > 0 and fused["backbone"]["gflops"] > 0

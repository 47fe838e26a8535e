"""Training and evaluation on a tiny synthetic dataset written to a temp dir."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from structtoken import ModelConfig, load_model, save_model
from structtoken.data import SegmentationDataset
from structtoken.evaluate import evaluate_model
from structtoken.segmentor import build_model
from structtoken.train import (
    V2_BLOCKS_HEADS,
    V2_PROBE_FT_HEADS,
    V2_STAGE2_HEADS,
    TrainConfig,
    Trainer,
    build_parser,
    init_source_key,
    lr_factor,
    main,
    param_groups,
    recipe,
    seg_loss,
    train_config_from_args,
)

CLASSES = ["sky", "road", "car"]


def write_dataset(root: Path, n_train: int = 6, n_val: int = 2, size=(48, 64)) -> Path:
    """Images whose colour encodes the class: sky on top, road below, a car box, with some ignore pixels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    palette = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]
    (root / "classes.json").write_text(
        json.dumps(
            {
                "classes": CLASSES,
                "palette": palette,
                "ignore_index": 255,
                "median_frequency_weights": [1.0, 1.0, 2.0],
            }
        )
    )
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            lab = np.zeros((h, w), np.uint8)
            horizon = int(rng.integers(h // 3, 2 * h // 3))
            lab[horizon:] = 1
            y, x = int(rng.integers(horizon - 8, h - 12)), int(rng.integers(0, w - 20))
            lab[y : y + 12, x : x + 20] = 2
            lab[0, :5] = 255
            colors = np.array([[200, 220, 250], [90, 90, 90], [200, 30, 30]], np.uint8)
            img = colors[np.minimum(lab, 2)] + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(lab).save(root / split / "labels" / f"{split}{i}.png")
    return root


TINY_MODEL: dict[str, Any] = dict(
    embed_dim=32, depth=1, num_heads=2, num_blocks=2, num_classes=3, image_size=(32, 32), classes=tuple(CLASSES)
)
"""The 32-wide, 1-deep model (3 classes, 32 px) of the tiny training configs."""


def tiny_tc(**kw) -> TrainConfig:
    model = ModelConfig(head="cse", extra_heads=("per_pixel", "per_pixel_ds"), **TINY_MODEL)
    base = dict(
        model=model,
        crop_size=(32, 32),
        scale=(64, 48),
        batch_size=2,
        iters=6,
        lr=2e-3,
        head_lr_mult=1.0,
        warmup_iters=1,
        grad_clip=1.0,
        log_interval=1,
        ckpt_interval=3,
        num_workers=0,
        photometric=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def tiny_recipe(name: str, **model: Any) -> TrainConfig:
    """Recipe ``name`` shrunk to a 32-wide, 1-deep model (``model`` overrides any of that) on 32 px crops
    for 2 iterations."""
    tc = recipe(name)
    tc.model = tc.model.replace(**(TINY_MODEL | dict(stem="patch", palette=()) | model))
    tc.crop_size, tc.scale, tc.batch_size, tc.iters, tc.warmup_iters = (32, 32), (64, 48), 2, 2, 1
    tc.num_workers, tc.ckpt_interval, tc.log_interval = 0, 2, 1
    return tc


def test_lr_schedule_poly_with_linear_warmup():
    tc = tiny_tc(iters=100, warmup_iters=10, lr=1.0)
    assert lr_factor(0, tc) == pytest.approx(1e-6)
    assert lr_factor(5, tc) == pytest.approx((1 - 0.05) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_factor(50, tc) == pytest.approx(0.5)
    assert lr_factor(99, tc) == pytest.approx(0.01)


def test_param_groups_head_multiplier_and_no_decay():
    tc = tiny_tc(head_lr_mult=10.0, lr=1e-3, weight_decay=0.05)
    model = build_model(tc.model)
    groups = param_groups(model, tc)
    ids = {id(p): g for g in groups for p in g["params"]}
    assert ids[id(model.backbone.pos_embed)]["weight_decay"] == 0.0
    assert ids[id(model.backbone.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert ids[id(model.heads["cse"].blocks[0].ffn_tokens.pwconv1.weight)]["lr"] == pytest.approx(1e-2)
    assert ids[id(model.heads["cse"].tokens)]["weight_decay"] == 0.0


def test_training_lowers_the_loss(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = tiny_tc(iters=30, ckpt_interval=30)
    trainer = Trainer(tc, data, tmp_path / "run", torch.device("cpu"), progress=False)
    final = trainer.run()
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [sum(v for k, v in r.items() if k.startswith("loss/")) for r in logs if "loss/cse" in r]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert "val_miou/cse" in logs[-1]
    model = load_model(final)
    assert model.cfg.heads == ("cse", "per_pixel", "per_pixel_ds")


def assert_resume_is_bit_exact(tc: TrainConfig, data: Path, tmp: Path, pause: int, init_from: str | None = None):
    """A run of ``tc`` straight through equals the same run paused after iteration ``pause`` (a checkpoint
    there) and resumed in a new Trainer, weight for weight."""
    straight = Trainer(tc, data, tmp / "a", torch.device("cpu"), init_from=init_from, progress=False)
    straight.run()
    first = Trainer(tc, data, tmp / "b", torch.device("cpu"), init_from=init_from, progress=False)
    assert first.run(stop_at=pause) is None  # paused (as an interrupted run)
    second = Trainer(tc, data, tmp / "b", torch.device("cpu"), init_from=init_from, progress=False)
    second.run(resume=True)
    assert json.loads((tmp / "b" / "log.jsonl").read_text().splitlines()[pause])["iter"] == pause + 1
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_resume_continues_bit_exactly(tmp_path):
    assert_resume_is_bit_exact(tiny_tc(), write_dataset(tmp_path / "data"), tmp_path, pause=3)


def test_deep_supervision_pair_starts_identical_and_differs_only_by_loss(tmp_path):
    """Same start, same batches: with the deep-supervision weight at 0 the pair ends identical, weight for
    weight; with mmseg's 0.4 it differs. So the loss is the only difference."""
    data = write_dataset(tmp_path / "data")
    ends = {}
    for ds_weight in (0.0, 0.4):
        tc = tiny_tc(iters=3, freeze_backbone=True, ds_weight=ds_weight)
        trainer = Trainer(tc, data, tmp_path / f"run{ds_weight}", torch.device("cpu"), progress=False)
        a, b = trainer.model.heads["per_pixel"], trainer.model.heads["per_pixel_ds"]
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
        start = {k: v.clone() for k, v in a.state_dict().items()}
        trainer.run()
        assert any(not torch.equal(start[k], v) for k, v in a.state_dict().items())
        ends[ds_weight] = all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
    assert ends == {0.0: True, 0.4: False}


def test_frozen_backbone_stays_unchanged(tmp_path):
    data = write_dataset(tmp_path / "data")
    trainer = Trainer(
        tiny_tc(freeze_backbone=True, iters=3), data, tmp_path / "run", torch.device("cpu"), progress=False
    )
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in trainer.model.heads.state_dict().items()}
    trainer.run()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.backbone.state_dict().items())
    for name in trainer.model.heads:  # while every head trained
        prefix = f"{name}."
        moved = [k for k, v in trainer.model.heads.state_dict().items() if k.startswith(prefix)]
        assert any(not torch.equal(heads_before[k], trainer.model.heads.state_dict()[k]) for k in moved), name


def test_cli_reports_missing_data_folder(tmp_path, capsys):
    code = main(
        [
            "--recipe",
            "camvid_stage1",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
            "--iters",
            "1",
        ]
    )
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


class _FixedModel:
    """Stands in for a Segmentor: predicts a fixed label map per image (as probabilities)."""

    def __init__(self, preds, k):
        self.preds, self.cfg, self.training = (
            iter(preds),
            ModelConfig(head="cse", num_classes=k, embed_dim=32, num_heads=2, image_size=64),
            False,
        )

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def predict(self, image, **kw):
        pred = torch.as_tensor(next(self.preds))
        return {"cse": torch.nn.functional.one_hot(pred.long(), self.cfg.num_classes).permute(2, 0, 1)[None].float()}


def test_evaluation_gives_the_known_miou(tmp_path):
    root = tmp_path / "data"
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]]}))
    label = np.array([[0, 0], [1, 255]], np.uint8)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "val" / "images" / "x.png")
    Image.fromarray(label).save(root / "val" / "labels" / "x.png")
    # prediction [[0, 1], [1, 1]]: class a: tp 1, fp 0, fn 1 -> IoU 1/2; class b: tp 1, fp 1, fn 0 -> 1/2
    res = evaluate_model(
        _FixedModel([np.array([[0, 1], [1, 1]])], 2),
        SegmentationDataset(root, "val"),
        heads=["cse"],
        progress=False,
        save_predictions=tmp_path / "pred",
    )
    m = res["heads"]["cse"]
    assert m["miou"] == pytest.approx(0.5) and m["iou_per_class"] == pytest.approx([0.5, 0.5])
    assert m["pixel_accuracy"] == pytest.approx(2 / 3)
    saved = np.asarray(Image.open(tmp_path / "pred" / "cse" / "x.png"))
    assert saved.tolist() == [[0, 1], [1, 1]]


def test_evaluation_uses_the_datasets_ignore_index(tmp_path):
    root = tmp_path / "data"
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    meta = {"classes": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]], "ignore_index": 7}
    (root / "classes.json").write_text(json.dumps(meta))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "val" / "images" / "x.png")
    Image.fromarray(np.array([[0, 0], [1, 7]], np.uint8)).save(root / "val" / "labels" / "x.png")
    res = evaluate_model(
        _FixedModel([np.array([[0, 1], [1, 0]])], 2), SegmentationDataset(root, "val"), heads=["cse"], progress=False
    )
    assert res["heads"]["cse"]["pixel_accuracy"] == pytest.approx(2 / 3)  # the pixel labelled 7 is not counted
    assert res["data"] == "data"


def test_evaluate_cli_json_names_no_machine_paths(tmp_path, capsys):
    from structtoken import save_model
    from structtoken.evaluate import main as evaluate_main

    data = write_dataset(tmp_path / "mydata", n_train=1, n_val=2)
    torch.manual_seed(0)
    model = tmp_path / "models" / "tiny.safetensors"
    model.parent.mkdir()
    save_model(build_model(tiny_tc().model), model)
    out = tmp_path / "res.json"
    assert evaluate_main(["--model", str(model), "--data", str(data), "--json", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert str(tmp_path) not in text and "/" not in text  # no path of any kind
    res = json.loads(text)
    assert res["model"] == "tiny.safetensors" and res["data"] == "mydata" and res["split"] == "val"
    assert set(res["heads"]) == {"cse", "per_pixel", "per_pixel_ds"}
    assert "| cse |" in capsys.readouterr().out


def test_config_differences_allows_added_fields_only():
    from structtoken.train import config_differences

    saved = {"iters": 10, "model": {"head": "linear", "depth": 8}}
    assert config_differences(saved, {"iters": 10, "model": {"head": "linear", "depth": 8, "new": 1}, "x": 2}) == []
    assert config_differences(saved, {"iters": 12, "model": {"head": "linear", "depth": 8}}) == ["iters: 10 -> 12"]
    assert config_differences(saved, {"iters": 10, "model": {"head": "linear"}}) == ["model.depth: removed"]


def test_v2_stage1_recipe_is_v1_two_and_a_half_times_longer():
    from structtoken.train import recipe

    v1, v2 = recipe("camvid_stage1"), recipe("camvid_v2_stage1")
    assert v2.iters == 12_500 == round(2.5 * v1.iters)
    assert v2.model.replace(description="") == v1.model.replace(description="")
    assert (v2.lr, v2.batch_size, v2.crop_size, v2.weight_decay) == (
        v1.lr,
        v1.batch_size,
        v1.crop_size,
        v1.weight_decay,
    )


def test_seg_loss_ignores_the_given_index():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    label = torch.tensor([[[0, 1], [7, 2]]])
    full = seg_loss(logits, label, None, ignore_index=7)
    valid = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[label != 7], label[label != 7])
    torch.testing.assert_close(full, valid)
    with pytest.raises((IndexError, RuntimeError)):  # 7 is not a class of 3 unless it is ignored
        seg_loss(logits, label, None)


def test_trainer_uses_the_dataset_ignore_index(tmp_path):
    """A dataset whose ignore index is 250 (not 255) trains: padding and ignored pixels carry 250."""
    data = write_dataset(tmp_path / "data")
    meta = json.loads((data / "classes.json").read_text())
    meta["ignore_index"] = 250
    (data / "classes.json").write_text(json.dumps(meta))
    for f in data.glob("*/labels/*.png"):
        lab = np.array(Image.open(f))
        lab[lab == 255] = 250
        Image.fromarray(lab).save(f)
    trainer = Trainer(tiny_tc(iters=2, warmup_iters=1), data, tmp_path / "run", torch.device("cpu"), progress=False)
    assert trainer.ignore_index == 250
    trainer.run()
    rec = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(v) for r in rec for k, v in r.items() if k.startswith("loss/"))


# ----------------------------------------------------------------------------- the v2 programme (issue 10)
def _stage1(tmp_path: Path, tc: TrainConfig, seed: int = 3) -> Path:
    """A stage-1 file (full-depth backbone + linear head) fitting ``tc``'s set, random weights from ``seed``."""
    torch.manual_seed(seed)
    cfg = tc.model.replace(head="linear", extra_heads=(), head_vit_blocks=0, num_blocks=2)
    return save_model(build_model(cfg), tmp_path / "stage1.safetensors")


def _cli_config(*argv: str) -> TrainConfig:
    return train_config_from_args(build_parser().parse_args(["--out", "unused", *argv]))


def test_v2_recipes_share_stage2_schedule_and_batches():
    v2 = recipe("camvid_v2_stage2").to_dict()
    v2.pop("model"), v2.pop("recipe")
    for name, heads in (("camvid_v2_blocks", V2_BLOCKS_HEADS), ("camvid_v2_probe_ft", V2_PROBE_FT_HEADS)):
        tc = recipe(name)
        assert tc.model.heads == heads and tc.freeze_backbone
        d = tc.to_dict()
        d.pop("model")
        assert d.pop("recipe") == name
        assert d == v2, name  # same seed -> same data order, crops, schedule as stage 2
    assert V2_BLOCKS_HEADS == ("cse", "pwe") and V2_PROBE_FT_HEADS == ("per_pixel", "per_pixel_ds")
    assert recipe("camvid_v2_probe_ft").model.head_vit_blocks == 2 and recipe("camvid_v2_blocks").model.num_blocks == 4
    base = recipe("camvid_v2_stage2").model.replace(head="cse", extra_heads=(), description="")
    for name in ("camvid_v2_blocks", "camvid_v2_probe_ft"):
        m = recipe(name).model
        assert m.replace(head="cse", extra_heads=(), description="", head_vit_blocks=0) == base, name


def test_cli_restricts_heads_and_sets_the_block_count():
    tc = _cli_config("--recipe", "camvid_v2_stage2", "--heads", "per_pixel", "per_pixel_ds", "--seed", "3")
    assert tc.model.heads == ("per_pixel", "per_pixel_ds") and tc.seed == 3
    tc = _cli_config("--recipe", "camvid_v2_blocks", "--num-blocks", "6", "--seed", "1")
    assert tc.model.heads == ("cse", "pwe") and tc.model.num_blocks == 6
    assert _cli_config("--recipe", "camvid_v2_blocks").model.num_blocks == 4
    with pytest.raises(ValueError, match="unknown head"):
        _cli_config("--recipe", "camvid_v2_stage2", "--heads", "per_pixel", "nope")
    with pytest.raises(ValueError, match="num_blocks"):
        _cli_config("--recipe", "camvid_v2_blocks", "--num-blocks", "0")
    with pytest.raises(SystemExit):
        main(["--recipe", "camvid_v2_blocks", "--num-blocks", "0", "--out", "unused"])


@pytest.mark.parametrize("n", [1, 3])
def test_block_ablation_trains_saves_resumes_with_n_blocks(tmp_path, n):
    data = write_dataset(tmp_path / "data")
    tc = tiny_recipe("camvid_v2_blocks", num_blocks=n)
    tc.iters, tc.ckpt_interval = 3, 1
    s1 = _stage1(tmp_path, tc)
    straight = Trainer(tc, data, tmp_path / "a", torch.device("cpu"), init_from=str(s1), progress=False)
    straight.run()
    first = Trainer(tc, data, tmp_path / "b", torch.device("cpu"), init_from=str(s1), progress=False)
    assert first.run(stop_at=1) is None
    second = Trainer(tc, data, tmp_path / "b", torch.device("cpu"), init_from=str(s1), progress=False)
    final = second.run(resume=True)
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    model = load_model(final)
    assert model.cfg.heads == ("cse", "pwe") and model.cfg.num_blocks == n
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert all(len(out.heads[h].blocks) == n for h in ("cse", "pwe"))


def _probe_ft(**kw: Any) -> TrainConfig:
    """camvid_v2_probe_ft on a 3-deep tiny ViT: block 0 shared, blocks 1-2 copied per head."""
    tc = tiny_recipe("camvid_v2_probe_ft", depth=3)
    for k, v in kw.items():
        setattr(tc, k, v)
    return tc


def test_probe_ft_copies_start_as_the_stage1_blocks(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = _probe_ft()
    s1 = _stage1(tmp_path, tc)
    trainer = Trainer(tc, data, tmp_path / "run", torch.device("cpu"), init_from=str(s1), progress=False)
    model, stage1 = trainer.model.eval(), load_model(s1)
    src, sd = stage1.state_dict(), model.state_dict()
    copies = [k for k in sd if k.startswith("head_vit.")]
    assert {k.split(".")[1] for k in copies} == set(V2_PROBE_FT_HEADS)
    assert init_source_key("head_vit.per_pixel_ds.blocks.1.mlp.fc2.bias", tc.model) == "backbone.blocks.2.mlp.fc2.bias"
    for k in copies:
        assert torch.equal(sd[k], src[init_source_key(k, tc.model)]), k
    assert not any(k.startswith("backbone.blocks.1.") for k in sd)  # the shared part stops after block 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, ref = model(x), stage1.backbone(x)
    for h in V2_PROBE_FT_HEADS:
        torch.testing.assert_close(out.features_of(h), ref, rtol=1e-5, atol=1e-6)


def test_probe_ft_a_step_moves_each_heads_copy_and_not_the_shared_part(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = _probe_ft(iters=1, warmup_iters=0, ckpt_interval=1)
    s1 = str(_stage1(tmp_path, tc))
    trainer = Trainer(tc, data, tmp_path / "run", torch.device("cpu"), init_from=s1, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.run()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))

    def copy_of(h: str, sd: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [v for k, v in sd.items() if k.startswith(f"head_vit.{h}.") and v.is_floating_point()]

    for h in V2_PROBE_FT_HEADS:
        assert any(not torch.equal(a, b) for a, b in zip(copy_of(h, before), copy_of(h, after), strict=True)), h
    # the pair starts identical (same kind: same seeded head, same stage-1 copies) and its copies part at once
    assert all(torch.equal(a, b) for a, b in zip(copy_of("per_pixel", before), copy_of("per_pixel_ds", before)))
    assert any(not torch.equal(a, b) for a, b in zip(copy_of("per_pixel", after), copy_of("per_pixel_ds", after)))
    # the saved set rebuilds with its copies and gives the training-time outputs and evaluation
    loaded = load_model(final)
    assert list(loaded.head_vit) == list(V2_PROBE_FT_HEADS) and loaded.cfg.head_vit_blocks == 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = trainer.model.eval()(x), loaded(x)
    for h in V2_PROBE_FT_HEADS:
        assert torch.equal(a.logits_by_head[h], b.logits_by_head[h]) and torch.equal(a.features_of(h), b.features_of(h))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    res = evaluate_model(loaded.set_exact_attention(True), SegmentationDataset(data, "val"), progress=False)
    assert {f"val_miou/{h}": round(m["miou"], 4) for h, m in res["heads"].items()} == {
        k: v for k, v in logged.items() if k.startswith("val_miou/")
    }


def test_probe_ft_param_groups_give_the_copies_the_backbone_lr():
    tc = _probe_ft(head_lr_mult=10.0, lr=1e-3)
    model = build_model(tc.model)
    model.backbone.requires_grad_(False)
    groups = {id(p): g for g in param_groups(model, tc) for p in g["params"]}
    assert groups[id(model.head_vit["per_pixel"].blocks[0].attn.qkv.weight)]["lr"] == pytest.approx(1e-3)
    assert groups[id(model.heads["per_pixel"].proj.weight)]["lr"] == pytest.approx(1e-2)
    assert id(model.backbone.blocks[0].attn.qkv.weight) not in groups


def test_probe_ft_resume_continues_bit_exactly(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = _probe_ft(iters=4, ckpt_interval=2)
    assert_resume_is_bit_exact(tc, data, tmp_path, pause=2, init_from=str(_stage1(tmp_path, tc)))


def test_init_from_needs_the_full_depth_backbone_for_the_copies(tmp_path):
    data = write_dataset(tmp_path / "data")
    tc = _probe_ft()
    torch.manual_seed(0)
    split = save_model(build_model(tc.model), tmp_path / "split.safetensors")  # its blocks 1-2 live per head
    with pytest.raises(ValueError, match=r"backbone does not fit.*backbone\.blocks\.1\."):
        Trainer(tc, data, tmp_path / "run", torch.device("cpu"), init_from=str(split), progress=False)


SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_v2.sh"
V2_RUNS = [
    *(f"camvid_v2_stage2_{g}_seed{s}" for s in (0, 1, 2) for g in ("structtoken", "baselines")),
    *(f"camvid_v2_ds_seed{s}" for s in (3, 4)),
    *(f"camvid_v2_probe_ft_seed{s}" for s in (0, 1, 2)),
    *(f"camvid_v2_blocks{n}_seed{s}" for n in (1, 2, 6) for s in (0, 1)),
]
SHIPS_ALL = {"camvid_v2_stage2_structtoken_seed0", "camvid_v2_stage2_baselines_seed0", "camvid_v2_ds_seed3"}
SHIPS_ALL |= {"camvid_v2_ds_seed4"}
SHIPS_PAIR = {"camvid_v2_stage2_baselines_seed1", "camvid_v2_stage2_baselines_seed2"}


def _script_copy(tmp: Path) -> Path:
    """The script in a copy of the checkout layout without committed results (they land in the copy)."""
    import shutil

    (tmp / "repo" / "scripts").mkdir(parents=True)
    return Path(shutil.copy(SCRIPT, tmp / "repo" / "scripts" / "train_v2.sh"))


def _script(script: Path, runs: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "RUNS": str(runs), **env}
    return subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, timeout=60)


def test_train_v2_script_runs_every_v2_run_with_valid_arguments(tmp_path):
    """DRY_RUN prints the commands; each parses into the intended training config (no training here), every run
    starts from the shipped set's backbone and is followed by its run-result command."""
    from analysis.runs import main as _  # noqa: F401 - the evaluation command exists

    runs = tmp_path / "runs"
    res = _script(_script_copy(tmp_path), runs, DRY_RUN="1", THREADS="2", DEVICE="cuda")
    assert res.returncode == 0, res.stderr
    configs, evaluations = {}, {}
    for line in res.stdout.splitlines():
        argv = shlex.split(line)
        assert argv[:3] == ["nice", "-n", "10"] and argv[4] == "-m"
        if argv[5] == "analysis":
            assert argv[6] == "run-result" and Path(argv[7]).parent == runs
            name = argv[argv.index("--name") + 1]
            assert argv[argv.index("--out") + 1] == f"assets/camvid/v2/runs/{name}.json"
            evaluations[name] = argv
            continue
        assert argv[5] == "structtoken.train"
        args = build_parser().parse_args(argv[6:])
        assert args.resume and args.threads == 2 and args.device == "cuda" and Path(args.out).parent == runs
        assert args.init_from == "assets/camvid/camvid_set.safetensors"
        configs[Path(args.out).name] = train_config_from_args(args)
    assert list(configs) == list(evaluations) == V2_RUNS and not runs.exists()
    for name, tc in configs.items():
        assert tc.seed == int(name.rsplit("seed", 1)[1]), name
        if name.startswith("camvid_v2_stage2_structtoken"):
            assert tc.model.heads == ("cse", "sse", "pwe")
        elif name.startswith("camvid_v2_stage2_baselines"):
            assert tc.model.heads == ("per_pixel", "per_pixel_ds", "fcn", "segmenter")
        elif name.startswith(("camvid_v2_ds_", "camvid_v2_probe_ft_")):
            assert tc.model.heads == V2_PROBE_FT_HEADS
            assert tc.model.head_vit_blocks == (2 if "probe_ft" in name else 0)
        elif name.startswith("camvid_v2_blocks"):
            assert tc.model.heads == V2_BLOCKS_HEADS and f"blocks{tc.model.num_blocks}_" in name
        argv = evaluations[name]
        ships = "--heads-out" in argv
        assert ships == (name in SHIPS_ALL | SHIPS_PAIR), name
        assert ("--ship-heads" in argv) == (name in SHIPS_PAIR), name
    assert all(tc.freeze_backbone for tc in configs.values())
    together = {h for n, tc in configs.items() if n.endswith("_seed0") and "stage2" in n for h in tc.model.heads}
    assert together == set(V2_STAGE2_HEADS)


def test_train_v2_script_skips_finished_runs_and_stops_on_a_failure(tmp_path):
    """A stand-in for python that records its arguments, writes OUT/final.safetensors when training and the
    result file when evaluating."""
    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$*" >> "$CALLS"\n'
        "while [[ $# -gt 0 ]]; do\n"
        '  [[ $1 == --out && $2 == *.json ]] && mkdir -p "$(dirname "$2")" && touch "$2"\n'
        '  [[ $1 == --out && $2 != *.json ]] && mkdir -p "$2" && touch "$2/final.safetensors"\n'
        "  shift\n"
        "done\n"
    )
    fake.chmod(0o755)
    copy = _script_copy(tmp_path)
    repo = copy.parent.parent
    runs, calls = tmp_path / "runs", tmp_path / "calls.txt"
    results = repo / "assets" / "camvid" / "v2" / "runs"
    results.mkdir(parents=True)
    (results / "camvid_v2_probe_ft_seed1.json").touch()  # done before
    (runs / "camvid_v2_ds_seed3").mkdir(parents=True)
    (runs / "camvid_v2_ds_seed3" / "final.safetensors").touch()  # trained, not yet evaluated

    def script() -> subprocess.CompletedProcess:
        return _script(copy, runs, PYTHON=str(fake), CALLS=str(calls), NICE="0")

    res = script()
    assert res.returncode == 0, res.stderr
    argvs = [shlex.split(line) for line in calls.read_text().splitlines()]
    trained = [Path(a[a.index("--out") + 1]).name for a in argvs if "structtoken.train" in a]
    evaluated = [a[a.index("--name") + 1] for a in argvs if "run-result" in a]
    assert trained == [r for r in V2_RUNS if r not in ("camvid_v2_probe_ft_seed1", "camvid_v2_ds_seed3")]
    assert evaluated == [r for r in V2_RUNS if r != "camvid_v2_probe_ft_seed1"]
    log = (runs / "train_v2.log").read_text()
    assert "skip camvid_v2_probe_ft_seed1" in log and "are done" in log
    calls.unlink()
    assert script().returncode == 0 and not calls.exists()  # everything has its result: nothing runs
    other = tmp_path / "other"
    assert _script(copy, other, PYTHON="false", NICE="0").returncode == 0  # every run has its result in the copy
    for f in results.glob("*.json"):
        f.unlink()
    failing = _script(copy, other, PYTHON="false", NICE="0")
    assert failing.returncode == 1 and "FAILED camvid_v2_stage2_structtoken_seed0" in failing.stderr
    assert not (tmp_path / "other" / "camvid_v2_stage2_baselines_seed0").exists()


_DDP_WORKER = """
import os, sys
from pathlib import Path
import torch
sys.path[:0] = [sys.argv[3], os.path.join(sys.argv[3], "tests")]
from test_train import ddp_tc
from structtoken.train import Trainer
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
torch.distributed.init_process_group("gloo", init_method="file://" + sys.argv[4], rank=rank, world_size=2)
trainer = Trainer(ddp_tc(), Path(sys.argv[1]), Path(sys.argv[2]), torch.device("cpu"), progress=False)
trainer.run(stop_at=3)
params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
torch.save(params, os.path.join(sys.argv[2], f"params_rank{os.environ['RANK']}.pt"))
torch.distributed.destroy_process_group()
"""


def ddp_tc() -> TrainConfig:  # the worker script imports it by name
    """The two-rank run: the tiny recipe, one image per rank and step, 3 steps."""
    return tiny_tc(batch_size=1, iters=3, ckpt_interval=3)


def test_two_ranks_train_one_model(tmp_path):
    """Under torchrun every rank reads its own share of the data; after each backward the gradients
    are averaged, so the ranks' weights stay identical (two gloo processes on the CPU)."""
    import subprocess
    import sys

    data = write_dataset(tmp_path / "data", n_train=8)
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    rendezvous = tmp_path / "rendezvous"  # a file, not a port another process could take in between
    root = str(Path(__file__).resolve().parent.parent)
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            OMP_NUM_THREADS="1",
        )
        out = tmp_path / f"run{rank}"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(data), str(out), root, str(rendezvous)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:  # never leave a rank running (a timeout, a failed rank whose partner waits forever)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), logs
    a = torch.load(tmp_path / "run0" / "params_rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "run1" / "params_rank1.pt", weights_only=True)
    start = Trainer(ddp_tc(), data, tmp_path / "start", torch.device("cpu"), progress=False).model
    moved = [k for k, v in start.named_parameters() if not torch.equal(v.detach(), a[k])]
    assert moved  # the ranks trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs between the ranks")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_refuses_cuda_without_a_gpu_in_one_line(tmp_path, capsys):
    from structtoken.train import main

    with pytest.raises(SystemExit) as e:
        main(["--recipe", "camvid_v2_stage1", "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert e.value.code == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_heads_train_the_same_in_any_grouping(tmp_path):
    """Heads are independent (own parameters, loss, clipping and random stream; same batches), so a run of
    every head equals runs of groups of them, weight for weight (with drop path active)."""
    data = write_dataset(tmp_path / "data")
    every = tiny_tc(freeze_backbone=True, iters=4)
    every.model = every.model.replace(extra_heads=("per_pixel", "per_pixel_ds", "pwe"), head_drop_path_rate=0.3)
    together = Trainer(every, data, tmp_path / "all", torch.device("cpu"), progress=False)
    together.run()
    for group in (("cse", "per_pixel"), ("per_pixel_ds", "pwe")):
        tc = tiny_tc(freeze_backbone=True, iters=4)
        tc.model = every.model.replace(head=group[0], extra_heads=group[1:])
        alone = Trainer(tc, data, tmp_path / "_".join(group), torch.device("cpu"), progress=False)
        alone.run()
        for name in group:
            ours, theirs = together.model.heads[name].state_dict(), alone.model.heads[name].state_dict()
            start = build_model(tc.model).heads[name].state_dict()
            for k, v in ours.items():
                assert torch.equal(v, theirs[k]), (name, k)
            assert any(not torch.equal(v, start[k]) for k, v in ours.items() if k in start), name


def test_a_run_records_its_provenance(tmp_path):
    data = write_dataset(tmp_path / "data")
    src = tmp_path / "src.safetensors"
    save_model(build_model(tiny_tc().model), src)
    tc = tiny_tc(freeze_backbone=True, iters=2, log_interval=1)
    tc.recipe = "tiny"
    final = Trainer(tc, data, tmp_path / "run", torch.device("cpu"), init_from=str(src), progress=False).run()
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    prov = cfg["provenance"]
    import hashlib

    assert prov["recipe"] == "tiny" and prov["seed"] == 0 and prov["torch"] == torch.__version__
    assert prov["init_from"] == {"file": "src.safetensors", "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    assert prov["backbone"]["sha256"] == prov["init_from"]["sha256"]
    assert prov["iterations"] == 2 and prov["train_wall_s"] > 0 and prov["median_s_per_iter"] > 0
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    assert str(tmp_path) not in json.dumps(cfg)
    from structtoken.checkpoint import read_metadata

    assert json.loads(read_metadata(final)["provenance"]) == prov
    # a set trained from that set carries the backbone's origin on, not the intermediate file's
    tc2 = tiny_tc(freeze_backbone=True, iters=1, log_interval=1)
    Trainer(tc2, data, tmp_path / "run2", torch.device("cpu"), init_from=str(final), progress=False).run()
    prov2 = json.loads((tmp_path / "run2" / "train_config.json").read_text())["provenance"]
    assert prov2["backbone"]["sha256"] == prov["init_from"]["sha256"]
    assert prov2["init_from"]["file"] == "final.safetensors"


def test_set_descriptions_are_generated_from_the_config():
    assert "12,500" not in recipe("camvid_v2_stage2").model.description
    args = build_parser().parse_args(
        ["--recipe", "camvid_v2_blocks", "--out", "x", "--num-blocks", "6", "--heads", "cse", "pwe"]
    )
    desc = train_config_from_args(args).model.description
    assert "(6 blocks)" in desc and "CSE, PWE" in desc and "block-count ablation" in desc

"""Training and evaluation on a tiny synthetic dataset written to a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structtoken import ModelConfig, load_model
from structtoken.data import SegmentationDataset
from structtoken.evaluate import evaluate_model
from structtoken.segmentor import build_model
from structtoken.train import TrainConfig, Trainer, lr_factor, main, param_groups, seg_loss

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


def tiny_tc(**kw) -> TrainConfig:
    model = ModelConfig(
        head="cse",
        extra_heads=("per_pixel", "per_pixel_ds"),
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_blocks=2,
        num_classes=3,
        image_size=(32, 32),
        classes=tuple(CLASSES),
    )
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


def test_resume_continues_bit_exactly(tmp_path):
    data = write_dataset(tmp_path / "data")
    straight = Trainer(tiny_tc(), data, tmp_path / "a", torch.device("cpu"), progress=False)
    straight.run()
    # same run, interrupted after the checkpoint at iteration 3, then resumed in a new process-like Trainer
    first = Trainer(tiny_tc(), data, tmp_path / "b", torch.device("cpu"), progress=False)
    assert first.run(stop_at=3) is None  # paused (as an interrupted run), checkpoint at iteration 3
    second = Trainer(tiny_tc(), data, tmp_path / "b", torch.device("cpu"), progress=False)
    second.run(resume=True)
    assert json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[3])["iter"] == 4
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_deep_supervision_pair_starts_identical_and_differs_only_by_loss(tmp_path):
    data = write_dataset(tmp_path / "data")
    trainer = Trainer(tiny_tc(iters=1), data, tmp_path / "run", torch.device("cpu"), progress=False)
    a, b = trainer.model.heads["per_pixel"], trainer.model.heads["per_pixel_ds"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    trainer.run()
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_frozen_backbone_stays_unchanged(tmp_path):
    data = write_dataset(tmp_path / "data")
    trainer = Trainer(
        tiny_tc(freeze_backbone=True, iters=3), data, tmp_path / "run", torch.device("cpu"), progress=False
    )
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.run()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.backbone.state_dict().items())


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

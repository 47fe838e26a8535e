"""Readouts of every stage: raw, head (logit lens), fitted (tuned lens); the fitted file beside a set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image

from structtoken import CheckpointError, build_model, load_model, save_model
from structtoken.config import HEAD_NAMES
from structtoken.data import SegmentationDataset
from structtoken.readouts import (
    NO_FITTED_REASON,
    READOUTS,
    FittedReadouts,
    ReadoutError,
    StageLens,
    fit_readouts,
    readout_unavailable,
    readouts_path,
    sample_maps,
    stage_maps,
    stage_scores,
)
from structtoken.segmentor import upsample

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_HEADS = tuple(HEAD_NAMES)
PERM = (1, 2, 3, 0)  # a derangement: no class is its own image


def all_heads_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny_config(head=ALL_HEADS[0], extra_heads=ALL_HEADS[1:])).eval()


@pytest.mark.parametrize("name", ALL_HEADS)
def test_head_readout_at_the_last_block_is_the_logits(name):
    model = all_heads_model()
    head = model.heads[name]
    with torch.no_grad():
        out = head(torch.randn(2, 32, 4, 5))
        scores = stage_scores(name, head, out, "head")
    n = len(out.blocks)
    assert len(scores) == len(stage_maps(out)) == n + 2
    assert all(s.shape == out.logits.shape for s in scores)
    torch.testing.assert_close(scores[n], out.logits, rtol=0, atol=1e-6)
    assert torch.equal(scores[n + 1], out.logits)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_raw_readout_is_the_class_maps_or_says_why_not(name):
    model = all_heads_model()
    head = model.heads[name]
    with torch.no_grad():
        out = head(torch.randn(1, 32, 4, 4))
    reason = readout_unavailable(name, head, "raw", None)
    # raw exists exactly where channel k is class k by construction
    assert (reason is None) == (name in ("cse", "sse", "pwe", "per_pixel_ds", "linear")), (name, reason)
    if reason is not None:
        assert "channel" in reason
        with pytest.raises(ReadoutError, match=name):
            stage_scores(name, head, out, "raw")
        return
    with torch.no_grad():
        raw = stage_scores(name, head, out, "raw")
    assert all(r.shape == out.logits.shape for r in raw)
    if out.stage_field == "tokens":
        for r, m in zip(raw, stage_maps(out), strict=True):
            assert torch.equal(r, m)


def test_unknown_readout_is_an_error():
    model = all_heads_model()
    with pytest.raises(ValueError, match="raw, head, fitted"):
        readout_unavailable("cse", model.heads["cse"], "tuned", None)
    assert READOUTS == ("raw", "head", "fitted")


def test_sample_maps_equals_the_upsampled_map_at_those_pixels():
    torch.manual_seed(0)
    maps = torch.randn(1, 3, 5, 7)
    size = (77, 101)  # not multiples of the grid, as mmseg's ceil(H/16) grids
    up = upsample(maps, size)[0]
    rows = torch.tensor([0, 1, 40, 76, 76, 13])
    cols = torch.tensor([0, 100, 50, 0, 100, 7])
    torch.testing.assert_close(sample_maps(maps, rows, cols, size), up[:, rows, cols].T, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- a hand-built head
def permutation_model():
    """A per-pixel set whose classifier is the permutation PERM (logit k = map PERM[k]) and whose residual
    blocks are identities, so the stage-N maps are the logits with the classes permuted."""
    torch.manual_seed(0)
    model = build_model(tiny_config(head="per_pixel", extra_heads=())).eval()
    head = model.heads["per_pixel"]
    k = len(PERM)
    with torch.no_grad():
        for block in head.blocks:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        head.classifier.weight.zero_()
        head.classifier.bias.zero_()
        for i, j in enumerate(PERM):
            head.classifier.weight[i, j, 0, 0] = 1.0
    assert head.classifier.weight.shape[:2] == (k, k)
    return model


def write_own_output_split(root: Path, model, n: int = 5, size=(48, 80)) -> Path:
    """Random images in the CamVid layout, labelled with the model's own prediction."""
    rng = np.random.default_rng(1)
    cfg = model.cfg
    (root / "classes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(
        json.dumps({"classes": list(cfg.class_names()), "palette": [list(p) for p in cfg.class_palette()]})
    )
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            with torch.no_grad():
                logits = model(model.preprocess(img, scale=None)).logits[0]
            lab = logits.argmax(0).numpy().astype(np.uint8)
            lab[0, :3] = 255
            Image.fromarray(img).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(lab).save(root / split / "labels" / f"{split}{i}.png")
    return root


def accuracy_and_miou(model, dataset, name, readout, stage, fitted=None):
    k = model.cfg.num_classes
    conf = np.zeros((k, k), np.int64)
    head = model.heads[name]
    for i in range(len(dataset)):
        image, label = dataset.load_pair(i)
        with torch.no_grad():
            out = head(model.backbone(model.preprocess(image, scale=None)))
            if readout == "channels":  # channel k as class k, whether or not the head makes it so
                s = stage_maps(out)[stage]
            else:
                s = stage_scores(name, head, out, readout, fitted)[stage]
        pred = upsample(s, label.shape)[0].argmax(0).numpy()
        m = label != 255
        np.add.at(conf, (label[m], pred[m]), 1)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return np.diag(conf).sum() / conf.sum(), iou.mean()


def test_permutation_head_raw_wrong_head_right_fitted_recovers_it(tmp_path):
    model = permutation_model()
    root = write_own_output_split(tmp_path / "data", model)
    train = SegmentationDataset(root, "train")
    labels = np.concatenate([train.load_pair(i)[1].ravel() for i in range(len(train))])
    assert len(set(labels.tolist()) - {255}) == 4, "the synthetic split must hold every class"
    n = model.cfg.num_blocks
    acc, miou = accuracy_and_miou(model, train, "per_pixel", "channels", n)
    assert acc < 0.02 and miou < 0.02  # why raw is not applicable to per_pixel: channel k is not class k
    with pytest.raises(ReadoutError, match="not class maps by construction"):
        accuracy_and_miou(model, train, "per_pixel", "raw", n)
    acc, miou = accuracy_and_miou(model, train, "per_pixel", "head", n)
    assert acc == 1.0 and miou == 1.0

    fitted = fit_readouts(model, train, pixels_per_image=96, iterations=60, l2=1e-4, seed=0)
    meta = fitted.metadata
    assert meta["split"] == "train" and meta["num_images"] == 5 and meta["pixels_per_image"] == 96
    assert meta["loss"] == "cross-entropy, unweighted" and meta["iterations"] == 60
    assert meta["heads"]["per_pixel"]["channels"] == [4] * (n + 2)
    weight = fitted.lenses["per_pixel"][n].weight
    assert weight.argmax(1).tolist() == list(PERM)
    assert meta["heads"]["per_pixel"]["train_accuracy"][n] > 0.97
    acc, _ = accuracy_and_miou(model, SegmentationDataset(root, "val"), "per_pixel", "fitted", n, fitted)
    assert acc > 0.95
    # the same seed draws the same pixels: the fit is deterministic
    again = fit_readouts(model, train, pixels_per_image=96, iterations=60, l2=1e-4, seed=0)
    assert torch.equal(again.lenses["per_pixel"][n].weight, weight)


def test_class_weighted_fit_is_recorded(tmp_path):
    model = permutation_model()
    train = SegmentationDataset(write_own_output_split(tmp_path / "data", model, n=2), "train")
    fitted = fit_readouts(model, train, pixels_per_image=16, iterations=5, class_weights=[1.0, 2.0, 1.0, 0.5])
    assert fitted.metadata["loss"] == "cross-entropy, class-weighted"
    assert fitted.metadata["class_weights"] == [1.0, 2.0, 1.0, 0.5]


# ----------------------------------------------------------------------------- the file beside the set
def lenses_for(model, scale: float = 1.0) -> FittedReadouts:
    """Random lenses of the right shapes for every head of ``model``."""
    gen = torch.Generator().manual_seed(0)
    k = model.cfg.num_classes
    lenses = {}
    with torch.no_grad():
        feats = torch.zeros(1, model.cfg.embed_dim, 4, 4)
        for name, head in model.heads.items():
            lenses[name] = tuple(
                StageLens(scale * torch.randn(k, m.shape[1], generator=gen), torch.randn(k, generator=gen))
                for m in head.fitted_maps(head(feats))
            )
    return FittedReadouts(lenses=lenses, metadata={"split": "train", "num_images": 0})


def test_fitted_file_round_trip_beside_the_set(tmp_path):
    model = all_heads_model()
    set_path = save_model(model, tmp_path / "tiny_set.safetensors")
    fitted = lenses_for(model)
    path = fitted.save(readouts_path(set_path))
    assert path.name == "tiny_set.readouts.safetensors"
    loaded = load_model(set_path)
    fr = loaded.fitted_readouts
    assert fr is not None and fr.path == path and fr.metadata["split"] == "train"
    for name in ALL_HEADS:
        assert readout_unavailable(name, loaded.heads[name], "fitted", fr) is None
        for a, b in zip(fitted.lenses[name], fr.lenses[name], strict=True):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with torch.no_grad():
        out = loaded.heads["cse"](torch.randn(1, 32, 4, 4))
        scores = stage_scores("cse", loaded.heads["cse"], out, "fitted", fr)
    lens = fr.lenses["cse"][1]
    # fitted reads what block 1 hands to block 2: its tokens and its features (K + C channels)
    state = torch.cat((out.blocks[0].tokens, out.blocks[0].features), dim=1)
    assert lens.weight.shape == (4, 4 + 32)
    expected = torch.einsum("kc,bchw->bkhw", lens.weight, state) + lens.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(scores[1], expected)
    last = fr.lenses["cse"][len(out.blocks)]  # after the last block only the tokens go on (to the residual block)
    assert last.weight.shape == (4, 4)
    expected = torch.einsum("kc,bchw->bkhw", last.weight, out.blocks[-1].tokens) + last.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(scores[len(out.blocks)], expected)
    with pytest.raises(CheckpointError, match="fitted-readout file"):
        load_model(path)


def test_set_without_fitted_file_offers_raw_and_head(tmp_path):
    model = load_model(save_model(all_heads_model(), tmp_path / "s.safetensors"))
    assert model.fitted_readouts is None
    head = model.heads["cse"]
    reason = readout_unavailable("cse", head, "fitted", model.fitted_readouts)
    assert reason == NO_FITTED_REASON and "python -m structtoken.fit_readouts" in reason
    assert readout_unavailable("cse", head, "raw", None) is None
    assert readout_unavailable("cse", head, "head", None) is None
    with torch.no_grad(), pytest.raises(ReadoutError, match="no fitted readout file"):
        stage_scores("cse", head, head(torch.randn(1, 32, 4, 4)), "fitted", None)


def test_fitted_file_without_a_head_says_so(tmp_path):
    model = all_heads_model()
    fitted = lenses_for(model)
    del fitted.lenses["sse"]
    assert "no fitted readout for head 'sse'" in readout_unavailable("sse", model.heads["sse"], "fitted", fitted)


def test_corrupt_and_mis_shaped_files_name_the_file(tmp_path):
    model = all_heads_model()
    set_path = save_model(model, tmp_path / "s.safetensors")
    rp = readouts_path(set_path)
    rp.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=str(rp)):
        load_model(set_path)
    bad = lenses_for(model)
    w = bad.lenses["pwe"][2]
    bad.lenses["pwe"] = (*bad.lenses["pwe"][:2], StageLens(w.weight[:, :3], w.bias), *bad.lenses["pwe"][3:])
    bad.save(rp)
    with pytest.raises(CheckpointError, match=r"s\.readouts\.safetensors does not fit this set.*pwe stage 2"):
        load_model(set_path)
    save_model(model, tmp_path / "other.safetensors")  # a safetensors file, but no readouts in it
    (tmp_path / "other.safetensors").rename(rp)
    with pytest.raises(CheckpointError, match="not a fitted-readout file"):
        load_model(set_path)
    with pytest.raises(ReadoutError, match="no such file"):
        FittedReadouts.load(tmp_path / "nowhere.readouts.safetensors")


def test_stale_fitted_file_makes_fitted_unavailable_but_the_set_loads(tmp_path):
    model = all_heads_model()
    set_path = save_model(model, tmp_path / "s.safetensors")
    fitted = lenses_for(model)
    fitted.metadata["set_sha256"] = "0" * 64
    fitted.save(readouts_path(set_path))
    loaded = load_model(set_path)
    reason = readout_unavailable("cse", loaded.heads["cse"], "fitted", loaded.fitted_readouts)
    assert "fitted on another version of s.safetensors" in reason and "s.readouts.safetensors" in reason
    assert load_model(set_path, readouts=False).fitted_readouts is None
    from structtoken.checkpoint import file_sha256

    fitted.metadata["set_sha256"] = file_sha256(set_path)
    fitted.save(readouts_path(set_path))
    loaded = load_model(set_path)
    assert readout_unavailable("cse", loaded.heads["cse"], "fitted", loaded.fitted_readouts) is None


def test_cli_fits_and_writes_beside_the_set(tmp_path, capsys):
    from structtoken.fit_readouts import main

    model = permutation_model()
    root = write_own_output_split(tmp_path / "data", model, n=2)
    meta = {"train_config": json.dumps({"class_weights": True})}
    set_path = save_model(model, tmp_path / "perm_set.safetensors", metadata=meta)
    args = ["--model", str(set_path), "--data", str(root), "--pixels-per-image", "32", "--iterations", "10"]
    assert main(args) == 2  # trained class-weighted, but this classes.json has no weights
    assert "median_frequency_weights" in capsys.readouterr().err
    assert main([*args, "--class-weights", "no"]) == 0
    out = capsys.readouterr()
    assert "perm_set.readouts.safetensors" in out.out and "per_pixel" in out.err
    loaded = load_model(set_path)
    fr = loaded.fitted_readouts
    assert fr is not None and fr.problem is None
    m = fr.metadata
    assert (m["split"], m["num_images"], m["pixels_per_image"], m["iterations"]) == ("train", 2, 32, 10)
    assert m["loss"] == "cross-entropy, unweighted" and m["set_file"] == "perm_set.safetensors"
    assert m["standardize"] is True and m["l2"] == 1e-4
    assert readout_unavailable("per_pixel", loaded.heads["per_pixel"], "fitted", fr) is None
    assert main(["--model", str(tmp_path / "missing.safetensors"), "--data", str(root)]) == 2
    assert "no such file" in capsys.readouterr().err

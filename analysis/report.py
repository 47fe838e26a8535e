"""Dataset report: per-block structure metrics of every head of a set, figures and a markdown summary.

    python -m analysis report --model camvid --data DIR --split val --out OUT \
        [--limit N] [--probe-json FILE ...] [--probe-runs RUNDIR ...] [--device auto]

For every image (native resolution, one backbone pass for all heads), every head, every stage (the
maps entering block 1, after each block, the head output) and every readout (``raw``: channel k as
class k; ``head``: through the head's own output layers; ``fitted``: the set's fitted affine lens,
when the set has one), the stage's class scores are upsampled bilinearly to the label size and scored
against the label: mIoU and pixel accuracy (argmax, dataset confusion matrix), mask AP (each class
channel ranks the pixels) and boundary F1 (tolerance 2 px), with the batched functions of
:mod:`analysis.metrics`; the dataset's ignore label is ignored.

The outputs name the data and the runs by folder / file name only (never a path of the machine).

Writes ``OUT/metrics.json`` (every metric value in percent, 0-100)::

    {"meta": {"model", "split", "n_images", "unit", "readouts", "unavailable", "fitted" (how the lens
              was fitted), "date", "seconds", "seconds_by_phase", ...},
     "readouts": {"raw" | "head" | "fitted": {HEAD: {"input": M, "blocks": [M, ...], "final": M}}},
     "probe": {"pairs": [{"seed", "baseline", "treated"}], "delta_mean", "delta_sd", "ci95",
               "p_value", "n", "verdict", "baseline", "treated", "unit", "sources", "head_vs_head"}}

with M = ``{"miou", "mask_ap", "boundary_f1", "pixel_accuracy", "iou_per_class", "ap_per_class",
"f1_per_class"}``; and ``OUT/block_curves.png`` / ``.html`` (one row per readout), ``OUT/probe.png``
(when seed results are given), ``OUT/comparison_<image>.png`` for ``--examples`` images and
``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from structtoken.config import ModelConfig
from structtoken.data import DatasetError, SegmentationDataset
from structtoken.devices import autocast, single_threaded_pool
from structtoken.evaluate import training_seed
from structtoken.readouts import (
    READOUTS,
    fitted_input_channels,
    readout_definitions,
    readout_unavailable,
    stage_scores,
)
from structtoken.segmentor import Segmentor, upsample
from structtoken.sets import HeadGroup, SetAssemblyError, load_head_group

from . import figures as F
from . import over_seeds
from .analyses import COMPARISON, PROBE
from .claims import block_claims, claims_table, structtoken_pairs
from .grid import block_grid, render_static
from .labels import display_names, head_label
from .maps import ImageMaps, image_maps_from_output
from .metrics import (
    BoundaryCounts,
    BoundaryF1Accumulator,
    ConfusionAccumulator,
    MaskAPAccumulator,
    argmax_stacks,
    boundary_counts_batch,
    mask_ap_batch,
    mask_ap_quantized,
)
from .probe import as_fractions, paired_probe, pairs_table, report_reference
from .roles import structtoken_heads
from .values import json_ready, percent

__all__ = ["StageMetrics", "build_report", "evaluate_stages", "main", "read_probe_json", "read_probe_run"]

METRICS = ("miou", "mask_ap", "boundary_f1")
BOUNDARY_TOLERANCE = 2
NUM_EXAMPLES = 2


# ------------------------------------------------------------------------------- accumulation
class StageMetrics:
    """The three dataset accumulators of one (readout, head, stage)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.confusion = ConfusionAccumulator(num_classes, ignore_index)
        self.mask_ap = MaskAPAccumulator(num_classes, ignore_index)
        self.boundary = BoundaryF1Accumulator(num_classes, BOUNDARY_TOLERANCE, ignore_index)

    def update(self, scores: np.ndarray, pred: np.ndarray, label: np.ndarray) -> None:
        """scores ``[K, H, W]`` float32, pred ``[H, W]`` (argmax of scores), label ``[H, W]``."""
        self.confusion.update(pred, label)
        self.mask_ap.update(scores, label)
        self.boundary.update(pred, label)

    def add(self, cm: np.ndarray, ap: np.ndarray, counts: BoundaryCounts) -> None:
        """Add one image from its batched parts: confusion ``[K, K]``, per-class AP ``[K]``, boundary counts."""
        self.confusion.cm += cm
        self.confusion.num_images += 1
        self.mask_ap.update_ap(ap)
        self.boundary.update_counts(counts)

    def compute(self) -> dict[str, Any]:
        """``{"miou", "mask_ap", "boundary_f1", "pixel_accuracy"}`` and per-class lists, in percent (0-100)."""
        c, a, b = self.confusion.compute(), self.mask_ap.compute(), self.boundary.compute()
        return {
            "miou": percent(c["miou"]),
            "mask_ap": percent(a["mask_ap"]),
            "boundary_f1": percent(b["boundary_f1"]),
            "pixel_accuracy": percent(c["pixel_accuracy"]),
            "iou_per_class": [percent(v) for v in c["iou_per_class"]],
            "ap_per_class": [percent(v) for v in a["ap_per_class"]],
            "f1_per_class": [percent(v) for v in b["f1_per_class"]],
        }


def _confusions(preds: np.ndarray, label: np.ndarray, k: int, ignore_index: int) -> np.ndarray:
    """Confusion matrices ``[n, K, K]`` (rows = label) of predictions ``[n, H, W]`` against ``label [H, W]``."""
    valid = label != ignore_index
    g = label[valid].astype(np.int64)  # [N]
    p = preds[:, valid].astype(np.int64)  # [n, N]
    n = preds.shape[0]
    idx = (np.arange(n, dtype=np.int64)[:, None] * (k * k) + g[None] * k + p).ravel()
    return np.bincount(idx, minlength=n * k * k).reshape(n, k, k)


def label_on_grid(label: np.ndarray, num_classes: int, grid: tuple[int, int], ignore_index: int) -> torch.Tensor:
    """The label as a class map at a feature grid's resolution: ``label [H, W]`` -> ``[K, h, w]`` float32 with
    ``grid = (h, w)``, per cell the share of its non-ignored pixels that are of each class (cells as adaptive
    average pooling cuts the image, which is how a stage's grid is stretched over it when upsampled; a cell of
    ignored pixels only is all zero). Upsampled and scored like every stage, it is the reference of
    :func:`evaluate_stages`: what a map that is right in every cell scores at that resolution."""
    lab = torch.from_numpy(np.asarray(label, dtype=np.int64))
    valid = lab != ignore_index
    onehot = torch.zeros((num_classes, *lab.shape), dtype=torch.float32)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    onehot[lab[valid], rows, cols] = 1.0
    return torch.nn.functional.adaptive_avg_pool2d(onehot[None], tuple(grid))[0]


REFERENCE_NOTE = (
    "the label itself at the heads' feature grid: per grid cell the share of each class among its pixels, upsampled"
    " bilinearly and scored like every stage (what a map that is right in every cell scores at that resolution)"
)

MASK_AP_FUNCTIONS = {"quantized": mask_ap_quantized, "exact": mask_ap_batch}
"""How mask AP is computed: ``exact`` (a sort per channel; the default, one definition for reports and run
results) or ``quantized`` (:func:`analysis.metrics.mask_ap_quantized`, 65,536 levels per channel and image,
histogram counts). On 6 CamVid val images x 30 stacks of the shipped set the two differ by at most 1.2e-4 (mean
6e-6), but the quantised one was not faster here (43 s against 18 s, one thread, all 30 stacks at once), so the
exact one stays."""

MASK_AP_NOTE = {
    "quantized": "per class and image, scores mapped linearly from the channel's [min, max] onto 65,536 levels, "
    "AP exact on those levels (ties form one threshold); mean over the images where the class is present",
    "exact": "per class and image, AP of the exact scores (ties form one threshold); mean over the images where "
    "the class is present",
}

CHUNK = 8
"""Score stacks upsampled and scored together ([8, K, H, W] float32: 61 MB for CamVid)."""


@torch.no_grad()
def evaluate_stages(
    model: Segmentor,
    dataset: SegmentationDataset,
    limit: int | None = None,
    progress: bool = True,
    examples: Sequence[int] = (),
    workers: int = 1,
    mask_ap: str = "exact",
    extra: Sequence[HeadGroup] = (),
    extra_confusions: dict[tuple[str, str], ConfusionAccumulator] | None = None,
    reference: StageMetrics | None = None,
) -> tuple[
    dict[str, dict[str, list[StageMetrics]]], dict[int, tuple[ImageMaps, np.ndarray]], int, dict[str, float], dict
]:
    """Accumulate every (readout, head, stage) over the dataset from one backbone pass per image.

    Every available readout of every head (:func:`structtoken.readouts.stage_scores`) is read at grid
    resolution; stacks that are identical (the ``head`` readout of the last block and of the output
    are the logits, as is ``raw``'s output) are upsampled and scored once. Stacks are upsampled
    bilinearly to the label size, scored in chunks of :data:`CHUNK` with the batched metrics
    (:func:`analysis.metrics.mask_ap_batch`, :func:`boundary_counts_batch`, one bincount for the
    confusions), on ``workers`` threads.

    Returns:
        (readout -> head -> [StageMetrics per stage], example index -> (ImageMaps, label), images
        seen, seconds per phase {"model", "readouts", "upsample", "metrics"} (upsample and metrics
        summed over the worker threads), readout -> head -> reason for each unavailable readout).

    ``extra`` head groups (:func:`structtoken.sets.load_head_group`: heads trained on this set's backbone, e.g.
    the deep-supervision pairs of other seeds) run on each image's backbone map too; their final logits are
    upsampled the same way and their confusions accumulated into ``extra_confusions[(file, head)]``.

    ``reference``: accumulates the label itself at the heads' grid resolution (:func:`label_on_grid`), upsampled
    and scored like every stage.
    """
    if mask_ap not in MASK_AP_FUNCTIONS:
        raise ValueError(f"mask_ap must be one of {', '.join(MASK_AP_FUNCTIONS)}, got {mask_ap!r}")
    if extra and extra_confusions is None:
        raise ValueError("extra head groups need an extra_confusions dict to accumulate into")
    ap_fn = MASK_AP_FUNCTIONS[mask_ap]
    cfg = model.cfg
    k = cfg.num_classes
    ignore = dataset.info.ignore_index
    heads = list(cfg.heads)
    fitted = getattr(model, "fitted_readouts", None)
    unavailable: dict[str, dict[str, str]] = {r: {} for r in READOUTS}
    for r in READOUTS:
        for h in heads:
            why = readout_unavailable(h, model.heads[h], r, fitted)
            if why is not None:
                unavailable[r][h] = why
    n = len(dataset) if limit is None else max(0, min(int(limit), len(dataset)))
    acc: dict[str, dict[str, list[StageMetrics]]] = {r: {} for r in READOUTS}
    kept: dict[int, tuple[ImageMaps, np.ndarray]] = {}
    times = {"model": 0.0, "readouts": 0.0, "upsample": 0.0, "metrics": 0.0}
    lock = threading.Lock()
    was_training = model.training
    model.eval()
    # each worker runs torch single-threaded: two workers with torch's default intra-op threads put
    # four spinning threads on two cores (measured: upsample cost x1.8, metrics x1.3)
    pool = single_threaded_pool(workers) if workers > 1 else None
    try:
        for i in tqdm(range(n), desc="report", unit="img", disable=not progress):
            image, label = dataset.load_pair(i)
            t0 = time.perf_counter()
            x = model.preprocess(image, scale=None)
            with autocast(model.device):
                out = model(x)
                t1 = time.perf_counter()
                if i in examples:
                    kept[i] = (image_maps_from_output(image, out, class_names=cfg.class_names(), model=model), label)
                for group in extra:
                    for name, head in group.heads.items():
                        grid = head(out.features.float()).logits[0].float()  # [K, h, w]
                        pred = argmax_stacks(np.ascontiguousarray(upsample(grid[None], tuple(label.shape)).numpy()))
                        acc_x = extra_confusions.setdefault(  # type: ignore[union-attr]
                            (group.file, name), ConfusionAccumulator(k, ignore)
                        )
                        acc_x.cm += _confusions(pred, label, k, ignore)[0]
                        acc_x.num_images += 1
                uniques: list[torch.Tensor] = []  # [K, h, w] each
                owner: list[str] = []
                keys: dict[tuple[str, str, int], int] = {}
                for h in heads:
                    for r in READOUTS:
                        if h in unavailable[r]:
                            continue
                        per = stage_scores(h, model.heads[h], out.heads[h], r, fitted)
                        if h not in acc[r]:
                            acc[r][h] = [StageMetrics(k, ignore) for _ in per]
                        for s, t in enumerate(per):
                            t = t[0].float()
                            j = next(
                                (u for u in range(len(uniques)) if owner[u] == h and torch.equal(uniques[u], t)), None
                            )
                            if j is None:
                                j = len(uniques)
                                uniques.append(t)
                                owner.append(h)
                            keys[(r, h, s)] = j
            ref_j = len(uniques)  # where the reference's stack goes, when asked for
            if reference is not None:
                uniques.append(label_on_grid(label, k, tuple(uniques[0].shape[-2:]), ignore))
            t2 = time.perf_counter()
            size = tuple(label.shape)
            parts: dict[int, tuple[np.ndarray, np.ndarray, BoundaryCounts]] = {}

            def score(
                lo: int, label: np.ndarray = label, uniques: list = uniques, parts: dict = parts, size=size
            ) -> None:
                ta = time.perf_counter()
                chunk = torch.stack(uniques[lo : lo + CHUNK])  # [n, K, h, w]
                up = np.ascontiguousarray(upsample(chunk, size).cpu().numpy())  # [n, K, H, W]
                preds = argmax_stacks(up)  # [n, H, W]; numpy, ~5x faster than torch's argmax on the CPU
                tb = time.perf_counter()
                aps = ap_fn(up, label, ignore)  # [n, K]
                counts = boundary_counts_batch(preds, label, k, BOUNDARY_TOLERANCE, ignore)
                cms = _confusions(preds, label, k, ignore)  # [n, K, K]
                tc = time.perf_counter()
                with lock:
                    for m in range(len(counts)):
                        parts[lo + m] = (cms[m], aps[m], counts[m])
                    times["upsample"] += tb - ta
                    times["metrics"] += tc - tb

            starts = list(range(0, len(uniques), CHUNK))
            if pool is not None:
                list(pool.map(score, starts))
            else:
                for lo in starts:
                    score(lo)
            for (r, h, s), j in keys.items():
                acc[r][h][s].add(*parts[j])
            if reference is not None:
                reference.add(*parts[ref_j])
            times["model"] += t1 - t0
            times["readouts"] += t2 - t1
    finally:
        model.train(was_training)
    return acc, kept, n, times, unavailable


# ------------------------------------------------------------------------------------- probe
def _seed_of(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: the seed must be a whole number, got {value!r}")
    return int(value)


def read_probe_json(path: str | Path) -> tuple[int, dict[str, float]]:
    """(seed, final mIoU per head as fractions) of one ``python -m structtoken.evaluate --json`` file.

    The seed is the file's ``"seed"`` (written by :mod:`structtoken.evaluate` from the set's training
    config); a file without one is the shipped set's result, trained with seed 0 (the training default).
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read probe result {p.name}: {e}") from None
    heads = d.get("heads") if isinstance(d, dict) else None
    if not isinstance(heads, dict):
        raise ValueError(f"{p.name} is not a structtoken.evaluate --json result (no 'heads' object)")
    seed = _seed_of(d.get("seed", 0) if d.get("seed") is not None else 0, p.name)
    out = {}
    for h, m in heads.items():
        if isinstance(m, dict) and isinstance(m.get("miou"), (int, float)):
            out[h] = float(m["miou"])
    return seed, out


def read_probe_run(run_dir: str | Path) -> tuple[int, dict[str, float]]:
    """(seed, final val mIoU per head as fractions) of one training run folder: the seed from its
    ``train_config.json``, the mIoUs from ``log.jsonl`` (the record marked ``"final": true``, else the
    last record with ``val_miou/*`` keys)."""
    d = Path(run_dir)
    log = d / "log.jsonl"
    if not log.is_file():
        raise ValueError(f"{d.name} is not a training run folder: it has no log.jsonl")
    try:
        tc = json.loads((d / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{d.name}: cannot read its train_config.json for the seed ({e})") from None
    if not isinstance(tc, dict) or "seed" not in tc:
        raise ValueError(f"{d.name}: its train_config.json records no seed")
    seed = _seed_of(tc["seed"], f"{d.name}/train_config.json")
    final, last = None, None
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and any(str(k).startswith("val_miou/") for k in rec):
            last = rec
            if rec.get("final"):
                final = rec
    rec = final or last
    if rec is None:
        raise ValueError(f"{d.name}/log.jsonl holds no validation mIoU yet (has the run finished?)")
    return seed, {k.split("/", 1)[1]: float(v) for k, v in rec.items() if k.startswith("val_miou/") and v is not None}


def collect_probe(json_files: Sequence[str | Path] = (), run_dirs: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """One ``{"source": file or folder name, "seed", head: final mIoU, ...}`` per result (never a machine path).

    Raises:
        ValueError: an unreadable source, or two sources with the same seed.
    """
    sources = []
    for src, reader in [
        *((f, read_probe_json) for f in json_files),
        *((r, read_probe_run) for r in run_dirs),
    ]:
        seed, res = reader(src)
        sources.append({"source": Path(src).name, "seed": seed, **res})
    paired_probe(sources)  # raises for a seed given twice
    return sources


# ------------------------------------------------------------------------------------ figures
# ------------------------------------------------------------------------------------ figures
def _example_figure(maps: ImageMaps, label: np.ndarray, cfg: ModelConfig, ignore_index: int, title: str) -> Any:
    """The analyses' block grid of one dataset image, with ground-truth (solid) and prediction (dashed)
    class outlines: the probe's heads when the set supports it, else the comparison's, else the first three."""
    heads = list(cfg.heads)
    focus = next(iter(structtoken_heads(heads)), heads[0])
    grid = next((a for a in (PROBE, COMPARISON) if a.supported(cfg) is None), None)
    grid_heads = grid.heads(cfg, focus) if grid is not None else heads[:3]
    valid = label[label != ignore_index].astype(np.int64)
    area = np.bincount(valid, minlength=maps.heads[focus].stages.shape[1])
    class_ids = [int(c) for c in np.argsort(-area, kind="stable")[:4] if area[c] > 0] or [0]
    layout = block_grid(
        maps,
        grid_heads,
        class_ids,
        "shared",
        readout="head",  # the readout every head has (raw is not applicable to every baseline)
        outline_head=focus,
        label=label,
        title=title,
        cell_long_side=160,
    )
    return render_static(layout)


# ------------------------------------------------------------------------------------ writing
READOUT_NOTES = {
    "raw": "channel k of each stage read as class k (the paper's view)",
    "head": "each stage through the head's own remaining output layers (the logit lens)",
    "fitted": "each stage through a per-stage affine map fitted on the train split, model frozen (the tuned lens)",
}

_ABS_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s/\\]+[/\\])*([^\s/\\]+)")


def no_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last component (no machine paths in a report)."""
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def _p(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.1f}"


def fitted_meta(model: Segmentor) -> dict[str, Any] | None:
    """How the set's fitted readout was fitted (from its file's metadata), or None without one."""
    fitted = getattr(model, "fitted_readouts", None)
    if fitted is None:
        return None
    m = fitted.metadata
    keys = (
        "split",
        "num_images",
        "num_pixels",
        "pixels_per_image",
        "pixel_sampling",
        "seed",
        "preprocess",
        "grid",
        "loss",
        "l2",
        "l2_on",
        "standardize",
        "optimizer",
        "iterations",
    )
    out: dict[str, Any] = {k: m.get(k) for k in keys if k in m}
    out["file"] = fitted.path.name if fitted.path is not None else None
    out["train_accuracy"] = {h: v.get("train_accuracy") for h, v in (m.get("heads") or {}).items()}
    if fitted.problem:
        out["problem"] = no_paths(fitted.problem)
    return out


def _fitted_sentence(fm: Mapping[str, Any] | None) -> str:
    if not fm:
        return "No fitted readout file beside the set: the fitted readout is not reported."
    return (
        f"Fitted readout ({fm.get('file')}): per (head, stage) an affine map fitted on the {fm.get('split')} split "
        f"({fm.get('num_images')} images x {fm.get('pixels_per_image')} labelled pixels, {fm.get('grid')}), "
        f"{fm.get('loss')}, L2 {fm.get('l2')} on the {fm.get('l2_on')}, inputs standardised: "
        f"{fm.get('standardize')}, {fm.get('optimizer')}, {fm.get('iterations')} iterations."
    )


def seeds_sentence(seed: int | None, split: str) -> str:
    """What the per-stage numbers are: one training run of each head, so the claim lines describe the set."""
    run = f"training seed {seed}" if seed is not None else "one training seed (not recorded)"
    return (
        f"Every per-stage number in this report is one training run of each head ({run}; {split} split). "
        "With one seed per head the tables below are the numbers of one run each: they are not tested "
        "differences between heads (those need paired seeds and a confidence interval: `python -m analysis "
        "claims` over the set-v2 runs, and the probe below)."
    )


def write_markdown(result: Mapping[str, Any], heads: Sequence[str], figures: Mapping[str, str]) -> str:
    """The human-readable report (``report.md``): what holds under which readout, the probe verdict,
    tables per readout (percent) and the figures."""
    meta = result["meta"]
    readouts = result["readouts"]
    lines = [
        f"# Per-block report: {meta['model']} on {meta['split']}",
        "",
        f"{meta['n_images']} images of `{meta['data']}`, native resolution, {meta['date']} "
        f"({meta['seconds']:.0f} s on {meta['device']}). Every stage (input, each block, output) of every "
        "head is read as class scores three ways, upsampled bilinearly to the label size and scored: mIoU "
        "from the dataset confusion matrix of its argmax, mask AP ranks the pixels by each class channel "
        f"(mean over images where the class is present, then over classes), boundary F1 with "
        f"{BOUNDARY_TOLERANCE} px tolerance (counts pooled per class). Label {meta['ignore_index']} is "
        "ignored. All values in percent.",
        "",
        *(f"- **{r}**: {READOUT_NOTES[r]}." for r in READOUTS),
        "",
        *_reference_lines(result.get("reference")),
        _fitted_sentence(meta.get("fitted")),
        "",
        "## The readouts of each head",
        "",
        *(
            f"- **{head_label(h)}**: raw: {d['raw']}; head: {d['head']}; fitted: {d['fitted']}"
            + (
                f" (input widths per stage: {', '.join(str(w) for w in widths[h])})"
                if (widths := meta.get("fitted_input_channels") or {}).get(h)
                else ""
            )
            + "."
            for h, d in (meta.get("readout_definitions") or {}).items()
        ),
        "",
        "## StructToken against every baseline, block by block",
        "",
        "Claim (the paper's Fig. 3): StructToken's block maps carry class structure more clearly than a per-pixel "
        "peer's. Each cell: StructToken minus the baseline at that block, in points, under one readout; a readout "
        "appears only for heads it reads (raw is not applicable where channel k is not class k by construction).",
        "",
        seeds_sentence(meta.get("seed"), str(meta["split"])),
        "",
        *claims_table(result.get("claims") or {}, "miou"),
        *claims_table(result.get("claims") or {}, "mask_ap"),
    ]
    over = result.get("seeds") or {}
    if over.get("claims"):
        files = ", ".join(((meta.get("runs") or {}).get("files")) or [])
        lines += [
            "### Over training seeds (committed run results)",
            "",
            f"The same comparison from the run results in `{(meta.get('runs') or {}).get('folder')}` "
            f"({over.get('split')} split; {files}): every seed's StructToken heads paired with that seed's baselines.",
            "",
            *claims_table(over["claims"], "miou"),
            *claims_table(over["claims"], "mask_ap"),
            "The StructToken heads against each other (second minus first), paired by seed:",
            "",
            *claims_table(over.get("structtoken_pairs") or {}, "miou", ("second", "first")),
        ]
    for r, why in (meta.get("unavailable") or {}).items():
        for h, reason in why.items():
            lines.append(f"- {head_label(h)} has no {r} readout: {reason}")
    probe = result.get("probe") or {}
    lines += [
        "",
        "## Deep-supervision probe (training seeds, paired by seed)",
        "",
        f"**Verdict:** {display_names(str(probe.get('verdict')))}",
    ]
    if probe.get("pairs"):
        lines += ["", *pairs_table(probe["pairs"])]
        srcs = ", ".join(f"{s['source']} (seed {s['seed']})" for s in probe.get("sources", []))
        lines += ["", f"Final val mIoU (points) from {srcs}."]
    for c in probe.get("head_vs_head") or []:
        lines.append(f"- {display_names(c['verdict'])}")
    lines += _probe_ft_lines(result.get("probe_ft")) + _ablation_lines(result.get("ablation"))
    for r in READOUTS:
        per_head = readouts.get(r) or {}
        shown = [h for h in heads if h in per_head and "blocks" in per_head[h]]
        if not shown:
            continue
        n = max(len(per_head[h]["blocks"]) for h in shown)
        for metric in ("miou", "mask_ap"):
            lines += [
                "",
                f"## {F.METRIC_LABELS[metric]} per stage, {r} readout (%)",
                "",
                "| head | input | " + " | ".join(f"block {i}" for i in range(1, n + 1)) + " | output |",
                "|---" * (n + 3) + "|",
            ]
            for h in shown:
                m = per_head[h]
                cells = [_p(m["input"].get(metric))]
                cells += [_p(m["blocks"][i].get(metric)) if i < len(m["blocks"]) else "–" for i in range(n)]
                cells.append(_p(m["final"].get(metric)))
                lines.append(f"| {head_label(h)} | " + " | ".join(cells) + " |")
    lines += ["", "Boundary F1 and pixel accuracy of every stage are in metrics.json.", "", "## Figures", ""]
    for name, caption in figures.items():
        lines.append(f"- [{caption}]({name})")
        if name.endswith(".png"):
            lines.append(f"\n  ![{caption}]({name})\n")
    return "\n".join(lines) + "\n"


def _reference_lines(ref: Mapping[str, Any] | None) -> list[str]:
    """The resolution reference's sentence (none for a report without one)."""
    if not ref:
        return []
    return [
        f"Reference, {ref.get('definition')}: mIoU {_p(ref.get('miou'))}, mask AP {_p(ref.get('mask_ap'))}, "
        f"boundary F1 {_p(ref.get('boundary_f1'))}. Even this map is far from 100 on boundary F1 at "
        f"{BOUNDARY_TOLERANCE} px: read the stages' boundary F1 against it.",
        "",
    ]


def _probe_ft_lines(pf: Mapping[str, Any] | None) -> list[str]:
    if not pf:
        return []
    lines = ["", "## Deep-supervision probe with trainable features", "", f"{pf.get('features')}.", ""]
    lines.append(f"**Verdict:** {display_names(str(pf.get('verdict')))}")
    if pf.get("pairs"):
        lines += ["", *pairs_table(pf["pairs"])]
        lines += ["", f"{pf.get('protocol')}, from " + ", ".join(s["source"] for s in pf.get("sources", [])) + "."]
    return lines


def _ablation_lines(ab: Mapping[str, Any] | None) -> list[str]:
    if not ab:
        return []
    heads = list(ab.get("heads") or [])
    lines = [
        "",
        "## Block-count ablation",
        "",
        "Final val mIoU (whole image, points), mean ± SD over seeds (one value: a single run, no SD).",
        "",
        "| blocks N | seeds | " + " | ".join(head_label(h) for h in heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for n, g in (ab.get("by_blocks") or {}).items():
        cells = []
        for h in heads:
            sp = (g.get("final_spread") or {}).get(h) or {}
            if sp.get("mean") is None:
                cells.append("–")
            else:
                cells.append(f"{sp['mean']:.2f}" + (f" ± {sp['sd']:.2f}" if sp.get("sd") is not None else ""))
        lines.append(f"| {n} | {', '.join(str(x) for x in g.get('seeds', []))} | " + " | ".join(cells) + " |")
    return lines


def stage_input_channels(model: Segmentor) -> dict[str, list[int]]:
    """head -> the width of what the fitted readout reads at each stage (input, blocks, output)."""
    cfg = model.cfg
    gh, gw = cfg.token_grid
    p = next(model.parameters())
    x = torch.zeros(1, cfg.embed_dim, gh, gw, device=p.device, dtype=p.dtype)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = {h: fitted_input_channels(model.heads[h], model.heads[h](x)) for h in cfg.heads}
    model.train(was)
    return out


def set_file_meta(spec: str) -> dict[str, Any] | None:
    """``{"file", "sha256"}`` of the set file a report read (the embedded set or one of our files), else None."""
    from structtoken.assets import EMBEDDED
    from structtoken.checkpoint import file_sha256

    path = EMBEDDED.get(spec) or Path(spec)
    if not spec or not path.is_file():
        return None
    return {"file": path.name, "sha256": file_sha256(path)}


def _set_path(model_name: str) -> Path | None:
    """The set file behind ``model_name`` (the embedded set's or a safetensors path), None for registry names."""
    from structtoken.assets import EMBEDDED

    path = EMBEDDED.get(model_name) or Path(model_name)
    return path if path.suffix == ".safetensors" and path.is_file() else None


def probe_head_groups(model: Segmentor, model_name: str, files: Sequence[str | Path]) -> list[HeadGroup]:
    """The head files ``files`` (:func:`structtoken.sets.load_head_group`), each checked to hold a head of the set's
    and to be trained on the set's backbone (the set file's, when ``model_name`` names one).

    Raises:
        ValueError: a file that is not a head file of this set's backbone, a set whose heads have ViT blocks of
        their own, or two files with the same seed (messages name the files).
    """
    if not files:
        return []
    if model.head_vit:
        raise ValueError("this set's heads have ViT blocks of their own: probe head files need a shared backbone")
    backbone = _set_path(model_name)
    groups = []
    for f in files:
        try:
            g = load_head_group(f, backbone)
        except (SetAssemblyError, OSError, ValueError, KeyError) as e:
            raise ValueError(f"probe head file {Path(f).name}: {e}") from None
        if g.seed is None:
            raise ValueError(f"probe head file {g.file} records no training seed")
        if g.cfg.num_classes != model.cfg.num_classes or g.cfg.embed_dim != model.cfg.embed_dim:
            raise ValueError(f"probe head file {g.file} does not fit this set (classes or width differ)")
        groups.append(g)
    return groups


def own_pair_sources(
    readouts: Mapping[str, Any],
    seed: int | None,
    model_name: str,
    groups: Sequence[HeadGroup],
    extra_cm: Mapping[tuple[str, str], Any],
) -> list[dict[str, Any]]:
    """Probe sources (``{"source", "seed", head: final mIoU fraction}``) measured in this report: the set's own
    heads (final, head readout) when ``groups`` are given and the set's seed is known, then one per head group."""
    if not groups:
        return []
    out = []
    if seed is not None:
        own = {h: e["final"]["miou"] / 100.0 for h, e in readouts.get("head", {}).items() if "final" in e}
        name = _set_path(model_name)
        out.append({"source": name.name if name else _name_only(model_name), "seed": seed, **own})
    for g in groups:
        src: dict[str, Any] = {"source": g.file, "seed": g.seed}
        for h in g.heads:
            src[h] = float(extra_cm[(g.file, h)].compute()["miou"])
        out.append(src)
    return out


def _runs_split(runs: Sequence[Mapping[str, Any]]) -> str | None:
    splits = {str((r.get("stages") or {}).get("split")) for r in runs if r.get("stages")}
    return splits.pop() if len(splits) == 1 else None


def _ordered_heads(per_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]], first: Sequence[str]) -> list[str]:
    heads = list(first)
    for per_r in per_seed.values():
        for per_head in per_r.values():
            heads += [h for h in per_head if h not in heads]
    return heads


def _name_only(model: str) -> str:
    """A model given as a checkpoint path is named by its file name; names stay as they are."""
    return Path(model).name if (os.sep in model or Path(model).suffix) else model


def build_report(
    model: Segmentor,
    dataset: SegmentationDataset,
    out_dir: str | Path,
    model_name: str = "",
    limit: int | None = None,
    probe_json: Sequence[str | Path] = (),
    probe_runs: Sequence[str | Path] = (),
    progress: bool = True,
    workers: int = 1,
    num_examples: int = NUM_EXAMPLES,
    probe_heads: Sequence[str | Path] = (),
    runs: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate, write ``metrics.json``, figures and ``report.md`` into ``out_dir``; return the metrics.

    ``num_examples`` per-image comparison figures are drawn (they show the dataset's images: use 0 for
    a report that is shipped where the data may not go). ``probe_heads``: head files of deep-supervision pairs
    trained on this set's backbone with other seeds (:func:`probe_head_groups`), evaluated on this split beside
    the set's own pair. ``runs``: a folder of run results (:mod:`analysis.over_seeds`) whose seed spread,
    paired claims, probe with trainable features and block-count ablation the report carries."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = collect_probe(probe_json, probe_runs)
    groups = probe_head_groups(model, model_name, probe_heads)
    run_results = over_seeds.load_runs(runs) if runs is not None else []
    n_total = len(dataset) if limit is None else min(int(limit), len(dataset))
    examples = sorted({0, n_total // 2})[:num_examples] if n_total and num_examples > 0 else []
    extra_cm: dict[tuple[str, str], Any] = {}
    reference = StageMetrics(model.cfg.num_classes, dataset.info.ignore_index)
    acc, kept, n, times, unavailable = evaluate_stages(
        model, dataset, limit, progress, examples, workers, extra=groups, extra_confusions=extra_cm, reference=reference
    )
    heads = list(model.cfg.heads)
    widths = stage_input_channels(model)
    readouts: dict[str, dict[str, Any]] = {}
    for r in READOUTS:
        readouts[r] = {}
        for h in heads:
            stages = [m.compute() for m in acc[r].get(h, [])]
            if stages:
                readouts[r][h] = {"input": stages[0], "blocks": stages[1:-1], "final": stages[-1]}
                if r == "fitted":
                    readouts[r][h]["input_channels"] = widths[h]
            elif r == "raw" and h in unavailable[r]:
                readouts[r][h] = {"applicable": False, "reason": no_paths(unavailable[r][h])}
    seed = training_seed(model_name) if model_name else None
    sources = [*sources, *own_pair_sources(readouts, seed, model_name, groups, extra_cm)]
    paired_probe(sources)  # raises for a seed given twice
    result: dict[str, Any] = {
        "meta": {
            "model": _name_only(model_name) or model.cfg.name,
            "model_name": model.cfg.name,
            "heads": heads,
            "classes": list(model.cfg.class_names()),
            "split": dataset.split,
            "data": Path(dataset.root).name,  # the folder's name: no machine path in a shipped report
            "seed": seed,  # the set's training seed (None: unknown)
            "set_file": set_file_meta(model_name),
            "result_files": [{"file": src["source"], "seed": src["seed"]} for src in sources],
            "probe_head_files": [{"file": g.file, "seed": g.seed} for g in groups],
            "runs": None if runs is None else {"folder": Path(runs).name, "files": [r["file"] for r in run_results]},
            "readout_definitions": {h: readout_definitions(h, model.heads[h]) for h in heads},
            "fitted_input_channels": widths,
            "n_images": n,
            "ignore_index": dataset.info.ignore_index,
            "unit": "percent (0-100)",
            "metrics": ["miou", "mask_ap", "boundary_f1", "pixel_accuracy"],
            "boundary_tolerance": BOUNDARY_TOLERANCE,
            "resolution": "native",
            "readouts": {r: READOUT_NOTES[r] for r in READOUTS},
            "unavailable": {r: {h: no_paths(w) for h, w in why.items()} for r, why in unavailable.items() if why},
            "fitted": fitted_meta(model),
            "stages": "input (entering block 1), blocks 1..N, final (the head output)",
            "device": str(model.device),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": 0.0,
            "seconds_by_phase": {k: round(v, 1) for k, v in times.items()},
        },
        "readouts": readouts,
        "reference": {"definition": REFERENCE_NOTE, **reference.compute()},
        "claims": block_claims({seed if seed is not None else 0: readouts}, heads),
        "probe": paired_probe(sources),
    }
    if run_results:
        per_seed = over_seeds.stage2_per_seed(run_results)
        result["seeds"] = {
            "split": _runs_split(run_results),
            "stages": over_seeds.stage_spread(per_seed),
            "claims": block_claims(per_seed, _ordered_heads(per_seed, heads)),
            "structtoken_pairs": block_claims(per_seed, heads, structtoken_pairs(heads)),
        }
        result["probe_ft"] = over_seeds.probe_ft(run_results)
        result["ablation"] = over_seeds.ablation(run_results)
    figures: dict[str, str] = {}
    curves = {r: as_fractions({h: e for h, e in v.items() if "blocks" in e}) for r, v in readouts.items() if v}
    if curves:
        title = f"Per-block metrics by readout: {result['meta']['model']} ({dataset.split}, {n} images)"
        ref = report_reference(result)
        F.readout_curves_figure(curves, title=title, reference=ref).savefig(out / "block_curves.png", dpi=100)
        F.readout_curves_plotly(curves, title=title, reference=ref).write_html(
            out / "block_curves.html", include_plotlyjs=True
        )
        figures["block_curves.png"] = "per-block curves, one row per readout"
        figures["block_curves.html"] = "per-block curves (interactive)"
    seeds: dict[str, list[float]] = {}
    for src in sources:
        for h in ("per_pixel", "per_pixel_ds"):
            if h in src:
                seeds.setdefault(h, []).append(src[h])
    if seeds:
        F.probe_figure(seeds).savefig(out / "probe.png", dpi=110)
        figures["probe.png"] = "final mIoU across training seeds"
    if result.get("ablation"):
        F.ablation_figure(result["ablation"], "head").savefig(out / "ablation.png", dpi=100)
        figures["ablation.png"] = "block-count ablation: per-block and final mIoU against the number of blocks"
    for i, (maps, label) in sorted(kept.items()):
        name = dataset.names[i]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        title = f"{name}: class maps block by block (head readout, shared normalisation)"
        fig = _example_figure(maps, label, model.cfg, dataset.info.ignore_index, title)
        fig.savefig(out / f"comparison_{safe}.png", dpi=90)
        figures[f"comparison_{safe}.png"] = f"class maps of {name}"
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    clean = json_ready(result)
    (out / "metrics.json").write_text(json.dumps(clean, indent=1))
    (out / "report.md").write_text(write_markdown(clean, heads, figures))
    return clean


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis report ...``; returns the exit code (2 for bad inputs)."""
    p = argparse.ArgumentParser(prog="python -m analysis report", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="camvid", help="'camvid' (the shipped set), a registry name or a checkpoint")
    p.add_argument("--data", default=None, help="dataset root (default: $STRUCTTOKEN_CAMVID or ../shared/data/camvid)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument(
        "--probe-json",
        nargs="*",
        default=[],
        metavar="FILE",
        help="structtoken.evaluate --json results, one per training seed",
    )
    p.add_argument(
        "--probe-runs",
        nargs="*",
        default=[],
        metavar="RUNDIR",
        help="training run folders (their log.jsonl final validation), one per seed",
    )
    p.add_argument(
        "--probe-heads",
        nargs="*",
        default=[],
        metavar="FILE",
        help="head files of deep-supervision pairs trained on this set's backbone with other seeds (evaluated here)",
    )
    p.add_argument(
        "--runs",
        default=None,
        metavar="DIR",
        help="folder of run results (python -m analysis run-result): seed spread, claims, probe_ft, ablation",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="threads scoring the heads of an image in parallel (default: up to 2)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--examples",
        type=int,
        default=NUM_EXAMPLES,
        help="per-image comparison figures to draw (they show dataset images; 0 for a shippable report)",
    )
    args = p.parse_args(argv)

    from structtoken.evaluate import open_model_and_dataset

    try:
        model, dataset = open_model_and_dataset(args.model, args.data, args.split, args.device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        collect_probe(args.probe_json, args.probe_runs)
        probe_head_groups(model, str(args.model), args.probe_heads)
        if args.runs is not None:
            if not Path(args.runs).is_dir():
                raise ValueError(f"--runs {Path(args.runs).name}: no such folder")
            over_seeds.load_runs(args.runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = build_report(
            model,
            dataset,
            args.out,
            model_name=str(args.model),
            limit=args.limit,
            probe_json=args.probe_json,
            probe_runs=args.probe_runs,
            progress=not args.no_progress,
            workers=max(1, args.workers),
            num_examples=args.examples,
            probe_heads=args.probe_heads,
            runs=args.runs,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = res["meta"]
    print(f"wrote {Path(args.out) / 'metrics.json'} and report.md ({meta['n_images']} images, {meta['seconds']} s)")
    return 0

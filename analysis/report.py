"""Dataset report: per-block structure metrics of every head of a set, figures and a markdown summary.

    python -m analysis report --model camvid --data DIR --split val --out OUT \
        [--limit N] [--probe-json FILE ...] [--probe-runs RUNDIR ...] [--device auto]

For every image (native resolution, one backbone pass for all heads), every head and every stage
(the class maps entering block 1, after each block, the head output), the stage's K-channel map
is upsampled bilinearly to the label size and scored against the label: mIoU (argmax, dataset
confusion matrix), mask AP (each class channel ranks the pixels) and boundary F1 (tolerance 2 px),
with the accumulators of :mod:`analysis.metrics`; label 255 is ignored.

Writes ``OUT/metrics.json``::

    {head: {"input": {...}, "blocks": [{...} per block], "final": {...}},   # {"miou", "mask_ap",
     "probe": {"seeds": {head: [mIoU per seed]}, "sources": [...], "summary": {...}},  #  "boundary_f1",
     "meta": {"model", "split", "n_images", "date", "seconds", ...}}                 #  "pixel_accuracy"}

and ``OUT/block_curves.png`` / ``.html``, ``OUT/probe.png`` (when seed results are given),
``OUT/comparison_<image>.png`` for two example images and ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from tqdm.auto import tqdm

from structtoken.config import HEAD_NAMES, STRUCTTOKEN_HEADS
from structtoken.data import DatasetError, SegmentationDataset
from structtoken.devices import autocast
from structtoken.segmentor import Segmentor

from . import figures as F
from .maps import ImageMaps, image_maps_from_output, normalize_maps, stage_names, upsample_maps
from .metrics import BoundaryF1Accumulator, ConfusionAccumulator, MaskAPAccumulator
from .probe import _relation_sentence, comparison_heads, probe_summary, structtoken_heads

__all__ = ["StageMetrics", "build_report", "evaluate_stages", "main", "read_probe_json", "read_probe_run"]

METRICS = ("miou", "mask_ap", "boundary_f1")
BOUNDARY_TOLERANCE = 2
NUM_EXAMPLES = 2


# ------------------------------------------------------------------------------- accumulation
class StageMetrics:
    """The three dataset accumulators of one (head, stage)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.confusion = ConfusionAccumulator(num_classes, ignore_index)
        self.mask_ap = MaskAPAccumulator(num_classes, ignore_index)
        self.boundary = BoundaryF1Accumulator(num_classes, BOUNDARY_TOLERANCE, ignore_index)

    def update(self, scores: np.ndarray, pred: np.ndarray, label: np.ndarray) -> None:
        """scores ``[K, H, W]`` float32, pred ``[H, W]`` (argmax of scores), label ``[H, W]``."""
        self.confusion.update(pred, label)
        self.mask_ap.update(scores, label)
        self.boundary.update(pred, label)

    def compute(self) -> dict[str, Any]:
        """``{"miou", "pixel_accuracy", "mask_ap", "boundary_f1"}`` plus per-class lists."""
        c, a, b = self.confusion.compute(), self.mask_ap.compute(), self.boundary.compute()
        return {
            "miou": c["miou"],
            "mask_ap": a["mask_ap"],
            "boundary_f1": b["boundary_f1"],
            "pixel_accuracy": c["pixel_accuracy"],
            "iou_per_class": c["iou_per_class"],
            "ap_per_class": a["ap_per_class"],
            "f1_per_class": b["f1_per_class"],
        }


def _stage_tensor(out: Any) -> torch.Tensor:
    """[S, K, h, w] stages of the first image of a HeadOutput."""
    return torch.cat([out.tokens_init[:1], *(b.tokens[:1] for b in out.blocks), out.logits[:1]], dim=0)


@torch.no_grad()
def evaluate_stages(
    model: Segmentor,
    dataset: SegmentationDataset,
    limit: int | None = None,
    progress: bool = True,
    examples: Sequence[int] = (),
    workers: int = 1,
) -> tuple[dict[str, list[StageMetrics]], dict[int, tuple[ImageMaps, np.ndarray]], int, dict[str, float]]:
    """Accumulate every (head, stage) over the dataset.

    Returns:
        (head -> [StageMetrics per stage], example index -> (ImageMaps, label), images seen,
        seconds spent per phase {"model", "upsample", "metrics"}).
    """
    cfg = model.cfg
    k = cfg.num_classes
    ignore = dataset.info.ignore_index
    heads = list(cfg.heads)
    n = len(dataset) if limit is None else max(0, min(int(limit), len(dataset)))
    acc: dict[str, list[StageMetrics]] = {}
    kept: dict[int, tuple[ImageMaps, np.ndarray]] = {}
    times = {"model": 0.0, "upsample": 0.0, "metrics": 0.0}
    was_training = model.training
    model.eval()
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for i in tqdm(range(n), desc="report", unit="img", disable=not progress):
            image, label = dataset.load_pair(i)
            t0 = time.perf_counter()
            x = model.preprocess(image, scale=None)
            with autocast(model.device):
                out = model(x)
            if i in examples:
                kept[i] = (image_maps_from_output(image, out, class_names=cfg.class_names()), label)
            t1 = time.perf_counter()
            size = tuple(label.shape)
            per_head = {}
            for h in heads:
                st = _stage_tensor(out.heads[h]).float()
                up = TF.interpolate(st, size=size, mode="bilinear", align_corners=False).cpu().numpy()
                # numpy's argmax over the class axis is ~5x faster than torch's on the CPU
                pred = up.argmax(axis=1).astype(np.uint8 if k <= 256 else np.int32)
                per_head[h] = (np.ascontiguousarray(up), pred)
                if h not in acc:
                    acc[h] = [StageMetrics(k, ignore) for _ in range(st.shape[0])]
            t2 = time.perf_counter()

            def run(h: str, label: np.ndarray = label, per_head: dict = per_head) -> None:
                scores, preds = per_head[h]
                for s, m in enumerate(acc[h]):
                    m.update(scores[s], preds[s], label)

            if pool is not None:
                list(pool.map(run, heads))
            else:
                for h in heads:
                    run(h)
            t3 = time.perf_counter()
            times["model"] += t1 - t0
            times["upsample"] += t2 - t1
            times["metrics"] += t3 - t2
    finally:
        if pool is not None:
            pool.shutdown()
        model.train(was_training)
    return acc, kept, n, times


# ------------------------------------------------------------------------------------- probe
def read_probe_json(path: str | Path) -> dict[str, float]:
    """Final mIoU per head from one ``python -m structtoken.evaluate --json`` file (one seed)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read probe result {p}: {e}") from None
    heads = d.get("heads") if isinstance(d, dict) else None
    if not isinstance(heads, dict):
        raise ValueError(f"{p} is not a structtoken.evaluate --json result (no 'heads' object)")
    out = {}
    for h, m in heads.items():
        if isinstance(m, dict) and isinstance(m.get("miou"), (int, float)):
            out[h] = float(m["miou"])
    return out


def read_probe_run(run_dir: str | Path) -> dict[str, float]:
    """Final val mIoU per head of one training run folder (``log.jsonl`` written by structtoken.train).

    Uses the record marked ``"final": true``, else the last record with ``val_miou/*`` keys.
    """
    d = Path(run_dir)
    log = d / "log.jsonl"
    if not log.is_file():
        raise ValueError(f"{d} is not a training run folder: {log} not found")
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
        raise ValueError(f"{log} holds no validation mIoU yet (has the run finished?)")
    return {k.split("/", 1)[1]: float(v) for k, v in rec.items() if k.startswith("val_miou/") and v is not None}


def collect_probe(json_files: Sequence[str | Path] = (), run_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Per-seed final mIoU of ``per_pixel`` and ``per_pixel_ds`` from result files and run folders."""
    seeds: dict[str, list[float]] = {"per_pixel": [], "per_pixel_ds": []}
    sources = []
    for src, reader in [
        *((f, read_probe_json) for f in json_files),
        *((r, read_probe_run) for r in run_dirs),
    ]:
        res = reader(src)
        found = {h: res[h] for h in seeds if h in res}
        for h, v in found.items():
            seeds[h].append(v)
        sources.append({"source": str(src), **found})
    return {"seeds": {h: v for h, v in seeds.items() if v}, "sources": sources}


# ------------------------------------------------------------------------------------ figures
def _example_figure(maps: ImageMaps, label: np.ndarray, heads: Sequence[str], title: str) -> Any:
    """Paper-style grid with ground-truth (solid) and prediction (dashed) class contours."""
    st = structtoken_heads(heads)
    focus = st[0] if st else heads[0]
    grid_heads = (
        comparison_heads(heads, "probe", focus)
        if "per_pixel_ds" in heads
        else (comparison_heads(heads, "comparison", focus) if "per_pixel" in heads and st else list(heads)[:3])
    )
    valid = label[label != 255].astype(np.int64)
    k = maps.heads[focus].stages.shape[1]
    area = np.bincount(valid, minlength=k)
    class_ids = [int(c) for c in np.argsort(-area, kind="stable")[:4] if area[c] > 0] or [0]
    normed = normalize_maps({h: maps.heads[h].stages for h in grid_heads}, "shared")
    assert isinstance(normed, dict)
    h, w = label.shape
    f = 160 / max(h, w)
    size = (max(8, round(h * f)), max(8, round(w * f)))
    panels = {
        hd: np.clip(upsample_maps(normed[hd][:, class_ids].transpose(1, 0, 2, 3), size), 0, 1) for hd in grid_heads
    }
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    names = maps.class_names
    return F.comparison_figure(
        maps.image,
        [names[c] for c in class_ids],
        {hd: list(maps.heads[hd].stage_names) for hd in grid_heads},
        panels,
        vmin=0.0,
        vmax=1.0,
        label=label[ys][:, xs],
        pred=maps.pred[focus][ys][:, xs],
        class_ids=class_ids,
        title=title,
    )


# ------------------------------------------------------------------------------------ writing
def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _p(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.1f}"


def _head_sentences(metrics: dict[str, Any], heads: Sequence[str]) -> list[str]:
    out = []
    for h in heads:
        m = metrics[h]
        seq = [m["input"], *m["blocks"], m["final"]]
        names = stage_names(len(m["blocks"]))
        mi = [s.get("miou") for s in seq]
        if any(v is None for v in mi):
            continue
        gains = [(names[i], mi[i] - mi[i - 1]) for i in range(1, len(mi))]
        best = max(gains, key=lambda g: g[1]) if gains else None
        s = (
            f"{F.head_label(h)}: mIoU {_p(mi[0])} at the input → {_p(mi[-1])} at the output, mask AP "
            f"{_p(seq[0].get('mask_ap'))} → {_p(seq[-1].get('mask_ap'))}"
        )
        if best is not None:
            where = "the output" if best[0] == "output" else best[0]
            s += f"; the largest mIoU step is at {where} ({100 * best[1]:+.1f} pts)"
        out.append(s + ".")
    return out


def _comparison_sentences(metrics: dict[str, Any], heads: Sequence[str]) -> list[str]:
    if "per_pixel" not in metrics:
        return []
    out = []
    for st in structtoken_heads(heads):
        for metric in ("mask_ap", "miou"):
            vals = [100 * v if v is not None else float("nan") for v in (b.get(metric) for b in metrics[st]["blocks"])]
            base = [
                100 * v if v is not None else float("nan")
                for v in (b.get(metric) for b in metrics["per_pixel"]["blocks"])
            ]
            s = _relation_sentence(F.head_label(st), vals, F.head_label("per_pixel"), base, metric)
            if s:
                out.append(s)
    return out


def write_markdown(result: dict[str, Any], heads: Sequence[str], figures: dict[str, str]) -> str:
    """The human-readable report (``report.md``)."""
    meta = result["meta"]
    lines = [
        f"# Per-block report: {meta['model']} on {meta['split']}",
        "",
        f"{meta['n_images']} images of `{meta['data']}`, native resolution, {meta['date']} "
        f"({meta['seconds']:.0f} s on {meta['device']}). Every stage's class map is upsampled bilinearly to "
        "the label size; mIoU from the dataset confusion matrix of its argmax, mask AP ranks the pixels "
        "by each "
        f"class channel (mean over images where the class is present, then over classes), boundary F1 with "
        f"{BOUNDARY_TOLERANCE} px tolerance (counts pooled per class). "
        f"Label {meta['ignore_index']} is ignored.",
        "",
        "## What the numbers say",
        "",
    ]
    said = _head_sentences(result, heads) + _comparison_sentences(result, heads)
    probe = result.get("probe", {}).get("summary")
    if probe:
        if probe.get("outcome") != "insufficient" or probe.get("diff") is not None:
            said.append(f"Deep-supervision probe (training seeds): {probe['verdict']}")
        if probe.get("blocks"):
            said.extend(probe["blocks"]["sentences"])
    lines += [f"- {s}" for s in said] or ["- (no complete numbers)"]
    lines += [
        "",
        "## Final output per head",
        "",
        "| head | mIoU | mask AP | boundary F1 | pixel acc |",
        "|---|---|---|---|---|",
    ]
    for h in heads:
        f = result[h]["final"]
        lines.append(
            f"| {F.head_label(h)} | {_p(f['miou'])} | {_p(f['mask_ap'])} | {_p(f['boundary_f1'])} | "
            f"{_p(f.get('pixel_accuracy'))} |"
        )
    for metric in METRICS:
        n = max(len(result[h]["blocks"]) for h in heads)
        lines += [
            "",
            f"## {F.METRIC_LABELS[metric]} per stage (%)",
            "",
            "| head | input | " + " | ".join(f"block {i}" for i in range(1, n + 1)) + " | output |",
            "|---" * (n + 3) + "|",
        ]
        for h in heads:
            m = result[h]
            cells = [_p(m["input"].get(metric))]
            cells += [_p(m["blocks"][i].get(metric)) if i < len(m["blocks"]) else "–" for i in range(n)]
            cells.append(_p(m["final"].get(metric)))
            lines.append(f"| {F.head_label(h)} | " + " | ".join(cells) + " |")
    lines += ["", "## Deep-supervision probe", ""]
    pr = result.get("probe", {})
    seeds = pr.get("seeds") or {}
    if seeds:
        lines += ["| head | seeds | mean mIoU | std |", "|---|---|---|---|"]
        for h, st in (probe or {}).get("heads", {}).items():
            std = "–" if st["std"] is None else f"{st['std']:.2f}"
            mean = "–" if st["mean"] is None else f"{st['mean']:.2f}"
            lines.append(f"| {F.head_label(h)} | {st['n']} | {mean} | {std} |")
        lines += ["", f"**Verdict:** {probe['verdict']}" if probe else ""]
    else:
        lines.append(
            "No seed results were given (`--probe-json` / `--probe-runs`), so the final-mIoU part of the "
            "probe is not judged here."
        )
    if probe and probe.get("blocks"):
        lines += ["", f"**Block maps:** {probe['blocks']['verdict']}"]
    lines += ["", "## Figures", ""]
    for name, caption in figures.items():
        lines.append(f"- [{caption}]({name})")
        if name.endswith(".png"):
            lines.append(f"\n  ![{caption}]({name})\n")
    return "\n".join(lines) + "\n"


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
) -> dict[str, Any]:
    """Evaluate, write ``metrics.json``, figures and ``report.md`` into ``out_dir``; return the metrics.

    ``num_examples`` per-image comparison figures are drawn (they show the dataset's images: use 0 for
    a report that is shipped where the data may not go)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probe = collect_probe(probe_json, probe_runs)
    n_total = len(dataset) if limit is None else min(int(limit), len(dataset))
    examples = sorted({0, n_total // 2})[:num_examples] if n_total and num_examples > 0 else []
    acc, kept, n, times = evaluate_stages(model, dataset, limit, progress, examples, workers)
    heads = list(model.cfg.heads)
    result: dict[str, Any] = {}
    for h in heads:
        stages = [m.compute() for m in acc[h]] if h in acc else []
        if not stages:
            continue
        result[h] = {"input": stages[0], "blocks": stages[1:-1], "final": stages[-1]}
    head_metrics = {h: result[h] for h in heads if h in result}
    st = next((h for h in heads if HEAD_NAMES[h][0] in STRUCTTOKEN_HEADS), None)
    result["probe"] = {
        **probe,
        "summary": probe_summary(probe["seeds"], head_metrics or None, structtoken_head=st),
    }
    seconds = time.perf_counter() - t0
    result["meta"] = {
        "model": model_name or model.cfg.name,
        "model_name": model.cfg.name,
        "heads": heads,
        "classes": list(model.cfg.class_names()),
        "split": dataset.split,
        "data": str(dataset.root),
        "n_images": n,
        "ignore_index": dataset.info.ignore_index,
        "boundary_tolerance": BOUNDARY_TOLERANCE,
        "resolution": "native",
        "device": str(model.device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "seconds_by_phase": {k: round(v, 1) for k, v in times.items()},
    }
    figures: dict[str, str] = {}
    if head_metrics:
        title = f"Per-block metrics: {model_name or model.cfg.name} ({dataset.split}, {n} images)"
        fig = F.block_curves_figure(head_metrics, title=title)
        fig.savefig(out / "block_curves.png", dpi=110)
        F.block_curves_plotly(head_metrics, title=title).write_html(out / "block_curves.html", include_plotlyjs=True)
        figures["block_curves.png"] = "per-block curves"
        figures["block_curves.html"] = "per-block curves (interactive)"
    if probe["seeds"]:
        F.probe_figure(probe["seeds"]).savefig(out / "probe.png", dpi=110)
        figures["probe.png"] = "final mIoU across training seeds"
    for i, (maps, label) in sorted(kept.items()):
        name = dataset.names[i]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        fig = _example_figure(maps, label, heads, f"{name}: class maps block by block (shared normalisation)")
        fig.savefig(out / f"comparison_{safe}.png", dpi=90)
        figures[f"comparison_{safe}.png"] = f"class maps of {name}"
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    clean = _clean(result)
    (out / "metrics.json").write_text(json.dumps(clean, indent=1))
    (out / "report.md").write_text(write_markdown(clean, [h for h in heads if h in clean], figures))
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
        probe = collect_probe(args.probe_json, args.probe_runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    del probe
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
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = res["meta"]
    print(f"wrote {Path(args.out) / 'metrics.json'} and report.md ({meta['n_images']} images, {meta['seconds']} s)")
    return 0

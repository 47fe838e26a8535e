"""Dataset report: per-block structure metrics of every head of a set, figures and a markdown summary.

    python -m analysis report --model camvid --data DIR --split val --out OUT \
        [--limit N] [--probe-json FILE ...] [--probe-runs RUNDIR ...] [--device auto]

For every image (native resolution, one backbone pass for all heads), every head and every stage
(the class maps entering block 1, after each block, the head output), the stage's K-channel map
is upsampled bilinearly to the label size and scored against the label: mIoU (argmax, dataset
confusion matrix), mask AP (each class channel ranks the pixels) and boundary F1 (tolerance 2 px),
with the accumulators of :mod:`analysis.metrics`; the dataset's ignore label is ignored.

The outputs name the data and the runs by folder name only (never a path of the machine it ran on).

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
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from structtoken.config import ModelConfig
from structtoken.data import DatasetError, SegmentationDataset
from structtoken.devices import autocast
from structtoken.segmentor import Segmentor, upsample

from . import figures as F
from .analyses import COMPARISON, PROBE
from .grid import block_grid, render_static
from .labels import head_label
from .maps import ImageMaps, image_maps_from_output, stage_names, stage_tensor
from .metrics import BoundaryF1Accumulator, ConfusionAccumulator, MaskAPAccumulator
from .probe import probe_summary, relation_sentence
from .roles import baseline_heads, structtoken_heads
from .values import json_ready, percent

__all__ = ["StageMetrics", "build_report", "evaluate_stages", "main", "read_probe_json", "read_probe_run"]

METRICS = ("miou", "mask_ap", "boundary_f1")
BOUNDARY_TOLERANCE = 2
NUM_EXAMPLES = 2


# ------------------------------------------------------------------------------- accumulation
class StageMetrics:
    """The three dataset accumulators of one (head, stage)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
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
                up = upsample(stage_tensor(out.heads[h]).float(), size).cpu().numpy()
                # numpy's argmax over the class axis is ~5x faster than torch's on the CPU
                pred = up.argmax(axis=1).astype(np.uint8 if k <= 256 else np.int32)
                per_head[h] = (np.ascontiguousarray(up), pred)
                if h not in acc:
                    acc[h] = [StageMetrics(k, ignore) for _ in range(up.shape[0])]
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
        sources.append({"source": Path(src).name, **found})  # a folder / file name, never a machine path
    return {"seeds": {h: v for h, v in seeds.items() if v}, "sources": sources}


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
        outline_head=focus,
        label=label,
        title=title,
        cell_long_side=160,
    )
    return render_static(layout)


# ------------------------------------------------------------------------------------ writing
def _p(v: Any) -> str:
    p = percent(v)
    return "–" if p is None else f"{p:.1f}"


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
            f"{head_label(h)}: mIoU {_p(mi[0])} at the input → {_p(mi[-1])} at the output, mask AP "
            f"{_p(seq[0].get('mask_ap'))} → {_p(seq[-1].get('mask_ap'))}"
        )
        if best is not None:
            where = "the output" if best[0] == "output" else best[0]
            s += f"; the largest mIoU step is at {where} ({100 * best[1]:+.1f} pts)"
        out.append(s + ".")
    return out


def _block_percents(entry: dict[str, Any], metric: str) -> list[float]:
    return [float("nan") if (p := percent(b.get(metric))) is None else p for b in entry["blocks"]]


def _comparison_sentences(metrics: dict[str, Any], heads: Sequence[str]) -> list[str]:
    """Each StructToken head's block maps against each baseline's (mask AP, then mIoU)."""
    out = []
    for base in baseline_heads([h for h in heads if h in metrics]):
        for st in structtoken_heads(heads):
            for metric in ("mask_ap", "miou"):
                vals, ref = _block_percents(metrics[st], metric), _block_percents(metrics[base], metric)
                s = relation_sentence(head_label(st), vals, head_label(base), ref, metric)
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
            f"| {head_label(h)} | {_p(f['miou'])} | {_p(f['mask_ap'])} | {_p(f['boundary_f1'])} | "
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
            lines.append(f"| {head_label(h)} | " + " | ".join(cells) + " |")
    lines += ["", "## Deep-supervision probe", ""]
    pr = result.get("probe", {})
    seeds = pr.get("seeds") or {}
    if seeds:
        lines += ["| head | seeds | mean mIoU | std |", "|---|---|---|---|"]
        for h, st in (probe or {}).get("heads", {}).items():
            std = "–" if st["std"] is None else f"{st['std']:.2f}"
            mean = "–" if st["mean"] is None else f"{st['mean']:.2f}"
            lines.append(f"| {head_label(h)} | {st['n']} | {mean} | {std} |")
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
    st = next(iter(structtoken_heads(heads)), None)
    result["probe"] = {
        **probe,
        "summary": probe_summary(probe["seeds"], head_metrics or None, structtoken_head=st),
    }
    seconds = time.perf_counter() - t0
    result["meta"] = {
        "model": _name_only(model_name) or model.cfg.name,
        "model_name": model.cfg.name,
        "heads": heads,
        "classes": list(model.cfg.class_names()),
        "split": dataset.split,
        "data": Path(dataset.root).name,  # the folder's name: no machine path in a shipped report
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
        title = f"Per-block metrics: {result['meta']['model']} ({dataset.split}, {n} images)"
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
        title = f"{name}: class maps block by block (shared normalisation)"
        fig = _example_figure(maps, label, model.cfg, dataset.info.ignore_index, title)
        fig.savefig(out / f"comparison_{safe}.png", dpi=90)
        figures[f"comparison_{safe}.png"] = f"class maps of {name}"
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    clean = json_ready(result)
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

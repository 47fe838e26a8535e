"""Evaluate a model set on a segmentation split: mIoU, per-class IoU and pixel accuracy per head.

    python -m structtoken.evaluate --model camvid --data ../shared/data/camvid --split val \
        [--mode whole|slide] [--aug] [--save-predictions OUT] [--json FILE]

Whole-image inference at the native resolution by default; ``--mode slide`` uses the set's
sliding window, ``--aug`` mmseg's multi-scale + flip test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import DatasetError, SegmentationDataset, default_camvid_root
from .metrics import ConfusionAccumulator
from .segmentor import MS_RATIOS, Segmentor


@torch.no_grad()
def evaluate_model(
    model: Segmentor,
    dataset: SegmentationDataset,
    heads: Sequence[str] | None = None,
    mode: str = "whole",
    aug: bool = False,
    save_predictions: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Per-head metrics over ``dataset`` (one backbone pass per image serves every head).

    Returns ``{"heads": {name: {"miou", "pixel_accuracy", "iou_per_class"}}, "classes": [...],
    "data": folder name, "num_images": N, "seconds": t}``; pixels labelled with the dataset's
    ``info.ignore_index`` are not counted. With ``save_predictions`` writes ``OUT/<head>/<name>.png``
    label maps (class index per pixel, uint8).
    """
    heads = list(heads or model.cfg.heads)
    k = model.cfg.num_classes
    ignore = dataset.info.ignore_index
    acc = {h: ConfusionAccumulator(k, ignore) for h in heads}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    for i in tqdm(range(n), desc="evaluate", disable=not progress):
        image, label = dataset.load_pair(i)
        probs = model.predict(image, mode=mode, scale=None, ratios=MS_RATIOS if aug else None, flip=aug, heads=heads)
        for h in heads:
            pred = probs[h][0].argmax(0).to(torch.uint8).cpu().numpy()
            acc[h].update(pred, label)
            if save_predictions is not None:
                out = Path(save_predictions) / h
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pred).save(out / f"{dataset.names[i]}.png")
    model.train(was_training)
    return {
        "heads": {h: acc[h].compute() for h in heads},
        "classes": list(dataset.info.classes),
        "data": dataset.root.name,  # the folder's name only: no machine paths in results
        "num_images": n,
        "mode": "aug" if aug else mode,
        "seconds": round(time.perf_counter() - t0, 2),
    }


@torch.no_grad()
def head_costs(model: Segmentor, size: tuple[int, int] = (360, 480)) -> dict[str, dict[str, float]]:
    """Parameters (millions) and forward GFLOPs (multiply-add = 2 FLOPs) of the shared backbone and of each head
    (with its own ViT blocks, where the set gives it some) for one image of ``size`` (H, W), counted with
    :class:`torch.utils.flop_counter.FlopCounterMode` on the exact attention path (the counter has no formula for
    the fused CPU attention kernel and would leave attention out). Parameters are frozen while counting (the
    counter's module tracker fails on views of parameters made without autograd, e.g. Segmenter's class
    embeddings) and restored afterwards, as is the attention path."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *size, device=model.device)
    flags = {p: p.requires_grad for p in model.parameters()}
    exact = bool(model.cfg.exact_attention)
    model.requires_grad_(False)
    model.set_vit_attention(True)
    try:
        with FlopCounterMode(display=False) as counter:
            tokens, grid = model.backbone.forward_tokens(x)
        out = {
            "backbone": {
                "params_m": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                "gflops": counter.get_total_flops() / 1e9,
            }
        }
        for name, head in model.heads.items():
            with FlopCounterMode(display=False) as counter:
                head(model.head_features(tokens, grid, [name])[name])
            out[name] = {
                "params_m": sum(p.numel() for p in model.head_parameters(name)) / 1e6,
                "gflops": counter.get_total_flops() / 1e9,
            }
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.set_vit_attention(exact)
    return {k: {m: round(v, 4) for m, v in d.items()} for k, d in out.items()}


def open_model_and_dataset(
    model: str, data: str | Path | None = None, split: str = "val", device: str = "auto"
) -> tuple[Segmentor, SegmentationDataset]:
    """The CLIs' common start: a model set (``load_any`` spec) on ``device`` and a dataset split
    (``data`` or the default CamVid folder), on the fast attention path (fused SDPA: within the fixtures'
    tolerance, about 1e-5 relative to the exact path). Raises ``ValueError`` (``DatasetError``, ``CheckpointError``)
    or ``OSError`` with a readable message, also when the two disagree on the number of classes."""
    from .assets import load_any
    from .devices import resolve_device

    dataset = SegmentationDataset(data or default_camvid_root(), split)
    segmentor = load_any(model, device=resolve_device(device)).set_exact_attention(False)  # the fast path
    if segmentor.cfg.num_classes != dataset.info.num_classes:
        raise DatasetError(
            f"the model predicts {segmentor.cfg.num_classes} classes, the dataset has {dataset.info.num_classes}"
        )
    return segmentor, dataset


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per head, mIoU, pixel accuracy and per-class IoU (percent)."""
    classes = result["classes"]
    lines = ["| head | mIoU | pixel acc | " + " | ".join(classes) + " |", "|---" * (3 + len(classes)) + "|"]
    for h, m in result["heads"].items():
        per = " | ".join("–" if v is None else f"{100 * v:.1f}" for v in m["iou_per_class"])
        lines.append(f"| {h} | {100 * m['miou']:.2f} | {100 * m['pixel_accuracy']:.2f} | {per} |")
    return "\n".join(lines)


def _public_name(spec: str) -> str:
    """A model spec as results may show it: a name as given, a file by its base name (no machine paths)."""
    path = Path(spec)
    return path.name if path.is_absolute() or len(path.parts) > 1 else spec


def training_seed(spec: str) -> int | None:
    """The seed the set ``spec`` (``camvid``, or one of our safetensors files) was trained with: the ``train_config``
    of its metadata, or, for a set assembled from head files (:mod:`structtoken.sets`), the seed every part
    records; None when not recorded or when the parts' seeds differ (registry names, official checkpoints)."""
    from .assets import EMBEDDED
    from .checkpoint import read_metadata

    path = EMBEDDED.get(spec) or Path(spec)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        seed = json.loads(meta.get("train_config", "{}")).get("seed")
        if seed is None:
            parts = json.loads(meta.get("provenance", "{}")).get("parts") or []
            seeds = {p.get("seed") for p in parts if isinstance(p, dict)}
            seed = seeds.pop() if len(seeds) == 1 else None
    except (OSError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m structtoken.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="camvid", help="'camvid' (the shipped set), a registry name or a checkpoint file")
    p.add_argument("--data", default=None, help="dataset root (default: $STRUCTTOKEN_CAMVID or ../shared/data/camvid)")
    p.add_argument("--split", default="val")
    p.add_argument("--heads", nargs="*", default=None, help="heads to evaluate (default: all of the set)")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--aug", action="store_true", help="multi-scale (0.5-1.75) + flip test")
    p.add_argument("--save-predictions", default=None, metavar="OUT")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    try:
        model, dataset = open_model_and_dataset(args.model, args.data, args.split, args.device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = evaluate_model(model, dataset, args.heads, args.mode, args.aug, args.save_predictions, limit=args.limit)
    result["model"] = _public_name(args.model)
    result["split"] = args.split
    result["seed"] = training_seed(args.model)  # the probe pairs results by it (None: not recorded)
    result["costs"] = head_costs(model, tuple(dataset.load_pair(0)[0].shape[:2]))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

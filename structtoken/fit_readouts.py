"""Fit the ``fitted`` readouts (per-stage affine maps, the "tuned lens") of a model set and write them
beside the set as ``<set stem>.readouts.safetensors``, where :func:`structtoken.load_model` finds them.

    python -m structtoken.fit_readouts --model camvid --data ../shared/data/camvid --split train
    python -m structtoken.fit_readouts --model run/final.safetensors --data DIR --out run/final.readouts.safetensors

The model is frozen (eval mode, no gradients). What is fitted, and how, is in
:mod:`structtoken.readouts`; every setting is recorded in the file's metadata, together with the
set file's name and SHA-256 (a refit set makes the file stale, which :func:`structtoken.load_model`
reports).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError, file_sha256, load_model, read_metadata
from .data import DatasetError, SegmentationDataset, default_camvid_root
from .devices import resolve_device
from .readouts import fit_readouts, readouts_path


def set_file(spec: str) -> Path:
    """The safetensors file of a set given by embedded name (``camvid``) or path."""
    from .assets import EMBEDDED

    path = EMBEDDED[spec] if spec in EMBEDDED else Path(spec)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{spec}: fitted readouts are kept beside one of our .safetensors sets; convert an official "
            "checkpoint with structtoken.save_model first"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return path


def trained_with_class_weights(path: Path) -> bool | None:
    """Whether the set was trained with class-weighted cross-entropy (its ``train_config``), None if unknown."""
    raw = read_metadata(path).get("train_config")
    if not raw:
        return None
    try:
        return bool(json.loads(raw).get("class_weights", False))
    except (json.JSONDecodeError, AttributeError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m structtoken.fit_readouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="embedded set name (camvid) or one of our .safetensors sets")
    p.add_argument("--data", default=None, help="dataset root (default: $STRUCTTOKEN_CAMVID or ../shared/data/camvid)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", default=None, help="output file (default: <set stem>.readouts.safetensors beside the set)")
    p.add_argument("--pixels-per-image", type=int, default=128)
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--heads", nargs="*", default=None, help="fit only these heads of the set")
    p.add_argument(
        "--class-weights",
        choices=("auto", "yes", "no"),
        default="auto",
        help="median-frequency class weights in the loss: auto = as the set was trained (its train_config)",
    )
    p.add_argument("--no-standardize", action="store_true", help="fit on the raw maps (default: standardised)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        path = set_file(args.model)
        model = load_model(path, resolve_device(args.device), readouts=False)
        data_root = Path(args.data) if args.data else default_camvid_root()
        dataset = SegmentationDataset(data_root, args.split)
        if dataset.info.num_classes != model.cfg.num_classes:
            raise DatasetError(f"{data_root} has {dataset.info.num_classes} classes, the set {model.cfg.num_classes}")
        unknown = [h for h in args.heads or () if h not in model.heads]
        if unknown:
            raise CheckpointError(f"{path}: no head(s) {unknown}; the set has {', '.join(model.heads)}")
        weighted = {"yes": True, "no": False}.get(args.class_weights)
        if weighted is None:
            weighted = bool(trained_with_class_weights(path))
        if weighted and not dataset.info.class_weights:
            raise DatasetError(f"{data_root / 'classes.json'} has no median_frequency_weights")
        with torch.no_grad():
            fitted = fit_readouts(
                model,
                dataset,
                pixels_per_image=args.pixels_per_image,
                l2=args.l2,
                iterations=args.iterations,
                class_weights=dataset.info.class_weights if weighted else None,
                seed=args.seed,
                heads=args.heads,
                max_images=args.max_images,
                standardize=not args.no_standardize,
                progress=True,
                metadata={
                    "set_file": path.name,
                    "set_sha256": file_sha256(path),
                    "data": data_root.name,
                    "class_weights_source": f"--class-weights {args.class_weights}",
                },
            )
        out = fitted.save(Path(args.out) if args.out else readouts_path(path))
    except (CheckpointError, DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in fitted.metadata["heads"].items():
        acc = " ".join(f"{a:.3f}" for a in r["train_accuracy"])
        print(f"{name:14s} train pixel accuracy per stage: {acc}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Predict label maps for images.

    python -m structtoken.predict IMAGE [IMAGE ...] --model camvid|NAME|FILE --out DIR \
        [--head NAME] [--mode whole|slide] [--aug] [--device auto|cpu|cuda]

Writes ``DIR/<stem>_color.png`` (the prediction in the model's class colours, blended over the
image with ``--alpha``) and ``DIR/<stem>_label.png`` (class index per pixel, uint8; 16-bit when K > 255),
and prints one line per image naming the files it wrote. Images are read by
:func:`structtoken.io.read_image` (16-bit data divided by 65535, alpha composited on white, EXIF
orientation applied).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .assets import available_models, load_any
from .checkpoint import CheckpointError
from .devices import resolve_device
from .io import ImageReadError, read_image
from .segmentor import MS_RATIOS, Segmentor

__all__ = ["ImageReadError", "colorize", "main", "predict_image", "read_image"]


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Class indices [H, W] -> RGB [H, W, 3] uint8."""
    lut = np.zeros((max(len(palette), int(label.max()) + 1), 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[label]


def predict_image(
    model: Segmentor, image: np.ndarray, head: str | None = None, mode: str | None = None, aug: bool = False
) -> np.ndarray:
    """Class index per pixel [H, W] (int64) for a uint8 RGB image with the set's test-time settings."""
    name = head or model.cfg.head
    probs = model.predict(image, mode=mode, ratios=MS_RATIOS if aug else None, flip=aug, heads=[name])[name]
    return probs[0].argmax(0).cpu().numpy()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m structtoken.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="camvid", help=f"one of {', '.join(available_models())}, or a checkpoint file")
    p.add_argument("--out", required=True)
    p.add_argument("--head", default=None, help="head of the set to use (default: its primary head)")
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="default: the model's test mode")
    p.add_argument("--aug", action="store_true", help="multi-scale + flip")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of the colour overlay")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    try:
        model = load_any(args.model, device=resolve_device(args.device))
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.head and args.head not in model.cfg.heads:
        print(f"error: head {args.head!r} is not in this set ({', '.join(model.cfg.heads)})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = model.cfg.class_palette()
    failures = 0
    for path in tqdm(args.images, desc="predict", disable=len(args.images) < 2):
        try:
            image = read_image(path)
        except ImageReadError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        label = predict_image(model, image, args.head, args.mode, args.aug)
        stem = Path(path).stem
        dtype = np.uint8 if model.cfg.num_classes <= 256 else np.uint16
        label_path, color_path = out / f"{stem}_label.png", out / f"{stem}_color.png"
        Image.fromarray(label.astype(dtype)).save(label_path)
        blend = (1 - args.alpha) * image + args.alpha * colorize(label, palette)
        Image.fromarray(blend.round().astype(np.uint8)).save(color_path)
        tqdm.write(f"{path}: wrote {label_path} and {color_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

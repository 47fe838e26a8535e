"""Regenerate the example images in this folder (run from the repository root).

    python assets/examples/make_examples.py

* ``street_synthetic.jpg`` is drawn here from scratch (numpy + PIL): a CamVid-like street scene
  (sky, buildings, road, pavement, trees, a pole, a sign, a fence, cars, a pedestrian, a cyclist).
* ``astronaut.jpg``, ``coffee.jpg``, ``chelsea.jpg``, ``rocket.jpg`` are re-encoded from the public-domain /
  CC0 images that ship inside scikit-image (``skimage.data``); see README.md for their sources.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
W, H = 480, 360
HORIZON = 150


def _sky(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0.0, 1.0, H)[:, None, None]
    top, bottom = np.array([110, 150, 205]), np.array([205, 220, 235])
    sky = top * (1 - t) + bottom * t
    return np.broadcast_to(sky, (H, W, 3)).copy()


def _building(d: ImageDraw.ImageDraw, x0: int, x1: int, top: int, colour: tuple[int, int, int],
              rng: np.random.Generator) -> None:
    d.rectangle([x0, top, x1, HORIZON + 40], fill=colour)
    d.line([x0, top, x1, top], fill=tuple(int(c * 0.7) for c in colour), width=3)
    win = tuple(int(c * 0.55) for c in colour)
    for wy in range(top + 10, HORIZON + 20, 18):
        for wx in range(x0 + 6, x1 - 10, 16):
            if rng.random() < 0.85:
                lit = (225, 215, 160) if rng.random() < 0.12 else win
                d.rectangle([wx, wy, wx + 8, wy + 10], fill=lit)


def _car(d: ImageDraw.ImageDraw, x: int, y: int, s: float, colour: tuple[int, int, int]) -> None:
    """A car seen from behind/side: body, cabin, windows, wheels; (x, y) = bottom-left, s = scale."""
    def p(px: float, py: float) -> tuple[int, int]:
        return int(x + px * s), int(y - py * s)

    d.rounded_rectangle([p(0, 22), p(80, 4)], radius=int(4 * s), fill=colour)
    d.polygon([p(14, 22), p(24, 36), p(58, 36), p(68, 22)], fill=colour)
    d.polygon([p(18, 22), p(26, 33), p(40, 33), p(40, 22)], fill=(60, 75, 90))
    d.polygon([p(43, 22), p(43, 33), p(56, 33), p(64, 22)], fill=(60, 75, 90))
    for cx in (16, 64):
        d.ellipse([p(cx - 8, 9), p(cx + 8, -7)], fill=(25, 25, 25))
        d.ellipse([p(cx - 4, 5), p(cx + 4, -3)], fill=(120, 120, 120))
    d.rectangle([p(74, 18), p(80, 13)], fill=(200, 40, 30))


def _person(d: ImageDraw.ImageDraw, x: int, y: int, s: float, shirt: tuple[int, int, int]) -> None:
    d.ellipse([x - 4 * s, y - 62 * s, x + 4 * s, y - 54 * s], fill=(200, 160, 130))
    d.rectangle([x - 6 * s, y - 54 * s, x + 6 * s, y - 30 * s], fill=shirt)
    d.rectangle([x - 5 * s, y - 30 * s, x - 1 * s, y], fill=(40, 40, 70))
    d.rectangle([x + 1 * s, y - 30 * s, x + 5 * s, y], fill=(40, 40, 70))


def street_scene(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(_sky(rng).astype(np.uint8))
    d = ImageDraw.Draw(img)
    # buildings along both sides
    x = -10
    while x < W:
        bw = int(rng.integers(50, 95))
        top = int(rng.integers(25, 95))
        base = rng.integers(120, 200, 3)
        _building(d, x, x + bw, top, tuple(int(c) for c in base), rng)
        x += bw + int(rng.integers(0, 6))
    # trees in front of the buildings
    for tx in (70, 300, 420):
        d.rectangle([tx - 3, HORIZON - 10, tx + 3, HORIZON + 45], fill=(80, 60, 40))
        for _ in range(14):
            ox, oy, r = rng.normal(0, 14), rng.normal(-20, 10), rng.integers(10, 20)
            g = int(rng.integers(90, 140))
            d.ellipse([tx + ox - r, HORIZON + oy - r - 10, tx + ox + r, HORIZON + oy + r - 10],
                      fill=(40, g, 45))
    # pavement and road
    d.polygon([(0, HORIZON + 40), (W, HORIZON + 40), (W, H), (0, H)], fill=(150, 140, 135))
    d.polygon([(150, HORIZON + 40), (330, HORIZON + 40), (W + 120, H), (-120, H)], fill=(85, 85, 90))
    d.line([(150, HORIZON + 40), (-120, H)], fill=(200, 200, 200), width=3)
    d.line([(330, HORIZON + 40), (W + 120, H)], fill=(200, 200, 200), width=3)
    for i in range(7):  # dashed centre line in perspective
        t0, t1 = i / 7, i / 7 + 0.06
        y0, y1 = HORIZON + 40 + t0 ** 1.6 * (H - HORIZON - 40), HORIZON + 40 + t1 ** 1.6 * (H - HORIZON - 40)
        d.line([(240, y0), (240, y1)], fill=(235, 225, 160), width=max(1, int(1 + 5 * t1)))
    # fence on the right pavement
    for fx in range(380, W, 9):
        d.line([(fx, HORIZON + 20), (fx, HORIZON + 48)], fill=(110, 90, 70), width=2)
    d.line([(378, HORIZON + 26), (W, HORIZON + 26)], fill=(110, 90, 70), width=2)
    # pole with a sign
    d.rectangle([118, 60, 122, HORIZON + 60], fill=(70, 70, 75))
    d.rectangle([106, 62, 134, 84], fill=(30, 80, 170))
    d.rectangle([110, 66, 130, 80], outline=(240, 240, 240), width=2)
    # cars, a pedestrian, a cyclist
    _car(d, 190, HORIZON + 58, 0.55, (170, 30, 35))
    _car(d, 60, H - 40, 1.6, (35, 70, 150))
    _car(d, 300, HORIZON + 80, 0.9, (225, 225, 220))
    _person(d, 35, HORIZON + 75, 1.0, (200, 120, 30))
    d.ellipse([392, HORIZON + 78, 416, HORIZON + 102], outline=(20, 20, 20), width=3)
    d.ellipse([430, HORIZON + 78, 454, HORIZON + 102], outline=(20, 20, 20), width=3)
    d.line([(404, HORIZON + 90), (422, HORIZON + 70), (442, HORIZON + 90)], fill=(180, 30, 30), width=3)
    _person(d, 422, HORIZON + 75, 0.8, (40, 140, 60))
    # camera noise and a little blur
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.7))).astype(np.float32)
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _fit(a: np.ndarray, long_side: int = 480) -> Image.Image:
    im = Image.fromarray(a).convert("RGB")
    f = long_side / max(im.size)
    if f < 1:
        im = im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.LANCZOS)
    return im


def main() -> None:
    street_scene().save(HERE / "street_synthetic.jpg", quality=88)
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        _fit(getattr(data, name)()).save(HERE / f"{name}.jpg", quality=85)


if __name__ == "__main__":
    main()

"""README's picture: the paper comparison of a shipped (non-CamVid) example, rendered without a browser.

    python scripts/readme_figure.py                     # -> docs/img/comparison.png
    python scripts/readme_figure.py --image assets/examples/street_synthetic.jpg --width 1200 --out FILE

The figure comes from the analysis layer (:class:`analysis.service.Explorer`, the same call the app's
"Paper comparison" makes), on the embedded CamVid set, the StructToken-SSE head beside the per-pixel
baseline, under the head's own readout. It is scaled to ``--width`` pixels and stored with a 128-colour
palette, so the committed file stays small. No CamVid image is read or written: the input is one of
``assets/examples`` (the synthetic street by default).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from anywhere: the checkout's packages
    sys.path.insert(0, str(ROOT))

DEFAULT_IMAGE = ROOT / "assets" / "examples" / "street_synthetic.jpg"
DEFAULT_OUT = ROOT / "docs" / "img" / "comparison.png"


def render(image: Path, model: str = "camvid", head: str = "sse", readout: str = "head") -> bytes:
    """The comparison figure of ``image`` as PNG bytes, at the figure's own size: the page's PNG."""
    from analysis.service import AnalysisRequest, Explorer, figure_png_bytes

    request = AnalysisRequest(
        image=str(image), model=model, analysis="comparison", head=head, readout=readout, interactive=False
    )
    result = Explorer().analyze(request)
    if result.static is None:
        raise RuntimeError("the comparison drew no figure")
    return figure_png_bytes(result)


def shrink(png: bytes, width: int, colours: int = 128) -> bytes:
    """``png`` scaled to ``width`` pixels wide (never up) and quantised to ``colours`` palette entries."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/readme_figure.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="an image of assets/examples (never CamVid)")
    p.add_argument("--model", default="camvid")
    p.add_argument("--head", default="sse", help="the StructToken head beside the per-pixel baseline")
    p.add_argument("--readout", default="head", choices=["raw", "head", "fitted"])
    p.add_argument("--width", type=int, default=1200, help="pixels")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    png = shrink(render(args.image, args.model, args.head, args.readout), args.width)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1024:.0f} KB) from {args.image.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

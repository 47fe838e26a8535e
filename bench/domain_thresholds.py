"""The numbers behind :mod:`analysis.domain`'s thresholds: the distance of the predicted class areas
from the training frequencies, for every CamVid val frame and every shipped example.

    OMP_NUM_THREADS=1 python bench/domain_thresholds.py [--camvid ../shared/data/camvid] [--head cse]

Prints one line per example and the distribution over the val frames (nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import numpy as np

from analysis.domain import class_areas, domain_check, reference_frequencies
from analysis.maps import compute_maps
from analysis.service import Explorer, load_image

ROOT = Path(__file__).resolve().parent.parent


def distance(model: object, path: Path, head: str) -> float:
    rgb, _ = load_image(path)
    maps = compute_maps(model, rgb)
    names = list(maps.class_names)
    ref = reference_frequencies(names)
    assert ref is not None, "the set's classes have no reference frequencies"
    return domain_check(class_areas(maps.pred[head], len(names)), ref, names).distance


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--head", default="cse")
    args = p.parse_args()
    model = Explorer().model("camvid", device="cpu")
    for ex in sorted((ROOT / "assets" / "examples").glob("*.jpg")):
        print(f"{ex.name:24s} {distance(model, ex, args.head):.3f}")
    val = sorted((args.camvid / "val" / "images").glob("*"))
    d = np.array([distance(model, f, args.head) for f in val])
    if d.size:
        q = np.percentile(d, [50, 95, 100])
        print(f"camvid val ({d.size} frames): median {q[0]:.3f}, 95th pct {q[1]:.3f}, max {q[2]:.3f}")


if __name__ == "__main__":
    main()

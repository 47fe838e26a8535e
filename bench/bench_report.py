"""Per-image cost of the dataset report (``python -m analysis report``), by phase, three readouts vs one.

    python bench/bench_report.py [--model camvid] [--data DIR] [--images 5] [--workers 2] [--old-rev main]
                                 [--malloc SPEC]

On each of the first N images of the val split, alternating in one process (so both see the same
load): "new" = :func:`analysis.report.evaluate_stages` of this tree (every head, three readouts,
batched metrics), "old" = ``evaluate_stages`` of ``analysis/report.py`` at ``--old-rev`` (one readout,
per-stack metrics; read with ``git show``, run against this tree's other modules). Prints per image
and the median: wall seconds and the phases (model = backbone + heads; readouts = the three readouts
at grid resolution; upsample = bilinear to the label size + argmax; metrics = confusion, mask AP,
boundary F1; upsample and metrics are summed over the worker threads), and the load average before
and after (the machine may be shared: compare the rows of one run, not runs). ``--malloc app`` (or a spec,
:func:`structtoken.devices.malloc_settings`) applies glibc malloc settings first; by default none, as the
report runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import argparse
import os
import statistics
import subprocess
import time
import types
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class OneImage:
    """A one-image view of a dataset (what ``evaluate_stages`` reads: ``load_pair``, ``len``, ``info``)."""

    def __init__(self, dataset: Any, index: int) -> None:
        self.dataset, self.index = dataset, index
        self.info, self.split, self.root, self.names = dataset.info, dataset.split, dataset.root, [dataset.names[index]]

    def __len__(self) -> int:
        return 1

    def load_pair(self, i: int) -> Any:
        return self.dataset.load_pair(self.index)


def load_old(rev: str) -> types.ModuleType:
    """``analysis/report.py`` at ``rev`` as a module of the ``analysis`` package (its relative imports
    resolve to this tree's modules)."""
    src = subprocess.run(
        ["git", "show", f"{rev}:analysis/report.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    mod = types.ModuleType("analysis._old_report")
    mod.__package__ = "analysis"
    exec(compile(src, f"{rev}:analysis/report.py", "exec"), mod.__dict__)
    return mod


def run(fn: Any, model: Any, ds: Any, workers: int) -> dict[str, float]:
    t0 = time.perf_counter()
    res = fn(model, ds, progress=False, workers=workers)
    wall = time.perf_counter() - t0
    return {"wall": wall, **res[3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="camvid")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--old-rev", default="main", help="git revision of the one-readout report ('' to skip)")
    p.add_argument("--malloc", default="none", help="none (glibc's own, as the report runs), app (the app's) or a spec")
    args = p.parse_args()

    from analysis.report import evaluate_stages
    from structtoken.devices import malloc_settings, tune_malloc
    from structtoken.evaluate import open_model_and_dataset

    if args.malloc != "none":
        malloc = malloc_settings("" if args.malloc == "app" else args.malloc)
        print(f"glibc malloc {malloc}: {'applied' if tune_malloc(malloc) else 'not applied (not glibc)'}")

    model, dataset = open_model_and_dataset(args.model, args.data, args.split, "cpu")
    old = load_old(args.old_rev).evaluate_stages if args.old_rev else None
    run(evaluate_stages, model, OneImage(dataset, 0), args.workers)  # warm-up (allocator, threads)
    load0 = os.getloadavg()
    rows: dict[str, list[dict[str, float]]] = {"new (3 readouts)": [], f"old ({args.old_rev}, raw only)": []}
    for i in range(min(args.images, len(dataset))):
        ds = OneImage(dataset, i)
        rows["new (3 readouts)"].append(run(evaluate_stages, model, ds, args.workers))
        if old is not None:
            rows[f"old ({args.old_rev}, raw only)"].append(run(old, model, ds, args.workers))
    load1 = os.getloadavg()
    import torch

    label = dataset.load_pair(0)[1]
    print(
        f"{args.model}, {args.split}: {min(args.images, len(dataset))} images ({label.shape[1]}x{label.shape[0]}), "
        f"heads {', '.join(model.cfg.heads)}; workers {args.workers}; torch threads {torch.get_num_threads()}"
    )
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs; medians per image, seconds")
    phases = ["wall", "model", "readouts", "upsample", "metrics"]
    print(f"{'path':<26}" + "".join(f"{ph:>10}" for ph in phases))
    for name, rs in rows.items():
        if not rs:
            continue
        cells = [statistics.median(r.get(ph, 0.0) for r in rs) for ph in phases]
        print(f"{name:<26}" + "".join(f"{c:>10.2f}" for c in cells))
    print(f"the exact mask AP's floor here: {sort_ms(label.size):.2f} ms per numpy sort of {label.size} float32 scores")


def sort_ms(n: int, repeats: int = 20) -> float:
    """Median milliseconds of ``np.sort`` of ``n`` random float32 values: the mask AP sorts every scored channel
    once, so this times the metrics' floor on this machine (0.42 ms and 4.9 ms for 172,800 on two machines)."""
    import numpy as np

    x = np.random.default_rng(0).random(n, dtype=np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.sort(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    main()

"""Per-image metric cost of the dataset report, previous per-stack path vs the batched path.

    python bench/bench_metrics.py [--repeats 3] [--threads 2] [--old-rev 4f3c3a9]

One CamVid-sized image (label 360x480, K = 11, 3 % ignored pixels) and S = 7 stages x 5 heads x
3 readouts = 105 score stacks [11, 360, 480] float32: smoothed noise (bilinearly upsampled from a
23x30 grid, like a ViT/16 stage map) mixed with the label's one-hot map at a strength that grows
with the stage, so the argmax maps get the coarse-to-fine boundaries of real stages. Fixed seed.

Per image, every stack feeds the three accumulators of analysis/report.py (confusion, mask AP,
boundary F1 with tolerance 2). "old" runs analysis/metrics.py as of ``--old-rev`` (the per-stack
code, read with ``git show``), "new" the batched functions on each (head, readout) group of 7
stages; "new, 2 workers" the same groups on a 2-thread pool (as report.py's ``workers`` does over
heads; numpy's sorts and searches release the GIL). The upsampling and argmax are the same for
both and are not timed. Prints the median over repeats and the load average (the machine may be
shared: compare rows of one run, not runs).
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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
K, H, W = 11, 360, 480
STAGES, HEADS, READOUTS = 7, 5, 3
IGNORE = 255
TOLERANCE = 2


def load_old(rev: str) -> types.ModuleType:
    """analysis/metrics.py at git revision ``rev`` as a module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:analysis/metrics.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    mod = types.ModuleType("old_metrics")
    exec(compile(src, f"{rev}:analysis/metrics.py", "exec"), mod.__dict__)
    return mod


def make_image(seed: int = 0) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """label [H, W] uint8 and HEADS distinct groups of (scores [S, K, H, W] float32, preds [S, H, W] uint8).

    The READOUTS are the same groups again (their cost does not depend on the values' identity).
    """
    import torch
    import torch.nn.functional as TF

    g = torch.Generator().manual_seed(seed)
    lab = TF.interpolate(torch.randn(1, K, 12, 16, generator=g), size=(H, W), mode="bilinear", align_corners=False)
    label = lab[0].argmax(0).to(torch.uint8)
    rng = np.random.default_rng(seed)
    label_np = label.numpy().copy()
    label_np[rng.random((H, W)) < 0.03] = IGNORE
    onehot = TF.one_hot(label.long(), K).permute(2, 0, 1).float()  # [K, H, W]
    groups = []
    for _ in range(HEADS):
        noise = TF.interpolate(torch.randn(STAGES, K, 23, 30, generator=g), size=(H, W), mode="bilinear")
        strength = torch.linspace(0.2, 2.5, STAGES).view(STAGES, 1, 1, 1)
        scores = (noise + strength * onehot).numpy().astype(np.float32)  # [S, K, H, W]
        groups.append((np.ascontiguousarray(scores), scores.argmax(axis=1).astype(np.uint8)))
    return label_np, groups


def old_image(old: types.ModuleType, label: np.ndarray, groups: list) -> None:
    for _ in range(READOUTS):
        for scores, preds in groups:
            for s in range(STAGES):
                cm = old.ConfusionAccumulator(K, IGNORE)
                ap = old.MaskAPAccumulator(K, IGNORE)
                bf = old.BoundaryF1Accumulator(K, TOLERANCE, IGNORE)
                cm.update(preds[s], label)
                ap.update(scores[s], label)
                bf.update(preds[s], label)


def new_group(m: types.ModuleType, label: np.ndarray, scores: np.ndarray, preds: np.ndarray) -> None:
    aps = m.mask_ap_batch(scores, label, IGNORE)  # [S, K]
    counts = m.boundary_counts_batch(preds, label, K, TOLERANCE, IGNORE)
    for s in range(STAGES):
        cm = m.ConfusionAccumulator(K, IGNORE)
        ap = m.MaskAPAccumulator(K, IGNORE)
        bf = m.BoundaryF1Accumulator(K, TOLERANCE, IGNORE)
        cm.update(preds[s], label)
        ap.update_ap(aps[s])
        bf.update_counts(counts[s])


def new_image(m: types.ModuleType, label: np.ndarray, groups: list, pool: ThreadPoolExecutor | None) -> None:
    work = [g for _ in range(READOUTS) for g in groups]
    if pool is None:
        for scores, preds in work:
            new_group(m, label, scores, preds)
    else:
        list(pool.map(lambda g: new_group(m, label, *g), work))


def part_times(m: types.ModuleType, label: np.ndarray, groups: list) -> dict[str, float]:
    """Seconds per image of each batched part alone (one pass)."""
    out = {}
    for name, fn in [
        ("mask AP", lambda sc, pr: m.mask_ap_batch(sc, label, IGNORE)),
        ("boundary", lambda sc, pr: m.boundary_counts_batch(pr, label, K, TOLERANCE, IGNORE)),
        ("confusion", lambda sc, pr: [m.confusion_matrix(p, label, K, IGNORE) for p in pr]),
    ]:
        t = time.perf_counter()
        for _ in range(READOUTS):
            for scores, preds in groups:
                fn(scores, preds)
        out[name] = time.perf_counter() - t
    return out


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (numpy sorts are single-threaded)")
    ap.add_argument("--old-rev", default="4f3c3a9", help="git revision holding the per-stack analysis/metrics.py")
    ap.add_argument("--skip-old", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from analysis import metrics as new

    label, groups = make_image()
    n_stacks = STAGES * HEADS * READOUTS
    load0 = os.getloadavg()
    rows = []
    if not args.skip_old:
        old = load_old(args.old_rev)
        rows.append(("old (per stack)", timed(lambda: old_image(old, label, groups), args.repeats)))
    rows.append(("new (batched, 1 thread)", timed(lambda: new_image(new, label, groups, None), args.repeats)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows.append(("new (batched, 2 workers)", timed(lambda: new_image(new, label, groups, pool), args.repeats)))
    parts = part_times(new, label, groups)
    load1 = os.getloadavg()

    print(
        f"{n_stacks} stacks [{K}, {H}, {W}] float32 per image ({STAGES} stages x {HEADS} heads x {READOUTS} readouts)"
    )
    print(f"median of {args.repeats}; torch threads {args.threads}; load average {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'path':<28}{'s / image':>10}{'ms / stack':>12}")
    for name, sec in rows:
        print(f"{name:<28}{sec:>10.2f}{1e3 * sec / n_stacks:>12.1f}")
    print("new path by part (1 thread, one pass): " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()

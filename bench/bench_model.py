"""Forward latency and peak memory of the model core on this machine's CPU.

    python bench/bench_model.py [--repeats 5] [--json bench/results/model.json]

Cases: every head kind on ViT-T at 512x512 (whole image, and sliding window over a 512x683 image,
crop 512 stride 341 = 2 windows), and ViT-L SSE at 640x640 (whole). Random weights (latency does not
depend on them). Each case runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    *[(f"{h}_vit-t_ade20k", h, "whole", (512, 512)) for h in ("cse", "sse", "pwe")],
    *[(f"{h}_vit-t_ade20k", h, "slide", (512, 683)) for h in ("cse", "sse", "pwe")],
    ("sse_vit-t_ade20k", "per_pixel", "whole", (512, 512)),
    ("sse_vit-l_ade20k", "sse", "whole", (640, 640)),
]


def run_case(name: str, head: str, mode: str, size: tuple[int, int], repeats: int, threads: int) -> dict:
    import torch

    from structtoken import build_model, get_config

    torch.set_num_threads(threads)
    cfg = get_config(name).replace(head=head)
    model = build_model(cfg).eval()
    x = torch.randn(1, 3, *size)
    times = []
    with torch.inference_mode():
        model.inference(x, mode)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.inference(x, mode)
            times.append(time.perf_counter() - t0)
    return {
        "model": name,
        "head": head,
        "mode": mode,
        "size": list(size),
        "threads": threads,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case is not None:
        name, head, mode, size = CASES[args.case]
        print(json.dumps(run_case(name, head, mode, size, args.repeats, args.threads)))
        return 0
    rows = []
    for i in range(len(CASES)):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--case",
                str(i),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['head']:>10} {row['model']:>17} {row['mode']:>5} {row['size'][0]}x{row['size'][1]}: "
            f"{row['median_s']:.3f} s median, peak RSS {row['peak_rss_mb']:.0f} MB, {row['params_m']} M params",
            flush=True,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

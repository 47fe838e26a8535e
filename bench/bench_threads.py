"""Forward latency under a busy neighbour, per CPU thread policy (issue 12, target 6).

    python bench/bench_threads.py [--quick] [--repeats 7] [--model cse_vit-t_ade20k] [--size 360 480]

For each policy (intra-op threads 1 | 2, OpenMP wait policy default (spinning) | PASSIVE | a shorter
spin (GOMP_SPINCOUNT), inter-op threads default | 1) a fresh worker process (OpenMP reads its
environment at start) times the app's forward (fast path, inference_mode, backbone + every head + the
prediction at full resolution) with the machine as it is ("idle") and while this script runs a
neighbour: a separate process doing torch.mm in a loop on 2 threads (default OpenMP policy), started
before and stopped after the worker; the worker applies the app's malloc settings (STRUCTTOKEN_MALLOC
overrides them). Prints median seconds per forward and the slowdown under load. --quick: 3 repeats.
"""

# ruff: noqa: E402  (imports after the sys.path set-up)
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import json
import os
import statistics
import subprocess
import time

POLICIES = [
    # name, OMP_NUM_THREADS, OpenMP environment ({} = the runtime's default), interop threads (None = default).
    # torch's Linux wheels use GNU libgomp: with OMP_WAIT_POLICY unset an idle worker spins GOMP_SPINCOUNT
    # (default 300000) iterations before it sleeps, PASSIVE sleeps at once (KMP_BLOCKTIME is Intel's, ignored).
    ("2 threads, spin (runtime default)", 2, {}, None),
    ("2 threads, PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    ("2 threads, PASSIVE, interop 1", 2, {"OMP_WAIT_POLICY": "PASSIVE"}, 1),
    ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}, None),
    ("2 threads, GOMP_SPINCOUNT=30000", 2, {"GOMP_SPINCOUNT": "30000"}, None),
    ("1 thread, spin", 1, {}, None),
    ("1 thread, PASSIVE", 1, {"OMP_WAIT_POLICY": "PASSIVE"}, None),
]
"""Every worker also applies the app's malloc settings (:func:`structtoken.devices.tune_malloc`)."""

NEIGHBOUR = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def worker(model: str, size: tuple[int, int], repeats: int, interop: int | None) -> dict:
    import torch

    from structtoken.devices import tune_malloc

    tune_malloc()  # as python app.py: the settings change how often big buffers are faulted in
    if interop is not None:
        torch.set_num_interop_threads(interop)
    from structtoken import build_model, get_config

    cfg = get_config(model)
    net = build_model(cfg.replace(extra_heads=())).eval()
    x = torch.randn(1, 3, *size)
    times = []
    with torch.inference_mode():
        net(x).labels()
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x).labels()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "threads": torch.get_num_threads()}


def run_policy(policy: tuple, args: argparse.Namespace, busy: bool) -> dict:
    _, threads, omp_env, interop = policy
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = str(threads)
    env.update(omp_env)
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--repeats", str(args.repeats)]
    cmd += ["--size", *map(str, args.size)] + ([] if interop is None else ["--interop", str(interop)])
    neighbour = None
    if busy:
        drop = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
        nenv = {k: v for k, v in os.environ.items() if k not in drop}
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=nenv)
        time.sleep(1.5)  # let it spin up
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.wait(timeout=10)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model", default="cse_vit-t_ade20k")
    p.add_argument("--size", type=int, nargs=2, default=(360, 480))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--interop", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, tuple(args.size), args.repeats, args.interop)))
        return 0
    if args.quick:
        args.repeats = 3
    print(f"{args.model} {args.size[0]}x{args.size[1]}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rows = []
    for pol in POLICIES:
        idle = run_policy(pol, args, busy=False)
        busy = run_policy(pol, args, busy=True)
        rows.append({"policy": pol[0], "idle_s": idle["median_s"], "busy_s": busy["median_s"]})
        r = rows[-1]
        slow = r["busy_s"] / r["idle_s"]
        print(f"| {r['policy']} | {r['idle_s']:.3f} | {r['busy_s']:.3f} | {slow:.1f}x |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

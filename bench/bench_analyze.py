"""Latency and memory of :meth:`analysis.service.Explorer.analyze` with the embedded set on this CPU.

    python bench/bench_analyze.py [--model camvid] [--repeats 10] [--threads 2] [--attention as-loaded|fast|exact]
                                  [--malloc SPEC] [--wait-policy passive|default] [--head-workers N]

Measures, on 480x360 images: (a) warm analyze() of a new image (backbone + every head + figures,
model already loaded), (b) analyze() when only the analysis, classes or normalisation change (cached
backbone pass), both as medians, the peak resident memory of the process, and (c) the set's heads alone
in turn and side by side (:meth:`structtoken.Segmentor.set_head_workers`), with how far their maps differ.
``--attention fast`` switches the loaded set to fused attention
(:meth:`structtoken.Segmentor.set_exact_attention`), ``exact`` to the explicit path; ``as-loaded`` keeps
what the Explorer loads, as in the app (fused attention).

The process runs as ``python app.py`` does (:func:`structtoken.devices.tune_malloc`, OpenMP wait policy
:data:`structtoken.devices.CPU_THREAD_POLICY`, both set before torch loads) unless told otherwise:
``--malloc mmap_threshold=0,arena_max=0,trim_threshold=0`` leaves glibc's adaptive thresholds (see
:func:`structtoken.devices.malloc_settings`), ``--wait-policy default`` the runtime's spinning, ``--head-workers 1``
the heads in turn (:meth:`structtoken.Segmentor.set_head_workers`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import argparse
import json
import resource
import statistics
import time

import numpy as np


def heads_in_turn_vs_side_by_side(model, image: np.ndarray, repeats: int) -> dict:
    """The set's heads alone on one image's backbone features, in turn (1 worker) and side by side (2), alternating
    call by call: median seconds, and how far the side-by-side maps are from the in-turn ones (max |difference| /
    max |in turn| over every head's logits and block maps) and the share of equal labels."""
    import torch

    from structtoken.segmentor import tokens_to_map

    kept = model.head_workers
    with torch.inference_mode():
        x = model.preprocess(image, scale=None)
        tokens, grid = model.backbone.forward_tokens(x)
        feats = tokens_to_map(tokens, grid)
        hf = model.head_features(tokens, grid)
        size = tuple(x.shape[-2:])

        def run(workers: int):
            model.set_head_workers(workers)
            return model.forward_heads(feats, size, head_features=hf if model.head_vit else None)

        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats + 1):
            for w in times:
                t0 = time.perf_counter()
                run(w)
                times[w].append(time.perf_counter() - t0)
        a, b = run(1), run(2)
        rel, agree = 0.0, 1.0
        for name in a.heads:
            pairs = [(a.heads[name].logits, b.heads[name].logits)]
            pairs += [(p.tokens, q.tokens) for p, q in zip(a.heads[name].blocks, b.heads[name].blocks, strict=True)]
            rel = max(rel, max(((u - v).abs().max() / u.abs().max()).item() for u, v in pairs))
            agree = min(agree, (a.labels(name) == b.labels(name)).float().mean().item())
    model.set_head_workers(kept)
    return {
        "in_turn_median_s": round(statistics.median(times[1][1:]), 3),
        "side_by_side_median_s": round(statistics.median(times[2][1:]), 3),
        "max_rel_diff": float(f"{rel:.2g}"),
        "min_label_agreement": round(agree, 6),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="camvid")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--attention", default="as-loaded", choices=("as-loaded", "fast", "exact"), help="as-loaded: the app's"
    )
    p.add_argument(
        "--malloc", default=None, help="mmap_threshold=0,arena_max=0,trim_threshold=0: glibc's own (default: app's)"
    )
    p.add_argument("--wait-policy", default="passive", choices=("passive", "default"))
    p.add_argument("--head-workers", type=int, default=None, help="Segmentor.set_head_workers (default: the app's)")
    args = p.parse_args()

    import os

    # before torch loads (the OpenMP runtime reads it once, at start); structtoken imports torch, so this is
    # a copy of structtoken.devices.CPU_THREAD_POLICY, checked against it below
    policy = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"} if args.wait_policy == "passive" else {}
    os.environ.update(policy)
    import torch

    from structtoken.devices import CPU_THREAD_POLICY, malloc_settings, tune_malloc

    if args.wait_policy == "passive" and policy != CPU_THREAD_POLICY:
        raise SystemExit(f"bench_analyze's copy of the thread policy {policy} differs from {CPU_THREAD_POLICY}")
    malloc = malloc_settings(args.malloc)
    tune_malloc(malloc)

    torch.set_num_threads(args.threads)
    from analysis.service import AnalysisRequest, Explorer

    explorer = Explorer()
    if args.attention != "as-loaded":
        explorer.model(args.model).set_exact_attention(args.attention == "exact")
    if args.head_workers is not None:
        explorer.model(args.model).set_head_workers(args.head_workers)

    def analyze(image: np.ndarray, model: str, analysis: str, normalize: str = "shared") -> None:
        explorer.analyze(AnalysisRequest(image, model, analysis, normalize=normalize))

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(args.repeats + 1)]
    for im in images:  # a smooth, street-like structure rather than pure noise
        im[:150] = im[:150] // 8 + np.array([170, 190, 220], np.uint8)
        im[250:] = im[250:] // 8 + np.array([90, 90, 95], np.uint8)
    t0 = time.perf_counter()
    analyze(images[0], model=args.model, analysis="comparison")  # loads the model, warms up
    first = time.perf_counter() - t0

    new_image, switch = [], []
    for im in images[1:]:
        t0 = time.perf_counter()
        analyze(im, model=args.model, analysis="comparison")
        new_image.append(time.perf_counter() - t0)
        for analysis, normalize in (
            ("probe", "shared"),
            ("prediction", "shared"),
            ("comparison", "softmax"),
            ("attention", "shared"),
            ("comparison", "per_map"),
        ):
            t0 = time.perf_counter()
            analyze(im, model=args.model, analysis=analysis, normalize=normalize)
            switch.append(time.perf_counter() - t0)
    heads = heads_in_turn_vs_side_by_side(explorer.model(args.model), images[0], args.repeats)
    out = {
        "model": args.model,
        "threads": args.threads,
        "attention": args.attention,
        "malloc": malloc,
        "wait_policy": args.wait_policy,
        "head_workers": explorer.model(args.model).head_workers,
        "first_call_s": round(first, 3),
        "new_image_median_s": round(statistics.median(new_image), 3),
        "switch_median_s": round(statistics.median(switch), 3),
        "switch_max_s": round(max(switch), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "heads": heads,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

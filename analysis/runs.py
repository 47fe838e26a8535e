"""The result file of one training run: everything later work needs from it, small, written by one command.

    python -m analysis run-result RUN_DIR --name NAME --out assets/camvid/v2/runs/NAME.json \
        [--data DIR] [--heads-out assets/camvid/v2/heads/NAME.safetensors]

For the run's ``final.safetensors`` (the set a ``python -m structtoken.train`` run wrote) it:

1. fits the ``fitted`` readout of every head on the train split (:func:`structtoken.readouts.fit_readouts`, the
   settings of ``python -m structtoken.fit_readouts``), kept as ``RUN_DIR/final.readouts.safetensors``;
2. evaluates every head on the val split under both protocols (whole image at native resolution; sliding
   window at the training crop, stride 2/3 of it): mIoU, pixel accuracy, per-class IoU;
3. computes every stage's metrics under every readout on val (:func:`analysis.report.evaluate_stages`:
   mIoU, mask AP, boundary F1), with each head's readout definitions and the fitted readout's input widths;
4. writes the JSON: the run's ``train_config.json`` (with its provenance: recipe, seed, init-from file and
   sha256, git commit, torch, iterations, wall time, median seconds per iteration), parameters and GFLOPs per
   head, the above, and how long the evaluation took. No machine paths.

With ``--heads-out`` it also writes the run's heads (all, or ``--ship-heads``; float16, no backbone) and their
fitted readouts beside them, for :func:`structtoken.sets.assemble_set`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from structtoken.checkpoint import load_model
from structtoken.data import DatasetError, SegmentationDataset, default_camvid_root
from structtoken.evaluate import evaluate_model, head_costs
from structtoken.readouts import (
    READOUTS,
    FittedReadouts,
    fit_readouts,
    readout_definitions,
    readouts_path,
)

from .report import BOUNDARY_TOLERANCE, MASK_AP_NOTE, evaluate_stages, stage_input_channels
from .values import json_ready

FORMAT = "structtoken-run-result/1"
FIT_SETTINGS = {"pixels_per_image": 128, "l2": 1e-4, "iterations": 100, "seed": 0}
"""The fitted readout's settings (those of ``python -m structtoken.fit_readouts``)."""


def slide_geometry(train_config: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sliding window of the second protocol: the training crop, stride two thirds of it (rounded up)."""
    crop = tuple(int(v) for v in train_config.get("crop_size", (256, 256)))
    stride = tuple(-(-2 * c // 3) for c in crop)
    return crop, stride  # type: ignore[return-value]


def run_result(
    run_dir: str | Path,
    name: str,
    data_root: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    heads_out: str | Path | None = None,
    ship_heads: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the finished run in ``run_dir`` as the module docstring says; return the JSON-ready result."""
    from structtoken.sets import save_heads

    run = Path(run_dir)
    final = run / "final.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{run.name}: no final.safetensors (the run has not finished)")
    tc = json.loads((run / "train_config.json").read_text())
    root = Path(data_root) if data_root else default_camvid_root()
    train, val = SegmentationDataset(root, "train"), SegmentationDataset(root, "val")
    model = load_model(final).set_exact_attention(False).eval()
    times: dict[str, float] = {}

    t = time.perf_counter()
    weights = train.info.class_weights if tc.get("class_weights") else None
    fitted = fit_readouts(
        model,
        train,
        class_weights=weights,
        progress=progress,
        max_images=limit,
        metadata={"set_file": final.name, "run": name},
        **FIT_SETTINGS,
    )
    fitted.save(readouts_path(final))
    model.fitted_readouts = fitted
    times["fit_readouts"] = time.perf_counter() - t

    t = time.perf_counter()
    whole = evaluate_model(model, val, mode="whole", progress=progress, limit=limit)
    times["final_whole"] = time.perf_counter() - t
    crop, stride = slide_geometry(tc)
    model.cfg = model.cfg.replace(crop_size=crop, stride=stride)
    t = time.perf_counter()
    slide = evaluate_model(model, val, mode="slide", progress=progress, limit=limit)
    times["final_slide"] = time.perf_counter() - t

    t = time.perf_counter()
    acc, _, n, phases, unavailable = evaluate_stages(model, val, limit, progress, (), workers=1, mask_ap="exact")
    times["stages"] = time.perf_counter() - t
    heads = list(model.cfg.heads)
    widths = stage_input_channels(model)
    stages: dict[str, dict[str, Any]] = {}
    for r in READOUTS:
        stages[r] = {}
        for h in heads:
            if h in unavailable[r]:
                stages[r][h] = {"applicable": False, "reason": unavailable[r][h]}
                continue
            per = [m.compute() for m in acc[r][h]]
            entry: dict[str, Any] = {"applicable": True, "input": per[0], "blocks": per[1:-1], "final": per[-1]}
            if r == "fitted":
                entry["input_channels"] = widths[h]
            stages[r][h] = entry
    costs = head_costs(model)  # on the exact attention path (see head_costs)
    if heads_out is not None:
        shipped = list(ship_heads or heads)
        save_heads(model, heads_out, provenance=tc.get("provenance"), heads=shipped)
        FittedReadouts(
            lenses={h: fitted.lenses[h] for h in shipped},
            metadata={**fitted.metadata, "heads": {h: fitted.metadata["heads"][h] for h in shipped}},
        ).save(readouts_path(heads_out))
    m = fitted.metadata
    result = {
        "format": FORMAT,
        "run": name,
        "train_config": tc,
        "heads": heads,
        "classes": list(model.cfg.class_names()),
        "readout_definitions": {h: readout_definitions(h, model.heads[h]) for h in heads},
        "final": {
            "whole": {h: whole["heads"][h] for h in heads},
            "slide": {h: slide["heads"][h] for h in heads},
            "protocols": {
                "whole": "whole image at native resolution (480x360)",
                "slide": f"sliding window {crop[0]}x{crop[1]}, stride {stride[0]}x{stride[1]}, overlaps averaged",
            },
            "unit": "fractions (0-1)",
        },
        "costs": {"size": [360, 480], **costs},
        "stages": {
            "unit": "percent (0-100)",
            "split": val.split,
            "n_images": n,
            "metrics": ["miou", "mask_ap", "boundary_f1", "pixel_accuracy"],
            "mask_ap": MASK_AP_NOTE["exact"],
            "boundary_tolerance": BOUNDARY_TOLERANCE,
            "stages": "input (entering block 1), blocks 1..N, final (the head output)",
            "readouts": stages,
        },
        "fitted_fit": {
            "split": m.get("split"),
            "num_images": m.get("num_images"),
            "num_pixels": m.get("num_pixels"),
            **FIT_SETTINGS,
            "loss": m.get("loss"),
            "train_accuracy": {h: v.get("train_accuracy") for h, v in (m.get("heads") or {}).items()},
        },
        "evaluation": {
            "data": root.name,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(),
            "seconds": {k: round(v, 1) for k, v in times.items()},
            "seconds_by_phase": {k: round(v, 1) for k, v in phases.items()},
            "limit": limit,
        },
    }
    return json_ready(result)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis run-result ...``; returns the exit code (2 for bad inputs)."""
    p = argparse.ArgumentParser(prog="python -m analysis run-result", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the run folder (final.safetensors, train_config.json, log.jsonl)")
    p.add_argument("--name", required=True, help="the run's name (the JSON's file name without .json)")
    p.add_argument("--out", required=True, help="the JSON to write")
    p.add_argument("--data", default=None, help="dataset root (default: $STRUCTTOKEN_CAMVID or ../shared/data/camvid)")
    p.add_argument("--heads-out", default=None, help="also write the run's heads (float16) to this file")
    p.add_argument("--ship-heads", nargs="+", default=None, help="with --heads-out: only these heads")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each split (tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        res = run_result(
            args.run_dir, args.name, args.data, not args.no_progress, args.limit, args.heads_out, args.ship_heads
        )
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0

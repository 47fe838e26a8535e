"""Summaries over training seeds, from committed run results (``python -m analysis run-result``, one JSON per run
in ``assets/camvid/v2/runs/``): what the dataset report adds beside one set's own numbers.

* :func:`stage_spread`: per readout, head and stage, the mean, SD and range over the seeds of stage 2 (the app's
  dataset curves draw the mean with the seeds' range as a band).
* :func:`probe_ft`: the deep-supervision probe with trainable features (recipe ``camvid_v2_probe_ft``), paired by
  seed, as :func:`analysis.probe.paired_probe` gives the frozen-feature probe.
* :func:`ablation`: the block-count ablation (recipe ``camvid_v2_blocks``, plus N = 4 from stage 2): per N, the
  final mIoU and the per-block mIoU of each head, per seed.

Every value is in percent points of the val split the run results were computed on (their ``stages.split``); the
runs' own seeds pair heads (heads of one seed trained on the same batches from the same backbone).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .probe import paired_probe

__all__ = ["ablation", "is_stage2", "load_runs", "probe_ft", "spread", "stage2_per_seed", "stage_spread"]

STAGE2 = "camvid_v2_stage2"
BLOCKS = "camvid_v2_blocks"
PROBE_FT = "camvid_v2_probe_ft"
SPREAD_METRICS = ("miou", "mask_ap", "boundary_f1")


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every run result ``*.json`` in ``folder`` (sorted by name), each with ``"file"`` (its name) added.

    Raises:
        ValueError: a file that is not a run result (names it).
    """
    runs = []
    for f in sorted(Path(folder).glob("*.json")):
        try:
            res = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read run result {f.name}: {e}") from None
        if not isinstance(res, dict) or not str(res.get("format", "")).startswith("structtoken-run-result/"):
            raise ValueError(f"{f.name} is not a run result (python -m analysis run-result)")
        runs.append({**res, "file": f.name})
    return runs


def _recipe(run: Mapping[str, Any]) -> str:
    tc = run.get("train_config") or {}
    return str(tc.get("recipe") or (tc.get("provenance") or {}).get("recipe") or "")


def _seed(run: Mapping[str, Any]) -> int:
    return int((run.get("train_config") or {})["seed"])


def _num_blocks(run: Mapping[str, Any]) -> int:
    return int(((run.get("train_config") or {}).get("model") or {})["num_blocks"])


def is_stage2(run: Mapping[str, Any]) -> bool:
    """Whether ``run`` trained heads of a stage 2 (its recipe ends in ``stage2``: ``camvid_v2_stage2``, and the
    tiny ones of the tests), not an ablation or the probe with trainable features."""
    return _recipe(run).endswith("stage2")


def stage2_per_seed(runs: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """seed -> readout -> head -> stage entry (``{"input", "blocks", "final", "applicable"?}``, percent), merged
    over the stage-2 runs of each seed (the head groups of a seed; the extra deep-supervision seeds too).

    Raises:
        ValueError: two runs of a seed hold the same head.
    """
    out: dict[int, dict[str, dict[str, Any]]] = {}
    owner: dict[tuple[int, str], str] = {}
    for run in runs:
        if not is_stage2(run):
            continue
        seed = _seed(run)
        for r, per_head in (run.get("stages") or {}).get("readouts", {}).items():
            for h, entry in per_head.items():
                if (seed, h) in owner and owner[(seed, h)] != run["file"]:
                    raise ValueError(f"{run['file']}: head {h} of seed {seed} is also in {owner[(seed, h)]}")
                owner[(seed, h)] = run["file"]
                out.setdefault(seed, {}).setdefault(r, {})[h] = entry
    return out


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd" (None for one value), "min", "max", "n"}`` of finite ``values`` (all None when there are none).

    >>> spread([50.0, 52.0])["mean"], spread([50.0, 52.0])["sd"]
    (51.0, 1.4142135623730951)
    """
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else None,
        "min": min(v),
        "max": max(v),
        "n": len(v),
    }


def _metric(entry: Any, metric: str) -> float | None:
    v = entry.get(metric) if isinstance(entry, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def stage_spread(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str] = SPREAD_METRICS
) -> dict[str, dict[str, Any]]:
    """Per readout and head, every stage's metrics over the seeds that have the head.

    Args:
        per_seed: :func:`stage2_per_seed`'s mapping (percent values).
        metrics: the metrics kept.

    Returns:
        ``{readout: {head: {"seeds": [...], "input": S, "blocks": [S, ...], "final": S}}}`` with
        S = ``{metric: {"mean", "sd", "min", "max", "n", "values": [per seed, in "seeds" order]}}``; a head
        marked ``applicable: false`` under a readout is left out of it.
    """
    out: dict[str, dict[str, Any]] = {}
    readouts: list[str] = []
    for per_r in per_seed.values():
        readouts += [r for r in per_r if r not in readouts]
    for r in readouts:
        heads: list[str] = []
        for per_r in per_seed.values():
            heads += [h for h in per_r.get(r, {}) if h not in heads]
        for h in heads:
            entries = {
                s: per_r[r][h]
                for s, per_r in sorted(per_seed.items())
                if h in per_r.get(r, {}) and per_r[r][h].get("applicable") is not False and "blocks" in per_r[r][h]
            }
            if not entries:
                continue
            seeds = list(entries)

            def stat(pick: Any, entries: dict = entries, seeds: list = seeds) -> dict[str, Any]:
                return {
                    m: {**spread(vals), "values": vals}
                    for m in metrics
                    for vals in [[_metric(pick(entries[s]), m) for s in seeds]]
                }

            n_blocks = max(len(e["blocks"]) for e in entries.values())
            out.setdefault(r, {})[h] = {
                "seeds": seeds,
                "input": stat(lambda e: e.get("input")),
                "blocks": [
                    stat(lambda e, i=i: e["blocks"][i] if i < len(e["blocks"]) else None) for i in range(n_blocks)
                ],
                "final": stat(lambda e: e.get("final")),
            }
    return out


def _final_whole(run: Mapping[str, Any], head: str) -> float | None:
    """The run's final val mIoU of ``head`` (whole image) as a fraction, as run results store it."""
    v = (((run.get("final") or {}).get("whole") or {}).get(head) or {}).get("miou")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def probe_ft(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The probe with trainable features: :func:`analysis.probe.paired_probe` of the ``camvid_v2_probe_ft`` runs'
    final val mIoU (whole image), ``per_pixel_ds`` against ``per_pixel`` paired by seed, with ``"features"`` saying
    what moved; None without such runs."""
    sources = []
    for run in runs:
        if _recipe(run) != PROBE_FT:
            continue
        src: dict[str, Any] = {"source": run["file"], "seed": _seed(run)}
        for h in ("per_pixel", "per_pixel_ds"):
            v = _final_whole(run, h)
            if v is not None:
                src[h] = v
        sources.append(src)
    if not sources:
        return None
    first = next(r for r in runs if _recipe(r) == PROBE_FT)
    vit = ((first.get("train_config") or {}).get("model") or {}).get("head_vit_blocks")
    return {
        **paired_probe(sources),
        "features": f"Each head trains its own copy of the backbone's last {vit} ViT blocks (the rest frozen)",
        "protocol": "final val mIoU, whole image at native resolution",
    }


def ablation(runs: Sequence[Mapping[str, Any]], heads: Sequence[str] = ("cse", "pwe")) -> dict[str, Any] | None:
    """The block-count ablation: ``{"heads", "unit", "protocol", "by_blocks": {N: {"seeds": [...], "runs": [...],
    "final": {head: [mIoU per seed]}, "final_spread": {head: spread}, "blocks": {readout: {head: [[mIoU per block]
    per seed]}}}}}`` for N from the ``camvid_v2_blocks`` runs and N = 4 from the stage-2 runs of ``heads``; None
    without ablation runs. Final mIoU is the whole-image val protocol; per-block mIoU the run's stage metrics."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for run in runs:
        recipe = _recipe(run)
        if recipe == BLOCKS or (is_stage2(run) and all(h in run.get("heads", []) for h in heads)):
            groups.setdefault(_num_blocks(run), []).append(run)
    if not any(_recipe(r) == BLOCKS for g in groups.values() for r in g):
        return None
    by_blocks: dict[str, Any] = {}
    for n in sorted(groups):
        group = sorted(groups[n], key=_seed)
        final = {h: [None if (v := _final_whole(r, h)) is None else 100.0 * v for r in group] for h in heads}
        blocks: dict[str, Any] = {}
        for r_name in ("raw", "head", "fitted"):
            for h in heads:
                rows = []
                for run in group:
                    entry = (((run.get("stages") or {}).get("readouts") or {}).get(r_name) or {}).get(h) or {}
                    rows.append([_metric(b, "miou") for b in entry.get("blocks") or []])
                if any(rows):
                    blocks.setdefault(r_name, {})[h] = rows
        by_blocks[str(n)] = {
            "seeds": [_seed(r) for r in group],
            "runs": [r["file"] for r in group],
            "final": final,
            "final_spread": {h: spread([v for v in final[h] if v is not None]) for h in heads},
            "blocks": blocks,
        }
    return {
        "heads": list(heads),
        "unit": "percent (0-100)",
        "protocol": "final: val mIoU, whole image at native resolution; blocks: each block's maps under the readout",
        "by_blocks": by_blocks,
    }

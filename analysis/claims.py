"""The paper's claim, measured: StructToken's block maps against every baseline's, block by block, per readout,
paired over training seeds.

Claim (Lin et al., arXiv 2203.12612, Sec. 4.4 and Fig. 3): the structure tokens' intermediate maps carry class
structure more clearly than a per-pixel peer's. Here it is compared, for every readout that reads both heads
(:mod:`structtoken.readouts`), every StructToken head and every baseline of the set (``per_pixel``,
``per_pixel_ds``, ``fcn``, ``segmenter``: :func:`analysis.roles.claim_baselines`), at every block i (1..N) on
mIoU and mask AP (percent points of the block's maps on the split): the per-seed difference
``StructToken - baseline`` (both trained on the same batches for that seed), its mean over seeds, and with
n > 1 seeds the 95 % Student-t interval of the mean; a verdict word ("above" / "below") only where the interval
excludes 0. With one seed the numbers are one run each and no verdict is given.

Pure functions (:func:`block_claims`, :func:`claims_table`) plus a command over committed run results:

    python -m analysis claims --runs assets/camvid/v2/runs --out assets/camvid/v2/claims.json [--markdown FILE]

It pairs each seed's StructToken run with that seed's baseline run (the two head groups of stage 2) and writes
``{"meta", "claims"}`` with ``claims[READOUT][BASELINE][STRUCTTOKEN_HEAD]`` = one entry per block:
``{"block", "diff_mean", "n", "seeds", "diffs", "ci95" (n > 1), "p_value" (n > 1), "verdict", "mask_ap": {the
same for mask AP}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .labels import head_label
from .roles import claim_baselines, structtoken_heads
from .stats import paired_comparison
from .values import json_ready

METRICS = ("miou", "mask_ap")
METRIC_NAMES = {"miou": "mIoU", "mask_ap": "mask AP"}


def _blocks(entry: Mapping[str, Any] | None, metric: str) -> list[float | None]:
    if not entry or entry.get("applicable") is False:
        return []
    out = []
    for b in entry.get("blocks") or []:
        v = (b or {}).get(metric)
        out.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
    return out


def _one(values: Mapping[Any, tuple[float, float]]) -> dict[str, Any]:
    """values: seed -> (structtoken, baseline) in points -> one claim entry (for one metric)."""
    seeds = sorted(values, key=str)
    diffs = [values[s][0] - values[s][1] for s in seeds]
    entry: dict[str, Any] = {
        "diff_mean": sum(diffs) / len(diffs),
        "n": len(diffs),
        "seeds": seeds,
        "diffs": diffs,
        "structtoken": [values[s][0] for s in seeds],
        "baseline": [values[s][1] for s in seeds],
        "verdict": None,
    }
    if len(diffs) > 1:
        pc = paired_comparison([(s, values[s][1], values[s][0]) for s in seeds])
        entry["diff_sd"] = pc.delta_sd
        entry["ci95"] = list(pc.ci95) if pc.ci95 else None
        entry["p_value"] = pc.p_value
        if pc.ci95 and pc.ci95[0] > 0:
            entry["verdict"] = "above"
        elif pc.ci95 and pc.ci95[1] < 0:
            entry["verdict"] = "below"
    return entry


def block_claims(
    per_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]],
    heads: Sequence[str],
    pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Claim entries from per-seed stage results.

    Args:
        per_seed: seed -> readout -> head -> ``{"blocks": [{"miou", "mask_ap", ...}, ...], "applicable"?}``
            (percent), as a report's ``readouts`` or a run result's ``stages.readouts``. A head absent from a
            readout, or marked ``applicable: false``, is not compared under it.
        heads: the set's heads in order.
        pairs: (reference, compared) head pairs, each entry being compared minus reference; default: every
            (baseline, StructToken head) of ``heads`` (:func:`structtoken_pairs` gives the StructToken heads
            against each other).

    Returns:
        ``{readout: {reference: {compared: [entry per block]}}}`` (for the default pairs, ``{readout: {baseline:
        {structtoken_head: ...}}}``: see the module docstring); a block is compared on the seeds where both heads
        have a value; readouts or pairs without any are left out.
    """
    if pairs is None:
        pairs = [(b, st) for b in claim_baselines(heads) for st in structtoken_heads(heads)]
    readouts: list[str] = []
    for per_r in per_seed.values():
        readouts += [r for r in per_r if r not in readouts]
    out: dict[str, Any] = {}
    for r in readouts:
        for b, st in pairs:
            n_blocks = max((len(_blocks(per_seed[s].get(r, {}).get(st), "miou")) for s in per_seed), default=0)
            entries = []
            for i in range(n_blocks):
                entry: dict[str, Any] = {"block": i + 1}
                for metric in METRICS:
                    values = {}
                    for seed, per_r in per_seed.items():
                        a = _blocks(per_r.get(r, {}).get(st), metric)
                        c = _blocks(per_r.get(r, {}).get(b), metric)
                        if i < len(a) and i < len(c) and a[i] is not None and c[i] is not None:
                            values[seed] = (a[i], c[i])
                    if values:
                        one = _one(values)
                        if metric == "miou":
                            entry.update(one)
                        else:
                            entry[metric] = one
                if "diff_mean" in entry:
                    entries.append(entry)
            if entries:
                out.setdefault(r, {}).setdefault(b, {})[st] = entries
    return out


def structtoken_pairs(heads: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of StructToken heads among ``heads``, (earlier, later) in set order: ``[("cse", "sse"), ("cse",
    "pwe"), ("sse", "pwe")]`` for our sets (:func:`block_claims` compares the later minus the earlier)."""
    sts = structtoken_heads(heads)
    return [(a, b) for i, a in enumerate(sts) for b in sts[i + 1 :]]


def _cell(e: Mapping[str, Any] | None) -> str:
    if not e:
        return "–"
    text = f"{e['diff_mean']:+.1f}"
    if e.get("ci95"):
        lo, hi = e["ci95"]
        text += f" [{lo:+.1f}, {hi:+.1f}]"
    if e.get("verdict"):
        text += f" **{e['verdict']}**"
    return text


def claims_table(
    claims: Mapping[str, Any], metric: str = "miou", columns: tuple[str, str] = ("StructToken", "baseline")
) -> list[str]:
    """Markdown tables, one per readout: rows (compared head, reference head), columns blocks; cells the mean paired
    difference in points (compared minus reference), its 95 % interval (n > 1) and the verdict word where the
    interval excludes 0. ``columns`` names the two head columns (StructToken against a baseline by default)."""
    lines: list[str] = []
    for r, per_base in claims.items():
        n_blocks = max((len(v) for per_st in per_base.values() for v in per_st.values()), default=0)
        ns = sorted({e["n"] for per_st in per_base.values() for v in per_st.values() for e in v})
        seeds = f"{ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds"
        lines += [
            f"**{r} readout**, {METRIC_NAMES[metric]}: {columns[0]} minus {columns[1]}, points ({seeds}"
            f"{', paired by seed, 95 % t interval' if ns and ns[-1] > 1 else ', one run each: no interval'})",
            "",
            f"| {columns[0]} | {columns[1]} | " + " | ".join(f"block {i}" for i in range(1, n_blocks + 1)) + " |",
            "|---|---|" + "---|" * n_blocks,
        ]
        for b, per_st in per_base.items():
            for st, entries in per_st.items():
                by_block = {e["block"]: (e if metric == "miou" else e.get(metric)) for e in entries}
                cells = [_cell(by_block.get(i)) for i in range(1, n_blocks + 1)]
                lines.append(f"| {head_label(st)} | {head_label(b)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------ run results
def read_run_results(folder: str | Path, prefix: str = "camvid_v2_stage2_") -> dict[int, dict[str, Any]]:
    """seed -> readout -> head -> stage results, merged from every run result ``PREFIX*_seedS.json`` in ``folder``
    (the head groups of one seed share batches, so their heads pair by seed); also returns nothing for a folder
    without results. Raises ValueError when two files of a seed hold the same head."""
    out: dict[int, dict[str, Any]] = {}
    for f in sorted(Path(folder).glob(f"{prefix}*_seed*.json")):
        res = json.loads(f.read_text())
        seed = int(res["train_config"]["seed"])
        per_r = out.setdefault(seed, {})
        for r, per_head in res["stages"]["readouts"].items():
            for h, entry in per_head.items():
                if h in per_r.get(r, {}):
                    raise ValueError(f"{f.name}: head {h} of seed {seed} is also in another result file")
                per_r.setdefault(r, {})[h] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis claims ...``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m analysis claims", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="assets/camvid/v2/runs", help="folder of run result files")
    p.add_argument("--out", required=True, help="the claims JSON to write")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown")
    args = p.parse_args(argv)
    try:
        per_seed = read_run_results(args.runs)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not per_seed:
        print(f"error: no stage-2 run results in {Path(args.runs).name}", file=sys.stderr)
        return 2
    heads: list[str] = []
    for per_r in per_seed.values():
        for per_head in per_r.values():
            heads += [h for h in per_head if h not in heads]
    order = ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "fcn", "segmenter"]
    heads.sort(key=lambda h: order.index(h) if h in order else len(order))
    claims = block_claims(per_seed, heads)
    st_pairs = block_claims(per_seed, heads, structtoken_pairs(heads))
    result = {
        "meta": {
            "sources": sorted(f.name for f in Path(args.runs).glob("camvid_v2_stage2_*_seed*.json")),
            "seeds": sorted(per_seed),
            "heads": heads,
            "unit": "percent points (StructToken minus baseline)",
            "pairing": "by training seed: both heads trained on the same batches from the same backbone",
            "interval": "95 % Student t on the per-seed differences (n - 1 degrees of freedom), n > 1 only",
            "verdict": "'above' / 'below' only where the interval excludes 0; none with one seed",
            "structtoken_pairs": "the StructToken heads against each other: {readout: {first: {second: per block, "
            "second minus first}}}",
            "command": "python -m analysis claims --runs assets/camvid/v2/runs --out assets/camvid/v2/claims.json",
        },
        "claims": claims,
        "structtoken_pairs": st_pairs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_ready(result), indent=1) + "\n")
    if args.markdown:
        md = claims_table(claims, "miou") + claims_table(claims, "mask_ap")
        Path(args.markdown).write_text("\n".join(md))
    print(f"wrote {out} ({len(per_seed)} seeds, heads {', '.join(heads)})")
    return 0

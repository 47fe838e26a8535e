"""The deep-supervision probe's numbers: does a loss on every block's map give the per-pixel baseline
StructToken-like block maps and a better final mIoU?

Pure functions over numbers (per-seed final mIoUs, the dataset report's per-block metrics): the
summary with its verdict sentences (:func:`probe_summary`), the sentence comparing two heads block by
block (:func:`relation_sentence`), and reading the shipped report (:func:`report_heads`,
:func:`probe_from_report`). The probe *analysis* of one image is :mod:`analysis.analyses.probe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .figures import METRIC_LABELS
from .roles import structtoken_heads

__all__ = [
    "as_fractions",
    "paired_probe",
    "pairs_table",
    "probe_from_report",
    "probe_summary",
    "relation_sentence",
    "report_heads",
    "report_seed_curves",
]


# ------------------------------------------------------------------------------- probe summary
def _as_points(values: Sequence[float | None]) -> np.ndarray:
    """Finite values as mIoU points: fractions are scaled by 100, values > 1 are taken as percent."""
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size and np.all(np.abs(a) <= 1.0):
        a = a * 100.0
    return a


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Format two magnitudes with 1 decimal, or 2 when 1 would make them look equal."""
    for nd in (1, 2, 3):
        sa, sb = f"{a:.{nd}f}", f"{b:.{nd}f}"
        if sa != sb or a == b:
            return sa, sb
    return f"{a:.3f}", f"{b:.3f}"


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    a = _as_points(values)
    n = int(a.size)
    return {
        "mean": float(a.mean()) if n else None,
        "std": float(a.std(ddof=1)) if n > 1 else None,
        "n": n,
        "values": [float(v) for v in a],
    }


def _block_values(metrics: Mapping[str, Any] | None, metric: str) -> list[float]:
    if not metrics:
        return []
    out = []
    for blk in metrics.get("blocks") or []:
        v = (blk or {}).get(metric)
        out.append(float("nan") if v is None else 100.0 * float(v))
    return out


def _blocks_list(idx: Sequence[int]) -> str:
    labels = [str(i + 1) for i in idx]
    if len(labels) == 1:
        return f"block {labels[0]}"
    return "blocks " + ", ".join(labels[:-1]) + " and " + labels[-1]


def relation_sentence(
    name_a: str, vals_a: Sequence[float], name_b: str, vals_b: Sequence[float], metric: str
) -> str | None:
    """'At blocks 1–N, A's block maps reach mask AP x / y vs B's u / v: below B's at every block (by ..)'."""
    n = min(len(vals_a), len(vals_b))
    pairs = [(i, vals_a[i], vals_b[i]) for i in range(n) if math.isfinite(vals_a[i]) and math.isfinite(vals_b[i])]
    if not pairs:
        return None
    label = METRIC_LABELS.get(metric, metric)
    diffs = [(i, a - b) for i, a, b in pairs]
    above = [i for i, d in diffs if d > 0]
    below = [i for i, d in diffs if d < 0]
    mags = [abs(d) for _, d in diffs]
    lo, hi = f"{min(mags):.1f}", f"{max(mags):.1f}"
    span = hi if lo == hi else f"{lo}–{hi}"
    if len(below) == len(diffs):
        rel = f"below {name_b}'s at every block (by {span} pts)"
    elif len(above) == len(diffs):
        rel = f"above {name_b}'s at every block (by {span} pts)"
    elif not above and not below:
        rel = f"equal to {name_b}'s at every block"
    else:
        parts = []
        if above:
            parts.append(f"above {name_b}'s at {_blocks_list(above)}")
        if below:
            parts.append(f"below at {_blocks_list(below)}")
        rel = ", ".join(parts)
    va = " / ".join(f"{a:.1f}" for _, a, _ in pairs)
    vb = " / ".join(f"{b:.1f}" for _, _, b in pairs)
    where = _blocks_list([i for i, _, _ in pairs])
    return f"At {where}, {name_a}'s block maps reach {label} {va} vs {name_b}'s {vb}: {rel}."


def probe_summary(
    seed_results: Mapping[str, Sequence[float | None]],
    block_metrics: Mapping[str, Any] | None = None,
    baseline: str = "per_pixel",
    treated: str = "per_pixel_ds",
    structtoken_head: str | None = None,
) -> dict[str, Any]:
    """Summarise the deep-supervision probe from numbers; pure function.

    Args:
        seed_results: head -> final val mIoU of each training seed, as fractions in [0, 1]
            (values above 1 are taken as percent; None/NaN skipped).
        block_metrics: head -> ``{"blocks": [{"miou", "mask_ap", ...}, ...], "final": {...}}`` (the
            dataset report's per-head entries, fractions), or None.
        baseline, treated: the two heads compared (the per-pixel baseline with and without deep
            supervision).
        structtoken_head: the StructToken head to compare block maps with (default: the first of
            cse / sse / pwe found in ``block_metrics``).

    Returns:
        ``{"unit": "mIoU points", "heads": {head: {"mean", "std" (ddof=1), "n", "values"}},
        "baseline", "treated", "diff" (treated - baseline mean), "spread" (the larger seed std),
        "se_diff" (standard error of the difference), "outcome" ("helps" | "hurts" | "no_evidence"
        | "insufficient"), "verdict" (a sentence), "blocks": None or {"structtoken_head",
        "per_block": [{"block", "miou": {head: v}, "mask_ap": {head: v}}], "sentences": [...],
        "verdict"}}``. All numbers in mIoU / AP points (percent).
    """
    heads = {h: _stats(v) for h, v in seed_results.items()}
    b, t = heads.get(baseline), heads.get(treated)
    out: dict[str, Any] = {
        "unit": "mIoU points",
        "heads": heads,
        "baseline": baseline,
        "treated": treated,
        "diff": None,
        "spread": None,
        "se_diff": None,
        "outcome": "insufficient",
    }
    if not b or not t or b["n"] == 0 or t["n"] == 0:
        missing = [h for h, s in ((baseline, b), (treated, t)) if not s or s["n"] == 0]
        out["verdict"] = f"no seed results for {' and '.join(missing)}: the probe cannot be judged yet."
    else:
        diff = t["mean"] - b["mean"]
        out["diff"] = diff
        if b["n"] < 2 or t["n"] < 2:
            out["verdict"] = (
                f"{treated} − {baseline} = {diff:+.2f} mIoU from {b['n']} / {t['n']} seed(s): "
                "at least 2 seeds "
                "of each are needed to compare the difference with the seed spread."
            )
        else:
            spread = max(b["std"], t["std"])
            out["spread"] = spread
            out["se_diff"] = math.sqrt(b["std"] ** 2 / b["n"] + t["std"] ** 2 / t["n"])
            d, s = _fmt_pair(abs(diff), spread)
            if abs(diff) > spread and diff > 0:
                out["outcome"] = "helps"
                out["verdict"] = (
                    f"{treated} beats {baseline} by {d} mIoU, more than the seed spread (±{s}): deep supervision helps."
                )
            elif abs(diff) > spread:
                out["outcome"] = "hurts"
                out["verdict"] = (
                    f"{treated} trails {baseline} by {d} mIoU, more than the seed spread (±{s}): "
                    "deep supervision hurts here."
                )
            else:
                out["outcome"] = "no_evidence"
                out["verdict"] = (
                    f"{treated} and {baseline} differ by {d} mIoU, within the seed spread (±{s}): "
                    "no evidence that deep supervision changes the final mIoU."
                )
    out["blocks"] = _block_summary(block_metrics, baseline, treated, structtoken_head)
    return out


def _block_summary(
    block_metrics: Mapping[str, Any] | None, baseline: str, treated: str, structtoken_head: str | None
) -> dict[str, Any] | None:
    if not block_metrics or treated not in block_metrics:
        return None
    st = structtoken_head
    if st is None or st not in block_metrics:
        st = next(iter(structtoken_heads(list(block_metrics))), None)
    shown = [h for h in (treated, st, baseline) if h is not None and h in block_metrics]
    n = max(len(block_metrics[h].get("blocks") or []) for h in shown)
    per_block = []
    for i in range(n):
        row: dict[str, Any] = {"block": i + 1}
        for metric in ("miou", "mask_ap"):
            vals = {h: _block_values(block_metrics[h], metric) for h in shown}
            row[metric] = {h: (v[i] if i < len(v) and math.isfinite(v[i]) else None) for h, v in vals.items()}
        per_block.append(row)
    sentences = []
    if st is not None:
        for metric in ("mask_ap", "miou"):
            s = relation_sentence(
                treated,
                _block_values(block_metrics[treated], metric),
                st,
                _block_values(block_metrics[st], metric),
                metric,
            )
            if s:
                sentences.append(s)
    if baseline in block_metrics:
        s = relation_sentence(
            treated,
            _block_values(block_metrics[treated], "mask_ap"),
            baseline,
            _block_values(block_metrics[baseline], "mask_ap"),
            "mask_ap",
        )
        if s:
            sentences.append(s)
    if not sentences:
        return None
    return {
        "structtoken_head": st,
        "per_block": per_block,
        "sentences": sentences,
        "verdict": " ".join(sentences),
    }


# ------------------------------------------------------------------------------ paired probe
def paired_probe(
    sources: Sequence[Mapping[str, Any]], baseline: str = "per_pixel", treated: str = "per_pixel_ds"
) -> dict[str, Any]:
    """The metrics.json ``probe`` block from per-seed final mIoUs, paired by seed (never by order).

    Args:
        sources: one entry per result file / run folder: ``{"source": name, "seed": int, head: mIoU
            (fraction), ...}``.
        baseline, treated: the heads compared (treated - baseline).

    Returns:
        :func:`analysis.stats.to_json` of the paired comparison (``pairs`` [{"seed", "baseline",
        "treated"}] in mIoU points, ``delta_mean``, ``delta_sd``, ``ci95``, ``p_value``, ``n``,
        ``verdict``), plus ``baseline`` / ``treated`` (the heads), ``unit``, ``sources`` (names and
        seeds) and ``head_vs_head`` (the same block for every other head pair sharing >= 2 seeds).
        With no seed holding both heads: empty ``pairs``, None numbers, ``n`` 0 and a verdict that
        says so.

    Raises:
        ValueError: two sources give the same seed (the message names both).
    """
    from .stats import all_pairwise, paired_comparison, to_json

    by_seed: dict[Any, Mapping[str, Any]] = {}
    for src in sources:
        seed = src["seed"]
        if seed in by_seed:
            raise ValueError(
                f"seed {seed} is given twice ({by_seed[seed]['source']} and {src['source']}): "
                "each seed must come from one result"
            )
        by_seed[seed] = src
    per_head: dict[str, dict[Any, float]] = {}
    for seed, src in by_seed.items():
        for h, v in src.items():
            if h not in ("source", "seed") and isinstance(v, (int, float)) and math.isfinite(v):
                per_head.setdefault(h, {})[seed] = float(v)
    meta = {
        "baseline": baseline,
        "treated": treated,
        "unit": "mIoU points",
        "sources": [{"source": s["source"], "seed": s["seed"]} for s in by_seed.values()],
    }
    shared = [s for s in per_head.get(baseline, {}) if s in per_head.get(treated, {})]
    if not shared:
        missing = [h for h in (baseline, treated) if h not in per_head]
        why = f"no results for {' and '.join(missing)}" if missing else "no seed has results for both heads"
        block = {
            "pairs": [],
            "delta_mean": None,
            "delta_sd": None,
            "ci95": None,
            "p_value": None,
            "n": 0,
            "verdict": f"the deep-supervision probe cannot be judged: {why}.",
        }
    else:
        res = paired_comparison(
            [(s, per_head[baseline][s], per_head[treated][s]) for s in sorted(shared)],
            treatment=f"deep supervision ({treated} vs {baseline})",
            metric="final mIoU",
            unit="points",
            scale=100.0,
        )
        block = to_json(res)
    others = {h: v for h, v in per_head.items()}
    hvh = [
        {
            "baseline": c.treatment.split(" instead of ")[1],
            "treated": c.treatment.split(" instead of ")[0],
            **to_json(c),
        }
        for c in all_pairwise(others, metric="final mIoU", unit="points", scale=100.0)
        if {c.treatment.split(" instead of ")[0], c.treatment.split(" instead of ")[1]} != {baseline, treated}
    ]
    return {**block, **meta, "head_vs_head": hvh}


# ------------------------------------------------------------------------------ shipped report
# ------------------------------------------------------------------------------ shipped report
def as_fractions(x: Any) -> Any:
    """A new-schema metric entry (percent) as fractions, recursively (None stays None)."""
    if isinstance(x, Mapping):
        return {k: as_fractions(v) for k, v in x.items()}
    if isinstance(x, list):
        return [as_fractions(v) for v in x]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x) / 100.0
    return x


def report_heads(report: Mapping[str, Any], readout: str = "raw") -> dict[str, Any]:
    """The per-head entries (``{"input", "blocks", "final"}``) of a dataset report under ``readout``,
    with metric values as fractions (what the figures and tables take).

    Reads both schemas: the current one (``{"readouts": {readout: {head: entry}}}``, values in
    percent) and the earlier one (head entries at the top level, fractions, raw readout only: other
    readouts give ``{}``).
    """
    readouts = report.get("readouts")
    if isinstance(readouts, Mapping):
        block = readouts.get(readout)
        if not isinstance(block, Mapping):
            return {}
        return {k: as_fractions(v) for k, v in block.items() if isinstance(v, Mapping) and "blocks" in v}
    if readout != "raw":
        return {}
    return {k: v for k, v in report.items() if k not in ("probe", "meta") and isinstance(v, dict) and "blocks" in v}


def report_reference(report: Mapping[str, Any]) -> dict[str, float] | None:
    """The report's resolution reference (``{"reference": {metric: percent}}``, the label at the heads' grid) as
    metric -> fraction, or None for a report without one."""
    ref = report.get("reference")
    if not isinstance(ref, Mapping):
        return None
    out = {m: float(v) / 100.0 for m, v in ref.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out or None


def pairs_table(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown rows of a paired probe (``pairs`` of :func:`paired_probe`, mIoU points): seed, per-pixel, per-pixel +
    DS and their difference."""
    lines = ["| seed | per-pixel | per-pixel + DS | difference |", "|---|---|---|---|"]
    for q in pairs:
        diff = q["treated"] - q["baseline"]
        lines.append(f"| {q['seed']} | {q['baseline']:.2f} | {q['treated']:.2f} | {diff:+.2f} |")
    return lines


def report_seed_curves(
    report: Mapping[str, Any], readout: str = "raw"
) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], dict[str, Any], int]], list[Any], str | None] | None:
    """The dataset curves over training seeds a report carries (its ``seeds`` block, from run results): per head
    under ``readout``, the mean entry and the (min, max, n seeds) band, as fractions shaped like
    :func:`report_heads`'s entries; the union of the seeds and their split. None when the report has none."""
    over = report.get("seeds")
    stages = (over.get("stages") or {}).get(readout) if isinstance(over, Mapping) else None
    if not isinstance(stages, Mapping) or not stages:
        return None

    def pick(stat: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        def one(s: Mapping[str, Any] | None) -> dict[str, Any]:
            return {m: as_fractions((v or {}).get(stat)) for m, v in (s or {}).items()}

        return {"input": one(entry.get("input")), "blocks": [one(b) for b in entry.get("blocks") or []],
                "final": one(entry.get("final"))}  # fmt: skip

    means, bands, seeds = {}, {}, []
    for h, entry in stages.items():
        if not isinstance(entry, Mapping) or "blocks" not in entry:
            continue
        means[h] = pick("mean", entry)
        bands[h] = (pick("min", entry), pick("max", entry), len(entry.get("seeds") or []))
        seeds += [s for s in entry.get("seeds") or [] if s not in seeds]
    if not means:
        return None
    return means, bands, sorted(seeds, key=str), over.get("split")


def probe_from_report(
    report: Mapping[str, Any] | None, structtoken_head: str | None, readout: str = "raw"
) -> dict[str, Any] | None:
    """The probe of a shipped report: its paired verdict (or, for an earlier report, :func:`probe_summary`
    of its seeds) and the block-map sentences under ``readout``; None when the report has neither seed
    results nor a deeply supervised head."""
    if not report:
        return None
    probe = report.get("probe")
    heads = report_heads(report, readout)
    if isinstance(probe, Mapping) and "pairs" in probe and "verdict" in probe:
        out = dict(probe)
        out["blocks"] = (
            _block_summary(
                heads,
                str(probe.get("baseline", "per_pixel")),
                str(probe.get("treated", "per_pixel_ds")),
                structtoken_head,
            )
            if heads
            else None
        )
        return out
    if isinstance(probe, dict) and isinstance(probe.get("seeds"), dict) and probe["seeds"]:
        return probe_summary(probe["seeds"], heads or None, structtoken_head=structtoken_head)
    if heads and "per_pixel_ds" in heads:
        return probe_summary({}, heads, structtoken_head=structtoken_head)
    return None

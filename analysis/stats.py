"""Paired statistics for comparing two heads (or a baseline and a treated run) over matching seeds.

Pure functions: numbers in, frozen dataclasses and JSON-ready dicts out (no I/O). Every comparison
is paired: on each seed the two runs share data order and initialisation of everything but the
treatment, so the seed-to-seed spread largely cancels in the per-seed difference
``delta = treated - baseline``. The interval is Student's t on those deltas (``n - 1`` degrees of
freedom), the p-value the two-sided paired t-test (``scipy.stats.ttest_rel``), and the verdict
sentence is worded from the interval, never from the p-value alone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = ["PairedComparison", "all_pairwise", "paired_comparison", "to_json"]

Seed = Hashable


@dataclass(frozen=True)
class PairedComparison:
    """A baseline and a treated run compared on the same seeds; all values in ``unit``.

    Attributes:
        n: number of seeds (pairs).
        seeds: the seeds, in input order ``[n]``.
        baseline, treated: the values per seed ``[n]``.
        deltas: ``treated - baseline`` per seed ``[n]``.
        delta_mean: mean of ``deltas``.
        delta_sd: sample SD of ``deltas`` (``ddof=1``); ``None`` when ``n < 2``; 0.0 when all deltas
            are equal (up to float rounding of the subtraction).
        ci95: Student-t interval of the mean delta at ``confidence`` (0.95 by default, hence the
            name); ``None`` when ``n < 2`` or ``delta_sd == 0`` (no spread: no interval exists).
        p_value: two-sided paired t-test of ``mean delta = 0``; ``None`` where ``ci95`` is ``None``.
        confidence: the interval's coverage.
        verdict: one sentence worded from the interval (see :func:`paired_comparison`).
        treatment, metric, unit: the wording used in ``verdict``.
    """

    n: int
    seeds: tuple[Seed, ...]
    baseline: tuple[float, ...]
    treated: tuple[float, ...]
    deltas: tuple[float, ...]
    delta_mean: float
    delta_sd: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    confidence: float
    verdict: str
    treatment: str = "the treatment"
    metric: str = "the metric"
    unit: str = "points"


# ------------------------------------------------------------------------------------ wording
def _fmt(x: float, signed: bool = True) -> str:
    """Two significant figures, no exponent, trailing zeros kept: -0.22, +1.3, +0.40, +1.0, +12."""
    if x == 0:
        return "0"
    r = float(f"{x:.2g}")  # round to 2 significant figures first (0.996 -> 1.0)
    decimals = max(0, 1 - math.floor(math.log10(abs(r))))
    return f"{r:+.{decimals}f}" if signed else f"{abs(r):.{decimals}f}"


def _fmt_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _seeds_phrase(n: int) -> str:
    return f"paired over {n} seed{'s' if n != 1 else ''}"


def _verdict(
    treatment: str,
    metric: str,
    unit: str,
    n: int,
    mean: float,
    sd: float | None,
    ci: tuple[float, float] | None,
    p: float | None,
    confidence: float,
) -> str:
    if n < 2:
        return (
            f"{treatment} changes {metric} by {_fmt(mean)} {unit} on a single seed; one seed cannot separate "
            "the effect from seed-to-seed variation, so it supports no claim either way (run more seeds)."
        )
    if ci is None:  # sd == 0: every seed moved by the same amount
        if mean == 0:
            return (
                f"{treatment} leaves {metric} unchanged on all {n} seeds (identical values); with no spread "
                "between seeds no interval or p-value can be computed (check the runs really differ)."
            )
        return (
            f"{treatment} changes {metric} by exactly {_fmt(mean)} {unit} on all {n} seeds (no spread between "
            "seeds, so no interval or p-value can be computed; the metric may be too coarse to show seed noise)."
        )
    assert p is not None
    lo, hi = ci
    level = "" if math.isclose(confidence, 0.95) else f" at {100 * confidence:g}% confidence"
    tail = f"({_seeds_phrase(n)}, {_fmt_p(p)}{',' if level else ''}{level})"
    interval = f"[{_fmt(lo)}, {_fmt(hi)}]"
    if lo > 0:
        return f"{treatment} raises {metric} by {_fmt(mean)} {interval} {unit} {tail}."
    if hi < 0:
        # magnitudes read naturally after "lowers"; the signed interval is in ci95
        return (
            f"{treatment} lowers {metric} by {_fmt(mean, signed=False)} "
            f"[{_fmt(-hi, signed=False)}, {_fmt(-lo, signed=False)}] {unit} {tail}."
        )
    bound = max(abs(lo), abs(hi))
    return (
        f"{treatment} changes {metric} by {_fmt(mean)} {interval} {unit} {tail}; "
        f"effects beyond {_fmt(bound, signed=False)} {unit} are ruled out."
    )


# ---------------------------------------------------------------------------------- computing
def _as_value(v: Any, what: str, seed: Seed) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} value for seed {seed!r} is not a number: {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{what} value for seed {seed!r} is {f} (NaN and infinity are not results)")
    return f


def _collect_pairs(
    pairs: Iterable[tuple[Seed, float, float]] | None,
    baseline: Sequence[float] | Mapping[Seed, float] | None,
    treated: Sequence[float] | Mapping[Seed, float] | None,
    seeds: Sequence[Seed] | None,
) -> list[tuple[Seed, Any, Any]]:
    if pairs is not None:
        if baseline is not None or treated is not None or seeds is not None:
            raise ValueError("give either pairs or baseline/treated (and seeds), not both")
        out = []
        for item in pairs:
            if len(item) != 3:
                raise ValueError(f"each pair must be (seed, baseline, treated), got {item!r}")
            out.append((item[0], item[1], item[2]))
        return out
    if baseline is None or treated is None:
        raise ValueError("give pairs, or both baseline and treated")
    if isinstance(baseline, Mapping) or isinstance(treated, Mapping):
        if not (isinstance(baseline, Mapping) and isinstance(treated, Mapping)):
            raise ValueError("baseline and treated must both be {seed: value} mappings or both sequences")
        if seeds is not None:
            raise ValueError("seeds come from the mapping keys; do not pass seeds with mappings")
        only_b = [s for s in baseline if s not in treated]
        only_t = [s for s in treated if s not in baseline]
        if only_b or only_t:
            raise ValueError(
                f"seeds do not match: only in baseline {only_b}, only in treated {only_t} "
                "(a paired comparison needs the same seeds on both sides)"
            )
        return [(s, baseline[s], treated[s]) for s in baseline]
    b, t = list(baseline), list(treated)
    if len(b) != len(t):
        raise ValueError(f"baseline has {len(b)} values, treated {len(t)}: the seeds do not match")
    if seeds is None:
        raise ValueError("pass seeds with sequences (which seed each position is), or use {seed: value} mappings")
    s = list(seeds)
    if len(s) != len(b):
        raise ValueError(f"{len(s)} seeds for {len(b)} pairs")
    return list(zip(s, b, t))


def paired_comparison(
    pairs: Iterable[tuple[Seed, float, float]] | None = None,
    *,
    baseline: Sequence[float] | Mapping[Seed, float] | None = None,
    treated: Sequence[float] | Mapping[Seed, float] | None = None,
    seeds: Sequence[Seed] | None = None,
    treatment: str = "the treatment",
    metric: str = "the metric",
    unit: str = "points",
    confidence: float = 0.95,
    scale: float = 1.0,
) -> PairedComparison:
    """Compare ``treated`` with ``baseline`` on matching seeds (paired t).

    Give either ``pairs`` = ``[(seed, baseline, treated), ...]``, or ``baseline`` and ``treated``
    as ``{seed: value}`` mappings with the same keys, or as aligned sequences together with
    ``seeds``. Values are multiplied by ``scale`` first (100 turns an mIoU fraction into points);
    every number of the result is in that unit.

    The verdict is worded from the interval: when it excludes zero, "``treatment`` raises
    (lowers) ``metric`` by +1.3 [+0.40, +2.2] points (paired over 5 seeds, p = 0.02)" ("lowers"
    gives magnitudes); when it includes zero, "... changes ``metric`` by -0.22 [-1.6, +1.1] points
    (paired over 3 seeds, p = 0.55); effects beyond 1.6 points are ruled out". Numbers have two
    significant figures. One seed gives no interval and a verdict saying it supports no claim;
    all-equal deltas (SD 0) give no interval or p-value, said in words, without NaN warnings.

    Raises:
        ValueError: no pairs, duplicate or mismatched seeds, NaN/infinite/non-numeric values,
            ``confidence`` outside (0, 1), non-finite or zero ``scale``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be finite and non-zero, got {scale!r}")
    raw = _collect_pairs(pairs, baseline, treated, seeds)
    if not raw:
        raise ValueError("no pairs to compare")
    seen: set[Seed] = set()
    for s, _, _ in raw:
        if s in seen:
            raise ValueError(f"seed {s!r} appears twice")
        seen.add(s)
    b = np.array([_as_value(v, "baseline", s) for s, v, _ in raw]) * scale  # [n]
    t = np.array([_as_value(v, "treated", s) for s, _, v in raw]) * scale  # [n]
    d = t - b  # [n]
    n = d.size
    mean = float(d.mean())
    sd: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None
    if n >= 2:
        sd = float(d.std(ddof=1))
        # deltas equal up to the rounding of the subtraction count as no spread at all
        rounding = 8 * np.finfo(float).eps * max(1.0, float(np.max(np.abs(np.r_[b, t]))))
        if sd <= rounding:
            sd = 0.0
        else:
            half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
            ci = (mean - half, mean + half)
            p = float(_st.ttest_rel(t, b).pvalue)
    verdict = _verdict(treatment, metric, unit, n, mean, sd, ci, p, confidence)
    return PairedComparison(
        n=n,
        seeds=tuple(s for s, _, _ in raw),
        baseline=tuple(float(v) for v in b),
        treated=tuple(float(v) for v in t),
        deltas=tuple(float(v) for v in d),
        delta_mean=mean,
        delta_sd=sd,
        ci95=ci,
        p_value=p,
        confidence=confidence,
        verdict=verdict,
        treatment=treatment,
        metric=metric,
        unit=unit,
    )


def to_json(result: PairedComparison) -> dict[str, Any]:
    """The metrics.json ``probe`` block of one comparison.

    Exactly the keys ``pairs`` (``[{"seed", "baseline", "treated"}]``), ``delta_mean``,
    ``delta_sd``, ``ci95`` (``[lo, hi]``), ``p_value``, ``n``, ``verdict``; undefined numbers are
    ``null``. Raises ``ValueError`` for a non-95% interval (the key says 95).
    """
    if not math.isclose(result.confidence, 0.95):
        raise ValueError(f"to_json writes 'ci95' but the interval is at {result.confidence:g}")
    return {
        "pairs": [
            {"seed": s, "baseline": b, "treated": t} for s, b, t in zip(result.seeds, result.baseline, result.treated)
        ],
        "delta_mean": result.delta_mean,
        "delta_sd": result.delta_sd,
        "ci95": None if result.ci95 is None else [result.ci95[0], result.ci95[1]],
        "p_value": result.p_value,
        "n": result.n,
        "verdict": result.verdict,
    }


def all_pairwise(
    results: Mapping[str, Mapping[Seed, float]],
    *,
    metric: str = "the metric",
    unit: str = "points",
    confidence: float = 0.95,
    scale: float = 1.0,
    min_seeds: int = 2,
) -> list[PairedComparison]:
    """Every head pair ``(a, b)`` (in ``results`` order, ``a`` first: baseline ``a``, treated ``b``)
    compared on the seeds both have, for pairs sharing at least ``min_seeds`` seeds.

    ``results`` is ``{head: {seed: value}}``; the verdict names the treatment "``b`` instead of
    ``a``". The p-values are per pair and not adjusted for the number of pairs (with many heads,
    some pair will cross p < 0.05 by chance; read the intervals).
    """
    out = []
    for a, b in combinations(list(results), 2):
        shared = [s for s in results[a] if s in results[b]]
        if len(shared) < min_seeds:
            continue
        out.append(
            paired_comparison(
                [(s, results[a][s], results[b][s]) for s in shared],
                treatment=f"{b} instead of {a}",
                metric=metric,
                unit=unit,
                confidence=confidence,
                scale=scale,
            )
        )
    return out

"""Tests for analysis.stats: paired comparisons worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from analysis.stats import PairedComparison, all_pairwise, paired_comparison, to_json

KW = {"treatment": "deep supervision", "metric": "final mIoU", "unit": "points"}


def test_hand_computed_three_seeds():
    """deltas d = [-0.64, -0.42, +0.39] (treated - baseline), n = 3, df = 2.

    mean  = (-0.64 - 0.42 + 0.39) / 3 = -0.67 / 3 = -0.22333...
    dev   = d - mean = [-0.41667, -0.19667, +0.61333]
    SS    = 0.17361 + 0.03868 + 0.37618 = 0.58847 ;  SD = sqrt(SS / 2) = 0.54243
    SE    = SD / sqrt(3) = 0.31317
    t quantile, df = 2, has a closed form: t_q = (2q - 1) / sqrt(2 q (1 - q)); q = 0.975 ->
          0.95 / sqrt(0.04875) = 4.30265
    CI    = mean -/+ 4.30265 * 0.31317 = [-1.5708, +1.1241]
    t     = mean / SE = -0.71314 ; df = 2 CDF F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    p     = 1 - |t| / sqrt(2 + t^2) = 1 - 0.71314 / 1.58385 = 0.54974
    """
    base = [60.0, 61.0, 59.5]
    d = [-0.64, -0.42, 0.39]
    r = paired_comparison([(s, b, b + x) for s, b, x in zip([0, 1, 2], base, d)], **KW)
    mean = -0.67 / 3
    ss = sum((x - mean) ** 2 for x in d)
    sd = math.sqrt(ss / 2)
    se = sd / math.sqrt(3)
    tq = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    t = mean / se
    p = 1 - abs(t) / math.sqrt(2 + t * t)
    assert r.n == 3 and r.seeds == (0, 1, 2)
    assert r.delta_mean == pytest.approx(mean, abs=1e-9)
    assert r.delta_sd == pytest.approx(sd, abs=1e-9)
    assert r.ci95 == pytest.approx((mean - tq * se, mean + tq * se), abs=1e-9)
    assert r.p_value == pytest.approx(p, abs=1e-9)
    assert r.verdict == (
        "deep supervision changes final mIoU by -0.22 [-1.6, +1.1] points (paired over 3 seeds, p = 0.55); "
        "effects beyond 1.6 points are ruled out."
    )


def test_verdict_when_interval_excludes_zero():
    # deltas [1.0, 1.2, 1.4, 1.6, 1.3]: mean 1.3, SD 0.2236, SE 0.1, t(0.975, 4) = 2.7764
    #   CI = [1.0224, 1.5776], t = 13 -> p ~ 2e-4
    r = paired_comparison(
        baseline={s: 50.0 for s in range(5)}, treated={s: 50.0 + x for s, x in enumerate([1, 1.2, 1.4, 1.6, 1.3])}, **KW
    )
    assert r.ci95 == pytest.approx((1.3 - 2.7764451 * 0.1, 1.3 + 2.7764451 * 0.1), abs=1e-6)
    assert (
        r.verdict == "deep supervision raises final mIoU by +1.3 [+1.0, +1.6] points (paired over 5 seeds, p < 0.001)."
    )
    lower = paired_comparison(baseline=[2, 3, 4], treated=[1, 1.9, 3.1], seeds=["a", "b", "c"], **KW)
    # deltas [-1, -1.1, -0.9]: mean -1, SE 0.0577, t(0.975, 2) 4.303 -> CI [-1.248, -0.752]
    assert lower.verdict.startswith("deep supervision lowers final mIoU by 1.0 [0.75, 1.2] points (paired over 3 seeds")
    assert lower.ci95[1] < 0  # the stored interval keeps its sign


def test_scale_turns_fractions_into_points():
    r = paired_comparison([(0, 0.60, 0.61), (1, 0.62, 0.64)], scale=100, **KW)
    assert r.deltas == pytest.approx((1.0, 2.0))
    assert r.baseline == pytest.approx((60.0, 62.0))


def test_single_seed_supports_no_claim():
    r = paired_comparison([(7, 60.0, 61.5)], **KW)
    assert (r.n, r.delta_mean, r.delta_sd, r.ci95, r.p_value) == (1, 1.5, None, None, None)
    assert "single seed" in r.verdict and "supports no claim" in r.verdict
    j = to_json(r)
    assert j["ci95"] is None and j["delta_sd"] is None and j["p_value"] is None


def test_identical_deltas_give_no_interval_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN / divide warning would fail the test
        # 0.1 + 0.5 etc. are not exact: the deltas differ by ~1e-16, which is rounding, not spread
        r = paired_comparison(baseline=[0.1, 0.2, 0.3], treated=[0.6, 0.7, 0.8], seeds=[0, 1, 2], **KW)
        same = paired_comparison(baseline=[1.0, 2.0], treated=[1.0, 2.0], seeds=[0, 1], **KW)
    assert r.delta_sd == 0.0 and r.ci95 is None and r.p_value is None
    assert r.verdict.startswith("deep supervision changes final mIoU by exactly +0.50 points on all 3 seeds")
    assert "no interval or p-value" in r.verdict
    assert same.delta_mean == 0.0 and "unchanged on all 2 seeds" in same.verdict


def test_mismatched_seeds_and_bad_values_rejected():
    with pytest.raises(ValueError, match="seeds do not match"):
        paired_comparison(baseline={0: 1.0, 1: 2.0}, treated={0: 1.5, 2: 2.5})
    with pytest.raises(ValueError, match="seeds do not match"):
        paired_comparison(baseline=[1.0, 2.0], treated=[1.0], seeds=[0, 1])
    with pytest.raises(ValueError, match="seeds"):
        paired_comparison(baseline=[1.0, 2.0], treated=[1.0, 3.0], seeds=[0])
    with pytest.raises(ValueError, match="seeds"):
        paired_comparison(baseline=[1.0, 2.0], treated=[1.0, 3.0])  # which seed is which?
    with pytest.raises(ValueError, match="twice"):
        paired_comparison([(0, 1.0, 2.0), (0, 1.5, 2.5)])
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison([(0, 1.0, 2.0), (1, float("nan"), 2.5)])
    with pytest.raises(ValueError, match="not a number"):
        paired_comparison([(0, 1.0, 2.0), (1, None, 2.5)])
    with pytest.raises(ValueError, match="no pairs"):
        paired_comparison([])
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([(0, 1.0, 2.0)], confidence=95)


def test_to_json_keys_and_serialisable():
    r = paired_comparison([(0, 60.0, 60.5), (1, 61.0, 62.0), (2, 59.0, 59.2)], **KW)
    j = to_json(r)
    assert list(j) == ["pairs", "delta_mean", "delta_sd", "ci95", "p_value", "n", "verdict"]
    assert j["pairs"][1] == {"seed": 1, "baseline": 61.0, "treated": 62.0}
    assert j["ci95"] == [r.ci95[0], r.ci95[1]]
    json.dumps(j, allow_nan=False)
    with pytest.raises(ValueError, match="ci95"):
        to_json(paired_comparison([(0, 1.0, 2.0), (1, 1.0, 2.5)], confidence=0.9))


def test_other_confidence_is_named_in_the_verdict():
    r90 = paired_comparison([(0, 1.0, 2.0), (1, 1.0, 2.5), (2, 1.0, 1.2)], confidence=0.9, **KW)
    r95 = paired_comparison([(0, 1.0, 2.0), (1, 1.0, 2.5), (2, 1.0, 1.2)], **KW)
    assert r90.ci95[1] - r90.ci95[0] < r95.ci95[1] - r95.ci95[0]
    assert "at 90% confidence" in r90.verdict and "confidence" not in r95.verdict


def test_all_pairwise_uses_shared_seeds():
    results = {
        "fcn": {0: 50.0, 1: 51.0, 2: 49.0},
        "cse": {0: 52.0, 1: 52.5, 2: 51.0},
        "sse": {2: 50.0, 3: 50.0},  # shares one seed with each -> skipped
    }
    out = all_pairwise(results, metric="final mIoU")
    assert len(out) == 1 and isinstance(out[0], PairedComparison)
    assert out[0].treatment == "cse instead of fcn" and out[0].seeds == (0, 1, 2)
    assert out[0].deltas == pytest.approx((2.0, 1.5, 2.0))
    assert len(all_pairwise(results, min_seeds=1)) == 3

"""The token-feature attention view on hand-built attention: saturated and flat, every channel on the axis,
no zero-weight channel listed, and the saturation notice exactly when it applies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import figures as F
from analysis.analyses.attention import (
    ATTENTION,
    SATURATED_SHARE,
    attention_entropy,
    channels_for_mass,
    saturation,
)
from analysis.analyses.base import ViewRequest
from analysis.maps import HeadMaps, ImageMaps, stage_names

K, C, H, W = 4, 10, 3, 5
NAMES = ("Sky", "Building", "Road", "Car")


def _maps(attention: np.ndarray, kind: str) -> ImageMaps:
    """One head with 2 blocks whose attention is ``attention`` [2, K, C'] (hand-built)."""
    rng = np.random.default_rng(0)
    hm = HeadMaps(
        stages=rng.random((4, K, H, W), dtype=np.float32),
        stage_names=stage_names(2),
        attention=attention.astype(np.float32),
        block_features=rng.random((2, C, H, W), dtype=np.float32),
        kind=kind,
    )
    image = np.zeros((H * 16, W * 16, 3), np.uint8)
    return ImageMaps(
        image=image,
        heads={kind: hm},
        pred={kind: np.zeros((H * 16, W * 16), np.uint8)},
        grid=(H, W),
        seconds=0.0,
        class_names=NAMES,
    )


def _saturated(cols: int) -> np.ndarray:
    a = np.zeros((2, K, cols))
    for b in range(2):
        for k in range(K):
            a[b, k, cols - 1 - k] = 1.0  # one feature channel each, the last ones
    return a


def _request(head: str, block: int = 2, classes: tuple[int, ...] = (0, 1)) -> ViewRequest:
    return ViewRequest(head=head, heads=(head,), class_ids=classes, block=block)


def test_entropy_mass_and_saturation_on_known_rows() -> None:
    a = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(attention_entropy(a), [0.0, math.log(4), math.log(2)])
    assert not np.signbit(attention_entropy(a)[0])  # a one-hot row reads 0, not -0
    assert channels_for_mass(a).tolist() == [1, 4, 2]
    assert channels_for_mass(a, mass=0.5).tolist() == [1, 2, 1]
    assert saturation(a) == (False, 1)
    assert saturation(np.eye(4)) == (True, 4)
    rows = np.vstack([np.eye(10)[:9], np.full((1, 10), 0.1)])  # 9 of 10 rows saturated: exactly the share
    assert SATURATED_SHARE == 0.9 and saturation(rows) == (True, 9)
    assert saturation(np.vstack([np.eye(10)[:8], np.full((2, 10), 0.1)])) == (False, 8)


def test_saturated_cse_view_says_so_and_lists_one_channel() -> None:
    view = ATTENTION.view(_maps(_saturated(C), "cse"), _request("cse"))
    assert any(n.startswith("Saturated attention: 4 of 4 classes") for n in view.notes)
    assert view.metrics["saturated"] is True and view.metrics["saturated_classes"] == 4
    tops = view.metrics["top_channels"]
    assert tops["Sky"]["channels"] == [C - 1] and tops["Sky"]["weights"] == pytest.approx([1.0])
    assert tops["Building"]["channels"] == [C - 2]
    assert tops["Sky"]["channels_for_99_percent"] == 1 and tops["Sky"]["entropy_nats"] == 0.0
    assert [row[1] for row in view.table] == [f"{C - 1} (1.000)", f"{C - 2} (1.000)"]
    heat = view.plot.data[0]
    assert heat.z.shape == (K, C) and list(heat.x) == list(range(C))  # every channel on the axis
    assert tuple(view.plot.layout.xaxis.range) == (-0.5, C - 0.5)
    assert heat.z.min() == pytest.approx(math.log10(F.LOG_WEIGHT_FLOOR))  # zeros at the floor, not NaN
    assert list(view.plot.data[1].x) == pytest.approx([0.0] * K)  # the entropy panel


def test_flat_attention_has_no_notice_and_lists_at_most_top_k() -> None:
    flat = np.full((2, K, C), 1.0 / C)
    view = ATTENTION.view(_maps(flat, "cse"), _request("cse"))
    assert not any("Saturated" in n for n in view.notes)
    assert view.metrics["saturated"] is False
    top = view.metrics["top_channels"]["Sky"]
    assert len(top["channels"]) == 6 and top["weights"] == pytest.approx([0.1] * 6)
    assert top["channels_for_99_percent"] == C and top["entropy_nats"] == pytest.approx(math.log(C), abs=1e-3)
    assert view.metrics["mean_entropy_nats"] == pytest.approx(math.log(C), abs=1e-3)


def test_sse_axis_holds_token_and_feature_columns_and_skips_zero_weights() -> None:
    a = np.zeros((2, K, K + C))
    a[:, :, 0] = 0.6  # token channel of Sky
    a[:, :, K + 3] = 0.4  # feature channel 3; every other channel has weight 0
    view = ATTENTION.view(_maps(a, "sse"), _request("sse", block=1))
    heat = view.plot.data[0]
    assert heat.z.shape == (K, K + C)
    assert heat.customdata[0, 0, 1] == "token: Sky" and heat.customdata[0, K, 1] == "feature channel 0"
    assert view.metrics["top_channels"]["Sky"]["channels"] == [3]  # no zero-weight padding
    assert view.metrics["top_channels"]["Sky"]["token_share_percent"] == pytest.approx(60.0)
    assert view.table_headers[-1] == "attention on token channels %"
    assert "11 token" not in view.plot.layout.title.text and f"{K} token + {C} feature" in view.plot.layout.title.text


def test_all_weight_on_tokens_lists_no_channel_and_draws_no_maps() -> None:
    a = np.zeros((2, K, K + C))
    a[:, :, 1] = 1.0
    view = ATTENTION.view(_maps(a, "sse"), _request("sse"))
    assert view.metrics["top_channels"]["Sky"]["channels"] == []
    assert any("no feature channel above weight" in n for n in view.notes)
    # the heatmap is drawn (the analysis's point), without channel maps: heatmap, entropy, colour bar only
    assert view.figure is not None and len(view.figure.axes) == 3
    assert view.table[0][1] == "none (weight on tokens)"

"""Attention saturation: the block's own pre-softmax scores, their statistics, and their growth with input size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_config

from analysis.saturation import attention_saturation, block_scores, saturation_figure, score_statistics
from structtoken.segmentor import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_statistics_known_answers():
    s = torch.tensor([[3.0, 1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    st = score_statistics(s)
    sd_row0 = float(torch.tensor([3.0, 1.0, 1.0, -1.0]).std())  # 1.633 (n - 1)
    assert st["score_sd"] == pytest.approx(sd_row0 / 2)
    assert st["top_gap"] == pytest.approx((2.0 + 0.0) / 2)
    p = torch.tensor([3.0, 1.0, 1.0, -1.0]).softmax(0)
    h0 = float(-(p * p.log()).sum())
    assert st["entropy_nats"] == pytest.approx((h0 + math.log(4)) / 2)
    assert st["max_entropy_nats"] == pytest.approx(math.log(4))


@pytest.mark.parametrize("head", ["cse", "sse"])
def test_block_scores_are_what_the_block_takes_the_softmax_of(head):
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x = torch.randn(1, 3, 64, 96)
    scores = block_scores(model, x, head, 2)
    with torch.no_grad():
        attn = model(x, heads=[head]).heads[head].blocks[1].attention[0]
    torch.testing.assert_close(scores.softmax(1), attn, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no channel attention"):
        block_scores(model, x, "pwe", 1)


def test_spread_grows_with_the_input_size_and_entropy_falls():
    """Spatially coherent maps (a smooth image): the 1/sqrt(hw) scaling lets the score spread grow with the grid."""
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    yy, xx = np.mgrid[0:96, 0:128]
    image = np.stack([(xx * 2) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    rows = attention_saturation(model, image, "cse", 1, scales=(0.5, 1.0, 2.0))
    assert [r["cells"] for r in rows] == [3 * 4, 6 * 8, 12 * 16]
    sds = [r["score_sd"] for r in rows]
    assert sds[0] < sds[1] < sds[2]
    assert rows[-1]["entropy_nats"] < rows[0]["entropy_nats"]
    fig = saturation_figure(rows, "tiny")
    assert len(fig.axes) == 2


def test_the_attention_view_says_why_it_saturates_with_this_images_numbers(tmp_path):
    from analysis.service import SATURATION_SCALES, AnalysisRequest, Explorer
    from structtoken import save_model

    torch.manual_seed(0)
    path = save_model(build_model(tiny_config()).eval(), tmp_path / "tiny.safetensors")
    image = np.stack(np.mgrid[0:96, 0:128], -1).sum(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
    ex = Explorer()
    res = ex.analyze(AnalysisRequest(image, model=str(path), analysis="attention", head="cse", block=1))
    rows = res.metrics["saturation"]
    assert [r["scale"] for r in rows] == list(SATURATION_SCALES)
    from structtoken import load_model

    want = attention_saturation(load_model(path).eval(), image, "cse", 1, SATURATION_SCALES)
    for got, ref in zip(rows, want, strict=True):
        assert got["cells"] == ref["cells"]
        assert got["score_sd"] == pytest.approx(ref["score_sd"], rel=1e-3)
    assert "Why the attention saturates" in res.summary and "sqrt(h·w)" in res.summary

"""Why CSE / SSE attention saturates: the spread of its scores grows with the input size, by design.

The official channel attention scales ``q k^T`` by ``1 / sqrt(h w)`` (the number of grid cells), not by the
channel count: each entry of ``q k^T`` sums ``h w`` products of spatially coherent channel maps, so it grows
like ``h w`` and the scaled score like ``sqrt(h w)``. Doubling the image side doubles the spread of the scores;
the softmax over channels then approaches one-hot (entropy near 0 nats). :func:`attention_saturation` measures
it for one image at several input sizes: per size, the score SD within a class row, the top-1 minus top-2 score
gap and the softmax entropy, each averaged over the K class rows (from the block's own scores, recomputed before
the softmax: :meth:`structtoken.layers.ChannelAttention.scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from structtoken.segmentor import Segmentor

from .roles import ATTENTION_KINDS, head_kind

DEFAULT_SCALES = (0.5, 1.0, 2.0)
"""Input sizes measured, as multiples of the image's own size."""


def block_scores(model: Segmentor, x: torch.Tensor, head: str, block: int) -> torch.Tensor:
    """The pre-softmax attention scores of block ``block`` (1-based) of head ``head`` for the preprocessed image
    ``x`` [1, 3, H, W]: ``[K, C']`` class rows (CSE: C' = C feature channels; SSE: the token rows over K + C)."""
    kind = head_kind(head)
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"{head} has no channel attention (only {', '.join(ATTENTION_KINDS)} heads do)")
    h = model.heads[head]
    if not 1 <= block <= len(h.blocks):
        raise ValueError(f"block {block} out of range 1..{len(h.blocks)}")
    with torch.no_grad():
        out = model(x, heads=[head]).heads[head]
        tokens = out.tokens_init if block == 1 else out.blocks[block - 2].tokens
        feats = out.features_init if block == 1 else out.blocks[block - 2].features
        attn = h.blocks[block - 1].attn
        if kind == "sse":
            k = tokens.shape[1]
            both = torch.cat((tokens, feats), dim=1)
            return attn.scores(both, both)[0, :k].float()
        return attn.scores(tokens, feats)[0].float()


def score_statistics(scores: torch.Tensor) -> dict[str, float]:
    """scores ``[K, C']`` -> mean over the K rows of the score SD, the top-1 minus top-2 gap and the softmax
    entropy (nats; 0 = one-hot, log C' = uniform)."""
    s = scores.double()
    top = s.topk(2, dim=1).values
    logp = s.log_softmax(dim=1)
    entropy = -(logp.exp() * logp).sum(1)
    return {
        "score_sd": float(s.std(dim=1).mean()),
        "top_gap": float((top[:, 0] - top[:, 1]).mean()),
        "entropy_nats": float(entropy.mean()),
        "max_entropy_nats": math.log(s.shape[1]),
    }


def attention_saturation(
    model: Segmentor, image: np.ndarray, head: str, block: int = 1, scales: Sequence[float] = DEFAULT_SCALES
) -> list[dict[str, Any]]:
    """For ``image`` (uint8 [H, W, 3]) resized by each of ``scales``: ``{"scale", "size" (H, W), "cells" (h*w
    grid cells), "score_sd", "top_gap", "entropy_nats", "max_entropy_nats"}`` of block ``block`` of ``head``."""
    rows = []
    h0, w0 = image.shape[:2]
    for s in scales:
        size = (max(16, round(h0 * s)), max(16, round(w0 * s)))
        im = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        x = model.preprocess(im, scale=None)
        scores = block_scores(model, x, head, block)
        gh, gw = math.ceil(x.shape[-2] / 16), math.ceil(x.shape[-1] / 16)
        rows.append({"scale": float(s), "size": size, "cells": gh * gw, **score_statistics(scores)})
    return rows


def saturation_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """One sentence for the page: the measured spread and entropy against the input size, and why."""
    parts = ", ".join(f"SD {r['score_sd']:.1f} / gap {r['top_gap']:.1f} at {r['cells']} cells" for r in rows)
    ent = " / ".join(f"{r['entropy_nats']:.2f}" for r in rows)
    sizes = " / ".join(f"{r['scale']:g}x" for r in rows)
    return (
        f"Why the attention saturates: the official scaling divides q·k by sqrt(h·w), the number of grid cells, "
        f"over spatially coherent channel maps, so the spread of the scores grows like sqrt(h·w) with the input "
        f"size. Measured for this image at {sizes} its size: {parts} "
        f"(score SD within a class row, top-1 minus top-2); softmax entropy {ent} nats "
        f"(uniform: {rows[0]['max_entropy_nats']:.2f}). It is the design, not a bug."
    )


def saturation_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
    """Two small panels against the number of grid cells (log axis): score SD and top-1 minus top-2 gap, with
    the sqrt(cells) growth the 1/sqrt(hw) scaling predicts from the smallest size; softmax entropy (nats)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cells = np.array([r["cells"] for r in rows], float)
    fig = Figure(figsize=(7.2, 2.6), layout="constrained")
    a, b = fig.subplots(1, 2)
    for key, label, marker in (("score_sd", "score SD", "o"), ("top_gap", "top-1 minus top-2", "s")):
        v = np.array([r[key] for r in rows], float)
        a.plot(cells, v, marker=marker, label=label)
        a.plot(cells, v[0] * np.sqrt(cells / cells[0]), ls=":", color="0.5")
    a.set_xscale("log")
    a.set_xlabel("grid cells h·w")
    a.set_ylabel("attention score")
    a.legend(fontsize=8, frameon=False)
    a.set_title("spread grows like sqrt(h·w) (dotted)", fontsize=9)
    b.plot(cells, [r["entropy_nats"] for r in rows], marker="o", color="C2")
    b.axhline(rows[0]["max_entropy_nats"], ls=":", color="0.5")
    b.set_xscale("log")
    b.set_ylim(bottom=0)
    b.set_xlabel("grid cells h·w")
    b.set_ylabel("softmax entropy (nats)")
    b.set_title("dotted: uniform over channels", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

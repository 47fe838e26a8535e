"""Class x channel attention of one block of a CSE / SSE head, and the feature maps a class reads most.

The attention is a softmax over channels of scores that sum over every grid cell (scaled by
1/sqrt(h*w) only), so trained heads often saturate it: each class puts all its weight on one channel.
The view therefore shows log weights (pre-softmax scores up to a per-row constant) and each class's
entropy beside the weights, says when the attention is saturated, and lists only channels that carry
weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from structtoken.config import ModelConfig

from .. import figures as F
from ..labels import head_label
from ..maps import ImageMaps, top_channels, upsample_maps
from ..roles import attention_heads
from ..values import rounded
from .base import Analysis, View, ViewRequest, what_set

TOP_K = 6
"""At most this many feature channels listed per class."""
MIN_WEIGHT = 1e-3
"""Channels below this weight are not listed (a saturated row lists one channel, not zeros)."""
MASS = 0.99
"""The table says how many channels carry this share of a class's weight."""
SATURATED_WEIGHT = 0.99
"""A class row is saturated when its largest weight is at least this (the softmax acts as an argmax)."""
SATURATED_SHARE = 0.9
"""The block's attention is called saturated when at least this share of the class rows is."""
MAX_ROWS = 32
"""Sets with more classes show only the selected classes' rows in the heatmap."""
CHANNEL_SIDE = 240
"""Long side of the channel maps' thumbnails."""


def attention_entropy(attn: np.ndarray) -> np.ndarray:
    """``[R]`` softmax entropy in nats of each row of ``attn`` ``[R, C]`` (0 = one-hot, ln C = uniform)."""
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"attention must be [R, C], got shape {a.shape}")
    logs = np.log(np.where(a > 0, a, 1.0))
    return -(a * logs).sum(axis=1) + 0.0  # + 0.0: a one-hot row is 0, not -0


def channels_for_mass(attn: np.ndarray, mass: float = MASS) -> np.ndarray:
    """``[R]`` the fewest channels of each row of ``attn`` ``[R, C]`` whose weights sum to >= ``mass``."""
    a = np.sort(np.asarray(attn, dtype=np.float64), axis=1)[:, ::-1]
    total = a.sum(axis=1, keepdims=True)
    cum = np.cumsum(a, axis=1) / np.where(total > 0, total, 1.0)
    return np.minimum((cum < mass - 1e-12).sum(axis=1) + 1, a.shape[1])


def saturation(attn: np.ndarray) -> tuple[bool, int]:
    """(whether the block is saturated, how many of the R rows of ``attn`` ``[R, C]`` are).

    A row is saturated when its largest weight is >= :data:`SATURATED_WEIGHT`; the block is when at
    least :data:`SATURATED_SHARE` of its rows are.
    """
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"attention must be [R, C] with R >= 1, got shape {a.shape}")
    n = int((a.max(axis=1) >= SATURATED_WEIGHT).sum())
    return n >= SATURATED_SHARE * a.shape[0], n


def saturation_notice(attn: np.ndarray, entropy: np.ndarray) -> str | None:
    """The one-line notice for a saturated block ``attn`` ``[K, C']`` (``entropy`` ``[K]``), else None."""
    saturated, n = saturation(attn)
    if not saturated:
        return None
    k, c = attn.shape
    return (
        f"Saturated attention: {n} of {k} classes put at least {SATURATED_WEIGHT:g} of their weight on a "
        f"single channel (mean entropy {float(np.mean(entropy)):.3g} nats; a uniform row has ln {c} = "
        f"{np.log(c):.2f}). The softmax acts as a hard choice of one channel per class, so a map of the "
        "weights would be one dot per row; the heatmap shows log10 weights, i.e. how far below the chosen "
        "channel the others score."
    )


class Attention(Analysis):
    """Which feature channels each class token reads in one block (CSE and SSE heads have the attention)."""

    name = "attention"
    title = "Class × channel attention"
    label = "Token–feature attention"

    def supported(self, cfg: ModelConfig) -> str | None:
        if attention_heads(cfg.heads):
            return None
        return (
            f"{what_set(cfg)} has no CSE or SSE head: class x channel attention exists only in those "
            "(PWE mixes channels with a 1x1 convolution, the per-pixel baseline has none)"
        )

    def head_choices(self, cfg: ModelConfig) -> list[str]:
        return attention_heads(cfg.heads)

    def refusal(self, cfg: ModelConfig, head: str, choices: list[str]) -> str:
        return f"head {head!r} has no class x channel attention; choose one of {', '.join(choices)}"

    def block_choices(self, num_blocks: int) -> list[tuple[str, int | None]]:
        return [("last block", None), *((f"block {i}", i) for i in range(1, num_blocks + 1))]

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        """The attention of block ``request.block`` (default: the last) and the feature maps (entering
        that block) of the channels the first selected class draws on most."""
        head, class_ids, k = request.head, list(request.class_ids), TOP_K
        hm = maps.heads[head]
        if hm.attention is None:
            raise ValueError(f"{head} has no class x channel attention (only CSE and SSE heads do)")
        n = hm.num_blocks
        b = n if request.block is None else int(request.block)
        if not 1 <= b <= n:
            raise ValueError(f"block {b} does not exist: {head} has blocks 1..{n}")
        names = list(maps.class_names)
        num_classes = hm.stages.shape[1]
        attn = hm.attention[b - 1]  # [K, C'], SSE: K token columns first
        offset = num_classes if hm.kind == "sse" else 0
        rows_ids = list(range(num_classes)) if num_classes <= MAX_ROWS else class_ids
        entropy = attention_entropy(attn)  # [K] nats
        mass_n = channels_for_mass(attn)  # [K]
        saturated, n_saturated = saturation(attn)
        title = f"{head_label(head)}, block {b}: class × channel attention ({attn.shape[1]} channels"
        title += f": {offset} token + {attn.shape[1] - offset} feature)" if offset else ")"
        plot = (
            F.attention_plotly(
                attn[rows_ids],
                [names[i] for i in rows_ids],
                title=title,
                token_columns=names[:offset],
                entropy=entropy[rows_ids],
            )
            if request.interactive
            else None
        )
        table = []
        tops: dict[str, Any] = {}
        for c in class_ids:
            ids, weights = top_channels(attn, c, k, feature_offset=offset, min_weight=MIN_WEIGHT)
            row_sum = float(np.abs(attn[c]).sum())
            token_share = float(np.abs(attn[c, :offset]).sum()) / row_sum * 100.0 if offset and row_sum > 0 else None
            channels = ", ".join(f"{i} ({wt:.3f})" for i, wt in zip(ids, weights)) or "none (weight on tokens)"
            row = [names[c], channels, int(mass_n[c]), rounded(float(entropy[c]), 3)]
            table.append([*row, rounded(token_share)] if offset else row)
            tops[names[c]] = {
                "channels": ids,
                "weights": weights,
                "channels_for_99_percent": int(mass_n[c]),
                "entropy_nats": rounded(float(entropy[c]), 4),
                "token_share_percent": rounded(token_share, 3),
            }
        notes = []
        notice = saturation_notice(attn, entropy)
        if notice:
            notes.append(notice)
        channels = None
        if hm.block_features is not None and class_ids:
            c0 = class_ids[0]
            ids, weights = top_channels(attn, c0, k, feature_offset=offset, min_weight=MIN_WEIGHT)
            if ids:
                h, w = maps.image.shape[:2]
                f = min(1.0, CHANNEL_SIDE / max(h, w))
                size = (max(1, round(h * f)), max(1, round(w * f)))
                channels = (
                    F.resize_rgb(maps.image, size),
                    upsample_maps(hm.block_features[b - 1][ids], size),
                    ids,
                    weights,
                    names[c0],
                )
            else:
                notes.append(f"'{names[c0]}' puts no feature channel above weight {MIN_WEIGHT:g}: no channel maps.")
            if len(class_ids) > 1:
                notes.append(
                    f"The channel maps are those of '{names[c0]}', the first selected class; the table lists "
                    "the channels of every selected class."
                )
        figure = F.attention_figure(
            attn[rows_ids],
            [names[i] for i in rows_ids],
            title=title + f"; features entering the block, weight >= {MIN_WEIGHT:g}",
            token_columns=names[:offset],
            entropy=entropy[rows_ids],
            channels=channels,
        )
        headers = [
            "class",
            f"feature channels with weight >= {MIN_WEIGHT:g} (at most {k})",
            f"channels for {MASS:.0%} of weight",
            "entropy (nats)",
        ]
        if offset:
            headers.append("attention on token channels %")
        return View(
            figure=figure,
            plot=plot,
            table=table,
            table_headers=headers,
            notes=notes,
            metrics={
                "attention_block": b,
                "top_channels": tops,
                "saturated": saturated,
                "saturated_classes": n_saturated,
                "mean_entropy_nats": rounded(float(entropy.mean()), 4),
                "max_entropy_nats": rounded(float(np.log(attn.shape[1])), 4),
            },
            arrays={f"{head}/attention_block{b}": attn},
        )

    def describe(self, view: View, request: ViewRequest) -> str:
        return (
            f"How much each class (row) of {head_label(request.head)} draws on each channel in that block "
            "(log10 of the softmax weight, every channel), each class's softmax entropy, and the feature "
            "maps of the channels the first selected class draws on."
        )


ATTENTION = Attention()

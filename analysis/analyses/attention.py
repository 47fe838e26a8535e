"""Class x channel attention of one block of a CSE / SSE head, and the feature maps a class reads most."""

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
"""Feature channels listed per class."""
MAX_ROWS = 32
"""Sets with more classes show only the selected classes' rows in the heatmap."""
CHANNEL_SIDE = 240
"""Long side of the channel maps' thumbnails."""


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
        title = f"{head_label(head)}, block {b}: class × feature-channel attention"
        if offset:
            title += " (feature columns; token columns left out)"
        plot = F.attention_plotly(attn[:, offset:][rows_ids], [names[i] for i in rows_ids], title=title)
        table = []
        tops: dict[str, Any] = {}
        for c in class_ids:
            ids, weights = top_channels(attn, c, k, feature_offset=offset)
            row_sum = float(np.abs(attn[c]).sum())
            token_share = float(np.abs(attn[c, :offset]).sum()) / row_sum * 100.0 if offset and row_sum > 0 else None
            channels = ", ".join(f"{i} ({wt:.3f})" for i, wt in zip(ids, weights))
            table.append([names[c], channels, rounded(token_share)] if offset else [names[c], channels])
            tops[names[c]] = {"channels": ids, "weights": weights, "token_share_percent": rounded(token_share, 3)}
        figure = None
        notes = []
        if hm.block_features is not None and class_ids:
            c0 = class_ids[0]
            ids, weights = top_channels(attn, c0, k, feature_offset=offset)
            h, w = maps.image.shape[:2]
            f = min(1.0, CHANNEL_SIDE / max(h, w))
            size = (max(1, round(h * f)), max(1, round(w * f)))
            figure = F.channel_maps_figure(
                F.resize_rgb(maps.image, size),
                upsample_maps(hm.block_features[b - 1][ids], size),
                ids,
                weights,
                names[c0],
                title=f"{head_label(head)}, block {b}: feature channels '{names[c0]}' draws on most "
                "(features entering the block)",
            )
            if len(class_ids) > 1:
                notes.append(
                    f"The channel maps are those of '{names[c0]}', the first selected class; the table lists "
                    "the top channels of every selected class."
                )
        headers = ["class", f"top {k} feature channels (weight)"]
        if offset:
            headers.append("attention on token channels %")
        return View(
            figure=figure,
            plot=plot,
            table=table,
            table_headers=headers,
            notes=notes,
            metrics={"attention_block": b, "top_channels": tops},
            arrays={f"{head}/attention_block{b}": attn},
        )

    def describe(self, view: View, request: ViewRequest) -> str:
        return (
            f"How much each class (row) of {head_label(request.head)} draws on each feature channel in "
            "that block, and the feature maps of the channels the first selected class uses most."
        )


ATTENTION = Attention()

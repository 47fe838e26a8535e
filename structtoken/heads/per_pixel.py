"""The per-pixel baseline of the StructToken paper (Lin et al., arXiv 2203.12612, Fig. 3 / Sec. 4.4).

features [B, C, h, w] -> 1x1 conv C->K -> N pre-activation residual blocks (K->K, as the official
``residual_block``) -> 1x1 conv K->K. Every residual block's output is a K-channel class map; with
deep supervision each one is also returned as class logits for a loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import PreActResidualBlock
from .base import BlockMaps, Head, HeadOutput


class PerPixelHead(Head):
    """Per-pixel baseline. features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w].

    Stages are K-channel class maps (``stage_field = "tokens"``). Readouts: ``raw`` = the maps
    (with deep supervision these are what the auxiliary losses score); ``head`` = the final 1x1
    ``classifier`` applied to them.
    """

    def __init__(self, in_channels: int, num_classes: int, num_blocks: int = 4, deep_supervision: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.proj = nn.Conv2d(in_channels, num_classes, 1)
        self.blocks = nn.ModuleList(PreActResidualBlock(num_classes) for _ in range(num_blocks))
        self.classifier = nn.Conv2d(num_classes, num_classes, 1)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        x = self.proj(features)
        tokens_init = x
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(BlockMaps(tokens=x))
        aux = tuple(m.tokens for m in maps) if self.deep_supervision else ()
        return HeadOutput(logits=self.classifier(x), tokens_init=tokens_init, blocks=tuple(maps), aux_logits=aux)

    head_readout_text = "the final 1x1 classifier applied to the stage's K-channel map"
    fitted_input_text = "the K-channel map a stage hands to the next residual block"

    def raw_unavailable(self) -> str | None:
        """Without deep supervision nothing ties channel k of a block's map to class k: the final 1x1
        ``classifier`` is a dense K x K mix. With it, every block's map is trained as class logits."""
        if self.deep_supervision:
            return None
        return (
            "its block maps are not class maps by construction: the final 1x1 classifier mixes all K channels, "
            "so channel k need not be class k (use the head or fitted readout)"
        )

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """``classifier(maps)`` for stages 0 .. N ([B, K, h, w]); identity at the output stage."""
        if self.check_stage(stage, out) == out.num_stages - 1:
            return maps
        return self.classifier(maps)

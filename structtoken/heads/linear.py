"""A light linear head (LayerNorm over channels + 1x1 conv), used to pre-train a backbone.

It is deliberately none of the heads the project compares, so a backbone trained with it favours
neither StructToken nor the per-pixel baseline. It has no blocks: its two stages (input, output)
are both the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelLayerNorm
from .base import Head, HeadOutput


class LinearHead(Head):
    """features [B, C, h, w] -> LN -> 1x1 conv -> logits [B, K, h, w]."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = ChannelLayerNorm(in_channels, eps=1e-6)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        logits = self.classifier(self.norm(features))
        return HeadOutput(logits=logits, tokens_init=logits, blocks=())

    head_readout_text = "the identity (both stages are the logits)"
    fitted_input_text = "the logits"

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """Identity: both stages already are the logits [B, K, h, w]."""
        self.check_stage(stage, out)
        return maps

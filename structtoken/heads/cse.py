"""StructToken CSE block: cross-slice extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Structure tokens query the feature channels through channel-wise cross attention; an FFN
refines the tokens and, in every block but the last, another FFN refines the features.
Reproduces a layer of the official ``CrossSliceExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelAttention, GroupConvBlock


class CSEBlock(nn.Module):
    """tokens [B, K, h, w], features [B, C, h, w] -> tokens, features, attention [B, K, C]."""

    def __init__(self, channels: int, num_classes: int, mlp_ratio: int, drop_path: float, last: bool) -> None:
        super().__init__()
        self.attn = ChannelAttention(num_classes, channels, drop_path)
        self.ffn_tokens = GroupConvBlock(num_classes, mlp_ratio, drop_path)
        self.ffn_features = None if last else GroupConvBlock(channels, mlp_ratio, drop_path)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, attn = self.attn(tokens, features, features)
        tokens = self.ffn_tokens(tokens)
        if self.ffn_features is not None:
            features = self.ffn_features(features)
        return tokens, features, attn

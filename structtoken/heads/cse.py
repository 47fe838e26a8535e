"""StructToken CSE head: cross-slice extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Structure tokens query the feature channels through channel-wise cross attention; an FFN
refines the tokens and, in every block but the last, another FFN refines the features.
Reproduces the official ``CrossSliceExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelAttention, GroupConvBlock, drop_path_rates
from .base import BlockMaps, StructTokenHead


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


class CSEHead(StructTokenHead):
    """CSE head. features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w]."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        token_grid: tuple[int, int],
        num_blocks: int = 4,
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__(in_channels, num_classes, token_grid)
        dpr = drop_path_rates(drop_path_rate, num_blocks)
        self.blocks = nn.ModuleList(
            CSEBlock(in_channels, num_classes, mlp_ratio, dpr[i], last=i == num_blocks - 1) for i in range(num_blocks)
        )

    def run_block(self, block: nn.Module, tokens: torch.Tensor, features: torch.Tensor) -> BlockMaps:
        tokens, features, attn = block(tokens, features)
        return BlockMaps(tokens=tokens, features=features, attention=attn)

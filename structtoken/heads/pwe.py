"""StructToken PWE head: point-wise extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Like SSE, but the self attention over the concatenated token and feature channels is replaced by
a 1x1 convolution. Reproduces the official ``PointWiseExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import GroupConvBlock, PointWiseAttention, drop_path_rates
from .base import BlockMaps, StructTokenHead


class PWEBlock(nn.Module):
    """x = [tokens; features] [B, K+C, h, w] -> point-wise mixing -> FFN -> split back."""

    def __init__(self, channels: int, num_classes: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.attn = PointWiseAttention(num_classes + channels, drop_path)
        self.ffn = GroupConvBlock(num_classes + channels, mlp_ratio, drop_path)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = tokens.shape[1]
        x = self.ffn(self.attn(torch.cat((tokens, features), dim=1)))
        return x[:, :k], x[:, k:]


class PWEHead(StructTokenHead):
    """PWE head. features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w]."""

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
        self.blocks = nn.ModuleList(PWEBlock(in_channels, num_classes, mlp_ratio, dpr[i]) for i in range(num_blocks))

    def run_block(self, block: nn.Module, tokens: torch.Tensor, features: torch.Tensor) -> BlockMaps:
        tokens, features = block(tokens, features)
        return BlockMaps(tokens=tokens, features=features)

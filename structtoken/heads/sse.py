"""StructToken SSE head: self-slice extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Tokens and features are concatenated along the channel axis (tokens first) and refined together
by channel-wise self attention and an FFN. Reproduces the official
``SelfSliceExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelAttention, GroupConvBlock, drop_path_rates
from .base import BlockMaps, StructTokenHead


class SSEBlock(nn.Module):
    """x = [tokens; features] [B, K+C, h, w] -> self attention -> FFN -> split back."""

    def __init__(self, channels: int, num_classes: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.attn = ChannelAttention(num_classes + channels, num_classes + channels, drop_path)
        self.ffn = GroupConvBlock(num_classes + channels, mlp_ratio, drop_path)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = tokens.shape[1]
        x = torch.cat((tokens, features), dim=1)
        x, attn = self.attn(x, x, x)
        x = self.ffn(x)
        return x[:, :k], x[:, k:], attn[:, :k]  # token rows of the attention: [B, K, K+C]


class SSEHead(StructTokenHead):
    """SSE head. features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w]."""

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
        self.blocks = nn.ModuleList(SSEBlock(in_channels, num_classes, mlp_ratio, dpr[i]) for i in range(num_blocks))

    def run_block(self, block: nn.Module, tokens: torch.Tensor, features: torch.Tensor) -> BlockMaps:
        tokens, features, attn = block(tokens, features)
        return BlockMaps(tokens=tokens, features=features, attention=attn)

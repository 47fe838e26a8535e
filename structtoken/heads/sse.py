"""StructToken SSE block: self-slice extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Tokens and features are concatenated along the channel axis (tokens first) and refined together
by channel-wise self attention and an FFN. Reproduces a layer of the official
``SelfSliceExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelAttention, GroupConvBlock


class SSEBlock(nn.Module):
    """x = [tokens; features] [B, K+C, h, w] -> self attention -> FFN -> split back; attention [B, K, K+C]."""

    def __init__(self, channels: int, num_classes: int, mlp_ratio: int, drop_path: float, last: bool = False) -> None:
        super().__init__()
        self.attn = ChannelAttention(num_classes + channels, num_classes + channels, drop_path)
        self.ffn = GroupConvBlock(num_classes + channels, mlp_ratio, drop_path)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = tokens.shape[1]
        x = torch.cat((tokens, features), dim=1)
        x, attn = self.attn(x, x, x)
        x = self.ffn(x)
        return x[:, :k], x[:, k:], attn[:, :k]  # token rows of the attention: [B, K, K+C]

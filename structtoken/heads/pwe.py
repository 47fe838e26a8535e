"""StructToken PWE block: point-wise extraction (Lin et al., arXiv 2203.12612, Sec. 3.2).

Like SSE, but the self attention over the concatenated token and feature channels is replaced by
a 1x1 convolution, so the block has no attention map. Reproduces a layer of the official
``PointWiseExtracStructTokenHead``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import GroupConvBlock, PointWiseAttention


class PWEBlock(nn.Module):
    """x = [tokens; features] [B, K+C, h, w] -> point-wise mixing -> FFN -> split back; attention None."""

    def __init__(self, channels: int, num_classes: int, mlp_ratio: int, drop_path: float, last: bool = False) -> None:
        super().__init__()
        self.attn = PointWiseAttention(num_classes + channels, drop_path)
        self.ffn = GroupConvBlock(num_classes + channels, mlp_ratio, drop_path)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        k = tokens.shape[1]
        x = self.ffn(self.attn(torch.cat((tokens, features), dim=1)))
        return x[:, :k], x[:, k:], None

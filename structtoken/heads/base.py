"""The head contract: features in, logits and per-block maps out.

Every head maps a backbone feature map [B, C, h, w] to a :class:`HeadOutput` that carries the
K-channel class map entering the first block, the maps after every block and the final logits, so
analysis code never needs forward hooks to see inside a head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import PreActResidualBlock


@dataclass(frozen=True)
class BlockMaps:
    """What one block of a head produced.

    Attributes:
        tokens: [B, K, h, w] class maps after the block (structure tokens for StructToken heads,
            the residual block's K-channel output for the per-pixel baseline).
        features: [B, C, h, w] feature maps after the block (StructToken heads), else None.
        attention: class x channel attention [B, K, C'] of the block, else None. CSE: C' = C feature
            channels. SSE: the token rows of the self attention over the concatenated maps,
            C' = K + C (columns 0..K-1 are token channels, K.. are feature channels).
    """

    tokens: torch.Tensor
    features: torch.Tensor | None = None
    attention: torch.Tensor | None = None


@dataclass(frozen=True)
class HeadOutput:
    """Output of a head.

    Attributes:
        logits: [B, K, h, w] class scores on the feature grid (before upsampling).
        tokens_init: [B, K, h, w] class maps entering block 0 (the structure tokens after resize and
            batch expansion, or the per-pixel baseline's 1x1-conv projection).
        blocks: one :class:`BlockMaps` per block, in order.
        aux_logits: per-block class logits used for deep supervision ([B, K, h, w] each); empty
            unless the head was built with deep supervision.
        features_init: [B, C, h, w] feature maps entering block 0 (after the head's 1x1 projection)
            for StructToken heads, else None.
    """

    logits: torch.Tensor
    tokens_init: torch.Tensor
    blocks: tuple[BlockMaps, ...]
    aux_logits: tuple[torch.Tensor, ...] = ()
    features_init: torch.Tensor | None = None


def resize_tokens(tokens: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Resize learned tokens [1, K, H0, W0] to the feature grid ``size`` (bicubic, no antialias)."""
    if tuple(tokens.shape[-2:]) == tuple(size):
        return tokens
    return F.interpolate(tokens, size=size, mode="bicubic", align_corners=align_corners)


class StructTokenHead(nn.Module):
    """Shared skeleton of the three StructToken heads.

    features [B, C, h, w] -> 1x1 ``proj`` -> blocks interact with the learned tokens
    ``tokens`` [1, K, H/16, W/16] (resized to (h, w) when the grid differs) -> pre-activation
    residual block -> logits [B, K, h, w]. Subclasses build ``self.blocks`` and implement
    :meth:`run_block`.
    """

    def __init__(self, in_channels: int, num_classes: int, token_grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.token_grid = tuple(token_grid)
        # The official code aligns corners when the *configured* grid has an odd side.
        self.align_corners = token_grid[0] % 2 != 0 or token_grid[1] % 2 != 0
        self.proj = nn.Conv2d(in_channels, in_channels, 1)
        self.tokens = nn.Parameter(torch.zeros(1, num_classes, *token_grid))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.residual = PreActResidualBlock(num_classes)
        self.blocks = nn.ModuleList()

    def run_block(
        self, block: nn.Module, tokens: torch.Tensor, features: torch.Tensor
    ) -> BlockMaps:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> HeadOutput:
        b, _, h, w = features.shape
        feats = self.proj(features)
        tokens = resize_tokens(self.tokens, (h, w), self.align_corners).expand(b, -1, -1, -1)
        tokens_init, features_init = tokens, feats
        maps = []
        for block in self.blocks:
            out = self.run_block(block, tokens, feats)
            maps.append(out)
            tokens, feats = out.tokens, out.features
        return HeadOutput(
            logits=self.residual(tokens),
            tokens_init=tokens_init,
            blocks=tuple(maps),
            features_init=features_init,
        )

"""The StructToken head (Lin et al., "StructToken: Rethinking Semantic Segmentation with Structural
Prior", arXiv 2203.12612, Sec. 3): one skeleton for every variant, the block kind a parameter.

features [B, C, h, w] -> 1x1 ``proj`` -> N blocks in which the learned structure tokens ``tokens``
[1, K, H/16, W/16] (resized to (h, w) when the grid differs) interact with the features ->
pre-activation residual block ``residual`` -> logits [B, K, h, w]. Reproduces the official
``*StructTokenHead`` modules; the variants differ only in their block (``cse.py``, ``sse.py``,
``pwe.py``), so a new variant is one block class and one line in :data:`STRUCTTOKEN_BLOCKS`.

A block is built as ``Block(channels, num_classes, mlp_ratio, drop_path, last)`` and called as
``block(tokens [B, K, h, w], features [B, C, h, w]) -> (tokens, features, attention | None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import PreActResidualBlock, drop_path_rates
from .base import BlockMaps, Head, HeadOutput, resize_tokens
from .cse import CSEBlock
from .pwe import PWEBlock
from .sse import SSEBlock

STRUCTTOKEN_BLOCKS: dict[str, type[nn.Module]] = {
    "cse": CSEBlock,
    "sse": SSEBlock,
    "pwe": PWEBlock,
}
"""StructToken variant -> its block class."""


class StructTokenHead(Head):
    """StructToken head of variant ``kind``. features [B, C, h, w] -> :class:`HeadOutput` with logits
    [B, K, h, w]; its stages are the structure tokens (``stage_field = "tokens"``, K channels).

    Readouts: ``raw`` = the tokens (the paper's view: token k is the map of class k); ``head`` = the
    final ``residual`` block applied to the tokens.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        num_classes: int,
        token_grid: tuple[int, int],
        num_blocks: int = 4,
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in STRUCTTOKEN_BLOCKS:
            raise ValueError(f"unknown StructToken variant {kind!r}; choose from {', '.join(STRUCTTOKEN_BLOCKS)}")
        self.kind = kind
        self.num_classes = num_classes
        self.token_grid = tuple(token_grid)
        # The official code aligns corners when the *configured* grid has an odd side.
        self.align_corners = token_grid[0] % 2 != 0 or token_grid[1] % 2 != 0
        self.proj = nn.Conv2d(in_channels, in_channels, 1)
        self.tokens = nn.Parameter(torch.zeros(1, num_classes, *token_grid))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.residual = PreActResidualBlock(num_classes)
        block = STRUCTTOKEN_BLOCKS[kind]
        dpr = drop_path_rates(drop_path_rate, num_blocks)
        self.blocks = nn.ModuleList(
            block(in_channels, num_classes, mlp_ratio, dpr[i], i == num_blocks - 1) for i in range(num_blocks)
        )

    def init_weights(self) -> None:
        """The official ``init_weights`` of the ``*StructTokenHead`` modules: structure tokens from a truncated
        normal (std 0.02, cut at +-2); Linear layers truncated normal (std 0.02), zero bias; Conv2d layers
        Kaiming normal, fan-in, ReLU gain (mmcv ``kaiming_init(m, mode='fan_in', bias=0.)``), zero bias;
        norms weight 1, bias 0. The blocks' own ``init_weights`` in the official code are mmcv's
        ``BaseModule`` defaults without an ``init_cfg``, which change nothing. Draws from torch's global RNG."""
        nn.init.trunc_normal_(self.tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        b, _, h, w = features.shape
        feats = self.proj(features)
        tokens = resize_tokens(self.tokens, (h, w), self.align_corners).expand(b, -1, -1, -1)
        tokens_init, features_init = tokens, feats
        maps = []
        for block in self.blocks:
            tokens, feats, attn = block(tokens, feats)
            maps.append(BlockMaps(tokens=tokens, features=feats, attention=attn))
        return HeadOutput(
            logits=self.residual(tokens),
            tokens_init=tokens_init,
            blocks=tuple(maps),
            features_init=features_init,
        )

    head_readout_text = "the final residual conv block applied to the stage's structure tokens"
    fitted_input_text = (
        "the structure tokens and the feature maps a stage hands to the next block (K + C channels); "
        "the tokens alone (K) after the last block, whose features no later layer reads"
    )

    def fitted_maps(self, out: HeadOutput) -> tuple[torch.Tensor, ...]:
        """Stages 0 .. N - 1: tokens and features concatenated [B, K + C, h, w] (both enter the next block);
        stage N: the tokens [B, K, h, w] (the residual block reads only them); then the logits."""
        feats = [out.features_init, *(b.features for b in out.blocks)]
        tokens = [out.tokens_init, *(b.tokens for b in out.blocks)]
        n = len(out.blocks)
        maps = [
            torch.cat((t, f), dim=1) if s < n and f is not None else t for s, (t, f) in enumerate(zip(tokens, feats))
        ]
        return (*maps, out.logits)

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """``residual(maps)`` for stages 0 .. N (tokens [B, K, h, w]); identity at the output stage."""
        if self.check_stage(stage, out) == out.num_stages - 1:
            return maps
        return self.residual(maps)

"""A static per-pixel head: a fully convolutional classifier (Long et al. 2015, "Fully Convolutional
Networks for Semantic Segmentation"; the ``FCNHead`` of mmsegmentation), capacity-matched to the
StructToken heads.

features [B, C, h, w] -> N blocks of two 3x3 conv-BN-ReLU at width C -> dropout -> 1x1 ``classifier``
C -> K -> logits [B, K, h, w]. Every class gets the same, input-independent classifier row: the
"static" paradigm. With C = 192, N = 4 and K = 11 (the CamVid set) it holds 2.66 M parameters,
within the range of the StructToken heads (CSE 1.66 M, PWE 2.35 M, SSE 2.88 M).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvBNReLU
from .base import BlockMaps, Head, HeadOutput


class FCNHead(Head):
    """features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w].

    Its stages are C-channel feature maps (``stage_field = "features"``): the head's input, then each
    block's output. A block's ``tokens`` are its features read through the classifier (the ``head``
    readout); there is no ``raw`` readout, as no feature channel is a class.
    """

    def __init__(self, in_channels: int, num_classes: int, num_blocks: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = in_channels
        self.blocks = nn.ModuleList(
            nn.Sequential(ConvBNReLU(in_channels, in_channels), ConvBNReLU(in_channels, in_channels))
            for _ in range(num_blocks)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """mmseg's: Kaiming-normal convs (fan_out, ReLU), BN weight 1 / bias 0, classifier N(0, 0.01^2)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        x = features
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(BlockMaps(tokens=self.classifier(x), features=x))
        return HeadOutput(
            logits=self.classifier(self.dropout(x)),
            tokens_init=self.classifier(features),
            blocks=tuple(maps),
            features_init=features,
            stage_field="features",
        )

    head_readout_text = "the final 1x1 classifier applied to the stage's feature maps"
    fitted_input_text = "the C-channel feature maps a stage hands to the next conv pair"

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """``classifier(maps)`` for stages 0 .. N (features [B, C, h, w]); identity at the output stage."""
        if self.check_stage(stage, out) == out.num_stages - 1:
            return maps
        return self.classifier(maps)

    def raw_unavailable(self) -> str | None:
        return (
            f"fcn's stages carry {self.channels} feature channels, not K = {self.num_classes} class maps: "
            "no channel is a class (use the head or fitted readout)"
        )

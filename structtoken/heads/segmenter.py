"""A dynamic per-pixel head: Segmenter's mask transformer (Strudel et al. 2021, "Segmenter: Transformer
for Semantic Segmentation", Sec. 3.2; mmsegmentation's ``SegmenterMaskTransformerHead``).

features [B, C, h, w] -> patch tokens ``proj_dec`` C -> d [B, hw, d]; K learned class embeddings
``cls_emb`` [1, K, d] are appended and N pre-norm transformer layers (timm ``Block``: MHA + MLP) run
over the hw + K tokens; then ``decoder_norm``, ``patch_proj`` / ``classes_proj`` (d -> d, no bias),
L2 normalisation of both, masks = patches @ classes^T [B, hw, K], ``mask_norm`` (LayerNorm over K)
-> logits [B, K, h, w]. The classifier is the class embeddings, computed from the image: the
"dynamic" paradigm. With C = d = 192, 3 heads, N = 4 and K = 11 (the CamVid set) it holds 1.89 M
parameters, within the range of the StructToken heads (CSE 1.66 M, PWE 2.35 M, SSE 2.88 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..layers import drop_path_rates
from .base import BlockMaps, Head, HeadOutput


class SegmenterHead(Head):
    """features [B, C, h, w] -> :class:`HeadOutput` with logits [B, K, h, w].

    Its stages are the patch tokens as maps [B, d, h, w] (``stage_field = "features"``): after
    ``proj_dec`` (stage 0), then after each layer; the class embeddings of each stage are
    ``classes_init`` / ``BlockMaps.classes`` [B, K, d]. A layer's ``tokens`` are the masks the
    output layers (decoder norm, projections, L2 norm, product, mask norm) make of that layer's
    tokens: the ``head`` readout; the last layer's are the logits. It has no ``raw`` readout (no
    channel is a class); :meth:`cosine_readout` gives the cosine of each patch token with each class
    embedding of the same stage, without the learned output layers (in [-1, 1]).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_layers: int = 4,
        num_heads: int = 3,
        embed_dim: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        d = embed_dim or in_channels
        self.num_classes = num_classes
        self.embed_dim = d
        self.proj_dec = nn.Linear(in_channels, d)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d))
        dpr = drop_path_rates(drop_path_rate, num_layers)
        self.blocks = nn.ModuleList(
            Block(d, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=nn.LayerNorm)
            for i in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.patch_proj = nn.Linear(d, d, bias=False)
        self.classes_proj = nn.Linear(d, d, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """mmseg's: truncated normal (std 0.02) class embeddings and Linear weights, zero biases, unit LayerNorms."""
        nn.init.trunc_normal_(self.cls_emb, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _as_map(patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, hw, d] -> [B, d, h, w] (contiguous)."""
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)

    def masks(self, patches: torch.Tensor, classes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The output layers: patches [B, hw, d], classes [B, K, d] -> masks [B, K, h, w]."""
        p = F.normalize(self.patch_proj(self.decoder_norm(patches)), dim=2)
        c = F.normalize(self.classes_proj(self.decoder_norm(classes)), dim=2)
        m = self.mask_norm(p @ c.transpose(1, 2))  # [B, hw, K]
        return self._as_map(m, h, w)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        b, _, h, w = features.shape
        n = h * w
        x = self.proj_dec(features.flatten(2).transpose(1, 2))  # [B, hw, d]
        cls = self.cls_emb.expand(b, -1, -1)  # [B, K, d]
        tokens_init, features_init, classes_init = self.masks(x, cls, h, w), self._as_map(x, h, w), cls
        maps = []
        for block in self.blocks:
            y = block(torch.cat((x, cls), dim=1))
            x, cls = y[:, :n], y[:, n:]
            maps.append(BlockMaps(tokens=self.masks(x, cls, h, w), features=self._as_map(x, h, w), classes=cls))
        return HeadOutput(
            logits=maps[-1].tokens if maps else tokens_init,
            tokens_init=tokens_init,
            blocks=tuple(maps),
            features_init=features_init,
            classes_init=classes_init,
            stage_field="features",
        )

    def _stage_classes(self, stage: int, out: HeadOutput) -> torch.Tensor:
        c = out.classes_init if stage == 0 else out.blocks[stage - 1].classes
        if c is None:
            raise ValueError("this head output carries no class embeddings")
        return c

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """Output layers on the stage's patch tokens maps [B, d, h, w] and class embeddings; identity at
        the output stage."""
        stage = self.check_stage(stage, out)
        if stage == out.num_stages - 1:
            return maps
        h, w = maps.shape[-2:]
        return self.masks(maps.flatten(2).transpose(1, 2), self._stage_classes(stage, out), h, w)

    head_readout_text = (
        "decoder norm, patch and class projections, L2 normalisation, the patch-class product and the mask norm "
        "applied to the stage's patch tokens and class embeddings"
    )
    fitted_input_text = "the d-channel patch tokens a stage hands to the next layer"

    def raw_unavailable(self) -> str | None:
        return (
            f"segmenter's stages are {self.embed_dim}-channel patch tokens, not K = {self.num_classes} class maps: "
            "no channel is a class (its classes come from class embeddings; use the head or fitted readout)"
        )

    def cosine_readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """Cosine of every patch token (maps [B, d, h, w]) with every class embedding of the stage ->
        [B, K, h, w]; the logits themselves at the output stage."""
        stage = self.check_stage(stage, out)
        if stage == out.num_stages - 1:
            return maps
        h, w = maps.shape[-2:]
        p = F.normalize(maps.flatten(2).transpose(1, 2), dim=2)
        c = F.normalize(self._stage_classes(stage, out), dim=2)
        return self._as_map(p @ c.transpose(1, 2), h, w)

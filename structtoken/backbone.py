"""Plain ViT backbone, set up like mmseg 0.20.2's ``VisionTransformer`` as the official StructToken
configs use it (Lin et al., arXiv 2203.12612): patch 16, class token, pre-norm blocks with
LayerNorm eps 1e-6, no final norm, and the last block's patch tokens returned as a
[B, C, ceil(H/16), ceil(W/16)] map.

Built on timm's :class:`~timm.models.vision_transformer.VisionTransformer`; only two things are
changed: the positional embedding is resized (bicubic, *no* antialiasing) only when the number
of tokens differs from the table, as the official code does, and attention can be forced onto
timm's explicit (non-fused) path, which reproduces the official numbers bit for bit.
"""

from __future__ import annotations

import itertools

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .config import ModelConfig


class ConvStemEmbed(PatchEmbed):
    """Convolutional stem in place of the 16x16 patchify (Xiao et al. 2021): four 3x3 stride-2
    conv-BN-ReLU (3 -> C/8 -> C/4 -> C/2 -> C) and a 1x1 conv. Pads bottom/right to a multiple of
    16 like the patch embedding, so the grid is ceil(H/16) x ceil(W/16)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c = self.proj.out_channels
        widths = [3, c // 8, c // 4, c // 2, c]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers.append(nn.Conv2d(c, c, 1))
        self.proj = nn.Sequential(*layers)


class ViTBackbone(VisionTransformer):
    """timm ViT returning the last block's output as a feature map. x [B, 3, H, W] -> [B, C, ceil(H/16), ceil(W/16)]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=0,
            global_pool="",
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            class_token=True,
            final_norm=False,
            dynamic_img_size=True,
            dynamic_img_pad=True,
            drop_path_rate=cfg.drop_path_rate,
            embed_layer=ConvStemEmbed if cfg.stem == "conv" else PatchEmbed,
        )
        self.set_exact_attention(cfg.exact_attention)

    def set_exact_attention(self, exact: bool) -> None:
        """Explicit softmax attention (bit-exact with mmseg) when True, fused SDPA when False."""
        for blk in self.blocks:
            blk.attn.fused_attn = not exact

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, h, w, C] patch tokens (timm's dynamic-size NHWC layout)
        b, h, w, c = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
        pos = self.pos_embed
        if pos.shape[1] != x.shape[1]:  # resized only when the token *count* differs (official quirk)
            pos = resample_abs_pos_embed(
                pos,
                new_size=(h, w),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=1,
                interpolation="bicubic",
                antialias=False,
            )
        return self.pos_drop(x + pos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] normalised -> features [B, C, ceil(H/16), ceil(W/16)] (contiguous)."""
        b = x.shape[0]
        tokens = self.patch_embed(x)  # [B, h, w, C]
        h, w = tokens.shape[1:3]
        tokens = self.norm_pre(self.patch_drop(self._pos_embed(tokens)))
        tokens = self.blocks(tokens)  # [B, 1 + hw, C]; no final norm
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w)


def build_backbone(cfg: ModelConfig) -> ViTBackbone:
    """The backbone described by ``cfg``."""
    return ViTBackbone(cfg)

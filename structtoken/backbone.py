"""Plain ViT backbone, set up like mmseg 0.20.2's ``VisionTransformer`` as the official StructToken
configs use it (Lin et al., arXiv 2203.12612): patch 16, class token, pre-norm blocks with
LayerNorm eps 1e-6, no final norm, and the last block's patch tokens returned as a
[B, C, ceil(H/16), ceil(W/16)] map.

Built on timm's :class:`~timm.models.vision_transformer.VisionTransformer`; only two things are
changed: the positional embedding is resized (bicubic, *no* antialiasing) only when the number
of tokens differs from the table, as the official code does, and attention can be forced onto
timm's explicit (non-fused) path, which reproduces the official numbers bit for bit.

A set may give every head its own copy of the last ``cfg.head_vit_blocks`` blocks
(:func:`split_backbone`, :class:`ViTBlocks`): the shared backbone then runs the first
``depth - head_vit_blocks`` blocks, and each head's copy continues from its tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

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

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x [B, 3, H, W] normalised -> (tokens [B, 1 + h*w, C] after the last block, class token first;
        grid (h, w) = (ceil(H/16), ceil(W/16)))."""
        tokens = self.patch_embed(x)  # [B, h, w, C]
        h, w = tokens.shape[1:3]
        tokens = self.norm_pre(self.patch_drop(self._pos_embed(tokens)))
        return self.blocks(tokens), (h, w)  # [B, 1 + hw, C]; no final norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] normalised -> features [B, C, ceil(H/16), ceil(W/16)] (contiguous)."""
        return tokens_to_map(*self.forward_tokens(x))


class ViTBlocks(nn.Module):
    """ViT blocks continuing a backbone's token sequence: tokens [B, 1 + h*w, C] -> features [B, C, h, w].

    A head's own copy of the backbone's last blocks (``cfg.head_vit_blocks``; no final norm, as the backbone).
    """

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def set_exact_attention(self, exact: bool) -> None:
        """Explicit softmax attention when True, fused SDPA when False (as :meth:`ViTBackbone.set_exact_attention`)."""
        for blk in self.blocks:
            blk.attn.fused_attn = not exact

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens [B, 1 + h*w, C] (class token first), grid (h, w) -> features [B, C, h, w] (contiguous)."""
        return tokens_to_map(self.blocks(tokens), grid)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens as a feature map: tokens [B, 1 + h*w, C] (class token first) -> [B, C, h, w] (contiguous)."""
    h, w = grid
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def split_backbone(cfg: ModelConfig) -> tuple[ViTBackbone, nn.Sequential]:
    """The ``depth``-block ViT of ``cfg`` cut after block ``depth - cfg.head_vit_blocks``: (the shared backbone
    holding the first blocks, the last ``head_vit_blocks`` blocks taken off it). The last blocks keep the
    drop-path rates they have in the full-depth ViT; heads copy them (:class:`ViTBlocks`). With
    ``head_vit_blocks = 0`` the backbone is whole and the second item empty."""
    backbone = ViTBackbone(cfg)
    if not cfg.head_vit_blocks:
        return backbone, nn.Sequential()
    keep = cfg.depth - cfg.head_vit_blocks
    last = backbone.blocks[keep:]
    backbone.blocks = backbone.blocks[:keep]  # re-registered: keys blocks.0 .. blocks.{keep - 1} as before
    return backbone, last


def build_backbone(cfg: ModelConfig) -> ViTBackbone:
    """The shared backbone described by ``cfg`` (its first ``depth - head_vit_blocks`` blocks)."""
    return split_backbone(cfg)[0]

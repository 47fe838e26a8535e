"""Segmentation heads: StructToken CSE / SSE / PWE and the per-pixel baseline (± deep supervision)."""

from __future__ import annotations

from torch import nn

from ..config import HEAD_NAMES, ModelConfig
from .base import BlockMaps, HeadOutput, StructTokenHead
from .cse import CSEHead
from .linear import LinearHead
from .per_pixel import PerPixelHead
from .pwe import PWEHead
from .sse import SSEHead

HEAD_CLASSES: dict[str, type[nn.Module]] = {
    "cse": CSEHead,
    "sse": SSEHead,
    "pwe": PWEHead,
    "per_pixel": PerPixelHead,
}


def build_head(name: str, cfg: ModelConfig) -> nn.Module:
    """The head called ``name`` (see :data:`structtoken.config.HEAD_NAMES`) for the set ``cfg``."""
    kind, deep_supervision = HEAD_NAMES[name]
    if kind == "linear":
        return LinearHead(cfg.embed_dim, cfg.num_classes)
    if kind == "per_pixel":
        return PerPixelHead(cfg.embed_dim, cfg.num_classes, cfg.num_blocks, deep_supervision=deep_supervision)
    return HEAD_CLASSES[kind](
        cfg.embed_dim, cfg.num_classes, cfg.token_grid, cfg.num_blocks, cfg.mlp_ratio, cfg.head_drop_path_rate
    )


__all__ = [
    "HEAD_CLASSES",
    "BlockMaps",
    "CSEHead",
    "HeadOutput",
    "LinearHead",
    "PWEHead",
    "PerPixelHead",
    "SSEHead",
    "StructTokenHead",
    "build_head",
]

"""Segmentation heads: StructToken CSE / SSE / PWE, the per-pixel baseline (± deep supervision) and
the light linear pre-training head. Every head follows the contract of :mod:`.base`."""

from __future__ import annotations

from collections.abc import Callable

from ..config import HEAD_NAMES, ModelConfig
from .base import BlockMaps, Head, HeadOutput
from .linear import LinearHead
from .per_pixel import PerPixelHead
from .structtoken import STRUCTTOKEN_BLOCKS, StructTokenHead


def _structtoken(kind: str) -> Callable[[ModelConfig, bool], Head]:
    def build(cfg: ModelConfig, deep_supervision: bool) -> Head:
        return StructTokenHead(
            kind,
            cfg.embed_dim,
            cfg.num_classes,
            cfg.token_grid,
            cfg.num_blocks,
            cfg.mlp_ratio,
            cfg.head_drop_path_rate,
        )

    return build


HEAD_BUILDERS: dict[str, Callable[[ModelConfig, bool], Head]] = {
    **{kind: _structtoken(kind) for kind in STRUCTTOKEN_BLOCKS},
    "per_pixel": lambda cfg, ds: PerPixelHead(cfg.embed_dim, cfg.num_classes, cfg.num_blocks, deep_supervision=ds),
    "linear": lambda cfg, ds: LinearHead(cfg.embed_dim, cfg.num_classes),
}
"""Head kind (:data:`structtoken.config.HEAD_KINDS`) -> ``build(cfg, deep_supervision)``."""


def build_head(name: str, cfg: ModelConfig) -> Head:
    """The head called ``name`` (see :data:`structtoken.config.HEAD_NAMES`) for the set ``cfg``."""
    kind, deep_supervision = HEAD_NAMES[name]
    return HEAD_BUILDERS[kind](cfg, deep_supervision)


__all__ = [
    "HEAD_BUILDERS",
    "STRUCTTOKEN_BLOCKS",
    "BlockMaps",
    "Head",
    "HeadOutput",
    "LinearHead",
    "PerPixelHead",
    "StructTokenHead",
    "build_head",
]

"""StructToken (Lin et al., arXiv 2203.12612) and the per-pixel baseline in PyTorch/timm.

Matches the official implementation (RockeyCoss/StructToken, mmseg 0.20.2) tensor for tensor,
loads its 11 released checkpoints, and returns every block's maps as typed outputs.
"""

from .assets import EMBEDDED, available_models, load_any
from .checkpoint import (
    CheckpointError,
    CheckpointUnavailable,
    convert_official_state_dict,
    fetch_checkpoint,
    load_model,
    load_official,
    load_state_dict_strict,
    resolve_model,
    save_model,
)
from .config import HEAD_NAMES, REGISTRY, RELEASED_MODELS, ConfigError, ModelConfig, get_config
from .heads import BlockMaps, HeadOutput
from .io import ImageReadError, read_image, read_label
from .segmentor import Segmentor, SegmentorOutput, build_model

__all__ = [
    "EMBEDDED",
    "HEAD_NAMES",
    "REGISTRY",
    "RELEASED_MODELS",
    "BlockMaps",
    "CheckpointError",
    "CheckpointUnavailable",
    "ConfigError",
    "HeadOutput",
    "ImageReadError",
    "ModelConfig",
    "Segmentor",
    "SegmentorOutput",
    "available_models",
    "build_model",
    "convert_official_state_dict",
    "fetch_checkpoint",
    "get_config",
    "load_any",
    "load_model",
    "load_official",
    "load_state_dict_strict",
    "read_image",
    "read_label",
    "resolve_model",
    "save_model",
]

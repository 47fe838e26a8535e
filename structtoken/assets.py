"""The model sets shipped in ``assets/`` and one entry point to load any model by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model, resolve_model
from .config import RELEASED_MODELS
from .segmentor import Segmentor

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED: dict[str, Path] = {"camvid": ASSETS_DIR / "camvid" / "camvid_set.safetensors"}
"""Embedded set name -> safetensors file (config in its metadata)."""


def available_models() -> list[str]:
    """Embedded sets first (the offline default), then the released checkpoints."""
    return [*EMBEDDED, *RELEASED_MODELS]


def load_any(
    spec: str | Path, device: str | torch.device = "cpu", progress: bool = True, progress_callback=None
) -> Segmentor:
    """Load an embedded set (``camvid``), a released checkpoint by name (fetched on first use) or a file."""
    s = str(spec)
    if s in EMBEDDED:
        path = EMBEDDED[s]
        if not path.is_file():
            raise CheckpointError(
                f"the embedded {s!r} set is missing ({path}); reinstall the project or train it with "
                "the command in README.md"
            )
        return load_model(path, device)
    return resolve_model(s, device=device, progress=progress, progress_callback=progress_callback)

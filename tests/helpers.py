"""Shared test helpers: the tiny model configuration, a saved tiny set, and the app served in-process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from structtoken import ModelConfig, build_model, save_model

NAMES = ("Sky", "Building", "Road", "Car")
PALETTE = ((128, 128, 128), (128, 0, 0), (128, 64, 128), (64, 0, 128))
HEADS = ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds")


def tiny_config(**changes: Any) -> ModelConfig:
    """A 2-layer, 32-wide ViT with every head (2 blocks, 4 classes, 64x64): random weights run in ms."""
    cfg = ModelConfig(
        head=HEADS[0],
        extra_heads=HEADS[1:],
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_blocks=2,
        num_classes=4,
        image_size=(64, 64),
        classes=NAMES,
        palette=PALETTE,
    )
    return cfg.replace(**changes) if changes else cfg


def save_tiny_set(path: Path, seed: int = 0, **changes: Any) -> Path:
    """:func:`tiny_config` (with ``changes``) built from ``seed`` and saved as a set (a few hundred KB);
    an existing file is reused."""
    import torch

    if not path.is_file():
        torch.manual_seed(seed)
        save_model(build_model(tiny_config(**changes)), path)
    return path


@contextlib.contextmanager
def serve_app(default_model: Path) -> Iterator[tuple[str, Any]]:
    """``app.py`` launched in-process on 127.0.0.1 (Gradio picks a free port) with ``default_model`` as
    its default set, on a fresh :class:`analysis.service.Explorer`. Yields (url, the page's
    :class:`app.ExplorerUI`, whose ``explorer`` is the service it calls)."""
    old = os.environ.get("STRUCTTOKEN_DEFAULT_MODEL")
    os.environ["STRUCTTOKEN_DEFAULT_MODEL"] = str(default_model)
    import app
    from analysis.service import Explorer

    demo = app.build_demo(Explorer())
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    try:
        yield demo.local_url, demo.explorer_ui
    finally:
        demo.close()
        if old is None:
            os.environ.pop("STRUCTTOKEN_DEFAULT_MODEL", None)
        else:
            os.environ["STRUCTTOKEN_DEFAULT_MODEL"] = old

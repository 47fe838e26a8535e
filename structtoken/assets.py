"""The model sets shipped in ``assets/`` and one entry point to load any model by name or path.

The embedded sets (and the example photos) are looked for in the checkout's ``assets/`` folder (a
development tree) and then in the installed ``structtoken/_assets/`` folder, which is what
``pip install .`` makes of ``assets/`` (see setup.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model, resolve_model
from .config import RELEASED_MODELS
from .segmentor import Segmentor

CHECKOUT_ASSETS = Path(__file__).resolve().parent.parent / "assets"
"""``assets/`` of a development checkout (absent in an install)."""
INSTALLED_ASSETS = Path(__file__).resolve().parent / "_assets"
"""``assets/`` as ``pip install .`` installs it (the data package ``structtoken._assets``; absent in a checkout)."""


def asset_path(relative: str) -> Path:
    """``assets/<relative>`` (a file or a folder) of the checkout if it is there, else of the install (if there),
    else the checkout's (which does not exist: the caller's error names it)."""
    for root in (CHECKOUT_ASSETS, INSTALLED_ASSETS):
        if (root / relative).exists():
            return root / relative
    return CHECKOUT_ASSETS / relative


ASSETS_DIR = asset_path("camvid/camvid_set.safetensors").parent.parent
"""The folder the embedded sets are read from (the checkout's ``assets/`` or the installed copy)."""
EMBEDDED: dict[str, Path] = {"camvid": asset_path("camvid/camvid_set.safetensors")}
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

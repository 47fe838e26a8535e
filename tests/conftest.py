"""Shared fixtures: paths to ../shared, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("STRUCTTOKEN_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "fixtures").is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE / 'fixtures'} (set STRUCTTOKEN_SHARED)")
    return REFERENCE

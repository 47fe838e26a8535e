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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not fight other jobs for cores); a module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "fixtures").is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE / 'fixtures'} (set STRUCTTOKEN_SHARED)")
    return REFERENCE

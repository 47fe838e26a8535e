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


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
"""CI sets ``CI=true``: there a missing shared folder fails the run instead of skipping tests quietly."""
SHARED_HOWTO = (
    "copy the project's shared/ folder (reference tensors of the official implementation, CamVid) beside the "
    "checkout as ../shared, or set STRUCTTOKEN_SHARED to where it is"
)
_SHARED_SKIPS = ("reference fixtures not found at", "CamVid folder not found at")
"""Skip reasons that mean "../shared is missing" (tests/test_data.py skips CamVid with the second)."""


def missing_shared(what: str, where: Path) -> None:
    """Skip a test that needs ``where`` (part of ../shared), saying where it was looked for and how to get it;
    in CI (``CI=true``) fail instead, so a fresh clone without the data cannot pass on skips."""
    msg = f"{what} not found at {where}: {SHARED_HOWTO}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: a missing shared folder is a failure, not a skip)", pytrace=False)
    pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a skip because ../shared is missing (raised by any test, e.g. test_data's CamVid one) fails."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if any(s in reason for s in _SHARED_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"{reason} (CI=true: a missing shared folder is a failure, not a skip; {SHARED_HOWTO})"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "fixtures").is_dir():
        missing_shared("reference fixtures", REFERENCE / "fixtures")
    return REFERENCE

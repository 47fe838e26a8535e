"""Display names shared by the figures and the UI. No imports, so the app can read them at start-up
without pulling in matplotlib or torch."""

from __future__ import annotations

#: Pretty label per head; unknown heads are shown by their name.
HEAD_LABELS: dict[str, str] = {
    "cse": "StructToken-CSE",
    "sse": "StructToken-SSE",
    "pwe": "StructToken-PWE",
    "per_pixel": "Per-pixel",
    "per_pixel_ds": "Per-pixel + deep sup.",
    "linear": "Linear",
}

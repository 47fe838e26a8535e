"""Display names shared by the figures, the analyses and the UI. Only the standard library, so anything can read them
without pulling in matplotlib or torch."""

from __future__ import annotations

import re

#: Pretty label per head; unknown heads are shown by their name.
HEAD_LABELS: dict[str, str] = {
    "cse": "StructToken-CSE",
    "sse": "StructToken-SSE",
    "pwe": "StructToken-PWE",
    "per_pixel": "Per-pixel",
    "per_pixel_ds": "Per-pixel + deep sup.",
    "fcn": "FCN",
    "segmenter": "Segmenter",
    "linear": "Linear",
}

#: Short label per display normalisation (the keys of :data:`analysis.maps.NORMALIZATIONS`), for controls.
NORMALIZATION_LABELS: dict[str, str] = {
    "shared": "shared per class",
    "per_map": "per map",
    "softmax": "softmax (probability)",
}

#: What each normalisation does, in a phrase (summaries and figure notes).
NORMALIZATION_NOTES: dict[str, str] = {
    "shared": "min–max per class, shared by all stages and heads shown",
    "per_map": "min–max of each map on its own",
    "softmax": "softmax over classes at each stage (class probability)",
}


def head_label(head: str) -> str:
    """Pretty label of ``head`` (its name when it has none in :data:`HEAD_LABELS`)."""
    return HEAD_LABELS.get(head, head)


def display_names(text: str) -> str:
    """``text`` with every head key (``per_pixel_ds``, ``cse``, ...) replaced by its display name (verdicts
    are stored with keys, shown with names)."""
    keys = sorted(HEAD_LABELS, key=len, reverse=True)
    return re.sub(r"\b(" + "|".join(map(re.escape, keys)) + r")\b", lambda m: HEAD_LABELS[m.group(1)], text)

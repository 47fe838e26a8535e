"""What role each head of a set plays in the analyses, derived from its kind in
:data:`structtoken.config.HEAD_NAMES` (never from lists of head names), so a head registered there
takes part in every analysis that fits its kind.

* StructToken heads: kinds ``cse`` / ``sse`` / ``pwe`` (:data:`structtoken.config.STRUCTTOKEN_HEADS`).
* Attention heads: kinds with a class x channel attention per block (``cse``, ``sse``).
* Baselines: every other compared head without deep supervision (``per_pixel`` today; ``fcn`` and
  ``segmenter`` once registered). ``linear``, the backbone pre-training head, is none of them.
* Deep-supervision pairs: a head trained with deep supervision and its twin of the same kind without.
"""

from __future__ import annotations

from collections.abc import Sequence

from structtoken.config import HEAD_NAMES, STRUCTTOKEN_HEADS

__all__ = [
    "ATTENTION_KINDS",
    "attention_heads",
    "baseline_heads",
    "claim_baselines",
    "deep_supervision_pairs",
    "head_kind",
    "structtoken_heads",
]

ATTENTION_KINDS = ("cse", "sse")
"""Head kinds whose blocks have a class x channel attention (PWE mixes channels with a 1x1 conv)."""
_NOT_COMPARED = ("linear",)


def head_kind(head: str) -> str:
    """The architecture of the head called ``head`` (its own name when it is not registered)."""
    return HEAD_NAMES.get(head, (head, False))[0]


def _deeply_supervised(head: str) -> bool:
    return HEAD_NAMES.get(head, (head, False))[1]


def structtoken_heads(heads: Sequence[str]) -> list[str]:
    """The StructToken heads among ``heads``, in order."""
    return [h for h in heads if head_kind(h) in STRUCTTOKEN_HEADS]


def attention_heads(heads: Sequence[str]) -> list[str]:
    """The heads with class x channel attention among ``heads``, in order."""
    return [h for h in heads if head_kind(h) in ATTENTION_KINDS]


def baseline_heads(heads: Sequence[str]) -> list[str]:
    """The compared non-StructToken heads without deep supervision among ``heads``, in order."""
    return [
        h
        for h in heads
        if head_kind(h) not in STRUCTTOKEN_HEADS and head_kind(h) not in _NOT_COMPARED and not _deeply_supervised(h)
    ]


def claim_baselines(heads: Sequence[str]) -> list[str]:
    """Every compared non-StructToken head among ``heads``, deeply supervised ones included (``per_pixel``,
    ``per_pixel_ds``, ``fcn``, ``segmenter``): what the paper's claim is measured against, each in turn."""
    return [h for h in heads if head_kind(h) not in STRUCTTOKEN_HEADS and head_kind(h) not in _NOT_COMPARED]


def deep_supervision_pairs(heads: Sequence[str]) -> list[tuple[str, str]]:
    """(head without, head with deep supervision) of the same kind, both in ``heads``, in set order."""
    pairs = []
    for treated in heads:
        if _deeply_supervised(treated):
            twin = next((h for h in heads if head_kind(h) == head_kind(treated) and not _deeply_supervised(h)), None)
            if twin is not None:
                pairs.append((twin, treated))
    return pairs

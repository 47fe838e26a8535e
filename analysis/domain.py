"""Is an image far from a set's training domain? A check from the predicted class distribution.

A street-scene model shown a cat still paints every pixel with one of its classes, and nothing in
the maps says the answer is meaningless. The share of the image each class takes in the prediction
is a cheap tell: a CamVid frame is mostly road, building and sky; a cup of coffee predicted as 93 %
"Tree" is not. :func:`domain_check` measures the total-variation distance between the predicted
class areas and the training split's class frequencies (:func:`reference_frequencies`), and words
the answer. It is a heuristic about the prediction, not a calibrated out-of-distribution detector:
the wording says so.

Thresholds (:data:`TYPICAL_TV`, :data:`FAR_TV`) come from the embedded CamVid set's ``cse`` head on
the 101 CamVid val frames (median 0.28, 95th percentile 0.34, largest 0.37) and the shipped
examples (synthetic street 0.32; out of domain: astronaut 0.68, cat 0.53, coffee 0.85, rocket
0.66); measured by ``python bench/domain_thresholds.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CAMVID_TRAIN_FREQUENCIES",
    "FAR_TV",
    "TYPICAL_TV",
    "DomainCheck",
    "class_areas",
    "domain_check",
    "reference_frequencies",
]

CAMVID_TRAIN_FREQUENCIES: dict[str, float] = {
    "Sky": 0.175376,
    "Building": 0.242148,
    "Pole": 0.010233,
    "Road": 0.329596,
    "Pavement": 0.046707,
    "Tree": 0.101238,
    "SignSymbol": 0.012212,
    "Fence": 0.011731,
    "Car": 0.061068,
    "Pedestrian": 0.006655,
    "Bicyclist": 0.003037,
}
"""CamVid (11 classes, SegNet version) train split: class pixels / labelled pixels over the 367 train
images (the dataset's ``classes.json``, ``train_stats.frequencies``)."""

TYPICAL_TV = 0.4
"""Up to this distance the prediction looks like a training-domain image (every CamVid val frame does)."""
FAR_TV = 0.5
"""Beyond this distance the image is called far from the training domain."""


@dataclass(frozen=True)
class DomainCheck:
    """The verdict of :func:`domain_check`.

    Attributes:
        distance: total-variation distance in [0, 1] between predicted areas and training frequencies.
        level: ``"typical"`` (<= :data:`TYPICAL_TV`), ``"unusual"`` or ``"far"`` (> :data:`FAR_TV`).
        message: one sentence for a person (names the dominant predicted classes and the distance).
    """

    distance: float
    level: str
    message: str


def reference_frequencies(class_names: Sequence[str]) -> np.ndarray | None:
    """``[K]`` training class frequencies for a set with these class names, or None when unknown.

    Known today: the 11 CamVid classes (in any order). Other sets (ADE20K's 150 classes) get None.
    """
    names = list(class_names)
    if sorted(names) != sorted(CAMVID_TRAIN_FREQUENCIES):
        return None
    freq = np.array([CAMVID_TRAIN_FREQUENCIES[n] for n in names], dtype=np.float64)
    return freq / freq.sum()


def class_areas(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K]`` fraction of the pixels of ``pred`` (``[H, W]`` class indices) predicted as each class."""
    counts = np.bincount(np.asarray(pred).ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(1, counts.sum())


def domain_check(
    areas: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray, class_names: Sequence[str]
) -> DomainCheck:
    """How far the predicted class areas ``[K]`` are from the training frequencies ``[K]``.

    Args:
        areas: predicted fraction of the image per class (any non-negative weights; normalised here).
        reference: training frequency per class (normalised here).
        class_names: ``[K]`` names, for the message.

    Raises:
        ValueError: shapes differ, negative values, or an all-zero distribution.
    """
    a = np.asarray(areas, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.ndim != 1 or a.shape != r.shape or len(class_names) != a.size:
        raise ValueError(f"areas {a.shape}, reference {r.shape} and {len(class_names)} names must be one [K]")
    if (a < 0).any() or (r < 0).any() or a.sum() <= 0 or r.sum() <= 0:
        raise ValueError("areas and reference must be non-negative with a positive sum")
    a, r = a / a.sum(), r / r.sum()
    tv = float(0.5 * np.abs(a - r).sum())
    top = [f"{class_names[i]} {100 * a[i]:.0f}%" for i in np.argsort(-a, kind="stable")[:3] if a[i] > 0]
    said = f"predicted areas {', '.join(top)}; distance {tv:.2f} from the training class frequencies"
    if tv > FAR_TV:
        level = "far"
        message = (
            f"This image looks far from the set's training domain ({said}, typical training-domain images "
            f"≤ {TYPICAL_TV:.2f}): the maps show what the model does with it, not a meaningful segmentation."
        )
    elif tv > TYPICAL_TV:
        level = "unusual"
        message = (
            f"This image is unlike the set's training images ({said}, typical ≤ {TYPICAL_TV:.2f}); "
            "read the maps with care."
        )
    else:
        level = "typical"
        message = f"The predicted class areas look like the set's training domain ({said})."
    return DomainCheck(distance=tv, level=level, message=message)

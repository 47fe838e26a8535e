"""analysis.domain: the out-of-domain check from the predicted class distribution, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.domain import (
    CAMVID_TRAIN_FREQUENCIES,
    FAR_TV,
    TYPICAL_TV,
    class_areas,
    domain_check,
    reference_frequencies,
)

NAMES = list(CAMVID_TRAIN_FREQUENCIES)


def test_class_areas_counts_pixels() -> None:
    pred = np.array([[0, 0], [2, 0]])
    np.testing.assert_allclose(class_areas(pred, 4), [0.75, 0.0, 0.25, 0.0])


def test_reference_follows_the_class_order_and_is_none_for_other_sets() -> None:
    ref = reference_frequencies(NAMES[::-1])
    assert ref is not None and ref.sum() == pytest.approx(1.0)
    assert ref[-1] == pytest.approx(CAMVID_TRAIN_FREQUENCIES["Sky"] / sum(CAMVID_TRAIN_FREQUENCIES.values()))
    assert reference_frequencies(["road", "sky", "car", "tree"]) is None
    assert reference_frequencies([*NAMES, "Unlabelled"]) is None


def test_distance_is_total_variation_with_three_levels() -> None:
    ref = [0.5, 0.5, 0.0]
    names = ["a", "b", "c"]
    same = domain_check([5, 5, 0], ref, names)  # normalised before comparing
    assert same.distance == pytest.approx(0.0) and same.level == "typical"
    half = domain_check([0.5, 0.0, 0.5], ref, names)  # |0|+|.5|+|.5| / 2
    assert half.distance == pytest.approx(0.5)
    assert half.level == ("far" if FAR_TV < 0.5 else "unusual")
    far = domain_check([0.0, 0.0, 1.0], ref, names)
    assert far.distance == pytest.approx(1.0) and far.level == "far"
    assert "far from the set's training domain" in far.message and "c 100%" in far.message
    mid = TYPICAL_TV + (FAR_TV - TYPICAL_TV) / 2  # a distance between the two thresholds
    unusual = domain_check([0.5 - mid, 0.5, mid], ref, names)
    assert unusual.distance == pytest.approx(mid) and unusual.level == "unusual"


def test_a_street_like_prediction_is_typical_and_a_cup_of_tree_is_far() -> None:
    ref = reference_frequencies(NAMES)
    street = ref * 0.8 + 0.2 / len(NAMES)
    assert domain_check(street, ref, NAMES).level == "typical"
    cup = np.zeros(len(NAMES))
    cup[NAMES.index("Tree")], cup[NAMES.index("Pole")] = 0.93, 0.07
    check = domain_check(cup, ref, NAMES)
    assert check.level == "far" and check.message.count("%") >= 2


@pytest.mark.parametrize(
    ("areas", "ref"),
    [([1, 0], [0.5, 0.5, 0.0]), ([-1, 2, 0], [0.3, 0.3, 0.4]), ([0, 0, 0], [0.3, 0.3, 0.4])],
)
def test_bad_inputs_are_refused(areas: list[float], ref: list[float]) -> None:
    with pytest.raises(ValueError):
        domain_check(areas, ref, ["a", "b", "c"])

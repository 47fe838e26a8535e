"""Tests for analysis.metrics: tiny inputs whose answers are worked out by hand in comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.metrics import (
    BoundaryF1Accumulator,
    ConfusionAccumulator,
    MaskAPAccumulator,
    _dilate_disk,
    argmax_prediction,
    argmax_stacks,
    average_precision,
    block_metrics,
    boundary_counts,
    boundary_counts_batch,
    boundary_f1,
    confusion_matrix,
    iou_per_class,
    mask_ap_batch,
    mask_ap_per_image,
    mask_ap_quantized,
    mean_iou,
    pixel_accuracy,
    upsample_scores,
)

IGN = 255


# --------------------------------------------------------------------------------------------
# confusion matrix, IoU, accuracy
# --------------------------------------------------------------------------------------------


def test_confusion_matrix_with_ignore():
    pred = np.array([[0, 1], [1, 1]])
    label = np.array([[0, 1], [IGN, 0]], dtype=np.uint8)
    # counted pixels: (0,0) gt0/pred0, (0,1) gt1/pred1, (1,1) gt0/pred1; (1,0) is ignored
    cm = confusion_matrix(pred, label, 2)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])
    # class 0: tp 1, row 2, col 1 -> union 2 -> 0.5 ; class 1: tp 1, row 1, col 2 -> union 2 -> 0.5
    np.testing.assert_allclose(iou_per_class(cm), [0.5, 0.5])
    assert mean_iou(cm) == pytest.approx(0.5)
    assert pixel_accuracy(cm) == pytest.approx(2 / 3)


def test_confusion_matrix_any_shape_and_no_ignore():
    pred = np.array([0, 1, 2, 2])
    label = np.array([0, 2, 2, 1])
    # (gt, pred): (0,0) (2,1) (2,2) (1,2)
    np.testing.assert_array_equal(
        confusion_matrix(pred, label, 3, ignore_index=None), [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    )


def test_absent_classes_are_nan():
    # K = 3; class 2 appears in neither pred nor label; class 1 only in the prediction
    pred = np.array([[0, 1], [0, 0]])
    label = np.array([[0, 0], [0, 0]])
    cm = confusion_matrix(pred, label, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    # class 0: 3 / (4 + 3 - 3) = 0.75 ; class 1: 0 / 1 = 0 ; class 2: 0 / 0 -> NaN
    assert iou[0] == pytest.approx(0.75)
    assert iou[1] == 0.0
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((0.75 + 0.0) / 2)


def test_everything_absent_gives_nan_without_warning():
    cm = confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), IGN), 2)
    np.testing.assert_array_equal(cm, np.zeros((2, 2)))
    with np.errstate(all="raise"):
        assert np.isnan(iou_per_class(cm)).all()
        assert math.isnan(mean_iou(cm))
        assert math.isnan(pixel_accuracy(cm))


@pytest.mark.parametrize(
    ("pred", "label", "k"),
    [
        ([[0, 3]], [[0, 1]], 3),  # prediction value K
        ([[0, -1]], [[0, 1]], 3),  # negative prediction
        ([[0, 1]], [[0, 7]], 3),  # label out of range and not the ignore index
        ([[0, 1]], [[0, 1, 1]], 3),  # shape mismatch
        ([[0, 1]], [[0, 1]], 0),  # no classes
        ([[0.5, 1.0]], [[0, 1]], 3),  # non-integral prediction
    ],
)
def test_confusion_matrix_invalid_inputs(pred, label, k):
    with pytest.raises(ValueError):
        confusion_matrix(np.array(pred), np.array(label), k)


def test_prediction_outside_range_raises_even_on_ignored_pixel():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[0, 5]]), np.array([[0, IGN]]), 2)


def test_iou_rejects_non_square():
    with pytest.raises(ValueError):
        iou_per_class(np.zeros((2, 3)))


# --------------------------------------------------------------------------------------------
# argmax and upsampling
# --------------------------------------------------------------------------------------------


def test_argmax_ties_go_to_lowest_class():
    scores = np.array(
        [
            [[1.0, 2.0], [3.0, 3.0]],
            [[1.0, 1.0], [3.0, 4.0]],
        ]
    )
    # (0,0): 1 vs 1 tie -> 0 ; (0,1): 2 > 1 -> 0 ; (1,0): 3 vs 3 tie -> 0 ; (1,1): 3 < 4 -> 1
    np.testing.assert_array_equal(argmax_prediction(scores), [[0, 0], [0, 1]])


def test_argmax_invalid():
    with pytest.raises(ValueError):
        argmax_prediction(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        argmax_prediction(np.array([[[np.nan]], [[1.0]]]))


def test_argmax_stacks_equals_numpy_argmax_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(3, 5, 7, 6)).astype(np.float32)  # many ties
    out = argmax_stacks(scores)
    assert out.dtype == np.uint8 and out.shape == (3, 7, 6)
    np.testing.assert_array_equal(out, scores.argmax(axis=1))
    # by hand: class 1 wins only where strictly above class 0
    two = np.array([[[[1.0, 2.0]], [[1.0, 3.0]]]])  # [1, 2, 1, 2]
    np.testing.assert_array_equal(argmax_stacks(two), [[[0, 1]]])
    assert argmax_stacks(rng.normal(size=(1, 300, 2, 2))).dtype == np.int32


def test_argmax_stacks_invalid():
    with pytest.raises(ValueError, match="S, K, H, W"):
        argmax_stacks(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        argmax_stacks(np.array([[[[np.nan]], [[1.0]]]]))


def test_upsample_by_hand():
    # width 2 -> 4, align_corners=False: src x = (x + 0.5) * 0.5 - 0.5 = -0.25(->0), 0.25, 0.75, 1.25
    # values [0, 4] -> 0, 0.75*0 + 0.25*4 = 1, 3, 4 (upper neighbour clamped)
    out = upsample_scores(np.array([[[0.0, 4.0]]]), (1, 4))
    np.testing.assert_allclose(out, [[[0.0, 1.0, 3.0, 4.0]]])
    # 2x2 -> 2x2 is the identity
    x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(upsample_scores(x, (2, 2)), x)
    assert upsample_scores(x, (3, 5)).dtype == np.float32


@pytest.mark.parametrize("size", [(11, 13), (3, 4), (5, 7), (1, 1)])
def test_upsample_matches_torch(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 7))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[
        0
    ].numpy()
    np.testing.assert_allclose(upsample_scores(x, size), ref, rtol=1e-12, atol=1e-12)


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [IGN, 0]], dtype=torch.uint8)
    np.testing.assert_array_equal(confusion_matrix(pred, label, 2), [[1, 1], [0, 1]])
    assert average_precision(torch.tensor([0.9, 0.1]), torch.tensor([1, 0])) == pytest.approx(1.0)
    np.testing.assert_array_equal(argmax_prediction(torch.ones(2, 2, 2)), np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------


def brute_force_ap(scores, target):
    """AP by the definition: loop over distinct thresholds, predict positive when score >= t."""
    scores = [float(s) for s in scores]
    target = [int(t) for t in target]
    n_pos = sum(target)
    if n_pos == 0:
        return float("nan")
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores), reverse=True):
        selected = [i for i, s in enumerate(scores) if s >= thr]
        tp = sum(target[i] for i in selected)
        precision = tp / len(selected)
        recall = tp / n_pos
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def test_ap_tied_scores_by_hand():
    # thresholds 0.9 (2 items, 1 pos): P=1/2, R=1/2 ; 0.5: P=2/3, R=1 ; 0.1: P=2/4, R=1
    # AP = 0.5 * 1/2 + 0.5 * 2/3 + 0 * 1/2 = 1/4 + 1/3 = 7/12
    ap = average_precision(np.array([0.9, 0.9, 0.5, 0.1]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx(7 / 12)
    # the order of the tied items must not matter
    assert average_precision(np.array([0.9, 0.9, 0.5, 0.1]), np.array([0, 1, 1, 0])) == pytest.approx(7 / 12)


def test_ap_perfect_and_inverted():
    assert average_precision(np.array([0.4, 0.3, 0.2, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    # inverted: positives ranked last. at 0.2: P=1/3, R=1/2 ; at 0.1: P=2/4, R=1
    # AP = 0.5 * 1/3 + 0.5 * 1/2 = 5/12
    assert average_precision(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == pytest.approx(5 / 12)


def test_ap_all_tied_is_prevalence_and_no_positive_is_nan():
    # one threshold: P = 2/4, R = 1 -> AP = 0.5
    assert average_precision(np.full(4, 0.5), np.array([1, 0, 0, 1])) == pytest.approx(0.5)
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    assert math.isnan(average_precision(np.array([]), np.array([])))
    # bool targets and integer scores
    assert average_precision(np.array([3, 2, 1]), np.array([True, False, True])) == pytest.approx(
        1 * 0.5 + 0.5 * (2 / 3)
    )


@pytest.mark.parametrize(
    ("scores", "target"),
    [
        ([0.1, 0.2], [1, 2]),  # non-binary target
        ([0.1, 0.2], [1, 0, 1]),  # length mismatch
        ([[0.1, 0.2]], [[1, 0]]),  # not 1-D
        ([np.nan, 0.2], [1, 0]),  # NaN score
    ],
)
def test_ap_invalid(scores, target):
    with pytest.raises(ValueError):
        average_precision(np.array(scores), np.array(target))


@pytest.mark.parametrize("seed", range(8))
def test_ap_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # even seeds: heavily tied scores ; odd seeds: continuous scores
    scores = rng.integers(0, 5, size=n) / 4 if seed % 2 == 0 else rng.normal(size=n)
    target = rng.random(n) < 0.4
    expected = brute_force_ap(scores, target)
    got = average_precision(scores, target)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------
# mask AP
# --------------------------------------------------------------------------------------------


def _mask_ap_example():
    label = np.array([[0, 1], [IGN, 1]])
    scores = np.array(
        [
            [[0.9, 0.2], [0.99, 0.3]],  # class 0
            [[0.5, 0.1], [0.0, 0.7]],  # class 1
            [[0.0, 0.0], [0.0, 0.0]],  # class 2 (absent from the label)
        ]
    )
    return scores, label


def test_mask_ap_ignores_ignore_pixels():
    scores, label = _mask_ap_example()
    # class 0 over valid pixels: scores 0.9(pos) 0.2 0.3 -> positive ranked first -> AP 1.
    #   (if the ignored pixel with 0.99 counted as a negative, AP would be 1/2)
    # class 1: 0.7(pos): P=1, R=1/2 ; 0.5(neg): P=1/2 ; 0.1(pos): P=2/3, R=1
    #   AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    # class 2 is not present -> no key
    aps = mask_ap_per_image(scores, label)
    assert list(aps) == [0, 1]
    assert aps[0] == pytest.approx(1.0)
    assert aps[1] == pytest.approx(5 / 6)


def test_mask_ap_is_scale_free():
    scores, label = _mask_ap_example()
    a = mask_ap_per_image(scores, label)
    b = mask_ap_per_image(np.exp(10 * scores) - 3, label)
    assert a == pytest.approx(b)


def test_mask_ap_invalid():
    scores, label = _mask_ap_example()
    with pytest.raises(ValueError):
        mask_ap_per_image(scores[:, :1], label)  # H mismatch
    with pytest.raises(ValueError):
        mask_ap_per_image(scores[:2], np.array([[0, 2], [1, 1]]))  # label 2 but only 2 channels


# --------------------------------------------------------------------------------------------
# boundary F1
# --------------------------------------------------------------------------------------------


def _halves(h, w, split):
    """Class 0 in columns < split, class 1 elsewhere."""
    out = np.ones((h, w), dtype=np.int64)
    out[:, :split] = 0
    return out


def test_boundary_f1_perfect_match():
    label = _halves(4, 4, 2)  # boundaries: class 0 -> column 1, class 1 -> column 2
    np.testing.assert_allclose(boundary_f1(label, label, 2), [1.0, 1.0])
    # a class covering the whole image has no boundary (border is not a boundary): both empty -> 1
    np.testing.assert_allclose(boundary_f1(np.zeros((3, 3), int), np.zeros((3, 3), int), 2)[0], 1.0)


def test_boundary_f1_one_pixel_shift():
    label = _halves(6, 6, 3)  # GT boundary: class 0 column 2, class 1 column 3 (6 px each)
    pred = _halves(6, 6, 4)  # predicted boundary: class 0 column 3, class 1 column 4
    # tolerance 0: no predicted boundary pixel coincides with a GT one -> P = R = 0 -> F1 = 0
    np.testing.assert_allclose(boundary_f1(pred, label, 2, tolerance=0), [0.0, 0.0])
    # tolerance 1: every pixel has its counterpart at distance exactly 1 -> P = R = 1
    np.testing.assert_allclose(boundary_f1(pred, label, 2, tolerance=1), [1.0, 1.0])


def test_boundary_f1_class_only_in_prediction():
    label = np.zeros((4, 4), dtype=np.int64)
    pred = label.copy()
    pred[1:3, 1:3] = 1
    f1 = boundary_f1(pred, label, 3)
    # class 1: only predicted -> 0
    # class 0: GT covers the image -> no GT boundary; predicted boundary is the 8-pixel ring
    #          around the 2x2 block -> P = 0, R undefined (counted 0) -> 0
    # class 2: absent from both -> NaN
    assert f1[0] == 0.0
    assert f1[1] == 0.0
    assert math.isnan(f1[2])


def test_boundary_f1_ignore_and_diagonal_tolerance():
    label = _halves(4, 4, 2)
    label[0, 1] = IGN
    label[0, 2] = IGN
    pred = _halves(4, 4, 2)
    # GT class 0 mask = columns 0-1 minus (0,1). Its boundary: (0,0) [right neighbour (0,1) is out],
    #   (1,1), (2,1), (3,1) -> 4 pixels.
    # Pred class 0 boundary = column 1 = (0,1),(1,1),(2,1),(3,1); (0,1) lies on an ignore pixel and is
    #   dropped -> 3 pixels.
    # tolerance 0 and 1: the 3 predicted pixels are on GT boundary pixels -> P = 1; GT (0,0) is at
    #   distance sqrt(2) from the nearest kept predicted pixel (1,1) -> R = 3/4 -> F1 = 1.5/1.75 = 6/7
    # tolerance 2: sqrt(2) <= 2 -> R = 1 -> F1 = 1. Class 1 is the mirror image.
    for tol, expected in [(0, 6 / 7), (1, 6 / 7), (2, 1.0)]:
        np.testing.assert_allclose(boundary_f1(pred, label, 2, tolerance=tol), [expected, expected])


def test_boundary_f1_invalid():
    with pytest.raises(ValueError):
        boundary_f1(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError):
        boundary_f1(np.full((2, 2), 2), np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError):
        boundary_f1(np.zeros((2, 2), int), np.zeros((2, 2), int), 2, tolerance=-1)
    with pytest.raises(ValueError):
        boundary_f1(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), 2)


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_disk_dilation_matches_distances(radius):
    rng = np.random.default_rng(radius)
    mask = rng.random((7, 9)) < 0.1
    ys, xs = np.nonzero(mask)
    expected = np.zeros_like(mask)
    for y in range(7):
        for x in range(9):
            expected[y, x] = bool(np.any((ys - y) ** 2 + (xs - x) ** 2 <= radius**2))
    np.testing.assert_array_equal(_dilate_disk(mask, radius), expected)
    # single pixel: radius 1 -> 5-pixel plus, radius 2 -> 13 pixels
    one = np.zeros((7, 7), bool)
    one[3, 3] = True
    assert _dilate_disk(one, 1).sum() == 5
    assert _dilate_disk(one, 2).sum() == 13


def _brute_force_boundary_f1(pred, label, k, tol, ignore=IGN):
    h, w = label.shape

    def boundary(mask):
        pts = []
        for y in range(h):
            for x in range(w):
                if not mask[y, x] or label[y, x] == ignore:
                    continue
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and not mask[yy, xx]:
                        pts.append((y, x))
                        break
        return pts

    def matched(a, b):
        return sum(any((y - v) ** 2 + (x - u) ** 2 <= tol**2 for v, u in b) for y, x in a)

    valid = label != ignore
    out = []
    for c in range(k):
        in_pred, in_gt = bool((pred[valid] == c).any()), bool((label[valid] == c).any())
        if not in_pred and not in_gt:
            out.append(float("nan"))
            continue
        if in_pred != in_gt:
            out.append(0.0)
            continue
        bp, bg = boundary(pred == c), boundary(label == c)
        if not bp and not bg:
            out.append(1.0)
            continue
        p = matched(bp, bg) / len(bp) if bp else 0.0
        r = matched(bg, bp) / len(bg) if bg else 0.0
        out.append(2 * p * r / (p + r) if p + r else 0.0)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_boundary_f1_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    # blocky random maps so that boundaries are not everywhere
    label = np.kron(rng.integers(0, 3, size=(3, 3)), np.ones((2, 2), int))
    pred = label.copy()
    flip = rng.random(label.shape) < 0.2
    pred[flip] = rng.integers(0, 4, size=flip.sum())
    label[rng.random(label.shape) < 0.1] = IGN
    tol = seed % 3
    np.testing.assert_allclose(
        boundary_f1(pred, label, 4, tolerance=tol), _brute_force_boundary_f1(pred, label, 4, tol)
    )


# --------------------------------------------------------------------------------------------
# dataset accumulators
# --------------------------------------------------------------------------------------------


def test_confusion_accumulator_is_dataset_level():
    acc = ConfusionAccumulator(3, ignore_index=IGN)
    # image 1: all class 0, perfect -> cm [[4,0],[0,0]] -> per-image mIoU 1.0
    acc.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    # image 2: gt all 1, one pixel predicted 0 -> cm [[0,0],[1,3]] (rows gt, cols pred)
    #   per-image IoU0 = 0/1 = 0, IoU1 = 3/4 -> mIoU 0.375 ; mean of per-image mIoUs = 0.6875
    acc.update(np.array([[0, 1], [1, 1]]), np.array([[1, 1], [1, 1]]))
    # pooled cm (2 real classes): [[4,0],[1,3]] -> IoU0 = 4/(4+5-4) = 0.8, IoU1 = 3/(4+3-3) = 0.75
    # class 2 never appears -> None ; mIoU = 0.775 ; pixel accuracy = 7/8
    res = acc.compute()
    assert res["miou"] == pytest.approx(0.775)
    assert res["pixel_accuracy"] == pytest.approx(7 / 8)
    assert res["iou_per_class"][:2] == pytest.approx([0.8, 0.75])
    assert res["iou_per_class"][2] is None
    json.dumps(res)
    acc.reset()
    assert math.isnan(acc.compute()["miou"])


def test_mask_ap_accumulator():
    acc = MaskAPAccumulator(3)
    # image A: perfect scores for classes 0 and 1 -> AP 1, 1
    label_a = np.array([[0, 0], [1, 1]])
    scores_a = np.stack([(label_a == c).astype(float) for c in range(3)])
    acc.update(scores_a, label_a)
    # image B (one ignored pixel):
    #   class 0 valid scores/targets: 0.1(pos) 0.9(neg) 0.5(neg) -> AP = 1 * 1/3 = 1/3
    #   class 1: scores 0(neg) 1(pos) 1(pos) -> AP 1
    label_b = np.array([[0, 1], [1, IGN]])
    scores_b = np.array(
        [
            [[0.1, 0.9], [0.5, 0.0]],
            [[0.0, 1.0], [1.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    acc.update(scores_b, label_b)
    # class 0: (1 + 1/3) / 2 = 2/3 ; class 1: 1 ; class 2 never present -> None
    # mask AP = (2/3 + 1) / 2 = 5/6
    res = acc.compute()
    assert res["ap_per_class"][:2] == pytest.approx([2 / 3, 1.0])
    assert res["ap_per_class"][2] is None
    assert res["mask_ap"] == pytest.approx(5 / 6)
    json.dumps(res)
    with pytest.raises(ValueError):
        acc.update(scores_b[:2], label_b)  # wrong number of channels


def test_boundary_f1_accumulator_pools_counts():
    acc = BoundaryF1Accumulator(3, tolerance=0, ignore_index=IGN)
    # image 1 (4x4 halves, perfect): class 0 pred 4/4 matched, GT 4/4 ; same for class 1
    label1 = _halves(4, 4, 2)
    acc.update(label1, label1)
    # image 2 (6x6, shifted by one, tolerance 0): class 0 pred 0/6, GT 0/6 ; same for class 1
    acc.update(_halves(6, 6, 4), _halves(6, 6, 3))
    # pooled class 0: P = 4/10, R = 4/10 -> F1 = 0.4 (mean of per-image F1s would be 0.5)
    res = acc.compute()
    assert res["f1_per_class"][:2] == pytest.approx([0.4, 0.4])
    assert res["f1_per_class"][2] is None
    assert res["boundary_f1"] == pytest.approx(0.4)
    json.dumps(res)


def test_boundary_f1_accumulator_single_image_equals_function():
    pred = _halves(4, 4, 2)
    label = pred.copy()
    label[0, 1] = IGN
    label[0, 2] = IGN
    acc = BoundaryF1Accumulator(2, tolerance=1)
    acc.update(pred, label)
    np.testing.assert_allclose(acc.compute()["f1_per_class"], boundary_f1(pred, label, 2, tolerance=1))


def test_block_metrics_smoke():
    label = _halves(4, 4, 2)
    # 2x2 scores upsampled to 4x4: column 0 favours class 0, column 1 class 1
    scores = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    res = block_metrics(scores, label)
    assert res == pytest.approx({"miou": 1.0, "pixel_accuracy": 1.0, "mask_ap": 1.0, "boundary_f1": 1.0})


# --------------------------------------------------------------------------------------------
# batched mask AP / boundary counts == the previous per-stack implementation
# --------------------------------------------------------------------------------------------
# The reference functions below are the per-stack code these batched functions replaced
# (analysis/metrics.py before mask_ap_batch / boundary_counts_batch), kept verbatim in spirit:
# one value sort + two searchsorted per class channel; per-class boolean masks and dilations.


def _ref_mask_ap(s: np.ndarray, g: np.ndarray, ignore=IGN) -> dict[int, float]:
    """Old ``mask_ap_per_image``: ``s [K, H, W]``, ``g [H, W]`` → {present class: AP}."""
    valid = g != ignore if ignore is not None else np.ones(g.shape, bool)
    gv = g[valid].astype(np.int64)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    out = {}
    for c in np.flatnonzero(np.bincount(gv, minlength=s.shape[0])):
        x = s[int(c)][valid]
        sa, sp = np.sort(x), np.sort(x[gv == c])
        all_ge = sa.size - np.searchsorted(sa, sp, side="left")
        pos_ge = sp.size - np.searchsorted(sp, sp, side="left")
        out[int(c)] = float(np.sum(pos_ge / all_ge) / sp.size)
    return out


def _ref_boundary(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _ref_shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = a.shape
    out = np.zeros_like(a)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _ref_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                out |= _ref_shift(mask, dy, dx)
    return out


def _ref_boundary_counts(p: np.ndarray, g: np.ndarray, k: int, tol: int, ignore=IGN) -> dict[str, np.ndarray]:
    """Old ``boundary_counts``: per-class masks, boundaries and disk dilations."""
    valid = g != ignore if ignore is not None else np.ones(g.shape, bool)
    out = {n: np.zeros(k, np.int64) for n in ("pred_matched", "pred_total", "gt_matched", "gt_total")}
    out["present_pred"] = np.bincount(p[valid].astype(np.int64), minlength=k) > 0
    out["present_gt"] = np.bincount(g[valid].astype(np.int64), minlength=k) > 0
    for c in np.flatnonzero(out["present_pred"] | out["present_gt"]):
        bp = _ref_boundary(p == c) & valid
        bg = _ref_boundary(g == c) & valid
        out["pred_total"][c], out["gt_total"][c] = bp.sum(), bg.sum()
        if bp.any() and bg.any():
            out["pred_matched"][c] = (bp & _ref_dilate(bg, tol)).sum()
            out["gt_matched"][c] = (bg & _ref_dilate(bp, tol)).sum()
    return out


def _random_case(seed: int, s: int = 5, k: int = 6, h: int = 13, w: int = 17, dtype=np.float32):
    """Blocky label with ignore pixels and absent classes; scores with many exact ties."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, k - 2, size=(h // 3 + 1, w // 3 + 1)), np.ones((3, 3), int))[:h, :w]
    label[label == 1] = k - 1  # classes 1 and k - 2 are absent from the label
    label[rng.random((h, w)) < 0.15] = IGN
    # quantised scores: plenty of ties within a channel, across positives and negatives
    scores = (rng.integers(0, 7, size=(s, k, h, w)) / 4).astype(dtype)
    scores[0, 0] = 0.5  # one channel entirely tied
    scores[1] += (label == 2) * 0.75  # a partly informative stack
    preds = scores.argmax(axis=1).astype(np.uint8)
    preds[2] = rng.integers(0, k, size=(h, w))  # noisy: boundaries everywhere
    preds[3] = label.clip(0, k - 1)  # perfect except on ignored pixels
    return scores, label.astype(np.uint8), preds


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_ap_batch_equals_reference(seed, dtype):
    scores, label, _ = _random_case(seed, dtype=dtype)
    ap = mask_ap_batch(scores, label)
    assert ap.shape == scores.shape[:2]
    for i in range(scores.shape[0]):
        ref = _ref_mask_ap(scores[i], label)
        assert sorted(ref) == list(np.flatnonzero(~np.isnan(ap[i])))  # NaN exactly where absent
        for c, v in ref.items():
            assert abs(ap[i, c] - v) <= 1e-12
        assert mask_ap_per_image(scores[i], label) == pytest.approx(ref, abs=1e-12, rel=0)
    # and the ranking definition itself (brute force through average_precision)
    valid = label != IGN
    for c in np.flatnonzero(~np.isnan(ap[1])):
        assert ap[1, c] == pytest.approx(average_precision(scores[1, c][valid], label[valid] == c), abs=1e-12)


def test_mask_ap_batch_infinite_scores_beside_ignored_pixels():
    """Ignored pixels are ranked as -inf internally and dropped: a valid pixel scored -inf (or +inf)
    must still count exactly as through average_precision on the valid pixels."""
    scores, label, _ = _random_case(5)
    assert (label == IGN).any()
    scores = scores.copy()
    valid = label != IGN
    c = int(np.bincount(label[valid]).argmax())
    pos = np.argwhere(valid & (label == c))
    neg = np.argwhere(valid & (label != c))
    scores[0, c, pos[0][0], pos[0][1]] = -np.inf  # a positive at -inf
    scores[0, c, neg[0][0], neg[0][1]] = -np.inf  # ... tied with a negative at -inf
    scores[0, c, neg[1][0], neg[1][1]] = np.inf
    scores[0, c, ~valid] = np.nan  # NaN on ignored pixels is not scored
    ap = mask_ap_batch(scores, label)
    assert ap[0, c] == pytest.approx(average_precision(scores[0, c][valid], label[valid] == c), abs=1e-12)


def test_mask_ap_batch_no_ignore_edge_cases():
    scores, label, _ = _random_case(3)
    label = np.where(label == IGN, 0, label)
    np.testing.assert_array_equal(
        mask_ap_batch(scores, label, ignore_index=None),
        mask_ap_batch(scores, label, ignore_index=IGN),  # no pixel is 255 any more
    )
    assert mask_ap_batch(scores[:0], label).shape == (0, scores.shape[1])
    all_ignored = np.full(label.shape, IGN, np.uint8)
    assert np.isnan(mask_ap_batch(scores, all_ignored)).all()
    bad = scores.copy()
    bad[2, 0, label == 0] = np.nan  # NaN on a scored pixel of a present class
    with pytest.raises(ValueError, match="NaN"):
        mask_ap_batch(bad, label)
    with pytest.raises(ValueError):
        mask_ap_batch(scores[0], label)  # [K, H, W] is not a batch
    with pytest.raises(ValueError):
        mask_ap_batch(scores[:, :, :-1], label)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tol", [0, 1, 2, 3])
def test_boundary_counts_batch_equals_reference(seed, tol):
    _, label, preds = _random_case(seed)
    k = 6
    got = boundary_counts_batch(preds, label, k, tolerance=tol)
    assert len(got) == preds.shape[0]
    for i, bc in enumerate(got):
        ref = _ref_boundary_counts(preds[i], label, k, tol)
        for name, v in ref.items():
            np.testing.assert_array_equal(getattr(bc, name), v, err_msg=f"stack {i} {name}")
        single = boundary_counts(preds[i].astype(np.int64), label, k, tolerance=tol)
        for name, v in ref.items():
            np.testing.assert_array_equal(getattr(single, name), v)


def test_boundary_counts_batch_more_than_64_classes_and_no_ignore():
    rng = np.random.default_rng(7)
    k = 70  # two 64-class words
    label = np.kron(rng.integers(0, k, size=(5, 6)), np.ones((2, 2), int))
    preds = np.stack([label, rng.integers(0, k, size=label.shape), np.roll(label, 1, axis=1)])
    for tol in (0, 2):
        got = boundary_counts_batch(preds, label, k, tolerance=tol, ignore_index=None)
        for i, bc in enumerate(got):
            ref = _ref_boundary_counts(preds[i], label, k, tol, ignore=None)
            for name, v in ref.items():
                np.testing.assert_array_equal(getattr(bc, name), v)
    with pytest.raises(ValueError):
        boundary_counts_batch(preds[0], label, k)  # [H, W] is not a batch
    with pytest.raises(ValueError):
        boundary_counts_batch(preds + 1, label, k)  # class 70 out of range


def test_accumulators_take_batched_results():
    scores, label, preds = _random_case(11)
    k = scores.shape[1]
    ap = mask_ap_batch(scores, label)
    counts = boundary_counts_batch(preds, label, k, tolerance=2)
    for i in range(scores.shape[0]):
        a_old, a_new = MaskAPAccumulator(k), MaskAPAccumulator(k)
        b_old, b_new = BoundaryF1Accumulator(k, tolerance=2), BoundaryF1Accumulator(k, tolerance=2)
        for _ in range(2):  # two "images"
            a_old.update(scores[i], label)
            a_new.update_ap(ap[i])
            b_old.update(preds[i], label)
            b_new.update_counts(counts[i])
        assert a_new.compute() == a_old.compute()
        assert b_new.compute() == b_old.compute()
    with pytest.raises(ValueError):
        MaskAPAccumulator(k).update_ap(ap[0, :-1])
    with pytest.raises(ValueError):
        BoundaryF1Accumulator(k + 1).update_counts(counts[0])


def test_dilate_disk_batched_bit_planes():
    rng = np.random.default_rng(5)
    planes = rng.random((3, 4, 9, 11)) < 0.08  # [S, bits, H, W]
    packed = (planes * (1 << np.arange(4))[None, :, None, None]).sum(axis=1).astype(np.uint8)
    for r in (0, 1, 2, 3):
        got = _dilate_disk(packed, r)  # [S, H, W] bit sets
        for s in range(3):
            for b in range(4):
                np.testing.assert_array_equal((got[s] >> b) & 1, _ref_dilate(planes[s, b], r))


def test_running_argmax_over_lazy_planes():
    from structtoken.metrics import running_argmax

    rng = np.random.default_rng(1)
    stack = rng.integers(0, 3, size=(7, 4, 5)).astype(np.float32)  # ties everywhere
    got = running_argmax(p for p in stack)  # a generator, consumed once
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, stack.argmax(axis=0))
    with pytest.raises(ValueError, match="at least one"):
        running_argmax(iter(()))


# ----------------------------------------------------------------------------- quantised mask AP
def test_mask_ap_quantized_known_answer():
    # one image 1x4, class 1 at pixels 0 and 2; class-1 scores 0.9, 0.8, 0.7, 0.1 -> ranks P N P N
    # AP = (1/1 + 2/3) / 2 = 5/6 exactly, at any number of levels that keeps the four scores apart
    label = np.array([[1, 0, 1, 0]])
    scores = np.zeros((1, 2, 1, 4), np.float32)
    scores[0, 1, 0] = [0.9, 0.8, 0.7, 0.1]
    scores[0, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    ap = mask_ap_quantized(scores, label, levels=1024)
    assert ap[0, 1] == pytest.approx(5 / 6, abs=1e-12)
    assert ap[0, 0] == pytest.approx(average_precision(scores[0, 0, 0], label[0] == 0), abs=1e-12)
    # two levels: floor((s - 0.1) / 0.8): only 0.9 reaches the top level; 0.8, 0.7, 0.1 tie on the bottom one
    # (one threshold): AP = 1/2 * 1/1 + 1/2 * 2/4
    ap2 = mask_ap_quantized(scores, label, levels=2)
    assert ap2[0, 1] == pytest.approx(1 / 2 + 1 / 2 * 2 / 4, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_ap_quantized_is_exact_on_scores_already_on_the_levels(seed):
    """Scores that are integers 0 .. L-1 with both ends present are their own levels: equal to the exact AP."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 50, (3, 4, 20, 30)).astype(np.float32)
    scores[..., 0, 0], scores[..., 0, 1] = 0, 49
    label = rng.integers(0, 4, (20, 30))
    label[5, :7] = 255
    np.testing.assert_allclose(
        mask_ap_quantized(scores, label, levels=50), mask_ap_batch(scores, label), rtol=0, atol=1e-12
    )


def test_mask_ap_quantized_close_to_exact_on_continuous_scores_and_handles_edges():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 5, 40, 60)).astype(np.float32)
    label = rng.integers(0, 5, (40, 60))
    label[label == 4] = 3  # class 4 absent -> NaN
    label[:3] = 255
    q, e = mask_ap_quantized(scores, label), mask_ap_batch(scores, label)
    assert np.isnan(q[:, 4]).all() and np.isnan(e[:, 4]).all()
    np.testing.assert_allclose(q[:, :4], e[:, :4], atol=1e-4)
    const = np.zeros((1, 5, 40, 60), np.float32)  # one level: AP = share of positives
    share = [(label == c).sum() / (label != 255).sum() for c in range(4)]
    np.testing.assert_allclose(mask_ap_quantized(const, label)[0, :4], share, atol=1e-12)
    bad = scores.copy()
    bad[0, 1, 10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mask_ap_quantized(bad, label)
    inf = scores.copy()
    inf[0, 2, 10, 10] = np.inf
    assert np.isfinite(mask_ap_quantized(inf, label)[0, 2])

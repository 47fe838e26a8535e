"""Structure metrics for per-block segmentation maps.

Pure functions: numpy arrays (or CPU/GPU torch tensors, converted to numpy) in, numpy arrays or
floats out. No I/O, no model code.

Conventions used throughout
---------------------------
* ``K`` is the number of classes, ``H, W`` the label resolution.
* A *score map* is a float array ``[K, H, W]`` (any scale: logits, probabilities, similarities).
* A *label* is an integer array ``[H, W]`` with values ``0..K-1`` or ``ignore_index`` (255 by
  default); ignored pixels never count in any metric. ``ignore_index=None`` disables ignoring.
* A *prediction* is an integer array ``[H, W]`` with values ``0..K-1``.
* Absent classes give ``NaN`` in per-class arrays; the dataset accumulators turn ``NaN`` into
  ``None`` in the lists they return so that the result is JSON-serialisable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from structtoken.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    running_argmax,
)
from structtoken.metrics import as_int_array as _as_int_array
from structtoken.metrics import check_label_range as _check_label_range
from structtoken.metrics import check_num_classes as _check_num_classes
from structtoken.metrics import check_pred_range as _check_pred_range
from structtoken.metrics import nan_to_none as _nan_to_none
from structtoken.metrics import to_numpy as _to_numpy
from structtoken.metrics import valid_mask as _valid_mask

__all__ = [
    "BoundaryCounts",
    "BoundaryF1Accumulator",
    "ConfusionAccumulator",
    "MaskAPAccumulator",
    "argmax_prediction",
    "argmax_stacks",
    "average_precision",
    "block_metrics",
    "boundary_counts",
    "boundary_counts_batch",
    "boundary_f1",
    "confusion_matrix",
    "iou_per_class",
    "mask_ap_batch",
    "mask_ap_per_image",
    "mask_ap_quantized",
    "mean_iou",
    "pixel_accuracy",
    "upsample_scores",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# score maps -> predictions
# --------------------------------------------------------------------------------------------


def _linear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation, ``align_corners=False``.

    Same rule as ``torch.nn.functional.interpolate``: ``src = (dst + 0.5) * in / out - 0.5``,
    clamped at 0 below; the upper neighbour is clamped at ``in - 1``.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    return i0, i1, w1


def upsample_scores(scores: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a score map ``[K, h, w]`` to ``[K, H, W]`` with ``size = (H, W)``.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no
    antialiasing). Floating inputs keep their dtype; integer inputs become float64. When the size
    already matches, a float copy of the input is returned.
    """
    s = _to_numpy(scores)
    if s.ndim != 3:
        raise ValueError(f"scores must be [K, h, w], got shape {s.shape}")
    out_h, out_w = (int(v) for v in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    _, in_h, in_w = s.shape
    if (in_h, in_w) == (out_h, out_w):
        return s.copy()
    y0, y1, wy = _linear_indices(in_h, out_h)
    x0, x1, wx = _linear_indices(in_w, out_w)
    wy = wy.astype(s.dtype)[None, :, None]
    wx = wx.astype(s.dtype)[None, None, :]
    rows = s[:, y0, :] * (1 - wy) + s[:, y1, :] * wy  # [K, H, w]
    out = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx  # [K, H, W]
    return out.astype(s.dtype, copy=False)


def argmax_prediction(scores: Any) -> np.ndarray:
    """Per-pixel class of a score map ``[K, H, W]`` → ``[H, W]`` int64.

    Ties resolve to the lowest class index (``np.argmax`` semantics). ``NaN`` scores raise
    ``ValueError`` (they would silently win the argmax).
    """
    s = _to_numpy(scores)
    if s.ndim != 3:
        raise ValueError(f"scores must be [K, H, W], got shape {s.shape}")
    if s.shape[0] < 1:
        raise ValueError("scores must have at least one class channel")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return np.argmax(s, axis=0).astype(np.int64)


def argmax_stacks(scores: Any) -> np.ndarray:
    """Per-pixel class of ``S`` score stacks ``[S, K, H, W]`` (float) → ``[S, H, W]`` (uint8 for
    ``K <= 256``, else int32).

    Equal to ``np.argmax(scores, axis=1)`` (ties resolve to the lowest class index), through
    :func:`structtoken.metrics.running_argmax` (about 3x faster on the embedded set's maps). ``NaN``
    scores raise ``ValueError`` (they would silently win ``np.argmax``).
    """
    s = _to_numpy(scores)
    if s.ndim != 4 or s.shape[1] < 1:
        raise ValueError(f"scores must be [S, K, H, W] with K >= 1, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    k = s.shape[1]
    return running_argmax((s[:, c] for c in range(k)), np.uint8 if k <= 256 else np.int32)


# --------------------------------------------------------------------------------------------
# confusion-matrix metrics
# --------------------------------------------------------------------------------------------


# confusion_matrix, iou_per_class, mean_iou, pixel_accuracy: structtoken.metrics (imported above)


# --------------------------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------------------------


def average_precision(scores: Any, target: Any) -> float:
    """Average precision of ranking items by ``scores`` (1-D, ``[N]``) for a binary ``target``.

    Step-wise definition ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds in
    descending order; items with equal scores form ONE threshold (as scikit-learn's
    ``average_precision_score``). ``target`` holds 0/1 (or bool). Returns ``NaN`` if ``target``
    has no positives. Raises ``ValueError`` for shape mismatches, non-binary targets or ``NaN``
    scores.
    """
    s = _to_numpy(scores)
    t = _to_numpy(target)
    if s.ndim != 1 or t.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"scores and target must be 1-D of equal length, got {s.shape} and {t.shape}")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if t.dtype != bool and t.size and not np.all((t == 0) | (t == 1)):
        raise ValueError("target must be binary (0/1)")
    t = t.astype(np.int64)
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp_cum = np.cumsum(t[order])
    # last index of each group of equal scores = one threshold
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = tp_cum[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _ap_from_sorted(sorted_all: np.ndarray, sorted_pos: np.ndarray) -> float:
    """Average precision from all scores sorted ascending (``[N]``) and the positives' scores
    sorted ascending (``[P]``, a sub-multiset of ``sorted_all``).

    Same value as :func:`average_precision` (ties form one threshold) without an argsort: a
    positive with score ``v`` sits in the threshold group whose precision is
    ``#positives >= v / #items >= v``, and ``AP = mean over positives of that precision``.
    ``#items >= v`` is one ``searchsorted`` into ``sorted_all``; ``#positives >= v`` comes from the
    start of ``v``'s tie group inside ``sorted_pos`` (a running maximum, no second search).
    """
    n_pos = sorted_pos.size
    if n_pos == 0:
        return float("nan")
    all_ge = sorted_all.size - np.searchsorted(sorted_all, sorted_pos, side="left")
    rank = np.arange(n_pos)
    starts = np.empty(n_pos, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_pos[1:], sorted_pos[:-1], out=starts[1:])
    pos_ge = n_pos - np.maximum.accumulate(np.where(starts, rank, 0))  # = n_pos - #positives < v
    return float(np.sum(pos_ge / all_ge) / n_pos)


def _prepare_scores_label(scores: Any, label: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a score stack (``ndim`` = 3: ``[K, H, W]``, 4: ``[S, K, H, W]``) and its label
    ``[H, W]``; return (float32/float64 scores, int64 label)."""
    s = _to_numpy(scores)
    g = _as_int_array(_to_numpy(label), "label")
    shape = "[K, H, W]" if ndim == 3 else "[S, K, H, W]"
    if s.ndim != ndim or g.ndim != 2 or s.shape[-2:] != g.shape:
        raise ValueError(f"scores must be {shape} matching label [H, W]; got {s.shape}, {g.shape}")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    return s, g


def mask_ap_batch(scores: Any, label: Any, ignore_index: int | None = 255) -> np.ndarray:
    """Per-class mask AP of ``S`` score stacks of one image → ``[S, K]`` float64.

    ``scores`` is ``[S, K, H, W]`` (e.g. every stage of every head), ``label`` is ``[H, W]``.
    Entry ``[s, c]`` is ``average_precision(scores[s, c], label == c)`` over the non-ignored
    pixels, ``NaN`` where class ``c`` is absent from the label (non-ignored pixels). Equal to
    :func:`mask_ap_per_image` on each stack.

    Cost: per (stack, present class) one copy and value sort of the channel (float32 maps stay
    float32; ignored pixels set to ``-inf`` and dropped from the sorted front, no gather), one sort of
    the class's ``P`` positives and one ``searchsorted`` of ``P`` into the ``N`` valid scores; the
    per-class positive indices are computed once per label.
    ``NaN`` in a scored channel (present class, valid pixel) raises ``ValueError``.
    """
    s, g = _prepare_scores_label(scores, label, 4)
    n_stacks, k = s.shape[:2]
    valid = _valid_mask(g, ignore_index)
    _check_label_range(g, valid, k)
    out = np.full((n_stacks, k), np.nan)
    gf, valid_flat = g.ravel(), valid.ravel()
    present = np.flatnonzero(np.bincount(gf[valid_flat], minlength=k))  # classes of valid pixels
    if present.size == 0 or n_stacks == 0:
        return out
    flat = s.reshape(n_stacks, k, -1)  # [S, K, H*W]
    ignored = np.flatnonzero(~valid_flat)  # [I] pixels that rank below every score (-inf), see below
    for c in present:
        pos_idx = np.flatnonzero((gf == c) & valid_flat)  # [P]
        for i in range(n_stacks):
            x = flat[i, c].copy()  # [H*W] own copy, sorted in place
            # ignored pixels become -inf, the minimum: after the sort they are the first I entries
            # (ties with a valid -inf are equal values), so dropping I entries leaves exactly the valid
            # pixels' sorted scores, without gathering the valid pixels first (cheaper)
            x[ignored] = -np.inf
            xp = x.take(pos_idx)
            xp.sort()
            x.sort()  # NaN sorts last
            if np.isnan(x[-1]):
                raise ValueError("scores contain NaN")
            x = x[ignored.size :]
            out[i, c] = _ap_from_sorted(x, xp)
    return out


AP_LEVELS = 65536
"""Levels of the quantised mask AP (:func:`mask_ap_quantized`): each (stack, class) channel of an image is
mapped linearly from its own [min, max] over the valid pixels onto 0 .. AP_LEVELS - 1."""


def mask_ap_quantized(scores: Any, label: Any, ignore_index: int | None = 255, levels: int = AP_LEVELS) -> np.ndarray:
    """Per-class mask AP of ``S`` score stacks of one image with the scores quantised → ``[S, K]`` float64.

    ``scores`` ``[S, K, H, W]``, ``label`` ``[H, W]``. Each channel's valid pixels are mapped linearly from
    the channel's own [min, max] onto ``levels`` integer levels (floor; a constant channel is one level);
    the AP is then *exactly* :func:`average_precision` of the quantised scores (pixels on one level tie and
    form one threshold), computed from two histograms per channel (all pixels, positives) instead of a
    sort: ``AP = Σ_b pos_b / P · TP(≥b) / N(≥b)``. A monotone map of a channel moves the value only
    through which pixels share a level. ``NaN`` where class ``c`` is absent; ``NaN`` scores raise.
    """
    s, g = _prepare_scores_label(scores, label, 4)
    n_stacks, k = s.shape[:2]
    valid = _valid_mask(g, ignore_index)
    _check_label_range(g, valid, k)
    out = np.full((n_stacks, k), np.nan)
    gv = g.ravel()[valid.ravel()]  # [N]
    present = np.flatnonzero(np.bincount(gv, minlength=k))
    if present.size == 0 or n_stacks == 0:
        return out
    x = s.reshape(n_stacks, k, -1)[:, present][:, :, valid.ravel()]  # [S, C, N]
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError("scores contain NaN")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # +-inf: rank them at the ends
        x = np.nan_to_num(x.astype(np.float64), posinf=np.finfo(np.float64).max, neginf=np.finfo(np.float64).min)
        x = np.clip(x, -1e300, 1e300)
        lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    span = (hi - lo).astype(np.float64)
    scale = np.where(span > 0, (levels - 1) / np.where(span > 0, span, 1.0), 0.0)
    q = (x - lo) * scale  # [S, C, N] float64 in [0, levels - 1] (up to rounding)
    np.clip(q, 0, levels - 1, out=q)
    n_ch = n_stacks * present.size
    np.floor(q, out=q)
    q += (np.arange(n_ch, dtype=np.float64) * levels).reshape(n_stacks, present.size, 1)  # exact integers
    q = q.astype(np.intp)
    hist_all = np.bincount(q.ravel(), minlength=n_ch * levels).reshape(n_stacks, present.size, levels)
    slot = np.full(k, -1, dtype=np.int64)
    slot[present] = np.arange(present.size)
    own = slot[gv]  # [N] each pixel's class among the present ones: its positives' channel
    pos_q = np.take_along_axis(q, np.broadcast_to(own[None, None, :], (n_stacks, 1, own.size)), axis=1)
    hist_pos = np.bincount(pos_q.ravel(), minlength=n_ch * levels).reshape(n_stacks, present.size, levels)
    n_ge = np.cumsum(hist_all[..., ::-1], axis=-1)[..., ::-1]
    tp_ge = np.cumsum(hist_pos[..., ::-1], axis=-1)[..., ::-1]
    n_pos = hist_pos.sum(-1)  # [S, C]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hist_pos * (tp_ge / np.maximum(n_ge, 1))).sum(-1) / n_pos
    out[:, present] = ap
    return out


def mask_ap_per_image(score_maps: Any, label: Any, ignore_index: int | None = 255) -> dict[int, float]:
    """Per-class mask AP of one image.

    ``score_maps`` is ``[K, H, W]`` (same ``H, W`` as ``label``). For every class ``c`` present in
    the label among non-ignored pixels, returns ``average_precision(score_maps[c], label == c)``
    over the non-ignored pixels. Scale-free: any monotone transform of a channel gives the same AP.
    Keys are sorted class indices. One stack of :func:`mask_ap_batch` (use that for many stacks).
    """
    s, g = _prepare_scores_label(score_maps, label, 3)
    ap = mask_ap_batch(s[None], g, ignore_index)[0]
    return {int(c): float(ap[c]) for c in np.flatnonzero(~np.isnan(ap))}


# --------------------------------------------------------------------------------------------
# boundary F1
# --------------------------------------------------------------------------------------------


def _boundary_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of a class map ``[..., H, W]`` with a 4-neighbour of another class → bool, same shape.

    This is the union over classes ``c`` of the boundaries of the masks ``labels == c`` (mask
    pixels with a 4-neighbour outside the mask); the image border is not a boundary.
    """
    out = np.zeros(labels.shape, dtype=bool)
    d = labels[..., 1:, :] != labels[..., :-1, :]
    out[..., 1:, :] |= d
    out[..., :-1, :] |= d
    d = labels[..., :, 1:] != labels[..., :, :-1]
    out[..., :, 1:] |= d
    out[..., :, :-1] |= d
    return out


def _dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """OR-dilation of ``mask [..., H, W]`` by the disk ``{(dy, dx): dy² + dx² <= radius²}``.

    ``mask`` is bool (a binary dilation) or an unsigned integer array of bit sets (every bit is
    dilated on its own, so one pass dilates up to 64 class masks packed one bit per class).
    Leading axes are a batch. Decomposed into row segments: horizontal dilations of half-width
    ``0..radius`` are built incrementally, then each row ``dy`` of the disk ORs the vertically
    shifted dilation of half-width ``floor(sqrt(r² - dy²))``. O(radius) in-place array passes;
    nothing enters from outside the image.
    """
    if radius <= 0:
        return mask.copy()
    horiz = [mask]
    for w in range(1, radius + 1):
        cur = horiz[-1].copy()
        cur[..., :, w:] |= mask[..., :, :-w]
        cur[..., :, :-w] |= mask[..., :, w:]
        horiz.append(cur)
    out = horiz[radius].copy()
    for dy in range(1, radius + 1):
        src = horiz[math.isqrt(radius * radius - dy * dy)]
        out[..., dy:, :] |= src[..., :-dy, :]
        out[..., :-dy, :] |= src[..., dy:, :]
    return out


@dataclass
class BoundaryCounts:
    """Per-class boundary matching counts of one image (all arrays are ``[K]``).

    ``pred_matched / pred_total`` is the boundary precision, ``gt_matched / gt_total`` the recall.
    ``present_pred`` / ``present_gt`` say whether the class occurs among non-ignored pixels.
    """

    pred_matched: np.ndarray
    pred_total: np.ndarray
    gt_matched: np.ndarray
    gt_total: np.ndarray
    present_pred: np.ndarray
    present_gt: np.ndarray


def _bit_dtype(n_bits: int) -> type[np.unsignedinteger]:
    """Smallest unsigned dtype with ``n_bits`` (<= 64) bits."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if n_bits <= np.iinfo(dt).bits:
            return dt
    raise ValueError(f"no unsigned dtype has {n_bits} bits")


def _as_class_map(x: Any, name: str) -> np.ndarray:
    """Integer class map without widening integer inputs (uint8 stays uint8); bool → uint8."""
    a = _to_numpy(x)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return a
    return _as_int_array(a, name)


_BOUNDARY_CHUNK = 8  # stacks per pass: [8, 360, 480] uint16 bit planes are ~2.8 MB


def boundary_counts_batch(
    preds: Any, label: Any, num_classes: int, tolerance: int = 2, ignore_index: int | None = 255
) -> list[BoundaryCounts]:
    """Boundary matching counts per class for ``S`` predictions of one image → one
    :class:`BoundaryCounts` (arrays ``[K]``) per prediction, equal to :func:`boundary_counts`.

    ``preds`` is ``[S, H, W]`` (e.g. the argmax of every stage of every head; uint8 is fine and
    not widened), ``label`` is ``[H, W]``. All classes are handled at once: the boundary pixels
    of a class map are the pixels with a 4-neighbour of another class, each tagged with its
    class as one bit of an unsigned integer (64 classes per word); one bitwise disk dilation of
    that bit plane gives every class's tolerance band. The label's boundary and band are computed
    once for all ``S`` predictions.
    """
    k = _check_num_classes(num_classes)
    p_all = _as_class_map(preds, "pred")
    g = _as_int_array(_to_numpy(label), "label")
    if p_all.ndim != 3 or g.ndim != 2 or p_all.shape[1:] != g.shape:
        raise ValueError(f"preds must be [S, H, W] matching label [H, W]; got {p_all.shape}, {g.shape}")
    if isinstance(tolerance, bool) or int(tolerance) != tolerance or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative integer, got {tolerance!r}")
    tol = int(tolerance)
    valid = _valid_mask(g, ignore_index)
    _check_label_range(g, valid, k)
    _check_pred_range(p_all, k)
    n_stacks, h, w = p_all.shape
    hw = h * w
    pred_matched = np.zeros((n_stacks, k), dtype=np.int64)
    pred_total = np.zeros((n_stacks, k), dtype=np.int64)
    gt_matched = np.zeros((n_stacks, k), dtype=np.int64)
    present_pred = np.zeros((n_stacks, k), dtype=bool)

    gv = g[valid]
    present_gt = np.bincount(gv, minlength=k) > 0
    # label boundary pixels (ignored pixels take part in the neighbour test, then are dropped)
    gb_idx = np.flatnonzero((_boundary_pixels(g) & valid).ravel())  # [nb] flat pixel indices
    gb_cls = g.ravel()[gb_idx]  # [nb] their classes
    gt_total = np.bincount(gb_cls, minlength=k).astype(np.int64)

    for lo in range(0, k, 64):  # one 64-class word at a time (a single word for K <= 64)
        n_bits = min(64, k - lo)
        dt = _bit_dtype(n_bits)
        shifts = np.arange(n_bits, dtype=dt)
        lut = np.zeros(k, dtype=dt)
        lut[lo : lo + n_bits] = np.left_shift(dt(1), shifts)
        v_mask = np.where(valid, np.iinfo(dt).max, 0).astype(dt)  # [H, W]: all bits on valid pixels
        g_bits = np.zeros(hw, dtype=dt)
        g_bits[gb_idx] = lut[gb_cls]
        g_bits = g_bits.reshape(h, w)  # [H, W]: class bit on valid GT boundary pixels
        g_band = _dilate_disk(g_bits, tol)  # [H, W]: bit c set within tol of a class-c GT boundary
        keep = g_bits.ravel()[gb_idx] != 0
        gi, gc = gb_idx[keep], gb_cls[keep]  # this word's GT boundary pixels and classes
        g_word = g_bits.ravel()[gi]
        for s0 in range(0, n_stacks, _BOUNDARY_CHUNK):
            p = p_all[s0 : s0 + _BOUNDARY_CHUNK]  # [n, H, W]
            n = p.shape[0]
            # class bit per pixel; for K <= 64 a shift is ~10x faster than the table lookup
            bits = np.left_shift(dt(1), p.astype(dt, copy=False)) if k <= 64 else lut[p]
            bits &= v_mask  # [n, H, W]: class bit on valid pixels
            word = np.bitwise_or.reduce(bits.reshape(n, hw), axis=1)  # [n]: classes present
            present_pred[s0 : s0 + n, lo : lo + n_bits] |= ((word[:, None] >> shifts) & 1).astype(bool)
            p_bits = bits * _boundary_pixels(p)  # [n, H, W]: class bit on valid boundary pixels
            p_band = _dilate_disk(p_bits, tol)  # [n, H, W]
            hit = (p_bits & g_band) != 0  # [n, H, W]: predicted boundary pixel within tol of its GT
            g_hit = (p_band.reshape(n, hw)[:, gi] & g_word) != 0  # [n, nb]: GT boundary pixel matched
            for i in range(n):
                pi = p[i]
                pred_total[s0 + i] += np.bincount(pi[p_bits[i] != 0], minlength=k)
                pred_matched[s0 + i] += np.bincount(pi[hit[i]], minlength=k)
                gt_matched[s0 + i] += np.bincount(gc[g_hit[i]], minlength=k)
    return [
        BoundaryCounts(
            pred_matched=pred_matched[i],
            pred_total=pred_total[i],
            gt_matched=gt_matched[i],
            gt_total=gt_total.copy(),
            present_pred=present_pred[i],
            present_gt=present_gt.copy(),
        )
        for i in range(n_stacks)
    ]


def boundary_counts(
    pred: Any, label: Any, num_classes: int, tolerance: int = 2, ignore_index: int | None = 255
) -> BoundaryCounts:
    """Boundary matching counts per class for one ``[H, W]`` prediction/label pair.

    Boundaries are taken from the full masks ``pred == c`` and ``label == c``; boundary pixels
    that sit on ignored label pixels are then dropped from both sets. A boundary pixel is matched
    when a boundary pixel of the other set lies within Euclidean distance ``tolerance``.
    One prediction of :func:`boundary_counts_batch` (use that for many predictions).
    """
    p = _as_class_map(pred, "pred")
    g = _to_numpy(label)
    if p.shape != g.shape:
        raise ValueError(f"pred and label shapes differ: {p.shape} vs {g.shape}")
    if p.ndim != 2:
        raise ValueError(f"pred and label must be [H, W], got shape {p.shape}")
    return boundary_counts_batch(p[None], g, num_classes, tolerance, ignore_index)[0]


def _f1_from_counts(
    pred_matched: np.ndarray,
    pred_total: np.ndarray,
    gt_matched: np.ndarray,
    gt_total: np.ndarray,
    present: np.ndarray,
    one_sided: np.ndarray,
) -> np.ndarray:
    """F1 per class from (pooled) counts ``[K]``; conventions as in :func:`boundary_f1`.

    ``present``: class occurs in GT or prediction (else NaN). ``one_sided``: class occurs in only
    one of them (in some image); only used when both boundary totals are 0.
    """
    k = pred_total.shape[0]
    f1 = np.full(k, np.nan)
    for c in range(k):
        if not present[c]:
            continue
        if pred_total[c] == 0 and gt_total[c] == 0:
            # both masks present but neither has a boundary (e.g. both fill the valid image)
            f1[c] = 0.0 if one_sided[c] else 1.0
            continue
        precision = pred_matched[c] / pred_total[c] if pred_total[c] else 0.0
        recall = gt_matched[c] / gt_total[c] if gt_total[c] else 0.0
        f1[c] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return f1


def boundary_f1(
    pred: Any, label: Any, num_classes: int, tolerance: int = 2, ignore_index: int | None = 255
) -> np.ndarray:
    """Boundary F1 (BF score, Csurka et al. 2013) per class → ``[K]`` float64.

    ``pred`` and ``label`` are ``[H, W]``. For each class the boundary of a mask is the set of mask
    pixels with a 4-neighbour outside the mask (the image border is not a boundary). Boundary
    pixels on ignored label pixels are dropped from both sets. Precision = fraction of predicted
    boundary pixels within ``tolerance`` px (Euclidean, i.e. a disk) of a GT boundary pixel;
    recall = fraction of GT boundary pixels within ``tolerance`` of a predicted one;
    ``F1 = 2PR / (P + R)`` (0 if ``P + R = 0``).

    Presence is judged on non-ignored pixels: a class absent from both GT and prediction gives
    ``NaN``; present in exactly one gives 0. If present in both but one boundary set is empty, the
    undefined ratio counts as 0 (F1 = 0); if both boundary sets are empty, F1 = 1.
    """
    bc = boundary_counts(pred, label, num_classes, tolerance, ignore_index)
    return _f1_from_counts(
        bc.pred_matched,
        bc.pred_total,
        bc.gt_matched,
        bc.gt_total,
        present=bc.present_pred | bc.present_gt,
        one_sided=bc.present_pred ^ bc.present_gt,
    )


# --------------------------------------------------------------------------------------------
# dataset accumulators
# --------------------------------------------------------------------------------------------


# ConfusionAccumulator: structtoken.metrics (imported above)


class MaskAPAccumulator:
    """Dataset mask AP: per class, the mean of per-image APs over the images where the class is
    present in the label; then the mean over classes that appeared at least once."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.ap_sum = np.zeros(self.num_classes, dtype=np.float64)
        self.ap_count = np.zeros(self.num_classes, dtype=np.int64)
        self.num_images = 0

    def update(self, score_maps: Any, label: Any) -> None:
        """Add one image: ``score_maps [K, H, W]`` (K = ``num_classes``) and ``label [H, W]``."""
        s = _to_numpy(score_maps)
        if s.ndim != 3 or s.shape[0] != self.num_classes:
            raise ValueError(f"score_maps must be [{self.num_classes}, H, W], got shape {s.shape}")
        self.update_ap(mask_ap_batch(s[None], label, self.ignore_index)[0])

    def update_ap(self, ap_per_class: Any) -> None:
        """Add one image from its per-class APs ``[K]`` (``NaN`` = class absent from the label), e.g.
        one row of :func:`mask_ap_batch` computed for many stacks at once."""
        ap = np.asarray(ap_per_class, dtype=np.float64)
        if ap.shape != (self.num_classes,):
            raise ValueError(f"ap_per_class must be [{self.num_classes}], got shape {ap.shape}")
        seen = ~np.isnan(ap)
        self.ap_sum[seen] += ap[seen]
        self.ap_count[seen] += 1
        self.num_images += 1

    def compute(self) -> dict[str, Any]:
        """``{"mask_ap": float, "ap_per_class": list[float | None]}``.

        ``mask_ap`` is ``NaN`` when no class was ever present; never-present classes are ``None``.
        """
        per_class = np.full(self.num_classes, np.nan)
        seen = self.ap_count > 0
        per_class[seen] = self.ap_sum[seen] / self.ap_count[seen]
        return {
            "mask_ap": float(per_class[seen].mean()) if seen.any() else float("nan"),
            "ap_per_class": _nan_to_none(per_class),
        }


class BoundaryF1Accumulator:
    """Dataset boundary F1 with counts pooled per class over images.

    For every class, matched and total boundary-pixel counts (predicted and GT side) are summed
    over the dataset, giving one pooled precision and recall per class and hence one F1 per class
    (large images/objects weigh more than in a mean of per-image F1s, and images where a class
    has no boundary do not produce undefined ratios). ``boundary_f1`` is the mean of these F1s
    over the classes present (in GT or prediction, non-ignored pixels) in at least one image.
    Classes never present are ``None``. A class whose pooled counts are all zero gets 1 if it was
    present in both GT and prediction in every image where it appeared, else 0 (consistent with
    :func:`boundary_f1`).
    """

    def __init__(self, num_classes: int, tolerance: int = 2, ignore_index: int | None = 255) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        k = self.num_classes
        self.pred_matched = np.zeros(k, dtype=np.int64)
        self.pred_total = np.zeros(k, dtype=np.int64)
        self.gt_matched = np.zeros(k, dtype=np.int64)
        self.gt_total = np.zeros(k, dtype=np.int64)
        self.present = np.zeros(k, dtype=bool)
        self.one_sided = np.zeros(k, dtype=bool)
        self.num_images = 0

    def update(self, pred: Any, label: Any) -> None:
        """Add one prediction/label pair, both ``[H, W]``."""
        self.update_counts(boundary_counts(pred, label, self.num_classes, self.tolerance, self.ignore_index))

    def update_counts(self, bc: BoundaryCounts) -> None:
        """Add one image from its :class:`BoundaryCounts` (arrays ``[K]``), e.g. one item of
        :func:`boundary_counts_batch` computed for many predictions at once (with this
        accumulator's ``tolerance`` and ``ignore_index``)."""
        if bc.pred_total.shape != (self.num_classes,):
            raise ValueError(f"counts must be [{self.num_classes}], got shape {bc.pred_total.shape}")
        self.pred_matched += bc.pred_matched
        self.pred_total += bc.pred_total
        self.gt_matched += bc.gt_matched
        self.gt_total += bc.gt_total
        self.present |= bc.present_pred | bc.present_gt
        self.one_sided |= bc.present_pred ^ bc.present_gt
        self.num_images += 1

    def compute(self) -> dict[str, Any]:
        """``{"boundary_f1": float, "f1_per_class": list[float | None]}`` (``NaN`` if no class)."""
        f1 = _f1_from_counts(
            self.pred_matched, self.pred_total, self.gt_matched, self.gt_total, self.present, self.one_sided
        )
        return {
            "boundary_f1": float(f1[self.present].mean()) if self.present.any() else float("nan"),
            "f1_per_class": _nan_to_none(f1),
        }


# --------------------------------------------------------------------------------------------
# convenience
# --------------------------------------------------------------------------------------------


def block_metrics(scores: Any, label: Any, tolerance: int = 2, ignore_index: int | None = 255) -> dict[str, float]:
    """All metrics of one block on one image.

    ``scores`` is ``[K, h, w]`` (upsampled bilinearly to the label size when needed), ``label``
    is ``[H, W]``. Returns ``{"miou", "pixel_accuracy", "mask_ap", "boundary_f1"}`` as floats
    (``NaN`` when undefined); ``mask_ap`` and ``boundary_f1`` are means over present classes.
    """
    g = _to_numpy(label)
    if g.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {g.shape}")
    s = upsample_scores(scores, g.shape)
    k = s.shape[0]
    pred = argmax_prediction(s)
    cm = confusion_matrix(pred, g, k, ignore_index)
    aps = list(mask_ap_per_image(s, g, ignore_index).values())
    bf = boundary_f1(pred, g, k, tolerance, ignore_index)
    bf_present = bf[~np.isnan(bf)]
    return {
        "miou": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "mask_ap": float(np.mean(aps)) if aps else float("nan"),
        "boundary_f1": float(bf_present.mean()) if bf_present.size else float("nan"),
    }

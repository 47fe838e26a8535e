"""The paper comparison and the deep-supervision probe, as functions over :class:`ImageMaps`.

* :func:`supported_analyses` says which analyses a model set supports, and why not.
* :func:`probe_summary` turns per-seed final mIoUs (and, optionally, dataset per-block metrics)
  into numbers and verdict sentences computed from them.
* The *views* (:func:`prediction_view`, :func:`comparison_view`, :func:`attention_view`) build the
  figures, the table and the notes of one analysis of one image from cached arrays. They are
  what :func:`analysis.service.analyze` calls.

Figures for one image are built for speed (the UI redraws them whenever a control changes): the
block-by-block grids are drawn as one mosaic image in a single matplotlib axes
(:func:`mosaic_figure`) and one plotly axes (:func:`mosaic_plotly`). The dataset report
(:mod:`analysis.report`) uses the full :func:`analysis.figures.comparison_figure`, which also draws
ground-truth contours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import plotly.graph_objects as go
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from structtoken.config import HEAD_NAMES, PER_PIXEL_HEADS, STRUCTTOKEN_HEADS, ModelConfig

from . import figures as F
from .maps import ImageMaps, normalize_maps, top_channels, upsample_maps

__all__ = [
    "ANALYSES",
    "View",
    "attention_view",
    "comparison_heads",
    "comparison_view",
    "mosaic_figure",
    "mosaic_plotly",
    "prediction_view",
    "probe_summary",
    "stage_agreement",
    "stage_indices",
    "structtoken_heads",
    "supported_analyses",
]

ANALYSES = ("prediction", "comparison", "probe", "attention")

NORMALIZATION_LABELS = {
    "shared": "min–max per class, shared by all stages and heads shown",
    "per_map": "min–max of each map on its own",
    "softmax": "softmax over classes at each stage (class probability)",
}

_MOSAIC_MAX_WIDTH_PX = 1700
_PLOTLY_MAX_SIDE = 128


# ------------------------------------------------------------------------------------ support
def _kind(head: str) -> str:
    return HEAD_NAMES.get(head, (head, False))[0]


def structtoken_heads(heads: Sequence[str]) -> list[str]:
    """The StructToken heads (cse / sse / pwe) among ``heads``, in order."""
    return [h for h in heads if _kind(h) in STRUCTTOKEN_HEADS]


def attention_heads(heads: Sequence[str]) -> list[str]:
    """The heads with class x channel attention (cse / sse) among ``heads``, in order."""
    return [h for h in heads if _kind(h) in ("cse", "sse")]


def supported_analyses(cfg: ModelConfig) -> dict[str, str | None]:
    """Analysis name -> None when the set ``cfg`` supports it, else the reason (a sentence).

    ``prediction`` always; ``comparison`` needs a StructToken head and ``per_pixel``; ``probe`` needs
    ``per_pixel`` and ``per_pixel_ds``; ``attention`` needs a CSE or SSE head.
    """
    heads = cfg.heads
    single = len(heads) == 1
    what = "this checkpoint" if single else "this set"
    out: dict[str, str | None] = {"prediction": None}
    if "per_pixel" not in heads:
        out["comparison"] = (
            f"{what} has no per-pixel baseline head; the paper comparison needs one (the embedded CamVid set has it)"
        )
    elif not structtoken_heads(heads):
        out["comparison"] = f"{what} has no StructToken head (cse, sse or pwe) to compare with the per-pixel baseline"
    else:
        out["comparison"] = None
    missing = [h for h in PER_PIXEL_HEADS if h not in heads]
    out["probe"] = (
        None
        if not missing
        else (
            f"{what} has no {' and no '.join(missing)} head; the deep-supervision probe needs both the "
            "per-pixel baseline and its deeply supervised twin (the embedded CamVid set has them)"
        )
    )
    out["attention"] = (
        None
        if attention_heads(heads)
        else (
            f"{what} has no CSE or SSE head: class x channel attention exists only in those "
            "(PWE mixes channels with a 1x1 convolution, the per-pixel baseline has none)"
        )
    )
    return out


def comparison_heads(heads: Sequence[str], analysis: str, head: str | None) -> list[str]:
    """Which heads a grid shows, in order: ``comparison`` -> [StructToken head, per_pixel];
    ``probe`` -> [per_pixel, per_pixel_ds, StructToken head (if the set has one)]."""
    st = head if head in structtoken_heads(heads) else next(iter(structtoken_heads(heads)), None)
    if analysis == "comparison":
        return [h for h in (st, "per_pixel") if h is not None and h in heads]
    if analysis == "probe":
        return [h for h in ("per_pixel", "per_pixel_ds", st) if h is not None and h in heads]
    raise ValueError(f"no grid for analysis {analysis!r}")


# ------------------------------------------------------------------------------- probe summary
def _as_points(values: Sequence[float | None]) -> np.ndarray:
    """Finite values as mIoU points: fractions are scaled by 100, values > 1 are taken as percent."""
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size and np.all(np.abs(a) <= 1.0):
        a = a * 100.0
    return a


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Format two magnitudes with 1 decimal, or 2 when 1 would make them look equal."""
    for nd in (1, 2, 3):
        sa, sb = f"{a:.{nd}f}", f"{b:.{nd}f}"
        if sa != sb or a == b:
            return sa, sb
    return f"{a:.3f}", f"{b:.3f}"


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    a = _as_points(values)
    n = int(a.size)
    return {
        "mean": float(a.mean()) if n else None,
        "std": float(a.std(ddof=1)) if n > 1 else None,
        "n": n,
        "values": [float(v) for v in a],
    }


def _block_values(metrics: Mapping[str, Any] | None, metric: str) -> list[float]:
    if not metrics:
        return []
    out = []
    for blk in metrics.get("blocks") or []:
        v = (blk or {}).get(metric)
        out.append(float("nan") if v is None else 100.0 * float(v))
    return out


def _blocks_list(idx: Sequence[int]) -> str:
    labels = [str(i + 1) for i in idx]
    if len(labels) == 1:
        return f"block {labels[0]}"
    return "blocks " + ", ".join(labels[:-1]) + " and " + labels[-1]


def _relation_sentence(
    name_a: str, vals_a: Sequence[float], name_b: str, vals_b: Sequence[float], metric: str
) -> str | None:
    """'At blocks 1–N, A's block maps reach mask AP x / y vs B's u / v: below B's at every block (by ..)'."""
    n = min(len(vals_a), len(vals_b))
    pairs = [(i, vals_a[i], vals_b[i]) for i in range(n) if math.isfinite(vals_a[i]) and math.isfinite(vals_b[i])]
    if not pairs:
        return None
    label = F.METRIC_LABELS.get(metric, metric)
    diffs = [(i, a - b) for i, a, b in pairs]
    above = [i for i, d in diffs if d > 0]
    below = [i for i, d in diffs if d < 0]
    mags = [abs(d) for _, d in diffs]
    lo, hi = f"{min(mags):.1f}", f"{max(mags):.1f}"
    span = hi if lo == hi else f"{lo}–{hi}"
    if len(below) == len(diffs):
        rel = f"below {name_b}'s at every block (by {span} pts)"
    elif len(above) == len(diffs):
        rel = f"above {name_b}'s at every block (by {span} pts)"
    elif not above and not below:
        rel = f"equal to {name_b}'s at every block"
    else:
        parts = []
        if above:
            parts.append(f"above {name_b}'s at {_blocks_list(above)}")
        if below:
            parts.append(f"below at {_blocks_list(below)}")
        rel = ", ".join(parts)
    va = " / ".join(f"{a:.1f}" for _, a, _ in pairs)
    vb = " / ".join(f"{b:.1f}" for _, _, b in pairs)
    where = _blocks_list([i for i, _, _ in pairs])
    return f"At {where}, {name_a}'s block maps reach {label} {va} vs {name_b}'s {vb}: {rel}."


def probe_summary(
    seed_results: Mapping[str, Sequence[float | None]],
    block_metrics: Mapping[str, Any] | None = None,
    baseline: str = "per_pixel",
    treated: str = "per_pixel_ds",
    structtoken_head: str | None = None,
) -> dict[str, Any]:
    """Summarise the deep-supervision probe from numbers; pure function.

    Args:
        seed_results: head -> final val mIoU of each training seed, as fractions in [0, 1]
            (values above 1 are taken as percent; None/NaN skipped).
        block_metrics: head -> ``{"blocks": [{"miou", "mask_ap", ...}, ...], "final": {...}}`` (the
            dataset report's per-head entries, fractions), or None.
        baseline, treated: the two heads compared (the per-pixel baseline with and without deep
            supervision).
        structtoken_head: the StructToken head to compare block maps with (default: the first of
            cse / sse / pwe found in ``block_metrics``).

    Returns:
        ``{"unit": "mIoU points", "heads": {head: {"mean", "std" (ddof=1), "n", "values"}},
        "baseline", "treated", "diff" (treated - baseline mean), "spread" (the larger seed std),
        "se_diff" (standard error of the difference), "outcome" ("helps" | "hurts" | "no_evidence"
        | "insufficient"), "verdict" (a sentence), "blocks": None or {"structtoken_head",
        "per_block": [{"block", "miou": {head: v}, "mask_ap": {head: v}}], "sentences": [...],
        "verdict"}}``. All numbers in mIoU / AP points (percent).
    """
    heads = {h: _stats(v) for h, v in seed_results.items()}
    b, t = heads.get(baseline), heads.get(treated)
    out: dict[str, Any] = {
        "unit": "mIoU points",
        "heads": heads,
        "baseline": baseline,
        "treated": treated,
        "diff": None,
        "spread": None,
        "se_diff": None,
        "outcome": "insufficient",
    }
    if not b or not t or b["n"] == 0 or t["n"] == 0:
        missing = [h for h, s in ((baseline, b), (treated, t)) if not s or s["n"] == 0]
        out["verdict"] = f"no seed results for {' and '.join(missing)}: the probe cannot be judged yet."
    else:
        diff = t["mean"] - b["mean"]
        out["diff"] = diff
        if b["n"] < 2 or t["n"] < 2:
            out["verdict"] = (
                f"{treated} − {baseline} = {diff:+.2f} mIoU from {b['n']} / {t['n']} seed(s): "
                "at least 2 seeds "
                "of each are needed to compare the difference with the seed spread."
            )
        else:
            spread = max(b["std"], t["std"])
            out["spread"] = spread
            out["se_diff"] = math.sqrt(b["std"] ** 2 / b["n"] + t["std"] ** 2 / t["n"])
            d, s = _fmt_pair(abs(diff), spread)
            if abs(diff) > spread and diff > 0:
                out["outcome"] = "helps"
                out["verdict"] = (
                    f"{treated} beats {baseline} by {d} mIoU, more than the seed spread (±{s}): deep supervision helps."
                )
            elif abs(diff) > spread:
                out["outcome"] = "hurts"
                out["verdict"] = (
                    f"{treated} trails {baseline} by {d} mIoU, more than the seed spread (±{s}): "
                    "deep supervision hurts here."
                )
            else:
                out["outcome"] = "no_evidence"
                out["verdict"] = (
                    f"{treated} and {baseline} differ by {d} mIoU, within the seed spread (±{s}): "
                    "no evidence that deep supervision changes the final mIoU."
                )
    out["blocks"] = _block_summary(block_metrics, baseline, treated, structtoken_head)
    return out


def _block_summary(
    block_metrics: Mapping[str, Any] | None, baseline: str, treated: str, structtoken_head: str | None
) -> dict[str, Any] | None:
    if not block_metrics or treated not in block_metrics:
        return None
    st = structtoken_head
    if st is None or st not in block_metrics:
        st = next((h for h in block_metrics if _kind(h) in STRUCTTOKEN_HEADS), None)
    shown = [h for h in (treated, st, baseline) if h is not None and h in block_metrics]
    n = max(len(block_metrics[h].get("blocks") or []) for h in shown)
    per_block = []
    for i in range(n):
        row: dict[str, Any] = {"block": i + 1}
        for metric in ("miou", "mask_ap"):
            vals = {h: _block_values(block_metrics[h], metric) for h in shown}
            row[metric] = {h: (v[i] if i < len(v) and math.isfinite(v[i]) else None) for h, v in vals.items()}
        per_block.append(row)
    sentences = []
    if st is not None:
        for metric in ("mask_ap", "miou"):
            s = _relation_sentence(
                treated,
                _block_values(block_metrics[treated], metric),
                st,
                _block_values(block_metrics[st], metric),
                metric,
            )
            if s:
                sentences.append(s)
    if baseline in block_metrics:
        s = _relation_sentence(
            treated,
            _block_values(block_metrics[treated], "mask_ap"),
            baseline,
            _block_values(block_metrics[baseline], "mask_ap"),
            "mask_ap",
        )
        if s:
            sentences.append(s)
    if not sentences:
        return None
    return {
        "structtoken_head": st,
        "per_block": per_block,
        "sentences": sentences,
        "verdict": " ".join(sentences),
    }


# -------------------------------------------------------------------------------- view helpers
@dataclass
class View:
    """What one analysis of one image shows: figures, a table, notes and arrays for download."""

    figure: Figure | None = None
    plot: go.Figure | None = None
    table: list[list[Any]] = field(default_factory=list)
    table_headers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def stage_indices(num_blocks: int, block: int | None) -> list[int]:
    """Stage indices (into ``[S, ...]``) to show: all when ``block`` is None, else the one stage
    ``block`` (0 = input, 1..N = after that block, N + 1 = output)."""
    if block is None:
        return list(range(num_blocks + 2))
    if not 0 <= block <= num_blocks + 1:
        raise ValueError(
            f"block {block} does not exist: use 1..{num_blocks} (0 = the input maps, {num_blocks + 1} = the output)"
        )
    return [int(block)]


def display_size(hw: tuple[int, int], n_cols: int, max_width: int = _MOSAIC_MAX_WIDTH_PX) -> tuple[int, int]:
    """Cell size (h, w) in pixels for a grid of ``n_cols`` thumbnails of an ``hw`` image."""
    h, w = hw
    long_side = int(np.clip(max_width / max(n_cols, 1), 56, 128))
    f = long_side / max(h, w)
    return max(8, round(h * f)), max(8, round(w * f))


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = a.shape[:2]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return a[ys][:, xs]


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _boundary(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def _lut(cmap: str) -> np.ndarray:
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _colorize(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    idx = np.clip(np.nan_to_num(values, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut[idx]


def mosaic_figure(
    image: np.ndarray,
    class_names: Sequence[str],
    titles: Mapping[str, Sequence[str]],
    panels: Mapping[str, np.ndarray],
    pred: np.ndarray | None = None,
    class_ids: Sequence[int] | None = None,
    title: str | None = None,
    colorbar_label: str = "normalised map value",
    note: str | None = None,
    dpi: int = 100,
) -> Figure:
    """Fast block-by-block grid (rows = classes, a column group per head), drawn as one image.

    Args:
        image: ``[H, W, 3]`` uint8, shown in the first column of every row.
        class_names: ``[R]`` row labels.
        titles: head -> column titles of its ``B_head`` columns.
        panels: head -> ``[R, B_head, h, w]`` maps in [0, 1] (normalised and resized by the caller;
            the same (h, w) for every head); drawn with :data:`analysis.figures.MAP_CMAP`.
        pred: ``[h, w]`` predicted classes at the cell size; with ``class_ids`` the boundary of the
            row's class is drawn in white on every cell of the row.
        class_ids: ``[R]`` class index of each row.
        title: figure title.
        colorbar_label: label of the shared 0..1 colourbar.
        note: small text under the grid.
        dpi: pixels per inch; the mosaic is drawn one map pixel per screen pixel at this dpi.

    Returns:
        Matplotlib figure with one image axes (label ``"mosaic"``) and a colourbar axes.
    """
    heads = list(panels)
    if not heads:
        raise ValueError("panels is empty")
    n_rows = len(class_names)
    first = np.asarray(panels[heads[0]])
    if first.ndim != 4 or first.shape[0] != n_rows:
        raise ValueError(f"panels must be [R={n_rows}, B, h, w], got {first.shape}")
    h, w = first.shape[2:]
    gap = max(2, w // 24)
    group_gap = 4 * gap
    lut = _lut(F.MAP_CMAP)
    n_cols = {hd: np.asarray(panels[hd]).shape[1] for hd in heads}
    width = w + sum(group_gap + n_cols[hd] * w + (n_cols[hd] - 1) * gap for hd in heads)
    height = n_rows * h + (n_rows - 1) * gap
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    thumb = _resize_image(F._as_rgb_uint8(image), (h, w))
    bounds: list[np.ndarray | None] = [None] * n_rows
    if pred is not None and class_ids is not None:
        p = np.asarray(pred)
        if p.shape != (h, w):
            p = _resize_nearest(p, (h, w))
        bounds = [_boundary(p == int(c)) for c in class_ids]
    col_x: dict[str, list[int]] = {}
    x = w + group_gap
    for hd in heads:
        col_x[hd] = [x + b * (w + gap) for b in range(n_cols[hd])]
        x = col_x[hd][-1] + w + group_gap
    for r in range(n_rows):
        y = r * (h + gap)
        cell = thumb.copy()
        if bounds[r] is not None:
            cell[bounds[r]] = 255
        mosaic[y : y + h, :w] = cell
        for hd in heads:
            arr = np.asarray(panels[hd])
            for b, cx in enumerate(col_x[hd]):
                rgb = _colorize(arr[r, b], lut)
                if bounds[r] is not None:
                    rgb[bounds[r]] = 255
                mosaic[y : y + h, cx : cx + w] = rgb

    left, right, top, bottom = 1.25, 1.0, 0.62 + (0.32 if title else 0.0), 0.32 if note else 0.12
    fig_w, fig_h = width / dpi + left + right, height / dpi + top + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, (width / dpi) / fig_w, (height / dpi) / fig_h), label="mosaic")
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    fs = 8
    ax.text(w / 2, -4, "image", ha="center", va="bottom", fontsize=fs)
    for hd in heads:
        cols = col_x[hd]
        for b, cx in enumerate(cols):
            ax.text(
                cx + w / 2,
                -4,
                str(list(titles.get(hd, []))[b]) if b < len(titles.get(hd, [])) else "",
                ha="center",
                va="bottom",
                fontsize=fs,
            )
        x0, x1 = cols[0], cols[-1] + w
        ax.plot([x0, x1], [-19, -19], color=F.head_color(hd), lw=2, solid_capstyle="butt", clip_on=False)
        ax.text(
            (x0 + x1) / 2,
            -22,
            F.head_label(hd),
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            color=F.head_color(hd),
        )
    for r, name in enumerate(class_names):
        ax.text(-6, r * (h + gap) + h / 2, str(name), ha="right", va="center", fontsize=fs + 1)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    cax = fig.add_axes(((left + width / dpi + 0.15) / fig_w, bottom / fig_h, 0.14 / fig_w, (height / dpi) / fig_h))
    cb = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=F.MAP_CMAP), cax=cax)
    cb.ax.tick_params(labelsize=fs)
    cb.set_label(colorbar_label, fontsize=fs)
    if title:
        fig.text(0.5, 1 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12)
    if note:
        fig.text(left / fig_w, 0.06 / fig_h, note, ha="left", va="bottom", fontsize=fs - 0.5, color="0.3")
    return fig


def mosaic_plotly(
    class_names: Sequence[str],
    titles: Mapping[str, Sequence[str]],
    panels: Mapping[str, np.ndarray],
    raw: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
    colorbar_label: str = "value",
) -> go.Figure:
    """Interactive block-by-block grid in one plotly axes: one heatmap trace per (head, column, row).

    Args:
        class_names: ``[R]`` row labels.
        titles: head -> column titles.
        panels: head -> ``[R, B_head, h, w]`` maps in [0, 1] (one shared colour axis); maps longer
            than 128 px are stride-subsampled.
        raw: head -> the same maps before normalisation, shown on hover; optional.
        title: figure title.
        colorbar_label: colourbar title.

    Returns:
        Plotly figure; hover shows head, stage, class, grid cell, normalised and raw value.
    """
    heads = list(panels)
    first = np.asarray(panels[heads[0]])
    h, w = first.shape[2:]
    stride = max(1, math.ceil(max(h, w) / _PLOTLY_MAX_SIDE))
    hs, ws = math.ceil(h / stride), math.ceil(w / stride)
    gap = max(1.0, ws / 12)
    group_gap = 3 * gap
    traces = []
    annotations = []
    shapes = []
    x = 0.0
    for hd in heads:
        arr = np.asarray(panels[hd])[:, :, ::stride, ::stride]
        raw_arr = np.asarray(raw[hd])[:, :, ::stride, ::stride] if raw is not None and hd in raw else None
        t = list(titles.get(hd, []))
        x_start = x
        for b in range(arr.shape[1]):
            col_title = t[b] if b < len(t) else f"column {b + 1}"
            annotations.append(
                {
                    "x": x + ws / 2,
                    "y": -0.6,
                    "text": col_title,
                    "showarrow": False,
                    "yanchor": "bottom",
                    "font": {"size": 11},
                    "xref": "x",
                    "yref": "y",
                }
            )
            for r in range(arr.shape[0]):
                y = r * (hs + gap)
                hover = (
                    f"<b>{F._hover_escape(F.head_label(hd))}</b> · {F._hover_escape(col_title)}<br>"
                    f"class: {F._hover_escape(str(class_names[r]))}<br>"
                    "value: %{z:.3f}"
                    + ("<br>raw: %{customdata:.4g}" if raw_arr is not None else "")
                    + "<extra></extra>"
                )
                traces.append(
                    go.Heatmap(
                        z=arr[r, b],
                        x0=x + 0.5,
                        dx=1,
                        y0=y + 0.5,
                        dy=1,
                        customdata=raw_arr[r, b] if raw_arr is not None else None,
                        coloraxis="coloraxis",
                        hovertemplate=hover,
                        showlegend=False,
                    )
                )
            x += ws + gap
        x_end = x - gap
        annotations.append(
            {
                "x": (x_start + x_end) / 2,
                "y": -0.6 - 0.22 * (hs + gap),
                "xref": "x",
                "yref": "y",
                "text": f"<b>{F._hover_escape(F.head_label(hd))}</b>",
                "showarrow": False,
                "yanchor": "bottom",
                "font": {"size": 13, "color": F.head_color(hd)},
            }
        )
        shapes.append(
            {
                "type": "line",
                "x0": x_start,
                "x1": x_end,
                "y0": -0.6 - 0.2 * (hs + gap),
                "y1": -0.6 - 0.2 * (hs + gap),
                "xref": "x",
                "yref": "y",
                "line": {"color": F.head_color(hd), "width": 2},
            }
        )
        x = x_end + group_gap
    total_w = x - group_gap
    total_h = len(class_names) * (hs + gap) - gap
    fig = go.Figure(data=traces)
    px_per_cell = 900 / max(total_w, 1)
    px_per_cell = min(px_per_cell, 14.0)
    note = f"maps subsampled ×{stride} for display" if stride > 1 else ""
    full_title = title or ""
    if note:
        full_title = f"{full_title}<br><sup>{note}</sup>" if full_title else note
    fig.update_layout(
        title={"text": full_title, "x": 0.5, "xanchor": "center"} if full_title else None,
        template="plotly_white",
        coloraxis={
            "colorscale": F.MAP_CMAP_PLOTLY,
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {"title": {"text": colorbar_label}, "thickness": 12},
        },
        xaxis={"visible": False, "range": [-gap, total_w + gap], "constrain": "domain"},
        yaxis={
            "range": [total_h + gap, -0.35 * (hs + gap) - 1],
            "scaleanchor": "x",
            "tickmode": "array",
            "tickvals": [r * (hs + gap) + hs / 2 for r in range(len(class_names))],
            "ticktext": [str(c) for c in class_names],
            "showgrid": False,
            "zeroline": False,
            "constrain": "domain",
        },
        annotations=annotations,
        shapes=shapes,
        width=int(min(1800, max(500, total_w * px_per_cell + 220))),
        height=int(min(1600, max(300, (total_h + 0.4 * (hs + gap)) * px_per_cell + 140))),
        margin={"l": 90, "r": 30, "t": 60 if full_title else 30, "b": 20},
        plot_bgcolor="white",
    )
    return fig


# ------------------------------------------------------------------------------------- numbers
def stage_agreement(maps: ImageMaps, head: str) -> list[float]:
    """Per stage of ``head``: % of feature-grid cells whose argmax class equals the output's."""
    st = maps.heads[head].stages
    arg = st.argmax(axis=1)
    return [float(100.0 * np.mean(arg[s] == arg[-1])) for s in range(st.shape[0])]


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


# --------------------------------------------------------------------------------------- views
def prediction_view(
    maps: ImageMaps, head: str, palette: Sequence[Sequence[int]], opacity: float = 0.5, max_side: int = 1024
) -> View:
    """The prediction of ``head`` overlaid on the image, with class areas of every head."""
    names = list(maps.class_names)
    img, pred = maps.image, maps.pred[head]
    h, w = img.shape[:2]
    if max(h, w) > max_side:  # a lighter figure for big images
        f = max_side / max(h, w)
        size = (max(1, round(h * f)), max(1, round(w * f)))
        img, pred = _resize_image(img, size), _resize_nearest(pred, size)
    fig = F.prediction_figure(img, pred, palette, names, alpha=opacity, title=f"{F.head_label(head)} prediction")
    # interactive: the overlay with the class under the cursor
    f = min(1.0, 224 / max(h, w))  # hover text per pixel: keep the JSON small
    size = (max(1, round(h * f)), max(1, round(w * f)))
    small_pred = _resize_nearest(maps.pred[head], size)
    small = F.overlay(_resize_image(maps.image, size), small_pred, palette, alpha=opacity)
    hover = np.asarray(names, dtype=object)[small_pred.astype(np.int64)]
    plot = go.Figure(
        go.Image(
            z=small,
            dx=w / size[1],
            dy=h / size[0],
            hovertext=hover,
            hovertemplate="%{hovertext}<br>x=%{x:.0f}, y=%{y:.0f}<extra></extra>",
        )
    )
    plot.update_layout(
        title={"text": f"{F.head_label(head)} prediction", "x": 0.5, "xanchor": "center"},
        template="plotly_white",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        width=int(min(900, max(400, 640 * w / max(h, 1)))),
        height=int(min(900, max(300, 640 * h / max(w, 1) if w > h else 640))),
    )
    plot.update_xaxes(visible=False)
    plot.update_yaxes(visible=False)
    heads = list(maps.heads)
    areas = {hd: np.bincount(maps.pred[hd].ravel().astype(np.int64), minlength=len(names)) for hd in heads}
    total = max(1, maps.pred[head].size)
    order = np.argsort(-areas[head], kind="stable")
    rows = []
    for c in order:
        if all(areas[hd][c] == 0 for hd in heads):
            continue
        rows.append([names[c], *(_round(100.0 * areas[hd][c] / total) for hd in heads)])
    return View(
        figure=fig,
        plot=plot,
        table=rows,
        table_headers=["class", *(f"{F.head_label(hd)} area %" for hd in heads)],
        metrics={
            "class_area_percent": {
                hd: {names[c]: _round(100.0 * areas[hd][c] / total, 3) for c in range(len(names)) if areas[hd][c]}
                for hd in heads
            }
        },
    )


def grid_panels(
    maps: ImageMaps, heads: Sequence[str], class_ids: Sequence[int], normalize: str, block: int | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]]]:
    """Normalised and raw maps ``[R, B, h, w]`` on the feature grid for the chosen classes and stages,
    and the column titles, per head."""
    stacks = {hd: maps.heads[hd].stages for hd in heads}
    normed = normalize_maps(stacks, normalize)
    assert isinstance(normed, dict)
    panels, raw, titles = {}, {}, {}
    cls = np.asarray(class_ids, dtype=np.int64)
    for hd in heads:
        hm = maps.heads[hd]
        idx = stage_indices(hm.num_blocks, block)
        panels[hd] = np.ascontiguousarray(normed[hd][idx][:, cls].transpose(1, 0, 2, 3))
        raw[hd] = np.ascontiguousarray(hm.stages[idx][:, cls].transpose(1, 0, 2, 3))
        titles[hd] = [hm.stage_names[i] for i in idx]
    return panels, raw, titles


def comparison_view(
    maps: ImageMaps,
    heads: Sequence[str],
    head: str,
    class_ids: Sequence[int],
    normalize: str = "shared",
    block: int | None = None,
    title: str | None = None,
) -> View:
    """Rows = classes, columns = stages, a column group per head (the paper's Fig. 3 layout).

    ``head`` is the head whose prediction boundary is drawn. Maps are normalised over all K classes
    (softmax) or per class (shared / per map) before the rows are picked, then bilinearly resized
    to the thumbnail size.
    """
    names = list(maps.class_names)
    panels, raw, titles = grid_panels(maps, heads, class_ids, normalize, block)
    n_cols = 1 + sum(p.shape[1] for p in panels.values())
    size = display_size(maps.image.shape[:2], n_cols)
    big = {hd: upsample_maps(p, size) for hd, p in panels.items()}
    if normalize != "softmax":  # bilinear interpolation stays within [0, 1]; keep exact bounds anyway
        big = {hd: np.clip(p, 0.0, 1.0) for hd, p in big.items()}
    rows = [names[c] for c in class_ids]
    label = "class probability" if normalize == "softmax" else "normalised map value"
    note = (
        f"normalisation: {NORMALIZATION_LABELS[normalize]}; white line: boundary of each row's class in the "
        f"{F.head_label(head)} prediction; maps bilinearly resized from the "
        f"{maps.grid[0]}x{maps.grid[1]} grid"
    )
    fig = mosaic_figure(
        maps.image,
        rows,
        titles,
        big,
        pred=maps.pred[head],
        class_ids=class_ids,
        title=title,
        colorbar_label=label,
        note=note,
    )
    plot = mosaic_plotly(rows, titles, panels, raw=raw, title=title, colorbar_label=label)
    stage_titles = list(max((maps.heads[hd].stage_names for hd in heads), key=len))
    table = []
    agreement = {}
    for hd in heads:
        ag = stage_agreement(maps, hd)
        agreement[hd] = ag
        names_h = maps.heads[hd].stage_names
        table.append(
            [
                F.head_label(hd),
                *(_round(ag[names_h.index(s)]) if s in names_h else None for s in stage_titles),
            ]
        )
    return View(
        figure=fig,
        plot=plot,
        table=table,
        table_headers=["head (% grid cells agreeing with its output)", *stage_titles],
        metrics={
            "stage_agreement_percent": {hd: [_round(v, 3) for v in ag] for hd, ag in agreement.items()},
            "columns": dict(titles),
            **({"stage": titles[heads[0]][0]} if block is not None else {}),
        },
    )


def attention_view(
    maps: ImageMaps,
    head: str,
    block: int | None,
    class_ids: Sequence[int],
    k: int = 6,
) -> View:
    """Class x feature-channel attention of one block of a CSE / SSE head, and the feature maps
    (entering that block) of the channels the first selected class draws on most."""
    hm = maps.heads[head]
    if hm.attention is None:
        raise ValueError(f"{head} has no class x channel attention (only CSE and SSE heads do)")
    n = hm.num_blocks
    b = n if block is None else int(block)
    if not 1 <= b <= n:
        raise ValueError(f"block {b} does not exist: {head} has blocks 1..{n}")
    names = list(maps.class_names)
    num_classes = hm.stages.shape[1]
    attn = hm.attention[b - 1]
    offset = num_classes if hm.kind == "sse" else 0
    feat = attn[:, offset:]
    rows_ids = list(range(num_classes)) if num_classes <= 32 else list(class_ids)
    title = f"{F.head_label(head)}, block {b}: class × feature-channel attention"
    if offset:
        title += " (feature columns; token columns left out)"
    plot = F.attention_plotly(feat[rows_ids], [names[i] for i in rows_ids], title=title)
    table = []
    tops: dict[str, Any] = {}
    for c in class_ids:
        ids, weights = top_channels(attn, c, k, feature_offset=offset)
        row_sum = float(np.abs(attn[c]).sum())
        token_share = float(np.abs(attn[c, :offset]).sum()) / row_sum * 100.0 if offset and row_sum > 0 else None
        table.append([names[c], ", ".join(f"{i} ({wt:.3f})" for i, wt in zip(ids, weights)), _round(token_share)])
        tops[names[c]] = {"channels": ids, "weights": weights, "token_share_percent": _round(token_share, 3)}
    figure = None
    notes = []
    if hm.block_features is not None and class_ids:
        c0 = class_ids[0]
        ids, weights = top_channels(attn, c0, k, feature_offset=offset)
        h, w = maps.image.shape[:2]
        f = min(1.0, 240 / max(h, w))
        size = (max(1, round(h * f)), max(1, round(w * f)))
        fmaps = upsample_maps(hm.block_features[b - 1][ids], size)
        figure = F.channel_maps_figure(
            _resize_image(maps.image, size),
            fmaps,
            ids,
            weights,
            names[c0],
            title=f"{F.head_label(head)}, block {b}: feature channels '{names[c0]}' draws on most "
            "(features entering the block)",
        )
        if len(class_ids) > 1:
            notes.append(
                f"The channel maps are those of '{names[c0]}', the first selected class; the table lists "
                "the top channels of every selected class."
            )
    headers = [
        "class",
        f"top {k} feature channels (weight)",
        "attention on token channels %" if offset else "–",
    ]
    if not offset:
        table = [r[:2] for r in table]
        headers = headers[:2]
    return View(
        figure=figure,
        plot=plot,
        table=table,
        table_headers=headers,
        notes=notes,
        metrics={"attention_block": b, "top_channels": tops},
        arrays={f"{head}/attention_block{b}": attn},
    )

"""Figures for StructToken Explorer: overlays, metric curves, attention (block grids: :mod:`analysis.grid`).

Every public function takes numpy arrays / plain Python values and *returns* a figure:
either a :class:`matplotlib.figure.Figure` built directly (never through ``pyplot``, so no global
figure registry, nothing leaks between requests and it is safe in a threaded server) or a
:class:`plotly.graph_objects.Figure`. Nothing here reads or writes files or shows windows; callers
decide where figures go (:func:`figure_to_png_bytes` / :func:`figure_to_pdf_bytes` give in-memory
bytes for downloads).

Conventions shared by all figures:

* maps use :data:`MAP_CMAP`, signed quantities :data:`DIVERGING_CMAP`;
* each segmentation head has a fixed colour (:data:`HEAD_COLORS`, see :func:`head_color`) and a
  pretty label (:data:`HEAD_LABELS`, see :func:`head_label`);
* class colours come from a ``palette`` argument: a sequence of ``(r, g, b)`` triples in 0–255;
* metric values are fractions in [0, 1] (``None``/NaN allowed) and are displayed in percent.
"""

from __future__ import annotations

import io
import math
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from plotly.subplots import make_subplots

from .labels import HEAD_LABELS, head_label
from .values import percent

__all__ = [
    "DIVERGING_CMAP",
    "FALLBACK_HEAD_COLORS",
    "HEAD_COLORS",
    "HEAD_LABELS",
    "HEAD_MARKERS",
    "MAP_CMAP",
    "METRIC_LABELS",
    "as_rgb_uint8",
    "attention_figure",
    "attention_plotly",
    "block_curves_figure",
    "block_curves_plotly",
    "boundary",
    "channel_maps_figure",
    "colorize_labels",
    "figure_to_pdf_bytes",
    "figure_to_png_bytes",
    "head_color",
    "head_label",
    "hover_escape",
    "overlay",
    "overlay_with_legend",
    "prediction_figure",
    "probe_figure",
    "resize_nearest",
    "resize_rgb",
]

# --------------------------------------------------------------------------------------------------
# Look and feel
# --------------------------------------------------------------------------------------------------

#: Colormap for (non-negative / normalised) maps: structure tokens, block outputs, attention.
MAP_CMAP = "viridis"
#: Colormap for signed values; always used with a range symmetric about zero.
DIVERGING_CMAP = "RdBu_r"
#: Plotly equivalents of the two colormaps above.
MAP_CMAP_PLOTLY = "Viridis"

#: Fixed colour per head (Okabe–Ito colour-blind-safe palette).
HEAD_COLORS: dict[str, str] = {
    "cse": "#0072B2",  # blue
    "sse": "#009E73",  # bluish green
    "pwe": "#D55E00",  # vermillion
    "per_pixel": "#4D4D4D",  # dark grey
    "per_pixel_ds": "#E69F00",  # orange
    "fcn": "#CC79A7",  # reddish purple
    "segmenter": "#56B4E9",  # sky blue
}
#: Colours for heads not in :data:`HEAD_COLORS`, picked by a stable hash of the name.
FALLBACK_HEAD_COLORS: tuple[str, ...] = ("#CC79A7", "#56B4E9", "#8C564B", "#9467BD", "#BCBD22", "#17BECF")

#: Marker per head in line plots (so heads stay distinguishable in greyscale).
HEAD_MARKERS: dict[str, str] = {
    "cse": "o",
    "sse": "s",
    "pwe": "^",
    "per_pixel": "D",
    "per_pixel_ds": "v",
    "fcn": "P",
    "segmenter": "X",
}
_PLOTLY_MARKERS: dict[str, str] = {
    "o": "circle",
    "s": "square",
    "^": "triangle-up",
    "D": "diamond",
    "v": "triangle-down",
    "P": "cross",
    "X": "x",
}

#: Pretty metric names.
METRIC_LABELS: dict[str, str] = {"miou": "mIoU", "mask_ap": "mask AP", "boundary_f1": "boundary F1"}

_DEFAULT_METRICS: tuple[str, ...] = ("miou", "mask_ap", "boundary_f1")
_FINAL_LABEL = "out"
_UNKNOWN_CLASS_RGB = (128, 128, 128)
_SMALL = 8  # font size for dense grids


def head_color(head: str) -> str:
    """Colour (hex string) of ``head``: :data:`HEAD_COLORS`, else a stable fallback colour."""
    if head in HEAD_COLORS:
        return HEAD_COLORS[head]
    return FALLBACK_HEAD_COLORS[zlib.crc32(head.encode("utf-8")) % len(FALLBACK_HEAD_COLORS)]


def _head_marker(head: str) -> str:
    return HEAD_MARKERS.get(head, "o")


def _metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


# --------------------------------------------------------------------------------------------------
# Label images
# --------------------------------------------------------------------------------------------------


def _palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if pal.size and (pal.min() < 0 or pal.max() > 255):
        raise ValueError("palette entries must be RGB triples in 0..255")
    return pal.astype(np.uint8)


def colorize_labels(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """Colour a label map.

    Args:
        label: ``[H, W]`` integer class indices.
        palette: ``[K]`` RGB triples (0–255); class ``k`` gets ``palette[k]``.
        ignore_index: label drawn black (as are negative labels).

    Returns:
        ``[H, W, 3]`` uint8 RGB image. Labels outside the palette (and not ignored) are grey.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {label.shape}")
    pal = _palette_array(palette)
    if label.dtype == np.uint8:  # the maps' predictions: one table lookup for all 256 values (~5x faster)
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[:] = _UNKNOWN_CLASS_RGB
        lut[: min(len(pal), 256)] = pal[:256]
        if 0 <= ignore_index < 256:
            lut[ignore_index] = 0
        return lut[label]
    lab = label.astype(np.int64)
    out = np.zeros((*lab.shape, 3), dtype=np.uint8)
    keep = (lab >= 0) & (lab != ignore_index)
    known = keep & (lab < len(pal))
    out[known] = pal[lab[known]]
    out[keep & ~known] = _UNKNOWN_CLASS_RGB
    return out


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1|3|4]`` uint8 or float (0–1 or 0–255) → ``[H, W, 3]`` uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if np.nanmax(f, initial=0.0) <= 1.0:
            f = f * 255.0
        img = np.clip(np.nan_to_num(f), 0, 255).round().astype(np.uint8)
    return img


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend a colourised label map onto an image.

    Args:
        image: ``[H, W, 3]`` uint8 RGB (greyscale / float images are converted).
        label: ``[H, W]`` integer class indices.
        palette: ``[K]`` RGB triples (0–255).
        alpha: weight of the label colour (0 = image only, 1 = labels only).
        ignore_index: pixels with this label keep the plain image.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    img = as_rgb_uint8(image)
    label = np.asarray(label)
    if label.shape != img.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    colour = colorize_labels(label, palette, ignore_index).astype(np.float64)
    blend = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    out = np.where(((label >= 0) & (label != ignore_index))[..., None], blend, img)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def overlay_with_legend(
    image: np.ndarray,
    label: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    alpha: float = 0.5,
    ignore_index: int = 255,
    font_px: int = 14,
) -> np.ndarray:
    """:func:`overlay` with a class legend on its right: a swatch, the name and the % area of every class
    present, largest first (the Overlay tab is a plain image, so the legend is drawn into it).

    Returns:
        ``[max(H, legend height), W + legend width, 3]`` uint8 (white where nothing is drawn).
    """
    from PIL import ImageDraw, ImageFont

    blended = overlay(image, label, palette, alpha=alpha, ignore_index=ignore_index)
    pal = _palette_array(palette)
    ids, counts = np.unique(np.asarray(label).astype(np.int64), return_counts=True)
    keep = (ids >= 0) & (ids != ignore_index)
    ids, counts = ids[keep], counts[keep]
    order = np.argsort(-counts, kind="stable")
    font = ImageFont.load_default(size=font_px)
    entries = []
    for i in order:
        k = int(ids[i])
        name = class_names[k] if k < len(class_names) else f"class {k}"
        rgb = tuple(int(v) for v in (pal[k] if k < len(pal) else _UNKNOWN_CLASS_RGB))
        entries.append((rgb, f"{name} ({100.0 * counts[i] / label.size:.1f}%)"))
    line = int(font_px * 1.5)
    text_w = max((int(font.getlength(t)) for _, t in entries), default=0)
    legend_w = font_px + 8 + text_w + 16
    h, w = blended.shape[:2]
    out_h = max(h, line * len(entries) + 8)
    out = np.full((out_h, w + legend_w, 3), 255, dtype=np.uint8)
    out[:h, :w] = blended
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for j, (rgb, text) in enumerate(entries):
        y = 4 + j * line
        draw.rectangle([w + 8, y + 2, w + 8 + font_px, y + 2 + font_px], fill=rgb, outline=(77, 77, 77))
        draw.text((w + 8 + font_px + 6, y), text, fill=(30, 30, 30), font=font)
    return np.asarray(canvas)


def prediction_figure(
    image: np.ndarray,
    pred: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    alpha: float = 0.5,
    title: str | None = None,
    ignore_index: int = 255,
) -> Figure:
    """Prediction overlaid on the image, with a legend of the classes present and their % area.

    Args:
        image: ``[H, W, 3]`` uint8.
        pred: ``[H, W]`` predicted class indices.
        palette: ``[K]`` RGB triples (0–255).
        class_names: ``[K]`` names.
        alpha: overlay opacity.
        title: figure title (default "Prediction").
        ignore_index: label never listed in the legend.

    Returns:
        Matplotlib figure with one image axes; legend entries are sorted by area, largest first,
        and the percentages are of all image pixels.
    """
    img = as_rgb_uint8(image)
    pred = np.asarray(pred)
    blended = overlay(img, pred, palette, alpha=alpha, ignore_index=ignore_index)
    h, w = pred.shape
    pal = _palette_array(palette)

    ids, counts = np.unique(pred.astype(np.int64), return_counts=True)
    keep = (ids >= 0) & (ids != ignore_index)
    ids, counts = ids[keep], counts[keep]
    order = np.argsort(-counts, kind="stable")
    handles = []
    for i in order:
        k = int(ids[i])
        rgb = pal[k] if k < len(pal) else np.array(_UNKNOWN_CLASS_RGB)
        name = class_names[k] if k < len(class_names) else f"class {k}"
        pct = 100.0 * counts[i] / pred.size
        handles.append(Patch(facecolor=rgb / 255.0, edgecolor="0.3", label=f"{name} ({pct:.1f}%)"))

    img_w = min(9.0, max(4.0, 5.0 * w / max(h, 1)))
    img_h = img_w * h / max(w, 1)
    fig = Figure(figsize=(img_w + 2.6, max(img_h + 0.7, 0.28 * len(handles) + 1.0)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(blended, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else "Prediction")
    if handles:  # a figure legend "outside": constrained layout makes room for it (never clipped)
        fig.legend(
            handles=handles,
            loc="outside right upper",
            fontsize=_SMALL + 1,
            title="class (% area)",
            title_fontsize=_SMALL + 1,
            frameon=False,
        )
    return fig


# --------------------------------------------------------------------------------------------------
# Array helpers for thumbnails and outlines (the block grids themselves are in analysis.grid)
# --------------------------------------------------------------------------------------------------


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (PIL) of a uint8 image ``[H, W, 3]`` to ``size`` = (h, w); the input when it fits."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W, ...]`` (label maps) to ``size`` = (h, w), sampling pixel centres."""
    h, w = a.shape[:2]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return a[ys][:, xs]


def boundary(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the pixels of ``mask`` with a 4-neighbour outside it (the image edge counts as inside)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def _cell_size(n_rows: int, n_cols: int, h: int, w: int, max_width: float = 26.0) -> tuple[float, float]:
    """Inches per grid cell, shrinking cells so very wide grids stay below ``max_width``."""
    aspect = w / max(h, 1)
    cell_h = 1.3 if aspect <= 1.6 else 1.05
    cell_w = cell_h * aspect
    if cell_w * n_cols > max_width:
        cell_w = max(max_width / n_cols, 0.55)
        cell_h = cell_w / aspect
    if cell_h * n_rows > 30.0:
        cell_h = max(30.0 / n_rows, 0.45)
        cell_w = min(cell_w, cell_h * aspect)
    return cell_w, cell_h


def hover_escape(text: str) -> str:
    """Make arbitrary text safe inside a plotly hovertemplate."""
    return str(text).replace("%{", "%\u200b{").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------------
# Per-block metric curves
# --------------------------------------------------------------------------------------------------


def _pct(v: Any) -> float:
    """Fraction (or None/NaN) -> percent float for plotting (NaN when missing, drawn as a gap)."""
    p = percent(v)
    return float("nan") if p is None else p


def _curve_data(
    metrics: Mapping[str, Mapping[str, Any]], metric_names: Sequence[str]
) -> tuple[int, dict[str, dict[str, tuple[np.ndarray, float]]]]:
    """Per head and metric: (block values in %, final value in %); also the largest block count."""
    data: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
    max_b = 0
    for head, m in metrics.items():
        blocks = list(m.get("blocks") or [])
        final = m.get("final") or {}
        max_b = max(max_b, len(blocks))
        data[head] = {
            name: (
                np.array([_pct((blk or {}).get(name)) for blk in blocks], dtype=np.float64),
                _pct(final.get(name)),
            )
            for name in metric_names
        }
    return max_b, data


def block_curves_figure(
    metrics: Mapping[str, Mapping[str, Any]],
    metric_names: Sequence[str] = _DEFAULT_METRICS,
    title: str | None = None,
) -> Figure:
    """Per-block metric curves: one subplot per metric, one line per head.

    Args:
        metrics: head → ``{"final": {metric: value}, "blocks": [{metric: value}, ...]}`` with
            values as fractions in [0, 1] (``None``/NaN allowed, drawn as gaps).
        metric_names: metrics to plot, one subplot each.
        title: figure title.

    Returns:
        Matplotlib figure. x = block index 1..B; the head's final output is drawn at x = B_max + 1
        (tick "out") with a star marker, joined to the last block by a dotted line. y in percent.
    """
    if not metric_names:
        raise ValueError("metric_names is empty")
    max_b, data = _curve_data(metrics, metric_names)
    n = len(metric_names)
    fig = Figure(figsize=(max(3.6, 0.28 * max_b + 2.4) * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    x_out = max_b + 1
    for ax, name in zip(axes, metric_names):
        for head in data:
            vals, fin = data[head][name]
            color = head_color(head)
            x = np.arange(1, len(vals) + 1)
            ax.plot(x, vals, color=color, marker=_head_marker(head), ms=4.5, lw=1.6, label=head_label(head))
            if len(vals) and math.isfinite(vals[-1]) and math.isfinite(fin):
                ax.plot([x[-1], x_out], [vals[-1], fin], color=color, lw=1.0, ls=":")
            if math.isfinite(fin):
                ax.plot([x_out], [fin], color=color, marker="*", ms=11, mec="black", mew=0.6, ls="none")
        ticks = [*range(1, max_b + 1), x_out]
        step = max(1, math.ceil(max_b / 12))
        labels = [str(t) if (t - 1) % step == 0 or t == max_b else "" for t in range(1, max_b + 1)]
        ax.set_xticks(ticks, [*labels, _FINAL_LABEL])
        ax.set_xlim(0.5, x_out + 0.5)
        if max_b:
            ax.axvline(max_b + 0.5, color="0.75", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel("block")
        ax.set_ylabel(f"{_metric_label(name)} (%)")
        ax.set_title(_metric_label(name))
        ax.grid(True, alpha=0.3)
    if data:
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(axes[0].plot([], [], color="0.3", marker="*", ms=11, mec="black", mew=0.6, ls="none")[0])
        labels.append("final output")
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _rgba(color: str, alpha: float) -> str:
    """A ``#RRGGBB`` colour as a CSS ``rgba(...)`` with ``alpha``."""
    r, g, b = (int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


REFERENCE_LABEL = "Label at the heads' grid (reference)"
"""The legend name of a dataset report's resolution reference in the curves."""
REFERENCE_COLOR = "#888888"


def _add_reference(
    fig: go.Figure, reference: Mapping[str, Any] | None, metric: str, x_out: int, row: int, col: int, showlegend: bool
) -> None:
    """The resolution reference's value of ``metric`` (a fraction in ``reference``) as a dotted grey line across
    one subplot of a plotly curves figure (nothing when the reference lacks it)."""
    ref = _pct((reference or {}).get(metric))
    if not math.isfinite(ref):
        return
    fig.add_trace(
        go.Scatter(
            x=[0.5, x_out + 0.5],
            y=[ref, ref],
            mode="lines",
            name=REFERENCE_LABEL,
            legendgroup="reference",
            showlegend=showlegend,
            line={"color": REFERENCE_COLOR, "dash": "dot", "width": 1.5},
            hovertemplate=(
                f"<b>{hover_escape(REFERENCE_LABEL)}</b><br>"
                f"{hover_escape(_metric_label(metric))}: %{{y:.2f}}%<extra></extra>"
            ),
        ),
        row=row,
        col=col,
    )


def block_curves_plotly(
    metrics: Mapping[str, Mapping[str, Any]],
    metric_names: Sequence[str] = _DEFAULT_METRICS,
    title: str | None = None,
    bands: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any], int]] | None = None,
    reference: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Interactive version of :func:`block_curves_figure`.

    Args:
        bands: head -> (low, high, n): two entries shaped like ``metrics[head]`` (fractions) bounding the head's
            values over n training seeds (e.g. their range); drawn as a shaded band behind the head's line, the
            hover naming the seeds' count.
        reference: metric -> value (fraction) of the dataset report's resolution reference (the label itself at
            the heads' grid, :func:`analysis.report.label_on_grid`); drawn as a dotted grey line across each
            metric's subplot.

    Returns:
        Plotly figure with one subplot per metric and one trace per (head, metric); each trace
        holds the head's blocks followed by its final output (star marker at x = B_max + 1, "out").
        Hover shows head, block and value in percent.
    """
    if not metric_names:
        raise ValueError("metric_names is empty")
    max_b, data = _curve_data(metrics, metric_names)
    n = len(metric_names)
    x_out = max_b + 1
    fig = make_subplots(
        rows=1, cols=n, subplot_titles=[_metric_label(m) for m in metric_names], horizontal_spacing=0.07
    )
    band_data = {
        h: (_curve_data({h: lo}, metric_names)[1][h], _curve_data({h: hi}, metric_names)[1][h], n_seeds)
        for h, (lo, hi, n_seeds) in (bands or {}).items()
        if h in data
    }
    for ci, name in enumerate(metric_names):
        for head in data:
            vals, fin = data[head][name]
            nb = len(vals)
            xs = [*range(1, nb + 1), x_out]
            ys = [None if not math.isfinite(v) else float(v) for v in [*vals.tolist(), fin]]
            where = [f"block {i}" for i in range(1, nb + 1)] + ["final output"]
            symbol = _PLOTLY_MARKERS.get(_head_marker(head), "circle")
            if head in band_data:
                lo_d, hi_d, n_seeds = band_data[head]
                lo = [*lo_d[name][0].tolist(), lo_d[name][1]]
                hi = [*hi_d[name][0].tolist(), hi_d[name][1]]
                keep = [i for i in range(len(xs)) if math.isfinite(lo[i]) and math.isfinite(hi[i])]
                if keep:
                    bx = [xs[i] for i in keep]
                    fig.add_trace(
                        go.Scatter(
                            x=[*bx, *reversed(bx)],
                            y=[*(hi[i] for i in keep), *(lo[i] for i in reversed(keep))],
                            fill="toself",
                            fillcolor=_rgba(head_color(head), 0.16),
                            line={"width": 0},
                            mode="lines",
                            name=f"{head_label(head)}: range over {n_seeds} seeds",
                            legendgroup=head,
                            showlegend=False,
                            hoverinfo="skip",
                        ),
                        row=1,
                        col=ci + 1,
                    )
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=head_label(head) + (f" ({band_data[head][2]} seeds)" if head in band_data else ""),
                    legendgroup=head,
                    showlegend=ci == 0,
                    line={"color": head_color(head), "width": 2},
                    marker={
                        "symbol": [symbol] * nb + ["star"],
                        "size": [7] * nb + [14],
                        "line": {"color": ["rgba(0,0,0,0)"] * nb + ["black"], "width": 1},
                    },
                    customdata=where,
                    connectgaps=False,
                    hovertemplate=(
                        f"<b>{hover_escape(head_label(head))}</b><br>%{{customdata}}<br>"
                        f"{hover_escape(_metric_label(name))}: %{{y:.2f}}%<extra></extra>"
                    ),
                ),
                row=1,
                col=ci + 1,
            )
        fig.update_yaxes(title_text=f"{_metric_label(name)} (%)", row=1, col=ci + 1)
        fig.update_xaxes(
            title_text="block",
            tickmode="array",
            tickvals=[*range(1, max_b + 1), x_out],
            ticktext=[*(str(i) for i in range(1, max_b + 1)), _FINAL_LABEL],
            range=[0.5, x_out + 0.5],
            row=1,
            col=ci + 1,
        )
        if max_b:
            fig.add_vline(x=max_b + 0.5, line={"color": "#bbbbbb", "dash": "dash", "width": 1}, row=1, col=ci + 1)
        _add_reference(fig, reference, name, x_out, 1, ci + 1, showlegend=ci == 0)
    fig.update_layout(
        title={"text": title, "x": 0.5, "xanchor": "center"} if title else None,
        template="plotly_white",
        height=420,
        width=int(min(1600, max(420, 360 * n + 0.25 * 40 * max_b))),
        legend={"orientation": "h", "y": -0.2, "x": 0.5, "xanchor": "center"},
        hovermode="closest",
        margin={"t": 80 if title else 50},
    )
    return fig


def readout_curves_figure(
    per_readout: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metric_names: Sequence[str] = ("miou", "mask_ap"),
    title: str | None = None,
    reference: Mapping[str, Any] | None = None,
) -> Figure:
    """Small multiples of the per-block curves: one row per readout, one column per metric.

    Args:
        per_readout: readout -> head -> ``{"blocks": [{metric: v}], "final": {metric: v}}`` (fractions).
        metric_names: one column each.
        title: figure title.
        reference: metric -> fraction: the report's resolution reference, a dotted grey line in every panel.

    Returns:
        Matplotlib figure; y in percent, shared per column so readouts compare; x = block 1..B and the
        head output ("out", star marker). Each panel is titled "<readout> readout: <metric>".
    """
    if not per_readout or not metric_names:
        raise ValueError("per_readout and metric_names must not be empty")
    rows = list(per_readout)
    n = len(metric_names)
    fig = Figure(figsize=(4.2 * n, 2.9 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False, sharey="col")
    handles: dict[str, Any] = {}
    for ri, r in enumerate(rows):
        max_b, data = _curve_data(per_readout[r], metric_names)
        x_out = max_b + 1
        for ci, name in enumerate(metric_names):
            ax = axes[ri][ci]
            for head in data:
                vals, fin = data[head][name]
                color = head_color(head)
                x = np.arange(1, len(vals) + 1)
                (line,) = ax.plot(x, vals, color=color, marker=_head_marker(head), ms=4, lw=1.5)
                handles.setdefault(head_label(head), line)
                if len(vals) and math.isfinite(vals[-1]) and math.isfinite(fin):
                    ax.plot([x[-1], x_out], [vals[-1], fin], color=color, lw=1.0, ls=":")
                if math.isfinite(fin):
                    ax.plot([x_out], [fin], color=color, marker="*", ms=10, mec="black", mew=0.5, ls="none")
            ref = _pct((reference or {}).get(name))
            if math.isfinite(ref):
                handles.setdefault(REFERENCE_LABEL, ax.axhline(ref, color=REFERENCE_COLOR, ls=":", lw=1.2))
            ax.set_xticks([*range(1, max_b + 1), x_out], [*(str(t) for t in range(1, max_b + 1)), _FINAL_LABEL])
            ax.set_xlim(0.5, x_out + 0.5)
            ax.set_title(f"{r} readout: {_metric_label(name)}", fontsize=10)
            ax.set_ylabel(f"{_metric_label(name)} (%)")
            ax.grid(True, alpha=0.3)
            if ri == len(rows) - 1:
                ax.set_xlabel("block")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, len(handles)))
    if title:
        fig.suptitle(title)
    return fig


def readout_curves_plotly(
    per_readout: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metric_names: Sequence[str] = ("miou", "mask_ap"),
    title: str | None = None,
    reference: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Interactive version of :func:`readout_curves_figure` (rows = readouts, columns = metrics)."""
    if not per_readout or not metric_names:
        raise ValueError("per_readout and metric_names must not be empty")
    rows = list(per_readout)
    n = len(metric_names)
    fig = make_subplots(
        rows=len(rows),
        cols=n,
        subplot_titles=[f"{r} readout: {_metric_label(m)}" for r in rows for m in metric_names],
        horizontal_spacing=0.08,
        vertical_spacing=0.12 if len(rows) > 1 else 0.0,
    )
    shown: set[str] = set()
    for ri, r in enumerate(rows):
        max_b, data = _curve_data(per_readout[r], metric_names)
        x_out = max_b + 1
        for ci, name in enumerate(metric_names):
            for head in data:
                vals, fin = data[head][name]
                nb = len(vals)
                ys = [None if not math.isfinite(v) else float(v) for v in [*vals.tolist(), fin]]
                fig.add_trace(
                    go.Scatter(
                        x=[*range(1, nb + 1), x_out],
                        y=ys,
                        mode="lines+markers",
                        name=head_label(head),
                        legendgroup=head,
                        showlegend=head not in shown,
                        line={"color": head_color(head), "width": 2},
                        marker={"symbol": ["circle"] * nb + ["star"], "size": [6] * nb + [12]},
                        customdata=[f"block {i}" for i in range(1, nb + 1)] + ["final output"],
                        hovertemplate=(
                            f"<b>{hover_escape(head_label(head))}</b> ({hover_escape(r)} readout)<br>"
                            "%{customdata}<br>"
                            f"{hover_escape(_metric_label(name))}: %{{y:.2f}}%<extra></extra>"
                        ),
                    ),
                    row=ri + 1,
                    col=ci + 1,
                )
                shown.add(head)
            fig.update_xaxes(
                tickmode="array",
                tickvals=[*range(1, max_b + 1), x_out],
                ticktext=[*(str(i) for i in range(1, max_b + 1)), _FINAL_LABEL],
                row=ri + 1,
                col=ci + 1,
            )
            _add_reference(fig, reference, name, x_out, ri + 1, ci + 1, showlegend=ri == 0 and ci == 0)
            fig.update_yaxes(title_text=f"{_metric_label(name)} (%)", row=ri + 1, col=ci + 1)
    fig.update_layout(
        title={"text": title, "x": 0.5, "xanchor": "center"} if title else None,
        template="plotly_white",
        height=260 * len(rows) + 160,
        width=int(min(1400, 420 * n + 80)),
        legend={"orientation": "h", "y": -0.08, "x": 0.5, "xanchor": "center"},
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Training-seed probe
# --------------------------------------------------------------------------------------------------


def probe_figure(seed_results: Mapping[str, Sequence[float | None]], title: str | None = None) -> Figure:
    """Final mIoU per training seed for each head: one dot per seed plus mean ± std.

    Args:
        seed_results: head → final mIoU of each seed, as fractions in [0, 1] (``None``/NaN
            skipped). Heads appear on x in mapping order.
        title: figure title (default "Final mIoU across training seeds").

    Returns:
        Matplotlib figure. Std is the sample standard deviation (ddof=1; 0 for a single seed).
        With exactly two heads the difference of means is annotated.
    """
    heads = list(seed_results)
    fig = Figure(figsize=(max(3.4, 1.5 * len(heads) + 1.6), 4.0), layout="constrained")
    ax = fig.add_subplot()
    means: list[float] = []
    for i, head in enumerate(heads):
        vals = np.array([_pct(v) for v in seed_results[head]], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        color = head_color(head)
        if vals.size == 0:
            means.append(float("nan"))
            ax.text(i, 0.5, "no data", transform=ax.get_xaxis_transform(), ha="center", color="0.5")
            continue
        # Deterministic jitter so seeds with equal scores stay visible.
        offsets = np.linspace(-0.12, 0.12, vals.size) if vals.size > 1 else np.array([0.0])
        ax.scatter(
            i - 0.18 + offsets,
            vals,
            s=28,
            color=color,
            alpha=0.75,
            edgecolor="white",
            lw=0.5,
            zorder=3,
            label="seed" if i == 0 else None,
        )
        mean = float(vals.mean())
        std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        means.append(mean)
        ax.errorbar(
            [i + 0.18],
            [mean],
            yerr=[std],
            fmt="o",
            ms=7,
            color=color,
            mec="black",
            mew=0.7,
            ecolor=color,
            elinewidth=1.8,
            capsize=5,
            zorder=4,
            label="mean ± std" if i == 0 else None,
        )
        ax.annotate(
            f"{mean:.1f}±{std:.1f}\n(n={vals.size})",
            (i + 0.18, mean),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=_SMALL,
            color="0.2",
        )
    ax.set_xticks(range(len(heads)), [head_label(hd) for hd in heads])
    ax.set_xlim(-0.6, len(heads) - 0.2)
    ax.set_xlabel("head")
    ax.set_ylabel("final mIoU (%)")
    ax.grid(True, axis="y", alpha=0.3)
    if len(heads) == 2 and all(math.isfinite(m) for m in means):
        delta = means[1] - means[0]
        ax.text(
            0.5,
            0.98,
            f"Δ mean ({head_label(heads[1])} − {head_label(heads[0])}) = {delta:+.2f} pts",
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=_SMALL + 1,
        )
    if any(math.isfinite(m) for m in means):
        ax.legend(loc="lower right", fontsize=_SMALL, frameon=False)
        ax.margins(y=0.2)
    ax.set_title(title if title is not None else "Final mIoU across training seeds")
    return fig


# --------------------------------------------------------------------------------------------------
# Class × channel attention
# --------------------------------------------------------------------------------------------------


def _check_attention(attn: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"attn must be [R, C], got shape {a.shape}")
    if a.shape[0] != len(class_names):
        raise ValueError(f"attn has {a.shape[0]} rows but there are {len(class_names)} class names")
    return a


LOG_WEIGHT_FLOOR = 1e-45
"""Attention weights below this are drawn at it in the log-weight panel: float32's smallest positive
value is about 1.4e-45, so a weight of exactly 0 (an underflowed softmax) lands here."""


def attention_plotly(
    attn: np.ndarray,
    class_names: Sequence[str],
    title: str | None = None,
    token_columns: Sequence[str] = (),
    entropy: np.ndarray | None = None,
) -> go.Figure:
    """Interactive class x channel attention: log10 weight of every column, beside each class's entropy.

    Args:
        attn: ``[R, C']`` softmax weights, one row per class shown, every column (SSE: the token columns
            first, named by ``token_columns``; then the feature channels).
        class_names: ``[R]`` row labels.
        title: figure title.
        token_columns: names of the leading token columns (SSE: the K classes), empty for CSE.
        entropy: ``[R]`` each row's softmax entropy in nats; adds a bar panel (0 .. ln C') when given.

    The heatmap shows log10 of the weight (floored at :data:`LOG_WEIGHT_FLOOR`): log weight is the
    pre-softmax score minus the row's log-sum-exp, so a saturated row still shows how its channels rank
    below the one that takes all the weight. Hover gives the weight itself. The x axis spans every column.
    """
    a = _check_attention(attn, class_names)
    n_rows, n_ch = a.shape
    n_tok = len(token_columns)
    if n_tok > n_ch:
        raise ValueError(f"{n_tok} token columns but the attention has {n_ch} columns")
    rows = [str(c) for c in class_names]
    col_names = [f"token: {t}" for t in token_columns] + [f"feature channel {i}" for i in range(n_ch - n_tok)]
    logw = np.log10(np.clip(a, LOG_WEIGHT_FLOOR, None))
    with_entropy = entropy is not None
    fig = make_subplots(
        rows=1,
        cols=2 if with_entropy else 1,
        column_widths=[0.82, 0.18] if with_entropy else None,
        shared_yaxes=True,
        horizontal_spacing=0.02,
        subplot_titles=(
            ("log10 attention weight" + (f" (left of the white line: the {n_tok} token channels)" if n_tok else "")),
            "softmax entropy (nats)",
        )
        if with_entropy
        else None,
    )
    fig.add_trace(
        go.Heatmap(
            z=logw,
            x=np.arange(n_ch),
            y=rows,
            customdata=np.stack([a, np.broadcast_to(np.array(col_names, dtype=object), a.shape)], axis=-1),
            colorscale=MAP_CMAP_PLOTLY,
            zmin=math.log10(LOG_WEIGHT_FLOOR),
            zmax=0.0,
            colorbar={"title": {"text": "log10 w"}, "x": 1.02, "len": 0.9},
            hovertemplate="class: %{y}<br>%{customdata[1]}<br>weight: %{customdata[0]:.4g}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if with_entropy:
        e = np.asarray(entropy, dtype=np.float64)
        if e.shape != (n_rows,):
            raise ValueError(f"entropy must have one value per row ({n_rows}), got shape {e.shape}")
        fig.add_trace(
            go.Bar(
                x=e,
                y=rows,
                orientation="h",
                marker_color="#4c72b0",
                text=[f"{v:.2g}" for v in e],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="class: %{y}<br>entropy: %{x:.3g} nats<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(range=[0.0, math.log(n_ch)], title_text=f"0 .. ln {n_ch} = {math.log(n_ch):.2f}", row=1, col=2)
    fig.update_yaxes(autorange="reversed", type="category", row=1, col=1)
    fig.update_xaxes(range=[-0.5, n_ch - 0.5], title_text=f"all {n_ch} channels", row=1, col=1)
    if n_tok:
        fig.add_vline(x=n_tok - 0.5, line_width=2, line_color="white", row=1, col=1)
    fig.update_layout(
        title={
            "text": title if title is not None else "Class × channel attention",
            "x": 0.5,
            "xanchor": "center",
        },
        template="plotly_white",
        height=int(min(1400, max(360, 24 * n_rows + 200))),
        margin={"l": 100, "r": 40, "t": 120},
    )
    return fig


def attention_figure(
    attn: np.ndarray,
    class_names: Sequence[str],
    title: str | None = None,
    token_columns: Sequence[str] = (),
    entropy: np.ndarray | None = None,
    channels: tuple[np.ndarray, np.ndarray, Sequence[int], Sequence[float], str] | None = None,
    width_px: int = 1030,
    dpi: int = 100,
) -> Figure:
    """The static class x channel attention (what :func:`attention_plotly` shows, for the page's figure and
    its PNG / PDF): log10 weights of every column (floored at :data:`LOG_WEIGHT_FLOOR`), each class's
    softmax entropy beside it, and, when ``channels`` = (image ``[H, W, 3]``, maps ``[N, H, W]``, channel
    ids, weights, class name) is given, the feature maps of the channels that class draws on below.

    Returns:
        Matplotlib figure ``width_px`` wide at ``dpi``.
    """
    a = _check_attention(attn, class_names)
    r, c = a.shape
    n_tok = len(token_columns)
    logw = np.log10(np.clip(a, LOG_WEIGHT_FLOOR, None))
    heat_h = min(6.0, max(1.6, 0.2 * r + 0.9))
    n_maps = 0 if channels is None else len(channels[2])
    row_h = 0.0
    if channels is not None:
        ih, iw = channels[0].shape[:2]
        per = 6  # fixed slots: one channel is a thumbnail, not a full-width picture
        row_h = (width_px / dpi - 0.6) / per * ih / iw * ((n_maps + per) // per) + 0.55
    fig = Figure(figsize=(width_px / dpi, heat_h + row_h + (0.5 if title else 0.1)), dpi=dpi, layout="constrained")
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, int(width_px / dpi * 10))), fontsize=10)
    top, bottom = fig.subfigures(2, 1, height_ratios=[heat_h, max(row_h, 1e-3)]) if channels else (fig, None)
    axes = top.subplots(1, 2, width_ratios=[5, 1], sharey=True) if entropy is not None else [top.subplots()]
    ax = axes[0]
    im = ax.imshow(
        logw, aspect="auto", cmap=MAP_CMAP, vmin=math.log10(LOG_WEIGHT_FLOOR), vmax=0.0, interpolation="nearest"
    )
    ax.set_yticks(range(r), [str(n) for n in class_names], fontsize=_SMALL)
    xlabel = f"channel (0..{c - 1})" + (f"; left of the white line: the {n_tok} token channels" if n_tok else "")
    if entropy is not None:
        xlabel += f"; entropy's dotted line: uniform weights, ln {c} = {math.log(c):.2f} nats"
    ax.set_xlabel(xlabel, fontsize=_SMALL)
    ax.tick_params(axis="x", labelsize=_SMALL)
    if n_tok:
        ax.axvline(n_tok - 0.5, color="white", lw=1.5)
    ax.set_title("log10 attention weight of each channel", fontsize=_SMALL + 1)
    cb = top.colorbar(im, ax=axes if entropy is not None else ax, shrink=0.9, pad=0.01)
    cb.set_label("log10 weight", fontsize=_SMALL)
    cb.ax.tick_params(labelsize=_SMALL)
    if entropy is not None:
        e = np.asarray(entropy, dtype=np.float64)
        axes[1].barh(range(r), e, color="0.45")
        for i, v in enumerate(e):  # the value too: a saturated row's bar is too short to see
            axes[1].text(float(v), i, f" {v:.2f}", va="center", ha="left", fontsize=_SMALL - 1)
        axes[1].axvline(math.log(c), color="0.2", lw=1, ls=":")
        axes[1].set_xlim(0, max(math.log(c) * 1.05, float(np.nanmax(e)) * 1.05 if e.size else 1.0))
        axes[1].set_title("entropy (nats)", fontsize=_SMALL + 1)
        axes[1].tick_params(labelsize=_SMALL)
    if channels is not None and bottom is not None:
        image, maps, ids, weights, name = channels
        m = np.asarray(maps, dtype=np.float64)
        per = 6
        panels = bottom.subplots((n_maps + per) // per, per, squeeze=False).ravel()
        panels[0].imshow(as_rgb_uint8(image))
        panels[0].set_title("image", fontsize=_SMALL)
        for i in range(n_maps):
            panels[i + 1].imshow(m[i], cmap=MAP_CMAP, interpolation="nearest")
            panels[i + 1].set_title(f"ch {int(ids[i])} · w={float(weights[i]):.3f}", fontsize=_SMALL)
        for i, p in enumerate(panels):
            p.set_xticks([])
            p.set_yticks([])
            p.set_visible(i <= n_maps)
        bottom.suptitle(
            f"the feature channels '{name}' draws on most (each map on its own colour scale)", fontsize=_SMALL + 1
        )
    return fig


def channel_maps_figure(
    image: np.ndarray,
    maps: np.ndarray,
    channel_ids: Sequence[int],
    weights: Sequence[float],
    class_name: str,
    title: str | None = None,
) -> Figure:
    """The feature channels a class draws on most, next to the image.

    Args:
        image: ``[H, W, 3]`` uint8.
        maps: ``[N, H, W]`` feature-channel maps (upsampled to the image size by the caller).
        channel_ids: ``[N]`` channel indices.
        weights: ``[N]`` the class's weight on each channel.
        class_name: the class.
        title: figure title (default "Channels most used by '{class_name}'").

    Returns:
        Matplotlib figure: image panel first, then one panel per channel titled
        ``"ch {id} · w={weight:.3f}"``, at most 6 panels per row. Each map has its own colour scale
        (a note says so).
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {m.shape}")
    n = m.shape[0]
    if len(channel_ids) != n or len(weights) != n:
        raise ValueError("channel_ids and weights must have one entry per map")
    img = as_rgb_uint8(image)
    h, w = m.shape[1:]
    n_panels = n + 1
    ncols = min(n_panels, 6)
    nrows = math.ceil(n_panels / ncols)
    cell_w, cell_h = _cell_size(nrows, ncols, h, w, max_width=12.0 / 1.25)
    cell_w, cell_h = cell_w * 1.25, cell_h * 1.25
    fig = Figure(figsize=(cell_w * ncols + 0.4, cell_h * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    axes[0].imshow(img, extent=extent)
    axes[0].set_title("image", fontsize=_SMALL + 1)
    for i in range(n):
        ax = axes[i + 1]
        ax.imshow(m[i], cmap=MAP_CMAP, extent=extent, interpolation="nearest")
        ax.set_title(f"ch {int(channel_ids[i])} · w={float(weights[i]):.3f}", fontsize=_SMALL + 1)
    for i, ax in enumerate(axes):
        if i < n_panels:
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.set_visible(False)
    text = title if title is not None else f"Channels most used by '{class_name}'"
    width_chars = max(30, int(fig.get_figwidth() * 9))  # ~9 characters per inch at the default title size
    fig.suptitle("\n".join(textwrap.wrap(text, width_chars)))
    fig.supxlabel("each map on its own colour scale", fontsize=_SMALL)
    return fig


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _require_mpl(fig: Any) -> Figure:
    if isinstance(fig, go.Figure):
        raise TypeError("plotly figures are exported by the browser (or fig.to_html()); pass a matplotlib Figure")
    if not isinstance(fig, Figure):
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
    return fig


PNG_COMPRESS_LEVEL = 1
"""zlib level of the page's PNGs: 1 encodes a 2000x530 block grid in ~50 ms instead of ~160 ms at
Pillow's default 6, for a file ~20 % larger (pixels identical: PNG is lossless)."""


def figure_to_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes in memory (no file is written)."""
    buf = io.BytesIO()
    _require_mpl(fig).savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


def figure_to_pdf_bytes(fig: Figure) -> bytes:
    """Render a matplotlib figure to PDF bytes in memory (no file is written)."""
    buf = io.BytesIO()
    _require_mpl(fig).savefig(buf, format="pdf")
    return buf.getvalue()


def ablation_figure(ablation: Mapping[str, Any], readout: str = "head", title: str | None = None) -> Figure:
    """The block-count ablation (:func:`analysis.over_seeds.ablation`): for each head, the mIoU of every block's
    maps under ``readout`` against the block index, one colour per block count N (one thin line per seed, the
    mean thick), and the final mIoU against N (one dot per seed, the mean joined).

    Args:
        ablation: ``{"heads", "by_blocks": {N: {"seeds", "final": {head: [percent per seed]}, "blocks":
            {readout: {head: [[percent per block] per seed]}}}}}``.
        readout: the readout of the per-block curves.
        title: figure title.

    Returns:
        Matplotlib figure: one row, a per-block panel per head, then the final-mIoU panel.
    """
    heads = list(ablation.get("heads") or [])
    groups = {int(n): g for n, g in (ablation.get("by_blocks") or {}).items()}
    ns = sorted(groups)
    cmap = matplotlib.colormaps["viridis"]
    colour = {n: cmap(0.15 + 0.7 * i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}
    fig = Figure(figsize=(3.6 * (len(heads) + 1), 3.7), layout="constrained")
    axes = fig.subplots(1, len(heads) + 1, squeeze=False)[0]
    for ax, head in zip(axes, heads):
        for n in ns:
            rows = [r for r in ((groups[n].get("blocks") or {}).get(readout) or {}).get(head) or [] if r]
            for row in rows:
                xs = range(1, len(row) + 1)
                ax.plot(xs, [_pct_points(v) for v in row], color=colour[n], lw=0.7, alpha=0.5, marker=".", ms=4)
            if rows:
                width = max(len(r) for r in rows)
                mean = [
                    float(np.nanmean([_pct_points(r[i]) if i < len(r) else np.nan for r in rows])) for i in range(width)
                ]
                ax.plot(range(1, width + 1), mean, color=colour[n], lw=2.2, marker="o", ms=4, label=f"N = {n}")
        ax.set_title(f"{head_label(head)}, {readout} readout", fontsize=10)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("block")
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    ax = axes[-1]
    for j, head in enumerate(heads):
        means = []
        for n in ns:
            vals = [v for v in (groups[n].get("final") or {}).get(head) or [] if v is not None]
            x = n + (j - (len(heads) - 1) / 2) * 0.12
            ax.scatter([x] * len(vals), vals, s=18, color=head_color(head), alpha=0.6, edgecolor="white", lw=0.4)
            means.append(float(np.mean(vals)) if vals else float("nan"))
        ax.plot(ns, means, color=head_color(head), marker=_head_marker(head), lw=1.8, label=head_label(head))
    ax.set_xticks(ns)
    ax.set_xlabel("blocks N")
    ax.set_ylabel("final mIoU (%)")
    ax.set_title("final mIoU (dots: seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Block-count ablation, CamVid val: each block's maps (thin: seeds, thick: mean), the output")
    return fig


def _pct_points(v: Any) -> float:
    """A value already in percent (or None) as a float for plotting (NaN when missing)."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")

"""Figures for StructToken Explorer: segmentation overlays, block-by-block map grids, metric curves.

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
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from plotly.subplots import make_subplots

from .labels import HEAD_LABELS

__all__ = [
    "DIVERGING_CMAP",
    "FALLBACK_HEAD_COLORS",
    "HEAD_COLORS",
    "HEAD_LABELS",
    "HEAD_MARKERS",
    "MAP_CMAP",
    "METRIC_LABELS",
    "attention_figure",
    "attention_plotly",
    "block_curves_figure",
    "block_curves_plotly",
    "channel_maps_figure",
    "colorize_labels",
    "comparison_figure",
    "comparison_plotly",
    "figure_to_pdf_bytes",
    "figure_to_png_bytes",
    "head_color",
    "head_label",
    "overlay",
    "prediction_figure",
    "probe_figure",
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
DIVERGING_CMAP_PLOTLY = "RdBu_r"

#: Fixed colour per head (Okabe–Ito colour-blind-safe palette).
HEAD_COLORS: dict[str, str] = {
    "cse": "#0072B2",  # blue
    "sse": "#009E73",  # bluish green
    "pwe": "#D55E00",  # vermillion
    "per_pixel": "#4D4D4D",  # dark grey
    "per_pixel_ds": "#E69F00",  # orange
}
#: Colours for heads not in :data:`HEAD_COLORS`, picked by a stable hash of the name.
FALLBACK_HEAD_COLORS: tuple[str, ...] = ("#CC79A7", "#56B4E9", "#8C564B", "#9467BD", "#BCBD22", "#17BECF")

#: Marker per head in line plots (so heads stay distinguishable in greyscale).
HEAD_MARKERS: dict[str, str] = {"cse": "o", "sse": "s", "pwe": "^", "per_pixel": "D", "per_pixel_ds": "v"}
_PLOTLY_MARKERS: dict[str, str] = {
    "o": "circle",
    "s": "square",
    "^": "triangle-up",
    "D": "diamond",
    "v": "triangle-down",
}

#: Pretty metric names.
METRIC_LABELS: dict[str, str] = {"miou": "mIoU", "mask_ap": "mask AP", "boundary_f1": "boundary F1"}

_DEFAULT_METRICS: tuple[str, ...] = ("miou", "mask_ap", "boundary_f1")
_FINAL_LABEL = "out"
_UNKNOWN_CLASS_RGB = (128, 128, 128)
_SMALL = 8  # font size for dense grids
_PLOTLY_MAX_SIDE = 128


def head_color(head: str) -> str:
    """Colour (hex string) of ``head``: :data:`HEAD_COLORS`, else a stable fallback colour."""
    if head in HEAD_COLORS:
        return HEAD_COLORS[head]
    return FALLBACK_HEAD_COLORS[zlib.crc32(head.encode("utf-8")) % len(FALLBACK_HEAD_COLORS)]


def head_label(head: str) -> str:
    """Pretty label of ``head`` (its name when it has none in :data:`HEAD_LABELS`)."""
    return HEAD_LABELS.get(head, head)


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
    lab = label.astype(np.int64)
    pal = _palette_array(palette)
    out = np.zeros((*lab.shape, 3), dtype=np.uint8)
    keep = (lab >= 0) & (lab != ignore_index)
    known = keep & (lab < len(pal))
    out[known] = pal[lab[known]]
    out[keep & ~known] = _UNKNOWN_CLASS_RGB
    return out


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
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
    img = _as_rgb_uint8(image)
    label = np.asarray(label)
    if label.shape != img.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    colour = colorize_labels(label, palette, ignore_index).astype(np.float64)
    blend = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    out = np.where(((label >= 0) & (label != ignore_index))[..., None], blend, img)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


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
    img = _as_rgb_uint8(image)
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
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize=_SMALL + 1,
            title="class (% area)",
            title_fontsize=_SMALL + 1,
            frameon=False,
        )
    return fig


# --------------------------------------------------------------------------------------------------
# Block-by-block map grids
# --------------------------------------------------------------------------------------------------


def _check_panels(panels: Mapping[str, np.ndarray], n_rows: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Validate ``panels`` (head → ``[R, B, H, W]``); returns float arrays and the common ``(H, W)``."""
    if not panels:
        raise ValueError("panels is empty")
    out: dict[str, np.ndarray] = {}
    size: tuple[int, int] | None = None
    for head, arr in panels.items():
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 4:
            raise ValueError(f"panels[{head!r}] must be [R, B, H, W], got shape {a.shape}")
        if a.shape[0] != n_rows:
            raise ValueError(f"panels[{head!r}] has {a.shape[0]} rows but there are {n_rows} class names")
        if a.shape[1] < 1:
            raise ValueError(f"panels[{head!r}] has no blocks")
        if size is None:
            size = (a.shape[2], a.shape[3])
        elif size != a.shape[2:]:
            raise ValueError(f"panels[{head!r}] maps are {a.shape[2:]}, others are {size}")
        out[head] = a
    assert size is not None
    return out, size


def _block_titles_for(block_titles: Sequence[str] | Mapping[str, Sequence[str]], head: str, n: int) -> list[str]:
    """Titles of ``head``'s ``n`` blocks: list applied left to right (extra blocks → "block b")."""
    titles = block_titles.get(head, ()) if isinstance(block_titles, Mapping) else block_titles
    titles = list(titles)
    return [titles[b] if b < len(titles) else f"block {b + 1}" for b in range(n)]


def _resolve_bound(
    value: float | Sequence[float] | np.ndarray | None, n_rows: int, name: str
) -> tuple[str, np.ndarray | None]:
    """Classify a vmin/vmax argument: ("auto", None), ("shared", [R]) or ("row", [R])."""
    if value is None:
        return "auto", None
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return "shared", np.full(n_rows, float(arr))
    if arr.shape != (n_rows,):
        raise ValueError(f"{name} must be None, a float or an array of {n_rows} values, got shape {arr.shape}")
    return "row", arr


def _scale_mode(vmin_mode: str, vmax_mode: str) -> str:
    """ "shared" if both bounds are shared, "row" if both given and one is per row, else "auto"."""
    if vmin_mode == "shared" and vmax_mode == "shared":
        return "shared"
    if "auto" in (vmin_mode, vmax_mode):
        return "auto"
    return "row"


def _stroke() -> list[Any]:
    return [patheffects.withStroke(linewidth=2.2, foreground="black")]


def _draw_boundary(ax: Axes, mask: np.ndarray, out_hw: tuple[int, int], dashed: bool) -> None:
    """Contour of boolean ``mask`` ([h, w]) on an axes showing an image of size ``out_hw``."""
    if not mask.any() or mask.all():
        return
    h, w = mask.shape
    oh, ow = out_hw
    xs = (np.arange(w) + 0.5) * (ow / w) - 0.5
    ys = (np.arange(h) + 0.5) * (oh / h) - 0.5
    cs = ax.contour(
        xs,
        ys,
        mask.astype(np.float32),
        levels=[0.5],
        colors="white",
        linewidths=1.0,
        linestyles="--" if dashed else "-",
    )
    cs.set_path_effects(_stroke())


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


def comparison_figure(
    image: np.ndarray,
    class_names: Sequence[str],
    block_titles: Sequence[str] | Mapping[str, Sequence[str]],
    panels: Mapping[str, np.ndarray],
    vmin: float | Sequence[float] | np.ndarray | None = None,
    vmax: float | Sequence[float] | np.ndarray | None = None,
    label: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    class_ids: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Paper-Fig.-3-style grid: rows = classes, columns = blocks, one column group per head.

    Layout: the first column shows the image in *every* row (so the class boundary of that row can
    be drawn on it), titled "image" and labelled with the row's class name; then one group of
    columns per head (in ``panels`` order) with the head's label, in the head's colour, above the
    group and the block titles above the top row.

    Args:
        image: ``[H, W, 3]`` uint8 (any size; thumbnails are drawn with the maps' extent).
        class_names: ``[R]`` row names.
        block_titles: column titles, applied left to right to each head's blocks (a head with
            more blocks than titles gets "block b"); a mapping head → titles is also accepted.
        panels: head name → ``[R, B_head, H, W]`` maps, already upsampled and normalised by the
            caller; ``B_head`` may differ between heads.
        vmin, vmax: colour range. ``None`` → each map on its own automatic scale (no colourbar);
            a float → shared by every map (one shared colourbar); an ``[R]`` array → one range per
            row (one colourbar per row). A float combined with an array acts per row.
        label: ``[H', W']`` ground-truth class indices; with ``class_ids`` the boundary of
            class ``class_ids[r]`` is drawn on every map of row ``r`` (solid white).
        pred: ``[H', W']`` predicted class indices; drawn like ``label`` but dashed.
        class_ids: ``[R]`` class index of each row (needed for ``label`` / ``pred`` contours).
        title: figure title.

    Returns:
        Matplotlib figure. Map axes carry the label ``"map:{head}:{row}:{block}"``, image axes
        ``"image:{row}"`` and head-header axes ``"header:{head}"``.
    """
    n_rows = len(class_names)
    if n_rows == 0:
        raise ValueError("class_names is empty")
    maps, (h, w) = _check_panels(panels, n_rows)
    img = _as_rgb_uint8(image)
    if class_ids is not None and len(class_ids) != n_rows:
        raise ValueError(f"class_ids has {len(class_ids)} entries for {n_rows} rows")
    contours: list[tuple[np.ndarray, bool]] = []
    if class_ids is not None:
        for arr, dashed in ((label, False), (pred, True)):
            if arr is not None:
                a = np.asarray(arr)
                if a.ndim != 2:
                    raise ValueError(f"label/pred must be [H, W], got shape {a.shape}")
                contours.append((a, dashed))

    vmin_mode, vmins = _resolve_bound(vmin, n_rows, "vmin")
    vmax_mode, vmaxs = _resolve_bound(vmax, n_rows, "vmax")
    mode = _scale_mode(vmin_mode, vmax_mode)

    heads = list(maps)
    n_blocks = [maps[hd].shape[1] for hd in heads]
    # Grid columns: image | gap | head 0 blocks | gap | head 1 blocks ...
    col_of: list[list[int]] = []
    widths = [1.0]
    for nb in n_blocks:
        widths.append(0.12)
        col_of.append(list(range(len(widths), len(widths) + nb)))
        widths.extend([1.0] * nb)
    n_map_cols = 1 + sum(n_blocks)
    cell_w, cell_h = _cell_size(n_rows, n_map_cols + 0.12 * len(heads), h, w)
    header_h = 0.32
    fig_w = cell_w * sum(widths) + 0.6 + (0.9 if mode != "auto" else 0.0)
    fig_h = cell_h * n_rows + header_h + (0.5 if title else 0.15) + (0.3 if contours else 0.0)
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    gs = fig.add_gridspec(
        n_rows + 1, len(widths), width_ratios=widths, height_ratios=[header_h / cell_h] + [1.0] * n_rows
    )

    def clean(ax: Axes) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.4)
            spine.set_color("0.6")

    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    row_axes: list[list[Axes]] = [[] for _ in range(n_rows)]
    last_im = None
    row_ims: list[Any] = [None] * n_rows

    for gi, head in enumerate(heads):
        cols = col_of[gi]
        hax = fig.add_subplot(gs[0, cols[0] : cols[-1] + 1], label=f"header:{head}")
        hax.set_axis_off()
        hax.set_xlim(0, 1)
        hax.set_ylim(0, 1)
        hax.text(
            0.5,
            0.35,
            head_label(head),
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            color=head_color(head),
            transform=hax.transAxes,
        )
        hax.plot(
            [0.01, 0.99],
            [0.18, 0.18],
            color=head_color(head),
            lw=2.0,
            transform=hax.transAxes,
            solid_capstyle="butt",
        )

    for r in range(n_rows):
        iax = fig.add_subplot(gs[r + 1, 0], label=f"image:{r}")
        iax.imshow(img, extent=extent, interpolation="antialiased")
        clean(iax)
        iax.set_ylabel(str(class_names[r]), fontsize=_SMALL + 1)
        if r == 0:
            iax.set_title("image", fontsize=_SMALL)
        for arr, dashed in contours:
            _draw_boundary(iax, arr == int(class_ids[r]), (h, w), dashed)  # type: ignore[index]

        for gi, head in enumerate(heads):
            titles = _block_titles_for(block_titles, head, n_blocks[gi])
            for b, c in enumerate(col_of[gi]):
                ax = fig.add_subplot(gs[r + 1, c], label=f"map:{head}:{r}:{b}")
                m = maps[head][r, b]
                lo = vmins[r] if vmins is not None else None
                hi = vmaxs[r] if vmaxs is not None else None
                im = ax.imshow(m, cmap=MAP_CMAP, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
                clean(ax)
                if r == 0:
                    ax.set_title(titles[b], fontsize=_SMALL)
                for arr, dashed in contours:
                    _draw_boundary(ax, arr == int(class_ids[r]), (h, w), dashed)  # type: ignore[index]
                row_axes[r].append(ax)
                last_im = im
                row_ims[r] = im

    if mode == "shared" and last_im is not None:
        all_axes = [ax for row in row_axes for ax in row]
        cb = fig.colorbar(last_im, ax=all_axes, shrink=min(0.9, 0.35 + 0.12 * n_rows), aspect=25, pad=0.01)
        cb.ax.tick_params(labelsize=_SMALL)
        cb.set_label("map value", fontsize=_SMALL)
    elif mode == "row":
        for r in range(n_rows):
            cb = fig.colorbar(row_ims[r], ax=row_axes[r], shrink=0.85, aspect=12, pad=0.01)
            cb.ax.tick_params(labelsize=_SMALL - 1)

    notes = []
    if contours:
        kinds = [("ground truth: solid" if not d else "prediction: dashed") for _, d in contours]
        notes.append("class boundary — " + ", ".join(kinds))
    if mode == "auto":
        notes.append("each map on its own colour scale")
    if notes:
        fig.supxlabel("; ".join(notes), fontsize=_SMALL)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _downsample_stride(h: int, w: int, max_side: int = _PLOTLY_MAX_SIDE) -> int:
    return max(1, math.ceil(max(h, w) / max_side))


def _hover_escape(text: str) -> str:
    """Make arbitrary text safe inside a plotly hovertemplate."""
    return str(text).replace("%{", "%\u200b{").replace("<", "&lt;").replace(">", "&gt;")


def comparison_plotly(
    class_names: Sequence[str],
    block_titles: Sequence[str] | Mapping[str, Sequence[str]],
    panels: Mapping[str, np.ndarray],
    vmin: float | Sequence[float] | np.ndarray | None = None,
    vmax: float | Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
) -> go.Figure:
    """Interactive version of :func:`comparison_figure` (no image column, no contours).

    One heatmap subplot per (class row, head block); hover shows head, class, block, pixel and
    value. Maps whose long side exceeds 128 px are stride-subsampled for the browser (coordinates
    stay in original pixels) and the title says so.

    Args:
        class_names: ``[R]`` row names.
        block_titles: as in :func:`comparison_figure`.
        panels: head → ``[R, B_head, H, W]``.
        vmin, vmax: ``None`` or a float → one shared colour axis (a ``None`` bound is taken from
            all maps, since plotly cannot show per-map scales with a shared axis); an ``[R]``
            array → one colour axis (and colourbar) per row.
        title: figure title.

    Returns:
        Plotly figure with ``R * sum(B_head)`` heatmap traces.
    """
    n_rows = len(class_names)
    if n_rows == 0:
        raise ValueError("class_names is empty")
    maps, (h, w) = _check_panels(panels, n_rows)
    heads = list(maps)
    n_blocks = [maps[hd].shape[1] for hd in heads]
    n_cols = sum(n_blocks)

    vmin_mode, vmins = _resolve_bound(vmin, n_rows, "vmin")
    vmax_mode, vmaxs = _resolve_bound(vmax, n_rows, "vmax")
    per_row = "row" in (vmin_mode, vmax_mode)

    stride = _downsample_stride(h, w)
    xs = np.arange(0, w, stride)
    ys = np.arange(0, h, stride)

    col_titles: list[str] = []
    for gi, head in enumerate(heads):
        col_titles.extend(_block_titles_for(block_titles, head, n_blocks[gi]))
    subplot_titles = col_titles + [""] * (n_cols * (n_rows - 1))
    h_space = min(0.012, 0.5 / max(n_cols - 1, 1))
    v_space = min(0.02, 0.5 / max(n_rows - 1, 1))
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=subplot_titles,
        horizontal_spacing=h_space,
        vertical_spacing=v_space,
    )

    def bounds(r: int, data: list[np.ndarray]) -> tuple[float, float]:
        finite = np.concatenate([d[np.isfinite(d)].ravel() for d in data]) if data else np.array([])
        dmin = float(finite.min()) if finite.size else 0.0
        dmax = float(finite.max()) if finite.size else 1.0
        lo = float(vmins[r]) if vmins is not None else dmin
        hi = float(vmaxs[r]) if vmaxs is not None else dmax
        if hi <= lo:
            hi = lo + 1e-6
        return lo, hi

    small = {hd: maps[hd][:, :, ::stride, ::stride] for hd in heads}
    col = 0
    for gi, head in enumerate(heads):
        titles = _block_titles_for(block_titles, head, n_blocks[gi])
        for b in range(n_blocks[gi]):
            col += 1
            for r in range(n_rows):
                axis_name = "coloraxis" if not per_row or r == 0 else f"coloraxis{r + 1}"
                hover = (
                    f"<b>{_hover_escape(head_label(head))}</b><br>"
                    f"class: {_hover_escape(class_names[r])}<br>"
                    f"block: {_hover_escape(titles[b])}<br>"
                    "x=%{x}, y=%{y}<br>value: %{z:.4g}<extra></extra>"
                )
                fig.add_trace(
                    go.Heatmap(
                        z=small[head][r, b],
                        x=xs,
                        y=ys,
                        coloraxis=axis_name,
                        hovertemplate=hover,
                        name=f"{head_label(head)} · {class_names[r]} · {titles[b]}",
                    ),
                    row=r + 1,
                    col=col,
                )

    fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(
        showticklabels=False,
        ticks="",
        showgrid=False,
        zeroline=False,
        autorange="reversed",
        constrain="domain",
    )
    # Keep pixels square.
    for i in range(1, n_rows * n_cols + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    for r in range(n_rows):
        fig.update_yaxes(title_text=str(class_names[r]), title_font={"size": 11}, row=r + 1, col=1)

    # Colour axes.
    cb_common = {"thickness": 12, "tickfont": {"size": 10}}
    if per_row:
        for r in range(n_rows):
            lo, hi = bounds(r, [small[hd][r] for hd in heads])
            dom = fig.layout[f"yaxis{'' if r == 0 else r * n_cols + 1}"].domain
            name = "coloraxis" if r == 0 else f"coloraxis{r + 1}"
            fig.layout[name] = {
                "colorscale": MAP_CMAP_PLOTLY,
                "cmin": lo,
                "cmax": hi,
                "colorbar": {
                    **cb_common,
                    "y": (dom[0] + dom[1]) / 2,
                    "len": (dom[1] - dom[0]) * 0.95,
                    "yanchor": "middle",
                },
            }
    else:
        lo, hi = bounds(0, [small[hd] for hd in heads])
        fig.layout["coloraxis"] = {
            "colorscale": MAP_CMAP_PLOTLY,
            "cmin": lo,
            "cmax": hi,
            "colorbar": {**cb_common, "title": {"text": "value"}},
        }

    # Head labels above each column group.
    col = 0
    for gi, head in enumerate(heads):
        first, last = col + 1, col + n_blocks[gi]
        col = last
        x0 = fig.layout[f"xaxis{'' if first == 1 else first}"].domain[0]
        x1 = fig.layout[f"xaxis{'' if last == 1 else last}"].domain[1]
        fig.add_annotation(
            x=(x0 + x1) / 2,
            y=1.0,
            xref="paper",
            yref="paper",
            yshift=26,
            showarrow=False,
            text=f"<b>{_hover_escape(head_label(head))}</b>",
            font={"size": 13, "color": head_color(head)},
            xanchor="center",
            yanchor="bottom",
        )
        fig.add_shape(
            type="line",
            x0=x0,
            x1=x1,
            y0=1.0,
            y1=1.0,
            xref="paper",
            yref="paper",
            line={"color": head_color(head), "width": 2},
        )
    for ann in fig.layout.annotations:
        if ann.text in col_titles and ann.font.size is None:
            ann.font.size = 11

    full_title = title or ""
    if stride > 1:
        note = f"maps downsampled ×{stride} for display ({h}×{w} → {len(ys)}×{len(xs)})"
        full_title = f"{full_title}<br><sup>{note}</sup>" if full_title else note
    cell_px = 130
    aspect = w / max(h, 1)
    width = int(min(1800, max(500, n_cols * cell_px * aspect + 160)))
    top = 80 + (28 if full_title else 0) + (22 if title and stride > 1 else 0)
    height = int(min(2400, max(300, n_rows * cell_px + top + 40)))
    fig.update_layout(
        title={
            "text": full_title,
            "x": 0.5,
            "xanchor": "center",
            "y": 1.0,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 12},
        }
        if full_title
        else None,
        width=width,
        height=height,
        margin={"l": 60, "r": 40, "t": top, "b": 20},
        template="plotly_white",
        plot_bgcolor="white",
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Per-block metric curves
# --------------------------------------------------------------------------------------------------


def _pct(v: Any) -> float:
    """Fraction (or None/NaN) → percent float (NaN when missing)."""
    if v is None:
        return float("nan")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return 100.0 * f if math.isfinite(f) else float("nan")


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


def block_curves_plotly(
    metrics: Mapping[str, Mapping[str, Any]],
    metric_names: Sequence[str] = _DEFAULT_METRICS,
    title: str | None = None,
) -> go.Figure:
    """Interactive version of :func:`block_curves_figure`.

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
    for ci, name in enumerate(metric_names):
        for head in data:
            vals, fin = data[head][name]
            nb = len(vals)
            xs = [*range(1, nb + 1), x_out]
            ys = [None if not math.isfinite(v) else float(v) for v in [*vals.tolist(), fin]]
            where = [f"block {i}" for i in range(1, nb + 1)] + ["final output"]
            symbol = _PLOTLY_MARKERS.get(_head_marker(head), "circle")
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=head_label(head),
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
                        f"<b>{_hover_escape(head_label(head))}</b><br>%{{customdata}}<br>"
                        f"{_hover_escape(_metric_label(name))}: %{{y:.2f}}%<extra></extra>"
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


def _attention_scale(attn: np.ndarray) -> tuple[str, float | None, float | None, bool]:
    """Colormap and range: diverging symmetric about 0 if any value is negative, else the map colormap."""
    finite = attn[np.isfinite(attn)]
    if finite.size and finite.min() < 0:
        lim = float(np.abs(finite).max()) or 1.0
        return DIVERGING_CMAP, -lim, lim, True
    return MAP_CMAP, None, None, False


def _check_attention(attn: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"attn must be [R, C], got shape {a.shape}")
    if a.shape[0] != len(class_names):
        raise ValueError(f"attn has {a.shape[0]} rows but there are {len(class_names)} class names")
    return a


def attention_figure(
    attn: np.ndarray, class_names: Sequence[str], title: str | None = None, top_k: int | None = None
) -> Figure:
    """Class × feature-channel attention heatmap.

    Args:
        attn: ``[R, C]`` weights, rows = classes, columns = feature channels.
        class_names: ``[R]`` row names.
        title: figure title (default "Class × channel attention").
        top_k: if given, each row's ``top_k`` largest channels are marked with a white ring.

    Returns:
        Matplotlib figure (heatmap axes + colourbar). Signed weights use the diverging colormap
        symmetric about zero.
    """
    a = _check_attention(attn, class_names)
    n_rows, n_ch = a.shape
    cmap, lo, hi, signed = _attention_scale(a)
    fig = Figure(figsize=(min(16.0, max(5.0, 0.05 * n_ch + 3.0)), max(2.6, 0.3 * n_rows + 1.3)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(n_rows), [str(c) for c in class_names], fontsize=_SMALL + 1 if n_rows <= 30 else 6)
    ax.set_xlabel("feature channel")
    ax.set_ylabel("class")
    if top_k:
        k = min(int(top_k), n_ch)
        filled = np.where(np.isfinite(a), a, -np.inf)
        top = np.argsort(-filled, axis=1, kind="stable")[:, :k]
        rows = np.repeat(np.arange(n_rows), k)
        ax.scatter(top.ravel(), rows, s=22, facecolors="none", edgecolors="white", linewidths=1.0)
        ax.scatter(top.ravel(), rows, s=36, facecolors="none", edgecolors="black", linewidths=0.5)
    cb = fig.colorbar(im, ax=ax, pad=0.01, aspect=max(10, 3 * n_rows) if n_rows < 20 else 40)
    cb.set_label("attention (signed)" if signed else "attention")
    full = title if title is not None else "Class × channel attention"
    if top_k:
        full += f" (○ = top {int(top_k)} per class)"
    ax.set_title(full)
    return fig


def attention_plotly(attn: np.ndarray, class_names: Sequence[str], title: str | None = None) -> go.Figure:
    """Interactive class × channel attention heatmap (one trace; hover: class, channel, weight)."""
    a = _check_attention(attn, class_names)
    n_rows, n_ch = a.shape
    _, lo, hi, signed = _attention_scale(a)
    fig = go.Figure(
        go.Heatmap(
            z=a,
            x=np.arange(n_ch),
            y=[str(c) for c in class_names],
            colorscale=DIVERGING_CMAP_PLOTLY if signed else MAP_CMAP_PLOTLY,
            zmin=lo,
            zmax=hi,
            zmid=0.0 if signed else None,
            colorbar={"title": {"text": "attention"}},
            hovertemplate="class: %{y}<br>channel: %{x}<br>weight: %{z:.4g}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="class", type="category")
    fig.update_xaxes(title_text="feature channel")
    fig.update_layout(
        title={
            "text": title if title is not None else "Class × channel attention",
            "x": 0.5,
            "xanchor": "center",
        },
        template="plotly_white",
        height=int(min(1400, max(320, 24 * n_rows + 160))),
        width=int(min(1600, max(600, 4 * n_ch + 250))),
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
    img = _as_rgb_uint8(image)
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
    fig.suptitle(title if title is not None else f"Channels most used by '{class_name}'")
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


def figure_to_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes in memory (no file is written)."""
    buf = io.BytesIO()
    _require_mpl(fig).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_to_pdf_bytes(fig: Figure) -> bytes:
    """Render a matplotlib figure to PDF bytes in memory (no file is written)."""
    buf = io.BytesIO()
    _require_mpl(fig).savefig(buf, format="pdf")
    return buf.getvalue()

"""The block-by-block grid (the paper's Fig. 3 layout): one layout description, two renderers.

:func:`block_grid` builds a :class:`GridLayout` once from an image's maps: rows = classes, a column
group per head (its stages: the class maps entering block 1, after each block, the output), the
normalised cells and their raw values, the class outlines and the texts. :func:`render_static` draws
it as one matplotlib mosaic (the app's figure and its PNG / PDF downloads, the report's examples),
:func:`render_plotly` as one interactive plotly axes (hover: head, stage, class, normalised and raw
value). Both draw the same cells with the same titles.

Shapes: R rows, B_g stages in column group g, the feature grid (h, w).
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import plotly.colors
import plotly.graph_objects as go
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from . import figures as F
from .labels import NORMALIZATION_NOTES, head_label
from .maps import ImageMaps, normalize_maps, readout_stages, upsample_maps

__all__ = [
    "PLOTLY_MAX_SIDE",
    "GridGroup",
    "GridLayout",
    "Label",
    "Outline",
    "PlacedFigure",
    "Placement",
    "block_grid",
    "display_size",
    "fit_text",
    "paint_matplotlib",
    "paint_raster",
    "place_stages_as_rows",
    "render_plotly",
    "render_static",
    "render_static_stages_as_rows",
    "stage_indices",
]

PLOTLY_MAX_SIDE = 128
"""Interactive cells longer than this (grid cells) are stride-subsampled to keep the page light."""
MOSAIC_MAX_WIDTH_PX = 1700
"""The static mosaic's maps fit in about this many pixels across (cells 56..128 px long)."""
TEXT_REFERENCE_PX = 1100
"""Mosaics wider than this get proportionally larger text (the page displays them about this wide)."""


@dataclass(frozen=True)
class GridGroup:
    """One column group: the stages of one head.

    Attributes:
        head: head name (its label and colour head the group).
        titles: ``[B]`` column titles (``input``, ``block 1``, ..., ``output``).
        cells: ``[R, B, h, w]`` float32 maps on the feature grid, in the layout's colour range.
        raw: ``[R, B, h, w]`` the same maps before normalisation (hover), or None.
    """

    head: str
    titles: tuple[str, ...]
    cells: np.ndarray
    raw: np.ndarray | None = None


@dataclass(frozen=True)
class Outline:
    """Class boundaries drawn in white on every cell of a row (and on its image).

    Attributes:
        labels: ``[H', W']`` integer class map at any size (resized nearest to the cell size).
        dashed: dashed (a prediction) or solid (ground truth).
    """

    labels: np.ndarray
    dashed: bool = False


@dataclass(frozen=True)
class GridLayout:
    """What a block grid shows, for either renderer.

    Attributes:
        rows: ``[R]`` row labels (class names).
        class_ids: ``[R]`` class index of each row (whose boundary the outlines draw).
        groups: the column groups, left to right; every group's cells have the same (h, w).
        image: ``[H, W, 3]`` uint8 shown in the first column of every row (static renderer), or None.
        outlines: class boundaries to draw (static renderer).
        cell_hw: (h, w) pixels of one static cell.
        title: figure title; colorbar_label: the colour axis' label; note: footnote (static).
        vmin, vmax: the colour range of the cells (normalised maps: 0..1).
    """

    rows: tuple[str, ...]
    class_ids: tuple[int, ...]
    groups: tuple[GridGroup, ...]
    cell_hw: tuple[int, int]
    image: np.ndarray | None = None
    outlines: tuple[Outline, ...] = ()
    title: str | None = None
    colorbar_label: str = "normalised map value"
    note: str | None = None
    vmin: float = 0.0
    vmax: float = 1.0

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a grid needs at least one column group")
        shapes = {g.cells.shape[2:] for g in self.groups}
        for g in self.groups:
            if g.cells.ndim != 4 or g.cells.shape[0] != len(self.rows):
                raise ValueError(f"{g.head}: cells must be [R={len(self.rows)}, B, h, w], got {g.cells.shape}")
            if g.cells.shape[1] != len(g.titles):
                raise ValueError(f"{g.head}: {g.cells.shape[1]} stages but {len(g.titles)} titles")
        if len(shapes) != 1:
            raise ValueError(f"every group's cells must have one (h, w), got {sorted(shapes)}")
        if len(self.class_ids) != len(self.rows):
            raise ValueError(f"{len(self.class_ids)} class ids for {len(self.rows)} rows")

    @property
    def num_panels(self) -> int:
        """Map cells in the grid: R x (sum of B over groups); the image column not counted."""
        return len(self.rows) * sum(len(g.titles) for g in self.groups)

    @property
    def column_titles(self) -> list[str]:
        """Every map column's title, left to right."""
        return [t for g in self.groups for t in g.titles]


# ------------------------------------------------------------------------------------ building
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


def display_size(hw: tuple[int, int], n_cols: int, max_width: int = MOSAIC_MAX_WIDTH_PX) -> tuple[int, int]:
    """Cell size (h, w) in pixels for a grid of ``n_cols`` thumbnails of an ``hw`` image."""
    h, w = hw
    long_side = int(np.clip(max_width / max(n_cols, 1), 56, 128))
    f = long_side / max(h, w)
    return max(8, round(h * f)), max(8, round(w * f))


def block_grid(
    maps: ImageMaps,
    heads: Sequence[str],
    class_ids: Sequence[int],
    normalize: str = "shared",
    block: int | None = None,
    readout: str = "raw",
    outline_head: str | None = None,
    label: np.ndarray | None = None,
    title: str | None = None,
    cell_long_side: int | None = None,
) -> GridLayout:
    """The grid of ``heads``' stages for the rows ``class_ids`` of one image.

    Args:
        maps: the image's maps.
        heads: the column groups, in order.
        class_ids: ``[R]`` the rows.
        normalize: one of :data:`analysis.maps.NORMALIZATIONS`, applied over all K classes and the
            stages of every head shown before the rows are picked.
        block: only that stage (0 = input, 1..N blocks, N + 1 = output), or None for every stage.
        readout: how stages are read as class scores (:data:`analysis.maps.READOUTS`).
        outline_head: whose prediction outlines each row's class (dashed when ``label`` is given).
        label: ``[H, W]`` ground truth, outlined solid; None for none.
        title: figure title.
        cell_long_side: static cell size in px along the long side; None fits the mosaic to
            :data:`MOSAIC_MAX_WIDTH_PX`.
    """
    stacks = {hd: readout_stages(maps, hd, readout) for hd in heads}
    normed = normalize_maps(stacks, normalize)
    assert isinstance(normed, dict)
    cls = np.asarray(class_ids, dtype=np.int64)
    groups = []
    for hd in heads:
        hm = maps.heads[hd]
        idx = stage_indices(hm.num_blocks, block)
        groups.append(
            GridGroup(
                head=hd,
                titles=tuple(hm.stage_names[i] for i in idx),
                cells=np.ascontiguousarray(normed[hd][idx][:, cls].transpose(1, 0, 2, 3)),
                raw=np.ascontiguousarray(stacks[hd][idx][:, cls].transpose(1, 0, 2, 3)),
            )
        )
    hw = maps.image.shape[:2]
    if cell_long_side is None:
        cell_hw = display_size(hw, 1 + sum(len(g.titles) for g in groups))
    else:
        f = cell_long_side / max(hw)
        cell_hw = (max(8, round(hw[0] * f)), max(8, round(hw[1] * f)))
    outlines = []
    note = f"normalisation: {NORMALIZATION_NOTES[normalize]}"
    if label is not None:
        outlines.append(Outline(np.asarray(label), dashed=False))
    if outline_head is not None:
        outlines.append(Outline(maps.pred[outline_head], dashed=label is not None))
    if label is not None and outline_head is not None:
        note += f"; white lines: boundary of each row's class (solid: ground truth, dashed: {head_label(outline_head)})"
    elif label is not None:
        note += "; white line: boundary of each row's class in the ground truth"
    elif outline_head is not None:
        note += f"; white line: boundary of each row's class in the {head_label(outline_head)} prediction"
    note += f"; maps bilinearly resized from the {maps.grid[0]}x{maps.grid[1]} grid"
    return GridLayout(
        rows=tuple(maps.class_names[c] for c in class_ids),
        class_ids=tuple(int(c) for c in class_ids),
        groups=tuple(groups),
        cell_hw=cell_hw,
        image=maps.image,
        outlines=tuple(outlines),
        title=title,
        colorbar_label="class probability" if normalize == "softmax" else "normalised map value",
        note=note,
    )


# ------------------------------------------------------------------------------- static mosaic
def _lut(cmap: str) -> np.ndarray:
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _colorize(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    idx = np.clip(np.nan_to_num(values, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = lut[idx]
    out[np.isnan(values)] = 255  # a stage the head does not have: blank, not the lowest colour
    return out


def _row_outlines(layout: GridLayout, hw: tuple[int, int]) -> list[np.ndarray | None]:
    """Per row: ``[h, w]`` bool pixels to paint white (solid outlines whole, dashed ones every other pair)."""
    if not layout.outlines:
        return [None] * len(layout.rows)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    dash = ((yy + xx) // 2) % 2 == 0
    out = []
    for c in layout.class_ids:
        paint = np.zeros(hw, dtype=bool)
        for o in layout.outlines:
            lab = np.asarray(o.labels)
            lab = lab if lab.shape == hw else F.resize_nearest(lab, hw)
            edge = F.boundary(lab == int(c))
            paint |= edge & dash if o.dashed else edge
        out.append(paint)
    return out


def render_static(layout: GridLayout, dpi: int = 100) -> Figure:
    """The grid as one mosaic image in one matplotlib axes (fast: one ``imshow``), with a labelled
    colourbar and the layout's note as a footnote.

    Cells are bilinearly resized to ``layout.cell_hw``, clipped to the colour range and drawn with
    :data:`analysis.figures.MAP_CMAP`, one map pixel per screen pixel at ``dpi``.

    Returns:
        Matplotlib figure with one image axes (label ``"mosaic"``) and a colourbar axes.
    """
    h, w = layout.cell_hw
    span = layout.vmax - layout.vmin or 1.0
    cells = {g.head: np.clip((upsample_maps(g.cells, (h, w)) - layout.vmin) / span, 0.0, 1.0) for g in layout.groups}
    n_rows = len(layout.rows)
    gap = max(2, w // 24)
    group_gap = 4 * gap
    lut = _lut(F.MAP_CMAP)
    n_cols = {g.head: len(g.titles) for g in layout.groups}
    width = w + sum(group_gap + n_cols[g.head] * w + (n_cols[g.head] - 1) * gap for g in layout.groups)
    height = n_rows * h + (n_rows - 1) * gap
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    image = layout.image if layout.image is not None else np.full((h, w, 3), 255, np.uint8)
    thumb = F.resize_rgb(F.as_rgb_uint8(image), (h, w))
    bounds = _row_outlines(layout, (h, w))
    col_x: dict[str, list[int]] = {}
    x = w + group_gap
    for g in layout.groups:
        col_x[g.head] = [x + b * (w + gap) for b in range(n_cols[g.head])]
        x = col_x[g.head][-1] + w + group_gap
    for r in range(n_rows):
        y = r * (h + gap)
        cell = thumb.copy()
        if bounds[r] is not None:
            cell[bounds[r]] = 255
        mosaic[y : y + h, :w] = cell
        for g in layout.groups:
            for b, cx in enumerate(col_x[g.head]):
                rgb = _colorize(cells[g.head][r, b], lut)
                if bounds[r] is not None:
                    rgb[bounds[r]] = 255
                mosaic[y : y + h, cx : cx + w] = rgb

    title, note = layout.title, layout.note
    # Type grows with the mosaic: the page shows a wide figure about TEXT_REFERENCE_PX wide, so an
    # 8 pt label on a 2000 px mosaic would be 5 px on screen. Offsets are in multiples of the font size.
    k = max(1.0, width / TEXT_REFERENCE_PX)
    fs = 8.0 * k
    fpx = fs * dpi / 72.0  # the label font size in pixels
    longest = max((len(str(r)) for r in layout.rows), default=0)
    left = max(1.25, (0.62 * longest * (fs + 1) * dpi / 72.0 + 12) / dpi)  # the longest row label fits
    right = 0.85 * k if k > 1 else 1.0
    top = 4.0 * fpx / dpi + (2.0 * fpx / dpi if title else 0.0)
    fig_w = width / dpi + left + right
    note_lines = textwrap.wrap(note, max(40, int((fig_w - left) * dpi / (0.52 * 0.95 * fpx)))) if note else []
    bottom = (0.5 + 1.25 * len(note_lines)) * 0.95 * fpx / dpi if note_lines else 0.12
    fig_h = height / dpi + top + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, (width / dpi) / fig_w, (height / dpi) / fig_h), label="mosaic")
    # one mosaic pixel per screen pixel: "none" gives the same pixels as "nearest" without Agg's
    # resampling pass (~40 ms of a 2000 px grid)
    ax.imshow(mosaic, interpolation="none", aspect="equal")
    ax.set_axis_off()
    ax.text(w / 2, -0.4 * fpx, "image", ha="center", va="bottom", fontsize=fs)
    for g in layout.groups:
        cols = col_x[g.head]
        for b, cx in enumerate(cols):
            ax.text(cx + w / 2, -0.4 * fpx, g.titles[b], ha="center", va="bottom", fontsize=fs)
        x0, x1 = cols[0], cols[-1] + w
        color = F.head_color(g.head)
        ax.plot([x0, x1], [-1.9 * fpx] * 2, color=color, lw=2 * k, solid_capstyle="butt", clip_on=False)
        xc = (x0 + x1) / 2
        label = head_label(g.head)
        ax.text(xc, -2.2 * fpx, label, ha="center", va="bottom", fontsize=1.25 * fs, fontweight="bold", color=color)
    for r, name in enumerate(layout.rows):
        ax.text(-0.6 * fpx, r * (h + gap) + h / 2, str(name), ha="right", va="center", fontsize=fs + 1)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    cax = fig.add_axes(
        ((left + width / dpi + 0.15 * k) / fig_w, bottom / fig_h, 0.14 * k / fig_w, (height / dpi) / fig_h)
    )
    cb = fig.colorbar(ScalarMappable(norm=Normalize(layout.vmin, layout.vmax), cmap=F.MAP_CMAP), cax=cax)
    cb.ax.tick_params(labelsize=fs)
    cb.set_label(layout.colorbar_label, fontsize=fs)
    if title:
        fig.text(0.5, 1 - 0.5 * fpx / dpi / fig_h, title, ha="center", va="top", fontsize=1.5 * fs)
    if note_lines:
        y = 0.3 * fpx / dpi / fig_h
        fig.text(left / fig_w, y, "\n".join(note_lines), ha="left", va="bottom", fontsize=0.95 * fs, color="0.3")
    return fig


# ------------------------------------------------------------------- static, stages as rows
PAGE_WIDTH_PX = 1030
"""The page shows the figure about this wide at a 1400 px window with the sidebar open: the figure is
drawn at this width, so it is shown one figure pixel per screen pixel and its text at its true size."""
PAGE_MAX_HEIGHT_PX = 750
"""The figure's height is kept under this (a 900 px window less the page's header, ~140 px, so the whole
figure is on screen): maps shrink to fit."""
MIN_MAP_PX = 40
MAX_MAP_PX = 240
FIGURE_DPI = 100
"""Pixels per inch of the static figures: a point is FIGURE_DPI / 72 pixels."""
_CHAR_EM = 0.62
"""A generous average character width of the figure font, in ems (to reserve the label column)."""
NOTE_GREY = "#4d4d4d"
_LINE_SPACING = 1.2
"""Baseline to baseline, in font sizes (matplotlib's default)."""


@dataclass(frozen=True)
class Label:
    """One line of text of a placed figure, in figure pixels (origin top left, y down).

    Attributes:
        text: one line (fitted: it fits its box at ``size``).
        x, y: the anchor point; anchor: Pillow's two letters, horizontal ``l``/``m``/``r`` and vertical
            ``a`` (top of the ascender), ``m`` (middle) or ``d`` (bottom of the descender).
        size: font size in points; bold; color: a ``#rrggbb`` string.
    """

    text: str
    x: float
    y: float
    anchor: str
    size: float
    bold: bool = False
    color: str = "#000000"


@dataclass(frozen=True)
class Placement:
    """Where everything of a static figure goes, in pixels: drawn the same by :func:`paint_raster` (the
    page's PNG) and :func:`paint_matplotlib` (the PDF, and the figure tests measure).

    Attributes:
        size: (width, height) of the canvas.
        mosaic: ``[Hm, Wm, 3]`` uint8 maps and images; mosaic_xy: its top-left corner.
        labels: every text line; rules: (x0, x1, y, colour, width) horizontal lines.
        colorbar: (x, y, w, h) of the horizontal colour bar, or None; colorbar_range: its (vmin, vmax);
            ticks: (value, label) under it.
        cell_hw: one map's (h, w).
    """

    size: tuple[int, int]
    mosaic: np.ndarray
    mosaic_xy: tuple[int, int]
    labels: tuple[Label, ...]
    rules: tuple[tuple[float, float, float, str, float], ...] = ()
    colorbar: tuple[int, int, int, int] | None = None
    colorbar_range: tuple[float, float] = (0.0, 1.0)
    ticks: tuple[tuple[float, str], ...] = ()
    cell_hw: tuple[int, int] = (0, 0)


@functools.cache
def _font(size_pt: float, bold: bool = False) -> Any:
    """The figure font (matplotlib's DejaVu Sans) at ``size_pt`` points and FIGURE_DPI, for Pillow."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size_pt * FIGURE_DPI / 72.0)


def text_width(text: str, size_pt: float, bold: bool = False) -> float:
    """Width in pixels of one line of ``text`` in the figure font."""
    return float(_font(round(size_pt, 2), bold).getlength(text))


def _ellipsize(text: str, max_px: float, size: float, bold: bool) -> str:
    if text_width(text, size, bold) <= max_px:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + "…", size, bold) <= max_px:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…" if lo else "…"


def _wrap(text: str, max_px: float, size: float, bold: bool) -> list[str]:
    """Greedy word wrap at the measured width (a word longer than a line stays whole: it is ellipsized later)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size, bold) <= max_px:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def fit_text(
    text: str, max_px: float, size: float, bold: bool = False, max_lines: int = 1, min_scale: float = 0.75
) -> tuple[list[str], float]:
    """Fit ``text`` into ``max_px`` pixels across: wrap it onto up to ``max_lines`` lines, shrink it down to
    ``min_scale`` of ``size``, then shorten the last line with an ellipsis. Returns (lines, size)."""
    # slack for the two rasterisers: matplotlib's hinted text runs up to ~2 % wider than Pillow's
    max_px = max(1.0, 0.97 * max_px - 1.0)
    floor = size * min_scale
    while True:
        lines = _wrap(text, max_px, size, bold) if max_lines > 1 else [text]
        if len(lines) <= max_lines and all(text_width(s, size, bold) <= max_px for s in lines):
            return lines, size
        if size <= floor:
            break
        size = max(floor, size * 0.9)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]
    return [_ellipsize(s, max_px, size, bold) for s in lines], size


def _stacked(
    text: str, x: float, y: float, anchor: str, max_px: float, size: float, *, max_lines: int = 1, **kw: Any
) -> list[Label]:
    """``text`` fitted to ``max_px`` as Labels; extra lines stack above (bottom anchors) or below (top anchors)
    the first, so the block keeps its anchor."""
    lines, size = fit_text(text, max_px, size, kw.get("bold", False), max_lines)
    step = _LINE_SPACING * size * FIGURE_DPI / 72.0
    if anchor[1] == "d":  # the last line sits on y
        return [Label(s, x, y - (len(lines) - 1 - i) * step, anchor, size, **kw) for i, s in enumerate(lines)]
    if anchor[1] == "m":
        y -= (len(lines) - 1) * step / 2
    return [Label(s, x, y + i * step, anchor, size, **kw) for i, s in enumerate(lines)]


def _common_size(texts: Sequence[str], max_px: float, size: float, max_lines: int) -> float:
    """The one font size at which every text of ``texts`` fits ``max_px`` (as :func:`fit_text` shrinks them)."""
    return min((fit_text(t, max_px, size, bold=True, max_lines=max_lines)[1] for t in texts), default=size)


def _tick_labels(values: Sequence[float]) -> list[str]:
    """Fewest decimals (one at least, as matplotlib's colour bars) that tell the values apart."""
    for d in range(1, 4):
        out = [f"{v:.{d}f}" for v in values]
        if len(set(out)) == len(out):
            return out
    return [f"{v:.3g}" for v in values]


def place_stages_as_rows(
    layout: GridLayout, width_px: int = PAGE_WIDTH_PX, max_height_px: int = PAGE_MAX_HEIGHT_PX
) -> Placement:
    """The grid with stages as rows: a column per (row of the layout, head), grouped by the layout's row
    (a class; the focus view's rows are heads), the image with the row's outline on top, then one row
    per stage. Placed ``width_px`` wide, the maps as large as the width and ``max_height_px`` allow, so
    at the page's width each map is ~110 px or more for up to 8 columns (the comparison's 4 classes x 2
    heads); the colour bar lies under the maps and the note under it. Every text is measured in the
    figure font and made to fit its box (wrapped, shrunk, shortened): nothing leaves the canvas or overlaps.
    """
    groups = layout.groups
    n_rows_l, n_groups = len(layout.rows), len(groups)
    stage_titles = list(max((g.titles for g in groups), key=len))
    n_cols = n_rows_l * n_groups
    ih, iw = layout.image.shape[:2] if layout.image is not None else groups[0].cells.shape[2:]
    fs = 9.0  # points; at 100 dpi 12.5 px
    fpx = fs * FIGURE_DPI / 72.0
    left = int(max(len(t) for t in [*stage_titles, "image"]) * _CHAR_EM * fpx) + 14
    right = 12
    gap = 3
    class_gap = 10 if n_groups > 1 else gap
    head_lines = 2 if n_groups > 1 else 0
    line = _LINE_SPACING * FIGURE_DPI / 72.0  # a line's height per point of font size
    # top: the title, the row (class) labels over a rule, the head labels (up to two lines each)
    title_h = (0.4 * fpx + 1.3 * fs * line + 0.3 * fpx) if layout.title else 0.3 * fpx
    head_h = head_lines * (fs - 0.5) * line + 0.3 * fpx
    row_lines = 1 if n_groups > 1 else 2  # a single group's column labels (the focus view's heads) may wrap
    row_h = row_lines * (fs + 1) * line + 4
    top = math.ceil(title_h + row_h + head_h)
    # bottom: the colour bar and its ticks, then the note (its lines as fitted to the width, at most 3)
    bar_h = 0.5 * fpx + round(0.9 * fpx) + _TICK_PX + 1 + _TICK_FS * line + 4

    def note_fit(width: float) -> tuple[list[str], float]:
        return fit_text(layout.note, width - 2 * right, 0.9 * fs, max_lines=3) if layout.note else ([], 0.9 * fs)

    bottom = math.ceil(bar_h + len(note_fit(width_px)[0]) * 0.9 * fs * line + 4)
    n_stage = len(stage_titles) + 1  # + the image row
    avail_w = width_px - left - right - (n_cols - n_rows_l) * gap - (n_rows_l - 1) * class_gap
    w = int(np.clip(avail_w / n_cols, MIN_MAP_PX, MAX_MAP_PX))
    h = max(8, round(w * ih / iw))
    avail_h = max_height_px - top - bottom - (n_stage - 1) * gap
    if h * n_stage > avail_h:  # too tall: shrink the maps to fit the height
        h = max(8, int(avail_h / n_stage))
        w = max(8, min(w, round(h * iw / ih)))
        h = max(8, round(w * ih / iw))
    span = layout.vmax - layout.vmin or 1.0
    cells = {id(g): np.clip((upsample_maps(g.cells, (h, w)) - layout.vmin) / span, 0.0, 1.0) for g in groups}
    lut = _lut(F.MAP_CMAP)
    col_x: list[tuple[int, int, int]] = []  # (layout row, group index, x in the mosaic)
    x = 0
    for r in range(n_rows_l):
        for gi in range(n_groups):
            col_x.append((r, gi, x))
            x += w + (gap if gi < n_groups - 1 else class_gap)
    mosaic_w = x - class_gap
    mosaic_h = n_stage * h + (n_stage - 1) * gap
    mosaic = np.full((mosaic_h, mosaic_w, 3), 255, dtype=np.uint8)
    image = layout.image if layout.image is not None else np.full((h, w, 3), 255, np.uint8)
    thumb = F.resize_rgb(F.as_rgb_uint8(image), (h, w))
    bounds = _row_outlines(layout, (h, w))
    for r, gi, cx in col_x:
        g = groups[gi]
        cell = thumb.copy()
        if bounds[r] is not None:
            cell[bounds[r]] = 255
        mosaic[:h, cx : cx + w] = cell
        for b, title in enumerate(g.titles):
            s = stage_titles.index(title) if title in stage_titles else len(stage_titles) - 1
            rgb = _colorize(cells[id(g)][r, b], lut)
            if bounds[r] is not None:
                rgb[bounds[r]] = 255
            y = (s + 1) * (h + gap)
            mosaic[y : y + h, cx : cx + w] = rgb
    fig_w = max(min(width_px, 640), left + mosaic_w + right)  # no blank band beside a narrow grid
    note_lines, note_size = note_fit(fig_w)  # a narrower figure may need one more line
    bottom = math.ceil(bar_h + len(note_lines) * note_size * line + 4)
    fig_h = top + mosaic_h + bottom
    labels: list[Label] = []
    rules: list[tuple[float, float, float, str, float]] = []
    for s, name in enumerate(["image", *stage_titles]):
        labels += _stacked(name, left - 0.6 * fpx, top + s * (h + gap) + h / 2, "rm", left - 8, fs)
    # column labels of one kind share one font size (the smallest any of them needs to fit)
    row_w = n_groups * w + (n_groups - 1) * gap
    row_size = _common_size([str(r) for r in layout.rows], row_w, fs + 1, row_lines)
    head_size = _common_size([head_label(g.head) for g in groups], w + gap - 2, fs - 0.5, 2)
    for r in range(n_rows_l):
        xs = [left + cx for rr, _, cx in col_x if rr == r]
        x0, x1 = xs[0], xs[-1] + w
        y_row = top - head_h - 3
        labels += _stacked(str(layout.rows[r]), (x0 + x1) / 2, y_row, "md", x1 - x0, row_size, max_lines=row_lines,
                           bold=True)  # fmt: skip
        if n_groups > 1:
            rules.append((x0, x1, y_row + 0.15 * fpx, "#666666", 1.0))
            for rr, gi, cx in col_x:
                if rr == r:
                    hd = groups[gi].head
                    labels += _stacked(
                        head_label(hd), left + cx + w / 2, top - 0.3 * fpx, "md", w + gap - 2, head_size,
                        max_lines=2, bold=True, color=F.head_color(hd),
                    )  # fmt: skip
    # the colour bar under the maps, its ticks under it and its label beside it
    cb_w, cb_h = int(min(260, mosaic_w * 0.4)), round(0.9 * fpx)
    cb_y = round(top + mosaic_h + 0.5 * fpx)
    ticks = [layout.vmin, (layout.vmin + layout.vmax) / 2, layout.vmax]
    label_x = left + cb_w + 0.8 * fpx
    labels += _stacked(layout.colorbar_label, label_x, cb_y + cb_h / 2, "lm", fig_w - label_x - right, fs)
    if layout.title:
        labels += _stacked(layout.title, fig_w / 2, 0.4 * fpx, "ma", fig_w - 2 * right, 1.3 * fs)
    step = note_size * line
    for i, s in enumerate(note_lines):
        labels.append(Label(s, right, fig_h - 4 - (len(note_lines) - 1 - i) * step, "ld", note_size, color=NOTE_GREY))
    return Placement(
        size=(int(fig_w), int(fig_h)),
        mosaic=mosaic,
        mosaic_xy=(left, top),
        labels=tuple(labels),
        rules=tuple(rules),
        colorbar=(left, cb_y, cb_w, cb_h),
        colorbar_range=(layout.vmin, layout.vmax),
        ticks=tuple(zip(ticks, _tick_labels(ticks), strict=True)),
        cell_hw=(h, w),
    )


_TICK_PX = 3
_TICK_FS = 8.0


def _tick_x(p: Placement, value: float) -> float:
    x, _, w, _ = p.colorbar or (0, 0, 0, 0)
    lo, hi = p.colorbar_range
    return x + (value - lo) / ((hi - lo) or 1.0) * (w - 1)


def paint_raster(p: Placement) -> np.ndarray:
    """``[H, W, 3]`` uint8: the placed figure drawn with Pillow (the page's figure and its PNG download;
    a few milliseconds, where matplotlib's Agg takes a few hundred)."""
    from PIL import Image, ImageDraw

    width, height = p.size
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray(p.mosaic), p.mosaic_xy)
    draw = ImageDraw.Draw(canvas)
    for x0, x1, y, color, lw in p.rules:
        draw.line([(x0, y), (x1, y)], fill=color, width=max(1, round(lw)))
    if p.colorbar is not None:
        x, y, w, h = p.colorbar
        ramp = _lut(F.MAP_CMAP)[np.linspace(0, 255, w).round().astype(int)]
        canvas.paste(Image.fromarray(np.repeat(ramp[None], h, axis=0)), (x, y))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline="black", width=1)
        for value, text in p.ticks:
            tx = _tick_x(p, value)
            draw.line([(tx, y + h), (tx, y + h + _TICK_PX)], fill="black", width=1)
            draw.text((tx, y + h + _TICK_PX + 1), text, fill="black", font=_font(_TICK_FS), anchor="ma")
    for lab in p.labels:
        draw.text((lab.x, lab.y), lab.text, fill=lab.color, font=_font(round(lab.size, 2), lab.bold), anchor=lab.anchor)
    return np.asarray(canvas)


_HA = {"l": "left", "m": "center", "r": "right"}
_VA = {"a": "top", "m": "center", "d": "bottom"}


def paint_matplotlib(p: Placement) -> Figure:
    """The placed figure as a matplotlib figure (vector text: the PDF download), built without axes (cheap:
    nothing is drawn until it is saved). ``fig.structtoken_cell_hw`` is one map's (h, w)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    width, height = p.size
    fig = Figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI)

    def fx(x: float) -> float:
        return x / width

    def fy(y: float) -> float:
        return 1.0 - y / height

    mx, my = p.mosaic_xy
    fig.figimage(p.mosaic, xo=mx, yo=height - my - p.mosaic.shape[0], origin="upper")
    for x0, x1, y, color, lw in p.rules:
        fig.add_artist(Line2D([fx(x0), fx(x1)], [fy(y)] * 2, color=color, lw=lw * 72 / FIGURE_DPI))
    if p.colorbar is not None:
        x, y, w, h = p.colorbar
        ramp = _lut(F.MAP_CMAP)[np.linspace(0, 255, w).round().astype(int)]
        fig.figimage(np.repeat(ramp[None], h, axis=0), xo=x, yo=height - y - h, origin="upper")
        fig.add_artist(Rectangle((fx(x), fy(y + h)), w / width, h / height, fill=False, lw=0.72, color="black"))
        for value, text in p.ticks:
            tx = _tick_x(p, value)
            fig.add_artist(Line2D([fx(tx)] * 2, [fy(y + h), fy(y + h + _TICK_PX)], color="black", lw=0.72))
            fig.text(fx(tx), fy(y + h + _TICK_PX + 1), text, ha="center", va="top", fontsize=_TICK_FS)
    for lab in p.labels:
        fig.text(
            fx(lab.x),
            fy(lab.y),
            lab.text,
            ha=_HA[lab.anchor[0]],
            va=_VA[lab.anchor[1]],
            fontsize=lab.size,
            fontweight="bold" if lab.bold else "normal",
            color=lab.color,
        )
    fig.structtoken_cell_hw = p.cell_hw  # type: ignore[attr-defined]  # for benchmarks and tests
    return fig


class PlacedFigure:
    """A placed static figure, drawn when asked: :attr:`pixels` (the page's figure and the PNG, by Pillow)
    and :attr:`figure` (matplotlib, vector text: the PDF), each once. A control change then costs only the
    pixels: no matplotlib figure is built (nor left to the garbage collector) unless a PDF is asked for."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self._pixels: np.ndarray | None = None
        self._figure: Figure | None = None

    @property
    def pixels(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 (:func:`paint_raster`)."""
        if self._pixels is None:
            self._pixels = paint_raster(self.placement)
        return self._pixels

    @property
    def figure(self) -> Figure:
        """The matplotlib figure (:func:`paint_matplotlib`)."""
        if self._figure is None:
            self._figure = paint_matplotlib(self.placement)
        return self._figure


def render_static_stages_as_rows(
    layout: GridLayout, width_px: int = PAGE_WIDTH_PX, max_height_px: int = PAGE_MAX_HEIGHT_PX
) -> Figure:
    """:func:`place_stages_as_rows` drawn by matplotlib (see :func:`paint_matplotlib`)."""
    return paint_matplotlib(place_stages_as_rows(layout, width_px, max_height_px))


# --------------------------------------------------------------------------------- interactive
@functools.cache
def _plotly_template(name: str) -> dict:
    """A named plotly template as the dict validation would put in the figure (``_validate=False``
    keeps a name as a plain string, which plotly.js ignores)."""
    import plotly.io as pio

    return pio.templates[name].to_plotly_json()


def render_plotly(layout: GridLayout) -> go.Figure:
    """The grid in one plotly axes: one heatmap trace per (group, column, row), sharing one colour axis.

    Cells stay on the feature grid (stride-subsampled beyond :data:`PLOTLY_MAX_SIDE`); hover shows
    head, stage, class, the normalised and (when the layout has them) the raw value. No image
    column and no outlines: the static figure has those.
    """
    h, w = layout.groups[0].cells.shape[2:]
    stride = max(1, math.ceil(max(h, w) / PLOTLY_MAX_SIDE))
    hs, ws = math.ceil(h / stride), math.ceil(w / stride)
    gap = max(1.0, ws / 12)
    group_gap = 3 * gap
    total_w = sum(len(g.titles) * (ws + gap) - gap for g in layout.groups) + group_gap * (len(layout.groups) - 1)
    px_per_cell = min(900 / max(total_w, 1), 14.0)
    # The texts above the cells are placed in data units from their size in pixels; the page may draw the
    # figure up to ~30 % narrower than this size (autosize), hence the slack.
    u = 1.3 / px_per_cell  # data units per screen pixel
    title_y = -2 * u  # column titles: 2 px above the cells
    line_y = title_y - (11 * 1.3 + 4) * u  # the head's rule clears the 11 px titles
    head_y = line_y - 2 * u  # the head label sits on its rule
    top = head_y - (13 * 1.3 + 4) * u  # room for the 13 px head label
    traces = []
    annotations = []
    shapes = []
    x = 0.0
    for g in layout.groups:
        arr = g.cells[:, :, ::stride, ::stride]
        raw_arr = g.raw[:, :, ::stride, ::stride] if g.raw is not None else None
        label = F.hover_escape(head_label(g.head))
        x_start = x
        for b, col_title in enumerate(g.titles):
            annotations.append(
                {
                    "x": x + ws / 2,
                    "y": title_y,
                    "text": col_title,
                    "showarrow": False,
                    "yanchor": "bottom",
                    "font": {"size": 11},
                    "xref": "x",
                    "yref": "y",
                }
            )
            for r in range(arr.shape[0]):
                hover = (
                    f"<b>{label}</b> · {F.hover_escape(col_title)}<br>"
                    f"class: {F.hover_escape(str(layout.rows[r]))}<br>"
                    "value: %{z:.3f}"
                    + ("<br>raw: %{customdata:.4g}" if raw_arr is not None else "")
                    + "<extra></extra>"
                )
                trace = {
                    "type": "heatmap",
                    "z": arr[r, b],
                    "x0": x + 0.5,
                    "dx": 1,
                    "y0": r * (hs + gap) + 0.5,
                    "dy": 1,
                    "coloraxis": "coloraxis",
                    "hovertemplate": hover,
                    "showlegend": False,
                }
                if raw_arr is not None:
                    trace["customdata"] = raw_arr[r, b]
                traces.append(trace)
            x += ws + gap
        x_end = x - gap
        annotations.append(
            {
                "x": (x_start + x_end) / 2,
                "y": head_y,
                "xref": "x",
                "yref": "y",
                "text": f"<b>{label}</b>",
                "showarrow": False,
                "yanchor": "bottom",
                "font": {"size": 13, "color": F.head_color(g.head)},
            }
        )
        shapes.append(
            {
                "type": "line",
                "x0": x_start,
                "x1": x_end,
                "y0": line_y,
                "y1": line_y,
                "xref": "x",
                "yref": "y",
                "line": {"color": F.head_color(g.head), "width": 2},
            }
        )
        x = x_end + group_gap
    n_rows = len(layout.rows)
    total_h = n_rows * (hs + gap) - gap
    note = f"maps subsampled ×{stride} for display" if stride > 1 else ""
    full_title = layout.title or ""
    if note:
        full_title = f"{full_title}<br><sup>{note}</sup>" if full_title else note
    layout_dict = dict(
        title={"text": full_title, "x": 0.5, "xanchor": "center"} if full_title else None,
        template=_plotly_template("plotly_white"),
        coloraxis={
            "colorscale": plotly.colors.get_colorscale(F.MAP_CMAP_PLOTLY),  # what validation would store
            "cmin": layout.vmin,
            "cmax": layout.vmax,
            "colorbar": {"title": {"text": layout.colorbar_label, "side": "right"}, "thickness": 12},
        },
        xaxis={"visible": False, "range": [-gap, total_w + gap], "constrain": "domain"},
        yaxis={
            "range": [total_h + gap, top],
            "scaleanchor": "x",
            "tickmode": "array",
            "tickvals": [r * (hs + gap) + hs / 2 for r in range(n_rows)],
            "ticktext": [str(c) for c in layout.rows],
            "showgrid": False,
            "zeroline": False,
            "constrain": "domain",
        },
        annotations=annotations,
        shapes=shapes,
        width=int(min(1800, max(500, total_w * px_per_cell + 220))),
        height=int(min(1600, max(300, (total_h + gap - top) * px_per_cell + 140))),
        margin={"l": 90, "r": 30, "t": 60 if full_title else 30, "b": 20},
        plot_bgcolor="white",
    )
    # plotly's per-property validation costs ~0.1 s for the ~100 traces of a comparison, most of a
    # control change; the dicts above are checked against plotly's schema by the tests instead
    return go.Figure(data=traces, layout={k: v for k, v in layout_dict.items() if v is not None}, _validate=False)

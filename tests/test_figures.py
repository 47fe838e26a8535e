"""Tests for analysis.figures and the block-grid renderers of analysis.grid: types, layout, labels, hover
text, export, no file or pyplot side effects."""

from __future__ import annotations

import builtins
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # only to prove the module never touches pyplot state
import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure

from analysis import figures as F
from analysis.grid import (
    PLOTLY_MAX_SIDE,
    GridGroup,
    GridLayout,
    Label,
    Outline,
    PlacedFigure,
    Placement,
    fit_text,
    paint_matplotlib,
    paint_raster,
    place_stages_as_rows,
    render_plotly,
    render_static,
    text_width,
)

H, W = 32, 48
NAMES = ["road", "sky", "car"]
PALETTE = [(128, 64, 128), (70, 130, 180), (0, 0, 142)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def label() -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.int64)
    lab[H // 2 :] = 1
    lab[5:15, 10:30] = 2
    lab[0, 0] = 255
    return lab


@pytest.fixture
def panels(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Different heads, different block counts.
    return {
        "cse": rng.random((3, 4, H, W)),
        "sse": rng.random((3, 3, H, W)),
        "per_pixel": rng.random((3, 2, H, W)),
    }


def _metrics() -> dict[str, dict]:
    def head(nb: int, base: float) -> dict:
        blocks = [{"miou": base + 0.02 * i, "mask_ap": base - 0.05, "boundary_f1": base - 0.1} for i in range(nb)]
        return {"final": {"miou": base + 0.1, "mask_ap": base, "boundary_f1": base - 0.05}, "blocks": blocks}

    m = {
        "cse": head(4, 0.5),
        "per_pixel": head(2, 0.4),
        "per_pixel_ds": head(2, 0.42),
        "mystery": head(3, 0.3),
    }
    m["cse"]["blocks"][1]["miou"] = float("nan")
    m["per_pixel"]["blocks"][0]["mask_ap"] = None
    m["per_pixel_ds"]["final"]["boundary_f1"] = None
    del m["mystery"]["blocks"][2]["boundary_f1"]
    return m


def _labelled(fig: Figure, prefix: str) -> list:
    return [ax for ax in fig.axes if ax.get_label().startswith(prefix)]


def _all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


# --------------------------------------------------------------------------------------------------
# Look and feel
# --------------------------------------------------------------------------------------------------


def test_head_style_constants() -> None:
    for head in ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds"):
        assert head in F.HEAD_COLORS
        assert head in F.HEAD_LABELS
    assert len(set(F.HEAD_COLORS.values())) == len(F.HEAD_COLORS)
    assert F.head_label("per_pixel_ds") == "Per-pixel + deep sup."
    assert F.head_label("other") == "other"
    # Fallback colour is stable and valid.
    assert F.head_color("other") == F.head_color("other")
    assert matplotlib.colors.is_color_like(F.head_color("other"))
    assert isinstance(F.MAP_CMAP, str)
    assert isinstance(F.DIVERGING_CMAP, str)
    matplotlib.colormaps[F.MAP_CMAP]
    matplotlib.colormaps[F.DIVERGING_CMAP]


# --------------------------------------------------------------------------------------------------
# Label images
# --------------------------------------------------------------------------------------------------


def test_colorize_labels(label: np.ndarray) -> None:
    lab = label.copy()
    lab[1, 1] = 7  # outside the palette
    out = F.colorize_labels(lab, PALETTE)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == (0, 0, 0)  # ignore → black
    assert tuple(out[H - 1, 0]) == PALETTE[1]
    assert tuple(out[6, 12]) == PALETTE[2]
    assert tuple(out[1, 1]) == (128, 128, 128)


def test_overlay(image: np.ndarray, label: np.ndarray) -> None:
    out = F.overlay(image, label, PALETTE, alpha=0.5)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], image[0, 0])  # ignored pixel keeps the image
    expected = np.round(0.5 * image[H - 1, 0].astype(float) + 0.5 * np.array(PALETTE[1]))
    np.testing.assert_allclose(out[H - 1, 0], expected, atol=1)
    np.testing.assert_array_equal(F.overlay(image, label, PALETTE, alpha=0.0), image)
    with pytest.raises(ValueError):
        F.overlay(image, label[:-1], PALETTE)


def test_prediction_figure(image: np.ndarray, label: np.ndarray) -> None:
    fig = F.prediction_figure(image, label, PALETTE, NAMES, title="Pred")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "Pred"
    assert len(fig.legends) == 1  # a figure legend, laid out outside the image by constrained layout
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 3  # ignore index not listed
    assert any(t.startswith("road (") and t.endswith("%)") for t in texts)
    sky_pct = 100.0 * (label == 1).sum() / label.size
    assert f"sky ({sky_pct:.1f}%)" in texts


def test_prediction_legend_is_never_clipped() -> None:
    """11 CamVid classes on a 480x360 image: the widest entry ("SignSymbol (9.1%)") keeps its ")"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(0)
    names = [
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ]
    img = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
    fig = F.prediction_figure(img, rng.integers(0, 11, (360, 480)), [(20 * i, 10 * i, 5 * i) for i in range(11)], names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.legends[0].get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0 and box.y1 <= fig.bbox.y1


# --------------------------------------------------------------------------------------------------
# Block grids
# --------------------------------------------------------------------------------------------------


def _layout(panels: dict[str, np.ndarray], image: np.ndarray, label: np.ndarray | None = None) -> GridLayout:
    groups = tuple(
        GridGroup(hd, tuple(f"{hd} {b}" for b in range(p.shape[1])), p.astype(np.float32), raw=10 * p)
        for hd, p in panels.items()
    )
    outlines = (Outline(label),) if label is not None else ()
    return GridLayout(
        rows=tuple(NAMES),
        class_ids=(0, 1, 2),
        groups=groups,
        cell_hw=(H, W),
        image=image,
        outlines=outlines,
        title="Grid",
        colorbar_label="normalised map value",
        note="a footnote",
    )


def _mosaic_texts(fig: Figure) -> list[str]:
    ax = next(a for a in fig.axes if a.get_label() == "mosaic")
    return [t.get_text() for t in ax.texts]


def test_static_and_plotly_grids_show_the_same_panels(image: np.ndarray, panels: dict[str, np.ndarray]) -> None:
    layout = _layout(panels, image)
    assert layout.num_panels == len(NAMES) * (4 + 3 + 2)
    static, interactive = render_static(layout), render_plotly(layout)
    # the same column titles, row labels and head labels, in the same order
    texts = _mosaic_texts(static)
    titles = [t for t in texts if t not in NAMES and t != "image" and t not in {F.head_label(h) for h in panels}]
    assert titles == layout.column_titles
    assert [t for t in texts if t in NAMES] == NAMES
    plotly_titles = [a.text for a in interactive.layout.annotations if not a.text.startswith("<b>")]
    assert plotly_titles == layout.column_titles
    assert [a.text for a in interactive.layout.annotations if a.text.startswith("<b>")] == [
        f"<b>{F.head_label(h)}</b>" for h in panels
    ]
    assert list(interactive.layout.yaxis.ticktext) == NAMES
    # one trace per panel, holding that panel's cells (no subsampling at this size) and raw values
    assert len(interactive.data) == layout.num_panels
    k = 0
    for g in layout.groups:
        for b in range(len(g.titles)):
            for r in range(len(NAMES)):
                np.testing.assert_array_equal(interactive.data[k].z, g.cells[r, b])
                np.testing.assert_array_equal(interactive.data[k].customdata, g.raw[r, b])
                assert g.titles[b] in interactive.data[k].hovertemplate
                k += 1
    # the static mosaic draws each panel's cells through the colour map
    ax = next(a for a in static.axes if a.get_label() == "mosaic")
    mosaic = ax.get_images()[0].get_array()
    gap = max(2, W // 24)
    first = layout.groups[0]
    x0 = W + 4 * gap  # after the image column and a group gap
    lut = (matplotlib.colormaps[F.MAP_CMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    expected = lut[np.clip(first.cells[0, 0] * 255 + 0.5, 0, 255).astype(np.uint8)]
    np.testing.assert_array_equal(mosaic[:H, x0 : x0 + W], expected)
    # a labelled colourbar and the footnote
    cbar = next(a for a in static.axes if a.get_label() != "mosaic")
    assert cbar.get_ylabel() == "normalised map value"
    assert "a footnote" in _all_text(static) and "Grid" in _all_text(static)
    assert interactive.layout.coloraxis.colorbar.title.text == "normalised map value"


def test_static_grid_outlines_and_plotly_subsampling(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> None:
    flat = {"cse": np.full((3, 1, H, W), 0.5)}
    outlined = render_static(_layout(flat, image, label))
    plain = render_static(_layout(flat, image))
    a = next(x for x in outlined.axes if x.get_label() == "mosaic").get_images()[0].get_array()
    b = next(x for x in plain.axes if x.get_label() == "mosaic").get_images()[0].get_array()
    changed = np.any(a != b, axis=-1)
    assert changed.any() and np.all(a[changed] == 255)  # boundaries are white
    big = {"cse": rng.random((2, 2, 200, 300)).astype(np.float32)}
    layout = GridLayout(
        rows=("a", "b"), class_ids=(0, 1), groups=(GridGroup("cse", ("x", "y"), big["cse"]),), cell_hw=(40, 60)
    )
    fig = render_plotly(layout)
    assert len(fig.data) == 4 and max(fig.data[0].z.shape) <= PLOTLY_MAX_SIDE
    assert "subsampled" in fig.layout.title.text
    with pytest.raises(ValueError, match="titles"):
        GridLayout(
            rows=("a",), class_ids=(0,), groups=(GridGroup("cse", ("x",), np.zeros((1, 2, 4, 4))),), cell_hw=(4, 4)
        )


def test_static_grid_draws_the_pixels_of_nearest(image: np.ndarray, rng: np.random.Generator) -> None:
    """The mosaic is drawn with interpolation "none" (no Agg resampling pass, for speed): at one mosaic
    pixel per screen pixel the page's PNG must be exactly what "nearest" draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = render_static(_layout({"cse": rng.random((3, 2, H, W)).astype(np.float32)}, image))
    canvas = FigureCanvasAgg(fig)
    mosaic = next(x for x in fig.axes if x.get_label() == "mosaic").get_images()[0]
    assert mosaic.get_interpolation() == "none"
    canvas.draw()
    fast = np.asarray(canvas.buffer_rgba()).copy()
    mosaic.set_interpolation("nearest")
    canvas.draw()
    np.testing.assert_array_equal(fast, np.asarray(canvas.buffer_rgba()))


def test_plotly_grid_is_what_plotly_validation_gives(rng: np.random.Generator) -> None:
    """The grid is built without plotly's per-property validation (for speed): validating its JSON
    must raise nothing (no invalid property) and change nothing (template and colour scale resolved)."""
    import json

    import plotly.graph_objects as go

    cells = rng.random((2, 3, 5, 6)).astype(np.float32)
    layout = GridLayout(
        rows=("a", "b"),
        class_ids=(0, 1),
        groups=(GridGroup("cse", ("in", "b1", "out"), cells, raw=cells * 7),),
        cell_hw=(10, 12),
        title="t",
    )
    built = json.loads(render_plotly(layout).to_json())
    validated = json.loads(go.Figure(built).to_json())  # raises on any invalid property
    assert validated == built
    assert isinstance(built["layout"]["template"], dict)
    assert isinstance(built["layout"]["coloraxis"]["colorscale"], list)


def test_block_grid_from_maps() -> None:
    from analysis.grid import block_grid
    from analysis.maps import HeadMaps, ImageMaps, stage_names

    stages = np.random.default_rng(0).standard_normal((4, 3, 2, 3)).astype(np.float32)
    hm = HeadMaps(stages=stages, stage_names=stage_names(2), attention=None, block_features=None, kind="cse")
    maps = ImageMaps(
        image=np.zeros((32, 48, 3), np.uint8),
        heads={"cse": hm, "per_pixel": hm},
        pred={"cse": np.zeros((32, 48), np.uint8), "per_pixel": np.zeros((32, 48), np.uint8)},
        grid=(2, 3),
        seconds=0.0,
        class_names=tuple(NAMES),
    )
    layout = block_grid(maps, ["cse", "per_pixel"], [2, 0], "per_map", block=1, outline_head="cse")
    assert layout.rows == ("car", "road") and layout.column_titles == ["block 1", "block 1"]
    np.testing.assert_array_equal(layout.groups[0].raw[0, 0], stages[1, 2])
    assert layout.groups[0].cells.min() == 0 and layout.groups[0].cells.max() == 1
    assert "StructToken-CSE prediction" in layout.note and "2x3 grid" in layout.note


# --------------------------------------------------------------------------------------------------
# Metric curves
# --------------------------------------------------------------------------------------------------


def test_block_curves_figure_with_nan() -> None:
    metrics = _metrics()
    fig = F.block_curves_figure(metrics, title="Curves")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["mIoU", "mask AP", "boundary F1"]
    assert fig.axes[0].get_ylabel() == "mIoU (%)"
    assert fig.axes[0].get_xlabel() == "block"
    assert fig.get_suptitle() == "Curves"
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[-1] == "out" and ticks[0] == "1"
    # cse line: values in percent, NaN kept as a gap.
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "StructToken-CSE")
    y = line.get_ydata()
    assert y[0] == pytest.approx(50.0) and math.isnan(y[1])
    assert matplotlib.colors.same_color(line.get_color(), F.HEAD_COLORS["cse"])
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Per-pixel + deep sup." in legend_text and "mystery" in legend_text
    assert F.figure_to_png_bytes(fig).startswith(b"\x89PNG")


def test_block_curves_all_nan_and_custom_metrics() -> None:
    metrics = {
        "cse": {"final": {"miou": None}, "blocks": [{"miou": float("nan")}, {}]},
        "sse": {"blocks": []},
    }
    fig = F.block_curves_figure(metrics, metric_names=("miou",))
    assert len(fig.axes) == 1
    assert F.figure_to_png_bytes(fig).startswith(b"\x89PNG")
    pf = F.block_curves_plotly(metrics, metric_names=("miou",))
    assert len(pf.data) == 2


def test_block_curves_plotly() -> None:
    metrics = _metrics()
    fig = F.block_curves_plotly(metrics, title="Curves")
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == len(metrics) * 3
    cse = fig.data[0]
    assert cse.name == "StructToken-CSE"
    assert list(cse.x) == [1, 2, 3, 4, 5]
    assert cse.y[1] is None and cse.y[0] == pytest.approx(50.0)
    assert cse.customdata[-1] == "final output"
    assert "%{y" in cse.hovertemplate and "mIoU" in cse.hovertemplate
    assert cse.marker.symbol[-1] == "star"
    assert sum(bool(t.showlegend) for t in fig.data) == len(metrics)
    assert list(fig.layout.xaxis.ticktext)[-1] == "out"


def test_readout_curves_draw_the_resolution_reference() -> None:
    """The report's reference (fractions) is a dotted line in every panel of its metric, one legend entry; a
    metric the reference lacks gets none."""
    per_readout = {"raw": _metrics(), "head": _metrics()}
    reference = {"miou": 0.7, "pixel_accuracy": 0.9}
    fig = F.readout_curves_figure(per_readout, title="Curves", reference=reference)
    dotted = [
        (ax.get_title(), line.get_ydata()[0])
        for ax in fig.axes
        for line in ax.get_lines()
        if line.get_linestyle() == ":" and line.get_color() == F.REFERENCE_COLOR
    ]
    assert dotted == [("raw readout: mIoU", 70.0), ("head readout: mIoU", 70.0)]
    assert F.REFERENCE_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]
    pf = F.readout_curves_plotly(per_readout, title="Curves", reference=reference)
    refs = [t for t in pf.data if t.legendgroup == "reference"]
    assert [list(t.y) for t in refs] == [[70.0, 70.0]] * 2 and [t.showlegend for t in refs] == [True, False]
    assert not [t for t in F.readout_curves_plotly(per_readout).data if t.legendgroup == "reference"]


def test_probe_figure() -> None:
    fig = F.probe_figure({"per_pixel": [0.61, 0.62, 0.60], "per_pixel_ds": [0.63, None, float("nan"), 0.64]})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Per-pixel", "Per-pixel + deep sup."]
    assert ax.get_ylabel() == "final mIoU (%)"
    assert ax.get_title()
    text = _all_text(fig)
    assert "61.0±1.0" in text  # mean ± sample std in percent
    assert "Δ mean" in text
    fig = F.probe_figure({"cse": [0.5], "sse": [], "pwe": [0.4, 0.45]}, title="Seeds")
    assert fig.axes[0].get_title() == "Seeds"
    assert F.figure_to_png_bytes(fig).startswith(b"\x89PNG")


# --------------------------------------------------------------------------------------------------
# Attention and channels
# --------------------------------------------------------------------------------------------------


def test_attention_plotly(rng: np.random.Generator) -> None:
    attn = rng.random((3, 20))
    attn /= attn.sum(1, keepdims=True)
    pf = F.attention_plotly(attn, NAMES, title="Attn")
    assert isinstance(pf, go.Figure)
    assert len(pf.data) == 1  # no entropy panel unless asked
    assert "%{y}" in pf.data[0].hovertemplate and "weight" in pf.data[0].hovertemplate
    assert pf.layout.title.text == "Attn"
    np.testing.assert_allclose(pf.data[0].z, np.log10(attn))
    assert tuple(pf.layout.xaxis.range) == (-0.5, 19.5)
    with_e = F.attention_plotly(attn, NAMES, token_columns=NAMES, entropy=np.array([0.1, 0.2, 0.3]))
    assert len(with_e.data) == 2 and list(with_e.data[1].x) == pytest.approx([0.1, 0.2, 0.3])
    assert with_e.data[0].customdata[1, 0, 1] == "token: road"
    assert with_e.data[0].customdata[1, 3, 1] == "feature channel 0"
    with pytest.raises(ValueError):
        F.attention_plotly(attn, NAMES[:2])
    with pytest.raises(ValueError):
        F.attention_plotly(attn, NAMES, entropy=np.zeros(2))


def test_channel_maps_figure(image: np.ndarray, rng: np.random.Generator) -> None:
    maps = rng.random((4, H, W))
    fig = F.channel_maps_figure(image, maps, [3, 17, 9, 41], [0.41, 0.2, 0.111, 0.05], "car")
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5
    assert visible[0].get_title() == "image"
    assert visible[1].get_title() == "ch 3 · w=0.410"
    assert visible[3].get_title() == "ch 9 · w=0.111"
    assert "car" in fig.get_suptitle()
    # Wraps into several rows for many channels.
    fig = F.channel_maps_figure(image, rng.random((9, H, W)), list(range(9)), [0.1] * 9, "sky", title="T")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 10
    assert fig.get_suptitle() == "T"


# --------------------------------------------------------------------------------------------------
# Export and side effects
# --------------------------------------------------------------------------------------------------


def test_export_bytes(image: np.ndarray, panels: dict[str, np.ndarray]) -> None:
    fig = render_static(_layout(panels, image))
    png = F.figure_to_png_bytes(fig, dpi=50)
    assert png.startswith(b"\x89PNG")
    assert F.figure_to_pdf_bytes(fig).startswith(b"%PDF")
    with pytest.raises(TypeError):
        F.figure_to_png_bytes(go.Figure())


def _build_everything(image: np.ndarray, label: np.ndarray, panels: dict[str, np.ndarray]) -> list:
    attn = np.linspace(-1, 1, 3 * 8).reshape(3, 8)
    return [
        F.colorize_labels(label, PALETTE),
        F.overlay(image, label, PALETTE),
        F.prediction_figure(image, label, PALETTE, NAMES),
        render_static(_layout(panels, image, label)),
        render_plotly(_layout(panels, image)),
        F.block_curves_figure(_metrics()),
        F.block_curves_plotly(_metrics()),
        F.probe_figure({"per_pixel": [0.5, 0.6], "per_pixel_ds": [0.55]}),
        F.attention_plotly(attn, NAMES),
        F.channel_maps_figure(image, panels["cse"][0], [1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1], "road"),
    ]


def test_no_file_io_and_no_pyplot_state(
    monkeypatch: pytest.MonkeyPatch, image: np.ndarray, label: np.ndarray, panels: dict[str, np.ndarray]
) -> None:
    plt.close("all")
    # Warm lazy caches (fonts, plotly validators/templates) before forbidding file access.
    for fig in _build_everything(image, label, panels):
        if isinstance(fig, Figure):
            F.figure_to_png_bytes(fig, dpi=20)
    assert plt.get_fignums() == []

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"file I/O attempted: open{args}")

    monkeypatch.setattr(builtins, "open", forbidden)
    built = _build_everything(image, label, panels)
    monkeypatch.undo()

    assert plt.get_fignums() == []
    figs = [f for f in built if isinstance(f, Figure | go.Figure)]
    assert len(figs) == len(built) - 2
    # Figures are not registered with pyplot and have no pyplot manager.
    assert all(getattr(f.canvas, "manager", None) is None for f in figs if isinstance(f, Figure))


@pytest.mark.parametrize("ignore_index", [255, 3, -1, 300])
def test_colorize_labels_uint8_lookup_equals_the_general_path(ignore_index: int) -> None:
    from analysis.figures import colorize_labels

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (11, 3))
    label = rng.integers(0, 256, (20, 30)).astype(np.uint8)  # known, unknown (grey) and ignored values
    np.testing.assert_array_equal(
        colorize_labels(label, palette, ignore_index), colorize_labels(label.astype(np.int64), palette, ignore_index)
    )


# --------------------------------------------------------------------------------------------------
# Every analysis's figure: no text outside the canvas, no two texts overlapping
# --------------------------------------------------------------------------------------------------
LONG_CLASSES = (
    "road surface with lane markings and manholes",
    "sky",
    "a very long class name that no column could ever hold on one line",
    "tree",
)


def _text_boxes(fig: Figure) -> tuple[list[tuple[str, Any]], tuple[float, float]]:
    """(text, window extent) of every visible, non-empty text of ``fig`` once drawn, and the canvas size (px)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible()):
            boxes.append((t.get_text(), t.get_window_extent(renderer)))
    return boxes, (renderer.width, renderer.height)


@pytest.mark.parametrize("analysis", ["prediction", "comparison", "focus", "probe", "attention"])
@pytest.mark.parametrize("block", [None, 1])
def test_no_figure_text_is_cut_or_overlaps(
    tmp_path_factory: pytest.TempPathFactory, analysis: str, block: int | None
) -> None:
    """Long class names (wrapped, shrunk or shortened to fit), one stage or all, every normalisation's
    footnote: every text box lies inside the canvas and no two overlap (matplotlib's own text extents)."""
    from analysis.service import AnalysisRequest, Explorer
    from tests.helpers import save_tiny_set

    path = tmp_path_factory.mktemp("long") / "long_names.safetensors"
    save_tiny_set(path, classes=LONG_CLASSES, palette=())
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    if analysis in ("prediction", "focus") and block is not None:
        pytest.skip("no block control")
    ex = Explorer()
    for normalize in ("shared", "per_map", "softmax"):
        request = AnalysisRequest(
            image, str(path), analysis, classes=list(LONG_CLASSES), normalize=normalize, block=block, readout="head"
        )
        result = ex.analyze(request)
        if isinstance(result.static, PlacedFigure):  # the page's pixels too: Pillow's own text boxes
            _check_raster_boxes(result.static.placement, f"{analysis}/{normalize}")
        fig = result.figure
        boxes, (width, height) = _text_boxes(fig)
        assert boxes
        for text, b in boxes:
            assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= width + 1 and b.y1 <= height + 1, (
                f"{analysis}/{normalize}: {text!r} leaves the {width:.0f}x{height:.0f} canvas: {b}"
            )
        for i, (ta, a) in enumerate(boxes):
            for tb, b in boxes[i + 1 :]:
                overlap_w = min(a.x1, b.x1) - max(a.x0, b.x0)
                overlap_h = min(a.y1, b.y1) - max(a.y0, b.y0)
                assert overlap_w <= 1 or overlap_h <= 1, f"{analysis}/{normalize}: {ta!r} overlaps {tb!r}"


def _check_raster_boxes(p: Placement, what: str) -> None:
    """Every label of a placed figure, as Pillow draws it, lies inside the canvas and overlaps no other."""
    from PIL import Image, ImageDraw

    from analysis.grid import _font

    draw = ImageDraw.Draw(Image.new("RGB", p.size))
    width, height = p.size
    boxes = [
        (lab.text, draw.textbbox((lab.x, lab.y), lab.text, font=_font(round(lab.size, 2), lab.bold), anchor=lab.anchor))
        for lab in p.labels
        if lab.text.strip()
    ]
    assert boxes
    for text, (x0, y0, x1, y1) in boxes:
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, f"{what}: {text!r} leaves the canvas"
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            overlap_w = min(a[2], b[2]) - max(a[0], b[0])
            overlap_h = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_w <= 1 or overlap_h <= 1, f"{what}: {ta!r} overlaps {tb!r}"


def test_fit_text_wraps_shrinks_then_shortens() -> None:
    assert fit_text("road", 200, 9.0) == (["road"], 9.0)  # fits: unchanged
    lines, size = fit_text("road surface with lane markings", 10_000, 9.0, max_lines=2)
    assert lines == ["road surface with lane markings"] and size == 9.0
    narrow = text_width("road surface", 9.0) + 2
    lines, size = fit_text("road surface with lane markings", narrow, 9.0, max_lines=2)
    assert len(lines) == 2 and all(text_width(s, size) <= narrow for s in lines)
    lines, size = fit_text("a very long class name that no column could hold", 40, 9.0)
    assert len(lines) == 1 and lines[0].endswith("…") and size == pytest.approx(9.0 * 0.75)
    assert text_width(lines[0], size) <= 40


def test_the_page_pixels_and_the_pdf_figure_are_one_drawing(image: np.ndarray, label: np.ndarray, rng) -> None:
    """The placed figure drawn by Pillow (the page, the PNG) and by matplotlib (the PDF): the same size, the
    mosaic pixel for pixel, the text in the same places (the two text rasterisers differ by antialiasing)."""
    import io

    from PIL import Image
    from scipy.ndimage import binary_dilation

    titles = ("input", "block 1", "block 2", "output")
    groups = tuple(GridGroup(hd, titles, rng.random((3, 4, H, W)).astype(np.float32)) for hd in ("cse", "per_pixel"))
    layout = GridLayout(
        rows=tuple(NAMES), class_ids=(0, 1, 2), groups=groups, cell_hw=(H, W), image=image,
        outlines=(Outline(label),), title="A title", note="a footnote " * 30,
    )  # fmt: skip
    placed = PlacedFigure(place_stages_as_rows(layout))
    pixels = placed.pixels
    png = F.figure_to_png_bytes(paint_matplotlib(placed.placement))
    agg = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == agg.shape == (*placed.placement.size[::-1], 3)
    x, y = placed.placement.mosaic_xy
    mh, mw = placed.placement.mosaic.shape[:2]
    np.testing.assert_array_equal(agg[y : y + mh, x : x + mw], pixels[y : y + mh, x : x + mw])
    ink_p, ink_a = pixels.min(axis=2) < 128, agg.min(axis=2) < 128  # dark pixels: text, ticks, frames
    ink_p[y : y + mh, x : x + mw] = ink_a[y : y + mh, x : x + mw] = False
    assert ink_p.sum() > 500
    # the same glyphs in the same places: nearly every dark pixel of one lies within 3 px of the other's
    near_a, near_p = binary_dilation(ink_a, iterations=3), binary_dilation(ink_p, iterations=3)
    assert (ink_p & near_a).sum() / ink_p.sum() > 0.95 and (ink_a & near_p).sum() / ink_a.sum() > 0.95
    for lab in placed.placement.labels:
        assert isinstance(lab, Label) and lab.anchor[0] in "lmr" and lab.anchor[1] in "amd"
    assert placed.pixels is pixels and placed.figure is placed.figure  # each drawn once
    assert paint_raster(placed.placement).tobytes() == pixels.tobytes()  # deterministic

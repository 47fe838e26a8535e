"""Tests for analysis.figures: types, layout, labels, hover text, export, no file or pyplot side effects."""

from __future__ import annotations

import builtins
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # only to prove the module never touches pyplot state
import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure

from analysis import figures as F

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
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 3  # ignore index not listed
    assert any(t.startswith("road (") and t.endswith("%)") for t in texts)
    sky_pct = 100.0 * (label == 1).sum() / label.size
    assert f"sky ({sky_pct:.1f}%)" in texts


# --------------------------------------------------------------------------------------------------
# Block grids
# --------------------------------------------------------------------------------------------------


def test_comparison_figure_layout(image: np.ndarray, panels: dict[str, np.ndarray]) -> None:
    blocks = ["block 1", "block 2", "block 3", "block 4"]
    fig = F.comparison_figure(image, NAMES, blocks, panels, vmin=0.0, vmax=1.0, title="Grid")
    assert isinstance(fig, Figure)
    n_rows = len(NAMES)
    total_blocks = sum(p.shape[1] for p in panels.values())
    maps = _labelled(fig, "map:")
    images = _labelled(fig, "image:")
    assert len(maps) == n_rows * total_blocks
    assert len(images) == n_rows
    assert len(_labelled(fig, "header:")) == len(panels)
    assert fig.get_suptitle() == "Grid"
    # Row labels on the image column, in class order.
    assert [ax.get_ylabel() for ax in images] == NAMES
    assert images[0].get_title() == "image"
    # Block titles on the top row of each head; fewer blocks → first titles.
    assert [fig_ax.get_title() for fig_ax in maps if fig_ax.get_label().startswith("map:per_pixel:0:")] == [
        "block 1",
        "block 2",
    ]
    assert all(ax.get_title() == "" for ax in maps if not ax.get_label().endswith(tuple(f":0:{b}" for b in range(4))))
    # Head labels present.
    text = _all_text(fig)
    for head in panels:
        assert F.head_label(head) in text
    # One shared colourbar with the requested range.
    cbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(cbars) == 1
    im = maps[0].get_images()[0]
    assert im.get_clim() == (0.0, 1.0)
    assert im.get_cmap().name == F.MAP_CMAP


def test_comparison_figure_scales(image: np.ndarray, panels: dict[str, np.ndarray]) -> None:
    # Per-map auto: no colourbar, each map's clim from its own data.
    fig = F.comparison_figure(image, NAMES, ["a"], panels)
    assert not [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    ax = _labelled(fig, "map:sse:1:2")[0]
    lo, hi = ax.get_images()[0].get_clim()
    assert lo == pytest.approx(panels["sse"][1, 2].min())
    assert hi == pytest.approx(panels["sse"][1, 2].max())
    # Titles beyond the given list fall back to "block b".
    assert _labelled(fig, "map:cse:0:3")[0].get_title() == "block 4"
    # Per-row ranges: one colourbar per row.
    vmax = np.array([1.0, 2.0, 3.0])
    fig = F.comparison_figure(image, NAMES, ["a", "b", "c", "d"], panels, vmin=np.zeros(3), vmax=vmax)
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 3
    assert _labelled(fig, "map:cse:2:0")[0].get_images()[0].get_clim() == (0.0, 3.0)
    with pytest.raises(ValueError):
        F.comparison_figure(image, NAMES, ["a"], panels, vmin=np.zeros(2))
    with pytest.raises(ValueError):
        F.comparison_figure(image, NAMES[:2], ["a"], panels)


def test_comparison_figure_contours(image: np.ndarray, label: np.ndarray, panels: dict[str, np.ndarray]) -> None:
    pred = label.copy()
    pred[5:16, 12:33] = 2
    fig = F.comparison_figure(
        image,
        NAMES,
        ["a", "b", "c", "d"],
        panels,
        vmin=0,
        vmax=1,
        label=label,
        pred=pred,
        class_ids=[0, 1, 2],
    )
    ax = _labelled(fig, "map:cse:2:0")[0]
    styles = sorted(
        str(cs.get_linestyle()[0][1]) if cs.get_linestyle()[0][1] else "solid"
        for cs in ax.collections
        if isinstance(cs, matplotlib.contour.ContourSet)
    )
    assert len(styles) == 2  # GT solid + prediction dashed
    assert styles.count("solid") == 1
    img_ax = _labelled(fig, "image:2")[0]
    assert len([c for c in img_ax.collections if isinstance(c, matplotlib.contour.ContourSet)]) == 2
    assert "dashed" in _all_text(fig)
    # A class absent from the label draws no contour and does not crash.
    fig = F.comparison_figure(image, NAMES, ["a"], panels, label=label, class_ids=[0, 1, 9])
    assert not [c for c in _labelled(fig, "map:cse:2:0")[0].collections if isinstance(c, matplotlib.contour.ContourSet)]


def test_comparison_plotly(panels: dict[str, np.ndarray]) -> None:
    fig = F.comparison_plotly(NAMES, ["b1", "b2", "b3", "b4"], panels, vmin=0.0, vmax=1.0, title="Grid")
    assert isinstance(fig, go.Figure)
    total_blocks = sum(p.shape[1] for p in panels.values())
    assert len(fig.data) == len(NAMES) * total_blocks
    assert all(isinstance(t, go.Heatmap) for t in fig.data)
    assert all(t.coloraxis == "coloraxis" for t in fig.data)
    assert fig.layout.coloraxis.cmin == 0.0 and fig.layout.coloraxis.cmax == 1.0
    first = fig.data[0].hovertemplate
    assert "StructToken-CSE" in first and "road" in first and "b1" in first and "%{z" in first
    assert any("Per-pixel" in t.hovertemplate and "car" in t.hovertemplate for t in fig.data)
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.data[0].z.shape == (H, W)  # small maps are not downsampled
    assert "downsampled" not in fig.layout.title.text
    annotations = [a.text for a in fig.layout.annotations]
    assert any("StructToken-SSE" in a for a in annotations)
    assert fig.layout.yaxis.title.text == "road"


def test_comparison_plotly_downsamples_and_row_scales(rng: np.random.Generator) -> None:
    big = {"cse": rng.random((2, 2, 200, 300)), "pwe": rng.random((2, 1, 200, 300))}
    fig = F.comparison_plotly(["a", "b"], ["x", "y"], big, vmin=np.zeros(2), vmax=np.array([1.0, 2.0]))
    assert len(fig.data) == 6
    assert max(fig.data[0].z.shape) <= 128
    assert "downsampled" in fig.layout.title.text
    assert fig.data[0].x[-1] > 128  # coordinates stay in original pixels
    assert {t.coloraxis for t in fig.data} == {"coloraxis", "coloraxis2"}
    assert fig.layout.coloraxis2.cmax == 2.0


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


def test_attention_figures(rng: np.random.Generator) -> None:
    attn = rng.random((3, 20))
    fig = F.attention_figure(attn, NAMES, title="Attn", top_k=2)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title().startswith("Attn")
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert ax.get_xlabel() == "feature channel"
    assert ax.get_images()[0].get_cmap().name == F.MAP_CMAP
    assert len(fig.axes) == 2  # heatmap + colourbar
    signed = F.attention_figure(attn - 0.5, NAMES)
    lo, hi = signed.axes[0].get_images()[0].get_clim()
    assert lo == pytest.approx(-hi)
    assert signed.axes[0].get_images()[0].get_cmap().name == F.DIVERGING_CMAP

    pf = F.attention_plotly(attn, NAMES, title="Attn")
    assert isinstance(pf, go.Figure)
    assert len(pf.data) == 1
    assert "%{y}" in pf.data[0].hovertemplate and "%{x}" in pf.data[0].hovertemplate
    assert pf.layout.title.text == "Attn"
    with pytest.raises(ValueError):
        F.attention_figure(attn, NAMES[:2])


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
    fig = F.comparison_figure(image, NAMES, ["b1", "b2", "b3", "b4"], panels, vmin=0.0, vmax=1.0)
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
        F.comparison_figure(image, NAMES, ["b"], panels, label=label, pred=label, class_ids=[0, 1, 2]),
        F.comparison_figure(image, NAMES, ["b"], panels, vmin=0.0, vmax=1.0),
        F.comparison_figure(image, NAMES, ["b"], panels, vmin=np.zeros(3), vmax=np.ones(3)),
        F.comparison_plotly(NAMES, ["b"], panels),
        F.block_curves_figure(_metrics()),
        F.block_curves_plotly(_metrics()),
        F.probe_figure({"per_pixel": [0.5, 0.6], "per_pixel_ds": [0.55]}),
        F.attention_figure(attn, NAMES, top_k=2),
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

"""The focus view (analysis/analyses/focus.py): one class, every head as a row, every stage as a column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.analyses import ANALYSES
from analysis.analyses.focus import FOCUS
from analysis.service import AnalysisError, AnalysisRequest, Explorer
from tests.helpers import HEADS, NAMES, save_tiny_set

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "street_synthetic.jpg"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_set(tmp_path_factory.mktemp("focus") / "tiny.safetensors")


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    return Explorer()


def test_registered_once() -> None:
    assert ANALYSES["focus"] is FOCUS


def test_rows_are_every_head_columns_every_stage(explorer: Explorer, tiny: Path) -> None:
    res = explorer.analyze(AnalysisRequest(EXAMPLE, model=str(tiny), analysis="focus", classes=["Road"]))
    m = res.metrics
    rows = [h for h in HEADS if h != "per_pixel"]  # raw does not apply to per_pixel: left out, with a notice
    assert m["focus_class"] == "Road" and m["rows"] == rows
    assert m["columns"] == ["input", "block 1", "block 2", "output"]
    cells = res.maps["focus/cells"]
    assert cells.shape[:2] == (len(rows), 4) and np.isfinite(cells).all()
    assert cells.min() >= 0.0 and cells.max() <= 1.0
    # the raw cells are the stages of class Road of each head, in the raw readout
    road = NAMES.index("Road")
    for r, hd in enumerate(rows):
        np.testing.assert_allclose(res.maps["focus/raw"][r], res.maps[f"{hd}/stages"][:, road])
    assert [row[0] for row in res.table] == [
        "StructToken-CSE",
        "StructToken-SSE",
        "StructToken-PWE",
        "Per-pixel + deep sup.",
    ]
    # one heatmap per (head, stage) in the interactive view; one mosaic in the static one
    assert len(res.plot.data) == len(rows) * 4
    # the static figure is placed once and drawn twice: pixels (the page, the PNG) and matplotlib (the PDF),
    # the mosaic and the colour bar as figure images, no axes
    mosaic = res.static.placement.mosaic
    assert next(im.get_array().shape for im in res.figure.images) == mosaic.shape
    assert res.pixels.shape == (*res.static.placement.size[::-1], 3)
    x, y = res.static.placement.mosaic_xy
    np.testing.assert_array_equal(res.pixels[y : y + mosaic.shape[0], x : x + mosaic.shape[1]], mosaic)
    assert "**Road**" in res.summary and "raw" in res.summary


def test_the_first_class_is_focused_and_the_boundary_head_is_named(explorer: Explorer, tiny: Path) -> None:
    res = explorer.analyze(
        AnalysisRequest(EXAMPLE, model=str(tiny), analysis="focus", classes=["Car", "Sky"], head="per_pixel")
    )
    assert res.metrics["focus_class"] == "Car" and res.metrics["head"] == "per_pixel"
    assert "Per-pixel prediction" in res.summary


def test_a_block_is_refused_with_a_reason(explorer: Explorer, tiny: Path) -> None:
    with pytest.raises(AnalysisError, match="every stage"):
        explorer.analyze(AnalysisRequest(EXAMPLE, model=str(tiny), analysis="focus", block=1))


def test_shared_normalisation_spans_every_head(explorer: Explorer, tiny: Path) -> None:
    res = explorer.analyze(AnalysisRequest(EXAMPLE, model=str(tiny), analysis="focus", classes=["Sky"], readout="head"))
    cells, raw = res.maps["focus/cells"], res.maps["focus/raw"]
    assert cells.min() == pytest.approx(0.0) and cells.max() == pytest.approx(1.0)
    # one min-max for all rows (heads) and columns (stages): per-row or per-map scaling would also give 0..1
    lo, hi = np.nanmin(raw), np.nanmax(raw)
    np.testing.assert_allclose(cells, (raw - lo) / (hi - lo), rtol=0, atol=1e-5)
    spans = [(row.min(), row.max()) for row in cells]
    assert any(a > 1e-3 or b < 1 - 1e-3 for a, b in spans), spans  # the rows differ: the check can tell

"""The focus view: one class, every head of the set (all paradigms) as columns, its stages as rows.

What a reader of the paper's Fig. 3 wants first: how one class's map forms, block by block, in
StructToken and in the per-pixel heads, side by side at a readable size. Each column is one head;
the first row is the image, then the class map entering block 1 (*input*), after each block and at
the output, in the chosen readout; the white line is the class's boundary in the chosen head's
prediction (one reference line for every head). The heads and stages are a
:class:`~analysis.grid.GridLayout` drawn by the grid module (:mod:`analysis.grid`), stages as rows.
"""

from __future__ import annotations

import numpy as np

from structtoken.config import ModelConfig

from ..grid import (
    GridGroup,
    GridLayout,
    Outline,
    PlacedFigure,
    display_size,
    place_stages_as_rows,
    render_plotly,
)
from ..labels import NORMALIZATION_LABELS, NORMALIZATION_NOTES, head_label
from ..maps import ImageMaps, normalize_maps, readout_stages, stage_names
from ..values import rounded
from .base import Analysis, View, ViewRequest, stage_agreement

__all__ = ["FOCUS", "Focus", "focus_stages"]


def focus_stages(maps: ImageMaps, heads: list[str]) -> tuple[str, ...]:
    """The columns: the stage names of the deepest head (``input``, ``block 1``..``block N``, ``output``).

    A head with fewer blocks leaves the missing blocks blank; its ``output`` stays in the last column.
    """
    n = max(maps.heads[h].num_blocks for h in heads)
    return stage_names(n)


class Focus(Analysis):
    """One class (the first selected), every head of the set as a row, each stage as a column."""

    name = "focus"
    title = "One class, every head, block by block"
    label = "Focus on one class"
    head_control = "Boundary from head"
    uses_readout = True
    chosen_needs_readout = False

    def heads(self, cfg: ModelConfig, chosen: str, baseline: str | None = None) -> list[str]:
        """Every head of the set, in the set's order (the chosen one only draws the boundary)."""
        return list(cfg.heads)

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        """The layout's rows = heads, its columns = stages of the class ``request.class_ids[0]`` (drawn
        transposed: heads as columns, stages as rows).

        Cells are ``[R = heads, S, h, w]`` on the feature grid, normalised over all K classes and
        every head's stages (so ``shared`` compares heads and stages on one scale per class).
        """
        if not request.class_ids:
            raise ValueError("the focus view needs one class")
        cls = int(request.class_ids[0])
        heads = [h for h in request.heads if h in maps.heads]
        if not heads:
            raise ValueError("the set has none of the heads to show")
        if request.block is not None:
            raise ValueError("the focus view shows every stage; choose 'every stage' for the block")
        stacks = {hd: readout_stages(maps, hd, request.readout) for hd in heads}  # [S_h, K, h, w] each
        normed = normalize_maps(stacks, request.normalize)
        assert isinstance(normed, dict)
        titles = focus_stages(maps, heads)
        gh, gw = maps.grid
        cells = np.full((len(heads), len(titles), gh, gw), np.nan, dtype=np.float32)
        raw = np.full_like(cells, np.nan)
        for r, hd in enumerate(heads):
            names_h = maps.heads[hd].stage_names
            for s, name in enumerate(names_h):
                col = len(titles) - 1 if name == "output" else titles.index(name)
                cells[r, col] = normed[hd][s, cls]
                raw[r, col] = stacks[hd][s, cls]
        class_name = maps.class_names[cls]
        note = (
            f"normalisation: {NORMALIZATION_NOTES[request.normalize]}; readout: {request.readout}; "
            f"white line: boundary of {class_name} in the {head_label(request.head)} prediction; "
            f"maps bilinearly resized from the {gh}x{gw} grid"
        )
        hw = maps.image.shape[:2]
        layout = GridLayout(
            rows=tuple(head_label(hd) for hd in heads),
            class_ids=(cls,) * len(heads),
            groups=(GridGroup(head=class_name, titles=titles, cells=cells, raw=raw),),
            cell_hw=display_size(hw, 1 + len(titles)),
            image=maps.image,
            outlines=(Outline(maps.pred[request.head]),),
            title=(request.title or "One class, every head, block by block").replace("One class", class_name, 1),
            colorbar_label="class probability" if request.normalize == "softmax" else "normalised map value",
            note=note,
        )
        area = {hd: 100.0 * float(np.mean(maps.pred[hd] == cls)) for hd in heads}
        counts = np.bincount(maps.pred[request.head].ravel().astype(np.int64), minlength=len(maps.class_names))
        shares = 100.0 * counts / max(1, counts.sum())
        present = [c for c in np.argsort(-shares, kind="stable") if shares[c] > 0 or c == cls]
        agreement = {hd: stage_agreement(maps, hd, request.readout) for hd in heads}
        table = [
            [head_label(hd), rounded(area[hd]), *self._cells(maps, hd, titles, cells[r])] for r, hd in enumerate(heads)
        ]
        return View(
            figure=PlacedFigure(place_stages_as_rows(layout)),
            plot=render_plotly(layout) if request.interactive else None,
            table=table,
            table_headers=[f"head ({class_name}: mean normalised map)", "predicted area %", *titles],
            metrics={
                "focus_class": class_name,
                "focus_class_id": cls,
                "columns": list(titles),
                "rows": heads,
                "predicted_area_percent": {hd: rounded(v, 3) for hd, v in area.items()},
                "image_class_area_percent": {maps.class_names[c]: rounded(float(shares[c]), 3) for c in present},
                "mean_normalised_map": {hd: [rounded(v, 4) for v in row[2:]] for hd, row in zip(heads, table)},
                "stage_agreement_percent": {hd: [rounded(v, 3) for v in ag] for hd, ag in agreement.items()},
            },
            arrays={"focus/cells": cells, "focus/raw": raw},
        )

    @staticmethod
    def _cells(maps: ImageMaps, head: str, titles: tuple[str, ...], row: np.ndarray) -> list[float | None]:
        """Mean of each shown map ``row`` ``[S, h, w]`` (None where the head has no such stage)."""
        return [None if np.isnan(row[s]).all() else rounded(float(np.nanmean(row[s]))) for s in range(len(titles))]

    def describe(self, view: View, request: ViewRequest) -> str:
        cls = view.metrics.get("focus_class", "")
        return (
            f"One class, **{cls}**, in every head of the set (columns) at every stage (rows: the image, then the "
            "map entering block 1, after each block, the output), read as class scores the "
            f"**{request.readout}** way. Normalisation: **{NORMALIZATION_LABELS[request.normalize]}** "
            f"({NORMALIZATION_NOTES[request.normalize]}). The white line is {cls}'s boundary in the "
            f"{head_label(request.head)} prediction, the same on every row."
        )


FOCUS = Focus()

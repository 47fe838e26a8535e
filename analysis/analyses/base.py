"""The analysis contract: what the service asks of every analysis, and the block-grid base two of them share.

An analysis is one small object (:class:`Analysis`): its ``name`` (the API key), ``title`` (the
summary's heading) and ``label`` (the control's text); whether a set supports it
(:meth:`Analysis.supported`); which heads the user may pick and which heads it shows
(:meth:`Analysis.head_choices`, :meth:`Analysis.heads`); which blocks it offers
(:meth:`Analysis.block_choices`); the :class:`View` of one image (:meth:`Analysis.view`) and the prose
that explains it (:meth:`Analysis.describe`). Heads are chosen by kind (:mod:`analysis.roles`), so a
newly registered head shows up wherever its kind fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure

from structtoken.config import ModelConfig

from ..grid import PlacedFigure, block_grid, place_stages_as_rows, render_plotly
from ..labels import NORMALIZATION_LABELS, NORMALIZATION_NOTES, head_label
from ..maps import ImageMaps, readout_stages
from ..roles import structtoken_heads
from ..values import rounded

READOUT_NOTES = {
    "raw": "channel k taken as class k, as in the paper",
    "head": "each stage through the head's own remaining output layers, the logit lens",
    "fitted": "each stage through an affine map fitted on the train split with the model frozen, the tuned lens",
}
"""What each readout means, for the prose and the figure footnotes."""

__all__ = ["Analysis", "BlockGridAnalysis", "View", "ViewRequest", "stage_agreement"]


@dataclass(frozen=True)
class ViewRequest:
    """One request resolved against a model set and an image: what a view draws.

    Attributes:
        head: the chosen head (validated by :meth:`Analysis.choose_head`).
        heads: the heads the view shows (:meth:`Analysis.heads`), in order.
        class_ids: ``[R]`` the classes (rows) shown.
        normalize: one of :data:`analysis.maps.NORMALIZATIONS`.
        block: the block / stage asked for, or None (see each analysis).
        opacity: overlay opacity in [0, 1].
        readout: how stages are read as class scores (:data:`analysis.maps.READOUTS`).
        palette: ``[K]`` RGB class colours.
        title: figure title.
        report: the set's shipped dataset report (``metrics.json`` as a dict), or None.
        interactive: whether to build the interactive plotly view (False: ``View.plot`` stays None).
    """

    head: str
    heads: tuple[str, ...]
    class_ids: tuple[int, ...]
    normalize: str = "shared"
    block: int | None = None
    opacity: float = 0.5
    readout: str = "raw"
    palette: tuple[tuple[int, int, int], ...] = ()
    title: str | None = None
    report: Mapping[str, Any] | None = None
    interactive: bool = True


@dataclass
class View:
    """What one analysis of one image shows: figures, a table, notes and arrays for download.

    ``figure``: the static figure, a matplotlib figure or, for the block grids, a
    :class:`analysis.grid.PlacedFigure` (drawn as pixels for the page and the PNG, as a matplotlib figure only
    for the PDF)."""

    figure: Figure | PlacedFigure | None = None
    plot: go.Figure | None = None
    table: list[list[Any]] = field(default_factory=list)
    table_headers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def what_set(cfg: ModelConfig) -> str:
    """ "this checkpoint" for a single-head set, else "this set" (the subject of the reasons)."""
    return "this checkpoint" if len(cfg.heads) == 1 else "this set"


class Analysis:
    """Base of every analysis; subclasses set the three names and override what differs."""

    name: str = ""
    title: str = ""
    label: str = ""
    head_control: str = "StructToken head"
    """The label of the head control while this analysis is chosen."""
    uses_readout: bool = False
    """Whether the view reads stages through the request's readout (the service then leaves out the
    heads without it and adds the raw caveat to the notices)."""
    default_classes: int = 4
    """Rows (classes) shown when the request names none: the classes with the largest predicted area."""
    chosen_needs_readout: bool = True
    """Whether the chosen head must itself give the readout (False: it only draws a reference, such as
    the focus view's boundary)."""

    def supported(self, cfg: ModelConfig) -> str | None:
        """None when the set ``cfg`` supports this analysis, else the reason (a sentence)."""
        return None

    def head_choices(self, cfg: ModelConfig) -> list[str]:
        """The heads the user may pick, in order (the first StructToken one is the default)."""
        return list(cfg.heads)

    def refusal(self, cfg: ModelConfig, head: str, choices: list[str]) -> str:
        """Why ``head`` (a head of the set, not in ``choices``) cannot be picked."""
        return f"head {head!r} cannot be shown here; choose one of {', '.join(choices)}"

    def choose_head(self, cfg: ModelConfig, head: str | None) -> str:
        """The head to show: ``head`` when allowed, the default when None.

        Raises:
            ValueError: ``head`` is not in the set, or not one of :meth:`head_choices`.
        """
        choices = self.head_choices(cfg) or list(cfg.heads)
        if head is None:
            return next(iter(structtoken_heads(choices)), choices[0])
        if head not in cfg.heads:
            raise ValueError(f"this set has no head {head!r}; its heads are {', '.join(cfg.heads)}")
        if head not in choices:
            raise ValueError(self.refusal(cfg, head, choices))
        return head

    def heads(self, cfg: ModelConfig, chosen: str, baseline: str | None = None) -> list[str]:
        """The heads the view shows for the chosen head (and the baseline asked for, where
        :meth:`baseline_choices` offers any), in order."""
        return [chosen]

    def baseline_choices(self, cfg: ModelConfig) -> list[str]:
        """The heads the chosen head can be shown beside one at a time (empty: the analysis has no such choice)."""
        return []

    def view_title(self, heads: Sequence[str]) -> str:
        """The figure's title for the heads shown (:meth:`heads`): the analysis's title unless it names them."""
        return self.title

    def block_choices(self, num_blocks: int) -> list[tuple[str, int | None]]:
        """(label, block) options of the block control; None is the default (every stage / last block)."""
        return [("every stage", None)]

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        """Figures, table, notes, metrics and arrays of one image (raises ValueError for bad requests)."""
        raise NotImplementedError

    def describe(self, view: View, request: ViewRequest) -> str:
        """Markdown that says what the view shows (the service adds the set, the image and notices)."""
        raise NotImplementedError


def stage_agreement(maps: ImageMaps, head: str, readout: str = "raw") -> list[float]:
    """Per stage of ``head``: % of feature-grid cells whose argmax class equals the output's."""
    arg = readout_stages(maps, head, readout).argmax(axis=1)
    return [float(100.0 * np.mean(arg[s] == arg[-1])) for s in range(arg.shape[0])]


class BlockGridAnalysis(Analysis):
    """An analysis drawn as the block grid (rows = classes, a column group per head): the comparison
    and the probe. The table gives, per stage, the share of grid cells agreeing with the output."""

    uses_readout = True

    def head_choices(self, cfg: ModelConfig) -> list[str]:
        return structtoken_heads(cfg.heads)

    def refusal(self, cfg: ModelConfig, head: str, choices: list[str]) -> str:
        return (
            f"{head!r} is not a StructToken head; for the {self.name} pick one of {', '.join(choices)} "
            "(the per-pixel heads are always part of the grid)"
        )

    def block_choices(self, num_blocks: int) -> list[tuple[str, int | None]]:
        if not num_blocks:
            return [("every stage", None)]
        blocks = [(f"block {i}", i) for i in range(1, num_blocks + 1)]
        return [("every stage", None), ("input", 0), *blocks, ("output", num_blocks + 1)]

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        """The paper's Fig. 3 with stages as rows (maps large enough to read at the page's width): a column
        group per class, a column per head in it; the white line is the class's boundary in the chosen
        head's prediction. (The interactive grid keeps the classes as rows.)"""
        heads = list(request.heads)
        layout = block_grid(
            maps,
            heads,
            request.class_ids,
            request.normalize,
            request.block,
            readout=request.readout,
            outline_head=request.head,
            title=f"{request.title} ({request.readout} readout)" if request.title else f"{request.readout} readout",
        )
        stage_titles = list(max((maps.heads[hd].stage_names for hd in heads), key=len))
        table, agreement = [], {}
        for hd in heads:
            ag = agreement[hd] = stage_agreement(maps, hd, request.readout)
            names_h = maps.heads[hd].stage_names
            cells = [rounded(ag[names_h.index(s)]) if s in names_h else None for s in stage_titles]
            table.append([head_label(hd), *cells])
        columns = {g.head: list(g.titles) for g in layout.groups}
        return View(
            figure=PlacedFigure(place_stages_as_rows(layout)),
            plot=render_plotly(layout) if request.interactive else None,
            table=table,
            table_headers=[f"head (% grid cells agreeing with its output, {request.readout} readout)", *stage_titles],
            metrics={
                "readout": request.readout,
                "stage_agreement_percent": {hd: [rounded(v, 3) for v in ag] for hd, ag in agreement.items()},
                "columns": columns,
                **({"stage": columns[heads[0]][0]} if request.block is not None else {}),
            },
        )

    def describe(self, view: View, request: ViewRequest) -> str:
        lines = [
            "Columns: a class each, one column per head under it "
            f"({', '.join(head_label(h) for h in request.heads)}); rows: the image with the class's boundary, then "
            "the class map entering block 1 (*input*), after each block, and the head output, read as class scores "
            "by the "
            f"**{request.readout}** readout ({READOUT_NOTES[request.readout]}). Normalisation: "
            f"**{NORMALIZATION_LABELS[request.normalize]}** ({NORMALIZATION_NOTES[request.normalize]})."
        ]
        lines += self.explain(view, request)
        if request.block is not None:
            lines.append(f"Only one stage is shown: *{view.metrics.get('stage', request.block)}*.")
        return "\n\n".join(lines)

    def explain(self, view: View, request: ViewRequest) -> list[str]:
        """The paragraphs particular to this grid analysis."""
        return []

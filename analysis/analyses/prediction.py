"""The prediction: the chosen head's segmentation over the image and the area of each class per head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .. import figures as F
from ..domain import class_areas, domain_check, reference_frequencies
from ..labels import head_label
from ..maps import ImageMaps
from ..values import rounded
from .base import Analysis, View, ViewRequest

MAX_SIDE = 1024
"""Images with a longer side are drawn at this size in the static figure (a lighter figure)."""
HOVER_SIDE = 224
"""The interactive overlay's long side: one hover text per pixel, so the JSON stays small."""


class Prediction(Analysis):
    """Any head of the set, the per-pixel ones included."""

    name = "prediction"
    title = "Prediction"
    label = "Prediction"
    head_control = "Head"

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        """The prediction of ``request.head`` overlaid on the image, with class areas of every head."""
        head, palette, opacity = request.head, request.palette, request.opacity
        names = list(maps.class_names)
        img, pred = maps.image, maps.pred[head]
        h, w = img.shape[:2]
        if max(h, w) > MAX_SIDE:
            f = MAX_SIDE / max(h, w)
            size = (max(1, round(h * f)), max(1, round(w * f)))
            img, pred = F.resize_rgb(img, size), F.resize_nearest(pred, size)
        label = f"{head_label(head)} prediction"
        fig = F.prediction_figure(img, pred, palette, names, alpha=opacity, title=label)
        plot = self._plot(maps, head, palette, opacity, label) if request.interactive else None
        heads = list(maps.heads)
        areas = {hd: np.bincount(maps.pred[hd].ravel().astype(np.int64), minlength=len(names)) for hd in heads}
        total = max(1, maps.pred[head].size)
        rows = [
            [names[c], *(rounded(100.0 * areas[hd][c] / total) for hd in heads)]
            for c in np.argsort(-areas[head], kind="stable")
            if any(areas[hd][c] for hd in heads)
        ]
        notes, metrics = [], {}
        reference = reference_frequencies(names)
        if reference is None:
            notes.append("No training class frequencies are known for this set, so there is no domain check.")
        else:
            check = domain_check(class_areas(maps.pred[head], len(names)), reference, names)
            notes.append(f"**Domain ({head_label(head)} prediction):** {check.message}")
            metrics["domain"] = {
                "distance_tv": rounded(check.distance, 3),
                "level": check.level,
                "reference": "training split class frequencies",
                "head": head,
            }
        return View(
            figure=fig,
            plot=plot,
            notes=notes,
            table=rows,
            table_headers=["class", *(f"{head_label(hd)} area %" for hd in heads)],
            metrics={
                **metrics,
                "class_area_percent": {
                    hd: {names[c]: rounded(100.0 * areas[hd][c] / total, 3) for c in range(len(names)) if areas[hd][c]}
                    for hd in heads
                },
            },
        )

    @staticmethod
    def _plot(
        maps: ImageMaps, head: str, palette: Sequence[tuple[int, int, int]], opacity: float, label: str
    ) -> go.Figure:
        """The overlay as an interactive image (hover: the class), at most HOVER_SIDE long."""
        names = list(maps.class_names)
        h, w = maps.image.shape[:2]
        f = min(1.0, HOVER_SIDE / max(h, w))
        size = (max(1, round(h * f)), max(1, round(w * f)))
        small_pred = F.resize_nearest(maps.pred[head], size)
        small = F.overlay(F.resize_rgb(maps.image, size), small_pred, palette, alpha=opacity)
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
            title={"text": label, "x": 0.5, "xanchor": "center"},
            template="plotly_white",
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
            width=int(min(900, max(400, 640 * w / max(h, 1)))),
            height=int(min(900, max(300, 640 * h / max(w, 1) if w > h else 640))),
        )
        plot.update_xaxes(visible=False)
        plot.update_yaxes(visible=False)
        return plot

    def describe(self, view: View, request: ViewRequest) -> str:
        return (
            f"The {head_label(request.head)} prediction over the image (opacity {request.opacity:.2f}); the "
            "table lists the predicted area of each class for every head of the set."
        )


PREDICTION = Prediction()

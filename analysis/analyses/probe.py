"""The deep-supervision probe: the per-pixel baseline without and with deep supervision, next to
StructToken, block by block; with the verdict of the set's shipped report (training seeds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from structtoken.config import HEAD_NAMES, ModelConfig

from ..figures import METRIC_LABELS
from ..labels import display_names, head_label
from ..maps import ImageMaps
from ..probe import probe_from_report, report_heads
from ..roles import deep_supervision_pairs, structtoken_heads
from ..values import percent
from .base import BlockGridAnalysis, View, ViewRequest, what_set


def dataset_table(
    per_head: Mapping[str, Any], heads: Sequence[str], metric: str = "mask_ap"
) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): ``metric`` in % of every stage of ``heads`` from a dataset report's entries."""
    shown = [h for h in heads if h in per_head] or list(per_head)
    n = max(len(per_head[h].get("blocks") or []) for h in shown)
    headers = [
        f"head (dataset {METRIC_LABELS.get(metric, metric)} %)",
        "input",
        *(f"block {i}" for i in range(1, n + 1)),
        "output",
    ]
    rows = []
    for h in shown:
        m = per_head[h]
        blocks = list(m.get("blocks") or [])
        vals = [percent((m.get("input") or {}).get(metric))]
        vals += [percent((blocks[i] or {}).get(metric)) if i < len(blocks) else None for i in range(n)]
        vals.append(percent((m.get("final") or {}).get(metric)))
        rows.append([head_label(h), *(None if v is None else round(v, 1) for v in vals)])
    return headers, rows


class Probe(BlockGridAnalysis):
    """A head and its deeply supervised twin (``per_pixel`` / ``per_pixel_ds``), then the chosen StructToken head."""

    name = "probe"
    title = "Deep-supervision probe"
    label = "Deep-supervision probe"
    default_classes = 2  # 3 heads a class: 6 map columns, each map still ~150 px wide on the page

    def supported(self, cfg: ModelConfig) -> str | None:
        if deep_supervision_pairs(cfg.heads):
            return None
        pair = deep_supervision_pairs(list(HEAD_NAMES))[0]
        missing = [head_label(h) for h in pair if h not in cfg.heads]
        return (
            f"{what_set(cfg)} has no {' and no '.join(missing)} head; the deep-supervision probe needs both the "
            "per-pixel baseline and its deeply supervised twin (the embedded CamVid set has them)"
        )

    def heads(self, cfg: ModelConfig, chosen: str, baseline: str | None = None) -> list[str]:
        pair = deep_supervision_pairs(cfg.heads)[0]
        return [*pair, *(h for h in [chosen] if h in structtoken_heads(cfg.heads))]

    def view(self, maps: ImageMaps, request: ViewRequest) -> View:
        view = super().view(maps, request)
        per_head = report_heads(request.report, request.readout) if request.report else {}
        if per_head:
            view.table_headers, view.table = dataset_table(per_head, request.heads, "mask_ap")
            view.table_headers[0] += f", {request.readout} readout"
        info = probe_from_report(request.report, request.head, request.readout)
        if info is not None:
            view.metrics["probe"] = info
        return view

    def explain(self, view: View, request: ViewRequest) -> list[str]:
        lines = [
            "Does deep supervision (a loss on every block's map) give the per-pixel baseline "
            "StructToken-like intermediate maps and a better final mIoU?"
        ]
        info = view.metrics.get("probe")
        if info is not None:
            lines.append(f"**Verdict (training seeds):** {display_names(info['verdict'])}")
            if info.get("blocks"):  # the per-block numbers are the table's; the JSON keeps the sentence
                lines.append(
                    f"**Block maps (dataset, {request.readout} readout):** mask AP of every stage in the table "
                    "below (the numbers download has the block-by-block comparison)."
                )
        elif request.report is not None:
            lines.append("The shipped report has no seed results for the probe yet.")
        return lines


PROBE = Probe()

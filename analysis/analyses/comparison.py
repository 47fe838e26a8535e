"""The paper comparison: a StructToken head next to the per-pixel baselines, block by block (Fig. 3), or next to one
baseline of the user's choice (``per_pixel``, ``per_pixel_ds``, ``fcn``, ``segmenter``: every head the paper's claim
is measured against, :func:`analysis.roles.claim_baselines`)."""

from __future__ import annotations

from collections.abc import Sequence

from structtoken.config import ModelConfig

from ..labels import head_label
from ..roles import baseline_heads, claim_baselines, structtoken_heads
from .base import BlockGridAnalysis, View, ViewRequest, what_set

EVERY_BASELINE = "all"
"""The comparison's ``baseline`` for every baseline of the set without deep supervision, side by side."""


class Comparison(BlockGridAnalysis):
    """The chosen StructToken head's maps next to a baseline of the set: the paper's per-pixel peer by default, any
    baseline on request, or every baseline without deep supervision."""

    name = "comparison"
    title = "StructToken vs. per-pixel baseline, block by block"
    label = "Paper comparison"

    def supported(self, cfg: ModelConfig) -> str | None:
        if not baseline_heads(cfg.heads):
            return (
                f"{what_set(cfg)} has no per-pixel baseline head; the paper comparison needs one "
                "(the embedded CamVid set has it)"
            )
        if not structtoken_heads(cfg.heads):
            return f"{what_set(cfg)} has no StructToken head (CSE, SSE or PWE) to compare with the per-pixel baseline"
        return None

    def heads(self, cfg: ModelConfig, chosen: str, baseline: str | None = None) -> list[str]:
        """The chosen head, then ``baseline``: one of :meth:`baseline_choices`, :data:`EVERY_BASELINE` (every
        baseline without deep supervision) or None (the paper's peer: the first baseline without deep supervision,
        ``per_pixel`` in our sets). One baseline keeps the maps large enough to read."""
        if baseline is None:
            return [chosen, *baseline_heads(cfg.heads)[:1]]
        if baseline == EVERY_BASELINE:
            return [chosen, *baseline_heads(cfg.heads)]
        choices = self.baseline_choices(cfg)
        if baseline not in choices:
            raise ValueError(
                f"{baseline!r} is not a baseline of this set; choose one of {', '.join(choices)} "
                f"(or {EVERY_BASELINE!r} for every baseline without deep supervision)"
            )
        return [chosen, baseline]

    def baseline_choices(self, cfg: ModelConfig) -> list[str]:
        return claim_baselines(cfg.heads)

    def view_title(self, heads: Sequence[str]) -> str:
        """ "StructToken vs. <the baselines shown>, block by block" (the paper's peer: "per-pixel baseline")."""
        others = [h for h in heads[1:]]
        if not others or others == ["per_pixel"]:
            return self.title
        return f"StructToken vs. {', '.join(head_label(h) for h in others)}, block by block"

    def explain(self, view: View, request: ViewRequest) -> list[str]:
        return [
            "StructToken's maps are class-wise structure tokens refined block by block; the per-pixel "
            "baseline's are the K-channel outputs of its residual blocks. The table gives, per stage, the "
            "share of grid cells whose argmax class already equals the head's output. Under the raw readout "
            "this compares a channel labelling as much as structure: read the head and fitted readouts too."
        ]


COMPARISON = Comparison()

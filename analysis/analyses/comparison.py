"""The paper comparison: a StructToken head next to the per-pixel baselines, block by block (Fig. 3)."""

from __future__ import annotations

from structtoken.config import ModelConfig

from ..roles import baseline_heads, structtoken_heads
from .base import BlockGridAnalysis, View, ViewRequest, what_set


class Comparison(BlockGridAnalysis):
    """The chosen StructToken head's maps next to every baseline head of the set (no deep supervision)."""

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

    def heads(self, cfg: ModelConfig, chosen: str) -> list[str]:
        return [chosen, *baseline_heads(cfg.heads)]

    def explain(self, view: View, request: ViewRequest) -> list[str]:
        return [
            "StructToken's maps are class-wise structure tokens refined block by block; the per-pixel "
            "baseline's are the K-channel outputs of its residual blocks. The table gives, per stage, the "
            "share of grid cells whose argmax class already equals the head's output. Under the raw readout "
            "this compares a channel labelling as much as structure: read the head and fitted readouts too."
        ]


COMPARISON = Comparison()

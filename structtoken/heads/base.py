"""The head contract: features in, logits and per-stage maps out, and the readouts of every stage.

Every head maps a backbone feature map [B, C, h, w] to a :class:`HeadOutput` that carries the
maps entering the first block, the maps after every block and the final logits, so analysis code
never needs forward hooks to see inside a head.

Stages: a head with N blocks has S = N + 2 stages: stage 0 enters block 1, stage i (1..N) leaves
block i, stage N + 1 is the output (the logits). :attr:`HeadOutput.stage_field` says which maps
carry a stage toward the output (``tokens``: K-channel class maps; ``features``: C-channel maps),
and every head reads a stage's maps as class scores in two ways of its own (:class:`Head`):

* ``raw``: the maps taken as class scores as they are (channel k = class k), where that makes sense
  (:meth:`Head.raw_unavailable` says why not otherwise);
* ``head``: the head's own remaining output layers applied to the stage (the "logit lens");
  at stage N it equals the logits, at stage N + 1 it is the identity.

The third readout, ``fitted`` (a per-stage affine map fitted on train data), lives in
:mod:`structtoken.readouts`, outside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BlockMaps:
    """What one block of a head produced.

    Attributes:
        tokens: [B, K, h, w] class maps after the block (structure tokens for StructToken heads,
            the residual block's K-channel output for the per-pixel baseline, the block's features
            read through the classifier for ``fcn``, the patch-class masks for ``segmenter``).
        features: [B, C, h, w] feature maps after the block (StructToken heads, ``fcn``; the patch
            tokens [B, d, h, w] for ``segmenter``), else None.
        attention: class x channel attention [B, K, C'] of the block, else None. CSE: C' = C feature
            channels. SSE: the token rows of the self attention over the concatenated maps,
            C' = K + C (columns 0..K-1 are token channels, K.. are feature channels).
        classes: [B, K, d] class embeddings after the block (``segmenter``), else None.
    """

    tokens: torch.Tensor
    features: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    classes: torch.Tensor | None = None


@dataclass(frozen=True)
class HeadOutput:
    """Output of a head.

    Attributes:
        logits: [B, K, h, w] class scores on the feature grid (before upsampling).
        tokens_init: [B, K, h, w] class maps entering block 0 (the structure tokens after resize and
            batch expansion, the per-pixel baseline's 1x1-conv projection, or the stage-0 ``head``
            readout for ``fcn`` / ``segmenter``).
        blocks: one :class:`BlockMaps` per block, in order.
        aux_logits: per-block class logits used for deep supervision ([B, K, h, w] each); empty
            unless the head was built with deep supervision.
        features_init: [B, C, h, w] feature maps entering block 0 (after the head's 1x1 projection
            for StructToken heads; the backbone features for ``fcn``; the projected patch tokens
            [B, d, h, w] for ``segmenter``), else None.
        classes_init: [B, K, d] class embeddings entering block 0 (``segmenter``), else None.
        stage_field: ``tokens`` or ``features``: which maps of a stage (``tokens_init`` /
            ``features_init``, then each block's) carry it toward the output and are what the
            readouts read. The output stage is always ``logits``.
    """

    logits: torch.Tensor
    tokens_init: torch.Tensor
    blocks: tuple[BlockMaps, ...]
    aux_logits: tuple[torch.Tensor, ...] = ()
    features_init: torch.Tensor | None = None
    classes_init: torch.Tensor | None = None
    stage_field: str = "tokens"

    @property
    def num_stages(self) -> int:
        """S = N + 2: input of block 1, after each of the N blocks, output."""
        return len(self.blocks) + 2

    def stage_maps(self) -> tuple[torch.Tensor, ...]:
        """The S maps the readouts read, stage 0 .. N + 1: [B, Cs, h, w] each (Cs = K for
        ``stage_field == "tokens"``, C for ``features``), the last being the logits [B, K, h, w]."""
        if self.stage_field == "tokens":
            maps = [self.tokens_init, *(b.tokens for b in self.blocks)]
        elif self.stage_field == "features":
            maps = [self.features_init, *(b.features for b in self.blocks)]
        else:
            raise ValueError(f"unknown stage_field {self.stage_field!r}")
        if any(m is None for m in maps):
            raise ValueError(f"this head output lacks some stage's {self.stage_field}")
        return (*maps, self.logits)  # type: ignore[arg-type]


class Head(nn.Module):
    """Base of every head: ``forward(features [B, C, h, w]) -> HeadOutput`` plus the readouts.

    Subclasses set ``num_classes`` and implement :meth:`forward` and :meth:`readout`; a head whose
    stages are not K-channel class maps overrides :meth:`raw_unavailable` (or :meth:`raw_readout`).
    Holds no parameters itself, so deriving from it leaves state-dict keys unchanged.
    """

    num_classes: int
    head_readout_text: str = "the head's remaining output layers applied to the stage"
    """What the ``head`` readout applies to a stage (one phrase, for the report's definitions)."""
    fitted_input_text: str = "the stage's maps"
    """What the ``fitted`` readout reads at a stage (one phrase, for the report's definitions)."""

    def fitted_maps(self, out: HeadOutput) -> tuple[torch.Tensor, ...]:
        """The S = N + 2 maps the ``fitted`` readout reads, stage 0 .. N + 1: every per-pixel channel a stage
        hands to the next block, [B, Ws, h, w] each (the last being the logits [B, K, h, w]). By default the
        stage maps (:meth:`HeadOutput.stage_maps`); a head that hands on more overrides it."""
        return out.stage_maps()

    def readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """``head`` readout ("logit lens"): the head's remaining output layers applied to ``maps``
        [B, Cs, h, w], the maps of ``stage`` (0 .. N + 1) of ``out`` or a stand-in of the same shape.
        Returns class scores [B, K, h, w]; identity at stage N + 1; equals ``out.logits`` at stage N
        in eval mode."""
        raise NotImplementedError

    def raw_unavailable(self) -> str | None:
        """Why this head has no ``raw`` readout, or None when it has one."""
        return None

    def raw_caveat(self) -> str | None:
        """Kept for callers of the earlier API: ``raw`` now exists only where channel k is class k by
        construction (:meth:`raw_unavailable` says why not elsewhere), so there is nothing to caveat."""
        return None

    def raw_readout(self, stage: int, maps: torch.Tensor, out: HeadOutput) -> torch.Tensor:
        """``raw`` readout: the stage's maps [B, K, h, w] as they are (channel k = class k)."""
        if maps.shape[1] != self.num_classes:
            raise ValueError(f"stage {stage} has {maps.shape[1]} channels, not K = {self.num_classes} class maps")
        return maps

    @staticmethod
    def check_stage(stage: int, out: HeadOutput) -> int:
        """``stage`` as a non-negative index into 0 .. N + 1 (negative counts from the end)."""
        s = out.num_stages
        if not -s <= stage < s:
            raise IndexError(f"stage {stage} out of range for a head with {s} stages (0 .. {s - 1})")
        return stage % s


def resize_tokens(tokens: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Resize learned tokens [1, K, H0, W0] to the feature grid ``size`` (bicubic, no antialias)."""
    if tuple(tokens.shape[-2:]) == tuple(size):
        return tokens
    return F.interpolate(tokens, size=size, mode="bicubic", align_corners=align_corners)

"""A model set: one ViT backbone pass feeding one or more named heads, with mmseg's inference
modes (whole image, sliding window, multi-scale + flip) and the official test-time preprocessing.

Reproduces mmseg 0.20.2 ``EncoderDecoder`` inference as used by the official StructToken configs
(Lin et al., arXiv 2203.12612): head logits are resized bilinearly (align_corners=False) straight
to the input size (the padded part of the feature grid is not cropped first); sliding windows are
shifted back at the border and overlaps averaged before the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .config import ModelConfig
from .heads import BlockMaps, HeadOutput, build_head

if TYPE_CHECKING:
    from .readouts import FittedReadouts

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""mmseg's ``--aug-test`` ratios, used for the published multi-scale mIoU."""


@dataclass(frozen=True)
class SegmentorOutput:
    """One forward pass of a model set.

    Attributes:
        features: [B, C, h, w] backbone output, h = ceil(H/16), w = ceil(W/16).
        heads: head name -> :class:`HeadOutput` (maps on the feature grid).
        logits: head name -> [B, K, H, W] logits upsampled to the input size.
        primary: the name of the set's first head; the properties below refer to it.
    """

    features: torch.Tensor
    heads: dict[str, HeadOutput]
    logits_by_head: dict[str, torch.Tensor]
    primary: str

    @property
    def logits(self) -> torch.Tensor:
        """[B, K, H, W] logits of the primary head."""
        return self.logits_by_head[self.primary]

    @property
    def head_logits(self) -> torch.Tensor:
        """[B, K, h, w] primary head output before upsampling."""
        return self.heads[self.primary].logits

    @property
    def tokens_init(self) -> torch.Tensor:
        """[B, K, h, w] class maps entering the primary head's first block."""
        return self.heads[self.primary].tokens_init

    @property
    def blocks(self) -> tuple[BlockMaps, ...]:
        """Per-block maps of the primary head."""
        return self.heads[self.primary].blocks


def slide_windows(
    size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmseg sliding windows (y1, y2, x1, x2), row-major; the last window is shifted back to end at
    the border, and an image smaller than the crop is taken whole along that axis."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def test_resize_shape(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg keep-ratio resize: the long side <= scale[0] and the short side <= scale[1]. Returns (H', W')."""
    long_b, short_b = max(scale), min(scale)
    f = min(long_b / max(height, width), short_b / min(height, width))
    return int(height * f + 0.5), int(width * f + 0.5)


class Segmentor(nn.Module):
    """Backbone + named heads. ``forward`` takes normalised images [B, 3, H, W]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        self.heads = nn.ModuleDict({name: build_head(name, cfg) for name in cfg.heads})
        self.fitted_readouts: FittedReadouts | None = None  # set by checkpoint.load_model (structtoken.readouts)

    @property
    def device(self) -> torch.device:
        return self.backbone.cls_token.device

    # ----------------------------------------------------------------- forward
    def forward_heads(
        self,
        features: torch.Tensor,
        out_size: tuple[int, int] | None = None,
        heads: Sequence[str] | None = None,
    ) -> SegmentorOutput:
        """Run heads on a backbone map [B, C, h, w]; logits are upsampled to ``out_size`` (H, W)."""
        names = list(heads) if heads is not None else list(self.heads)
        outs = {n: self.heads[n](features) for n in names}
        size = out_size or (
            features.shape[-2] * self.cfg.patch_size,
            features.shape[-1] * self.cfg.patch_size,
        )
        logits = {n: upsample(o.logits, size) for n, o in outs.items()}
        primary = self.cfg.head if self.cfg.head in outs else names[0]
        return SegmentorOutput(features=features, heads=outs, logits_by_head=logits, primary=primary)

    def forward(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> SegmentorOutput:
        """Whole-image inference. x [B, 3, H, W] normalised -> :class:`SegmentorOutput` (logits [B, K, H, W])."""
        return self.forward_heads(self.backbone(x), tuple(x.shape[-2:]), heads)

    # --------------------------------------------------------------- inference
    def slide_all(
        self,
        x: torch.Tensor,
        crop: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        heads: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sliding-window logits [B, K, H, W] per head (one backbone pass per window for all heads)."""
        crop = crop or self.cfg.crop_size or self.cfg.image_size
        stride = stride or self.cfg.stride or crop
        b, _, h, w = x.shape
        sums: dict[str, torch.Tensor] = {}
        count = x.new_zeros((1, 1, h, w))
        for y1, y2, x1, x2 in slide_windows((h, w), tuple(crop), tuple(stride)):
            out = self.forward(x[:, :, y1:y2, x1:x2], heads)
            for name, lg in out.logits_by_head.items():
                if name not in sums:
                    sums[name] = x.new_zeros((b, lg.shape[1], h, w))
                sums[name][:, :, y1:y2, x1:x2] += lg
            count[:, :, y1:y2, x1:x2] += 1
        return {name: s / count for name, s in sums.items()}

    def slide(
        self,
        x: torch.Tensor,
        crop: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        head: str | None = None,
    ) -> torch.Tensor:
        """Sliding-window logits [B, K, H, W] of one head (the primary by default), averaged over overlaps."""
        name = head or self.cfg.head
        return self.slide_all(x, crop, stride, heads=[name])[name]

    def inference(
        self, x: torch.Tensor, mode: str | None = None, heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits [B, K, H, W] per head with the set's test mode (``whole`` or ``slide``) or ``mode``."""
        mode = mode or self.cfg.test_mode
        if mode == "slide":
            return self.slide_all(x, heads=heads)
        if mode == "whole":
            return dict(self.forward(x, heads).logits_by_head)
        raise ValueError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")

    def preprocess(self, image: np.ndarray, scale: tuple[int, int] | str | None = "config") -> torch.Tensor:
        """uint8 RGB image [H, W, 3] -> normalised float32 [1, 3, H', W'] on the model's device.

        ``scale="config"`` applies the set's test-time keep-ratio resize (``cfg.test_scale``), None keeps
        the native size, a (long, short) pair sets the bound. Resizing is bilinear (align_corners=False)
        and rounded back to uint8 levels like OpenCV's.
        """
        return preprocess_image(image, self.cfg, self.cfg.test_scale if scale == "config" else scale, self.device)

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray,
        mode: str | None = None,
        scale: tuple[int, int] | str | None = "config",
        ratios: Sequence[float] | None = None,
        flip: bool = False,
        heads: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Class probabilities [1, K, H, W] at the image's own size, per head.

        One scale without flip is the mmseg single-scale test; ``ratios`` (e.g. :data:`MS_RATIOS`) and
        ``flip`` give mmseg's aug-test: softmax scores averaged over every scale (and its flip).
        """
        h0, w0 = image.shape[:2]
        base = self.cfg.test_scale if scale == "config" else scale
        ratios = tuple(ratios) if ratios else (1.0,)
        total: dict[str, torch.Tensor] = {}
        n = 0
        for r in ratios:
            if base is None:
                s = None if r == 1.0 else (round(max(h0, w0) * r), round(min(h0, w0) * r))
            else:
                s = (int(base[0] * r), int(base[1] * r))
            x = preprocess_image(image, self.cfg, s, self.device)
            for flipped in (False, True) if flip else (False,):
                xi = x.flip(-1) if flipped else x
                for name, lg in self.inference(xi, mode, heads).items():
                    lg = lg.flip(-1) if flipped else lg
                    p = upsample(lg, (h0, w0)).softmax(dim=1)
                    total[name] = total[name] + p if name in total else p
                n += 1
        return {name: t / n for name, t in total.items()}


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize [B, K, h, w] -> [B, K, H, W] (align_corners=False, no antialias), as mmseg's ``resize``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def preprocess_image(
    image: np.ndarray, cfg: ModelConfig, scale: tuple[int, int] | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalised float32 [1, 3, H', W'] (see :meth:`Segmentor.preprocess`)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    if scale is not None:
        size = test_resize_shape(image.shape[0], image.shape[1], scale)
        if size != tuple(image.shape[:2]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def build_model(cfg: ModelConfig) -> Segmentor:
    """A randomly initialised model set for ``cfg`` (load weights with :mod:`structtoken.checkpoint`)."""
    cfg.validate()
    return Segmentor(cfg)

"""A model set: one ViT backbone pass feeding one or more named heads, with mmseg's inference
modes (whole image, sliding window, multi-scale + flip) and the official test-time preprocessing.

Reproduces mmseg 0.20.2 ``EncoderDecoder`` inference as used by the official StructToken configs
(Lin et al., arXiv 2203.12612): head logits are resized bilinearly (align_corners=False) straight
to the input size (the padded part of the feature grid is not cropped first); sliding windows are
shifted back at the border and overlaps averaged before the softmax.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ViTBlocks, split_backbone, tokens_to_map
from .config import ModelConfig
from .devices import in_single_threaded_pool, single_threaded_pool
from .heads import BlockMaps, HeadOutput, build_head
from .metrics import running_argmax

if TYPE_CHECKING:
    from .readouts import FittedReadouts

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""mmseg's ``--aug-test`` ratios, used for the published multi-scale mIoU."""


@dataclass(frozen=True)
class SegmentorOutput:
    """One forward pass of a model set.

    Attributes:
        features: [B, C, h, w] shared backbone output, h = ceil(H/16), w = ceil(W/16) (after block
            ``depth - cfg.head_vit_blocks``: the last block unless the heads have ViT blocks of their own).
        heads: head name -> :class:`HeadOutput` (maps on the feature grid).
        logits_by_head: head name -> [B, K, H, W] logits upsampled to the input size; a read-only mapping
            that upsamples a head on first access (and keeps it), so a caller that needs only the
            prediction (:meth:`labels`) or a few classes (:meth:`class_maps`) never pays for [B, K, H, W].
        primary: the name of the set's first head; the properties below refer to it.
        head_features: head name -> [B, C, h, w] the features that head read, where the heads have ViT
            blocks of their own (``cfg.head_vit_blocks``); empty otherwise (every head read ``features``).
    """

    features: torch.Tensor
    heads: dict[str, HeadOutput]
    logits_by_head: Mapping[str, torch.Tensor]
    primary: str
    head_features: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def features_of(self, head: str) -> torch.Tensor:
        """[B, C, h, w] the features ``head`` read: its own ViT blocks' output, or the shared ``features``."""
        return self.head_features.get(head, self.features)

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

    def labels(self, head: str | None = None) -> torch.Tensor:
        """[B, H, W] int64 argmax of the head's (primary's) full-resolution logits, computed class chunk by
        class chunk from the grid logits: identical to ``logits_by_head[head].argmax(1)`` (first max wins)
        without materialising [B, K, H, W] (:func:`upsample_argmax`)."""
        name = head or self.primary
        return upsample_argmax(self.heads[name].logits, self.out_size_of(name))

    def class_maps(self, classes: Sequence[int], head: str | None = None) -> torch.Tensor:
        """[B, len(classes), H, W] full-resolution logits of the given classes only; identical to
        ``logits_by_head[head][:, classes]``."""
        name = head or self.primary
        return upsample_classes(self.heads[name].logits, self.out_size_of(name), classes)

    def out_size_of(self, head: str) -> tuple[int, int]:
        """(H, W) of ``head``'s full-resolution logits, without upsampling them."""
        lbh = self.logits_by_head
        if isinstance(lbh, LazyUpsampled):
            return lbh.size
        lg = lbh[head]
        return (int(lg.shape[-2]), int(lg.shape[-1]))


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
    """Backbone + named heads. ``forward`` takes normalised images [B, 3, H, W].

    With ``cfg.head_vit_blocks = n > 0`` the backbone holds the first ``depth - n`` ViT blocks and
    ``head_vit[name]`` (:class:`~structtoken.backbone.ViTBlocks`, state-dict keys ``head_vit.<head>.blocks.<i>.*``,
    i = 0 .. n - 1 standing for ViT block ``depth - n + i``) is head ``name``'s own copy of the last n;
    ``head_vit`` is empty (no state-dict keys) otherwise.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone, last = split_backbone(cfg)
        self.head_vit = nn.ModuleDict({name: ViTBlocks(copy.deepcopy(last)) for name in cfg.heads} if last else {})
        self.heads = nn.ModuleDict({name: build_head(name, cfg) for name in cfg.heads})
        self.fitted_readouts: FittedReadouts | None = None  # set by checkpoint.load_model (structtoken.readouts)
        self.head_workers = 1  # see set_head_workers

    @property
    def device(self) -> torch.device:
        return self.backbone.cls_token.device

    def set_exact_attention(self, exact: bool) -> Segmentor:
        """Explicit softmax attention in the backbone (bit-exact with the official code) when True; fused SDPA
        (the fast path, same tolerance to the official fixtures) when False. ``cfg`` becomes a copy saying so
        (the config object the caller built the set from is left as it was). Returns self."""
        self.set_vit_attention(exact)
        self.cfg = self.cfg.replace(exact_attention=bool(exact))
        return self

    def set_head_workers(self, workers: int) -> Segmentor:
        """Run the heads of a CPU inference pass (no autograd) side by side on ``workers`` single-threaded
        workers (:func:`structtoken.devices.single_threaded_pool`) instead of one after another on torch's
        threads; 1 (the default) runs them in turn. Each head then computes with one thread, so its maps
        differ from the default's by float32 rounding (summation order), the same on every call. Measured on
        2 cores (2026-12-03, embedded set, 360x480, ``bench/bench_analyze.py``): the five heads 0.136-0.170 s
        with two workers against 0.218-0.231 s in turn, logits and block maps within 9.2e-7 of their scale.
        Returns self."""
        if int(workers) < 1:
            raise ValueError(f"head workers must be >= 1, got {workers}")
        self.head_workers = int(workers)
        return self

    def _run_heads(
        self, names: list[str], features: torch.Tensor, head_features: Mapping[str, torch.Tensor] | None
    ) -> dict[str, HeadOutput]:
        """Head name -> its output on ``head_features[name]`` (or ``features``), in turn or on the head workers."""

        def run(name: str) -> HeadOutput:
            return self.heads[name](head_features[name] if head_features is not None else features)

        side_by_side = (
            self.head_workers > 1
            and len(names) > 1
            and features.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not in_single_threaded_pool()  # a worker waiting on its own pool could deadlock it
        )
        if not side_by_side:
            return {n: run(n) for n in names}
        inference = torch.is_inference_mode_enabled()  # grad and inference modes are per thread

        def job(name: str) -> HeadOutput:
            with torch.inference_mode(inference), torch.no_grad():
                return run(name)

        pool = single_threaded_pool(self.head_workers)
        # the biggest heads first, so the small ones fill in behind them
        order = sorted(names, key=lambda n: -sum(p.numel() for p in self.head_parameters(n)))
        futures = {n: pool.submit(job, n) for n in order}
        return {n: futures[n].result() for n in names}

    def set_vit_attention(self, exact: bool) -> None:
        """The attention path of every ViT block, shared and per head (see :meth:`set_exact_attention`),
        leaving ``cfg`` as it is (training switches paths for evaluation and back)."""
        self.backbone.set_exact_attention(exact)
        for blocks in self.head_vit.values():
            blocks.set_exact_attention(exact)
        for m in self.heads.modules():  # heads built from timm blocks (Segmenter's layers)
            if hasattr(m, "fused_attn"):
                m.fused_attn = not exact

    def head_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """The parameters of head ``name`` alone: the head's and its own ViT blocks' (``head_vit``), if any."""
        yield from self.heads[name].parameters()
        if name in self.head_vit:
            yield from self.head_vit[name].parameters()

    # ----------------------------------------------------------------- forward
    def head_features(
        self, tokens: torch.Tensor, grid: tuple[int, int], heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every head's input features [B, C, h, w] from the shared backbone's tokens [B, 1 + h*w, C] and grid
        (h, w) (:meth:`ViTBackbone.forward_tokens`): the head's own ViT blocks applied (``head_vit``), or, in a
        set without them, the shared map itself (one tensor for all heads)."""
        names = list(heads) if heads is not None else list(self.heads)
        if not self.head_vit:
            shared = tokens_to_map(tokens, grid)
            return {n: shared for n in names}
        return {n: self.head_vit[n](tokens, grid) for n in names}

    def forward_heads(
        self,
        features: torch.Tensor,
        out_size: tuple[int, int] | None = None,
        heads: Sequence[str] | None = None,
        head_features: Mapping[str, torch.Tensor] | None = None,
    ) -> SegmentorOutput:
        """Run heads on a backbone map [B, C, h, w] (or, per head, on ``head_features[name]`` [B, C, h, w],
        which a set whose heads have ViT blocks of their own needs: :meth:`head_features`); logits are
        upsampled to ``out_size`` (H, W)."""
        names = list(heads) if heads is not None else list(self.heads)
        if self.head_vit and head_features is None:
            raise ValueError("the heads of this set have ViT blocks of their own: pass head_features (see forward)")
        outs = self._run_heads(names, features, head_features)
        size = out_size or (
            features.shape[-2] * self.cfg.patch_size,
            features.shape[-1] * self.cfg.patch_size,
        )
        logits = LazyUpsampled({n: o.logits for n, o in outs.items()}, size)
        primary = self.cfg.head if self.cfg.head in outs else names[0]
        return SegmentorOutput(
            features=features,
            heads=outs,
            logits_by_head=logits,
            primary=primary,
            head_features=dict(head_features) if head_features is not None and self.head_vit else {},
        )

    def forward(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> SegmentorOutput:
        """Whole-image inference. x [B, 3, H, W] normalised -> :class:`SegmentorOutput` (logits [B, K, H, W])."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if not self.head_vit:
            return self.forward_heads(self.backbone(x), size, heads)
        tokens, grid = self.backbone.forward_tokens(x)  # shared part: [B, 1 + h*w, C]
        return self.forward_heads(tokens_to_map(tokens, grid), size, heads, self.head_features(tokens, grid, heads))

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

    def resize_image(self, image: np.ndarray, scale: tuple[int, int] | str | None = "config") -> np.ndarray:
        """The image the model sees: uint8 RGB [H, W, 3] -> uint8 RGB [H', W', 3], before normalisation.

        ``scale="config"`` applies the set's test-time keep-ratio resize (``cfg.test_scale``), None keeps
        the native size, a (long, short) pair sets the bound. Resizing is bilinear (align_corners=False)
        on the model's device and rounded back to uint8 levels like OpenCV's.
        """
        return resize_image(image, self.cfg.test_scale if scale == "config" else scale, self.device)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> ``(image - cfg.mean) / cfg.std`` as float32 [1, 3, H, W] on the model's device."""
        return normalize_image(image, self.cfg, self.device)

    def preprocess(self, image: np.ndarray, scale: tuple[int, int] | str | None = "config") -> torch.Tensor:
        """uint8 RGB image [H, W, 3] -> normalised float32 [1, 3, H', W'] on the model's device.

        ``normalize(resize_image(image, scale))``: see :meth:`resize_image` for ``scale``.
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


class LazyUpsampled(Mapping[str, torch.Tensor]):
    """head name -> [B, K, H, W]: grid logits [B, K, h, w] upsampled to ``size`` on first access, then kept."""

    def __init__(self, grid_logits: dict[str, torch.Tensor], size: tuple[int, int]) -> None:
        self._grid = grid_logits
        self._full: dict[str, torch.Tensor] = {}
        self.size = (int(size[0]), int(size[1]))

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._full:
            self._full[name] = upsample(self._grid[name], self.size)
        return self._full[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._grid)

    def __len__(self) -> int:
        return len(self._grid)

    def __repr__(self) -> str:
        return f"LazyUpsampled({list(self._grid)}, size={self.size})"


ARGMAX_CHUNK = 16
"""Classes upsampled at a time by :func:`upsample_argmax` (16 x 512 x 512 fp32 = 16 MB instead of 150 x); K <= 16
(CamVid) is one chunk, i.e. the full upsample and numpy's argmax."""


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], chunk: int = ARGMAX_CHUNK) -> torch.Tensor:
    """argmax over classes of ``upsample(logits, size)`` without the [B, K, H, W] tensor.

    logits [B, K, h, w] -> [B, H, W] int64. Classes are upsampled ``chunk`` at a time and a running
    maximum keeps the first maximal class, as ``torch.argmax`` does, so the result equals
    ``upsample(logits, size).argmax(1)`` (NaN-free inputs; equal in every tested case, random and tied
    logits, 1 and 2 threads). Every plane is the same bilinear formula as in the full upsample, but
    torch's CPU kernel may round a plane differently by 1 ulp depending on where its vector loop and
    thread split fall; ``chunk`` must be a multiple of 8, which keeps the chunks on the full upsample's
    8-lane grid (chunks of 1..7 classes differed in the last bit at 37x50; multiples of 8 did not in
    600 random geometries at 2 threads), so only a 1-ulp tie between two classes could flip a label.
    """
    if chunk < 1 or chunk % 8:
        raise ValueError(f"chunk must be a positive multiple of 8, got {chunk}")
    k = logits.shape[1]
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(_argmax_chunks_numpy(logits, size, chunk))
    if k <= chunk:
        return upsample(logits, size).argmax(1)
    best_val, best_idx = upsample(logits[:, :chunk], size).max(1)
    for c0 in range(chunk, k, chunk):
        val, idx = upsample(logits[:, c0 : c0 + chunk], size).max(1)  # [B, H, W] each
        better = val > best_val  # strict: an earlier class wins ties
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + c0, best_idx)
    return best_idx


def _argmax_chunks_numpy(logits: torch.Tensor, size: tuple[int, int], chunk: int) -> np.ndarray:
    """CPU body of :func:`upsample_argmax`: :func:`running_argmax` over the class planes of the upsampled
    [k', H, W] chunks, one chunk upsampled at a time."""
    b, k = logits.shape[:2]

    def planes(i: int) -> Iterator[np.ndarray]:
        for c0 in range(0, k, chunk):
            yield from upsample(logits[i : i + 1, c0 : c0 + chunk], size)[0].numpy()  # [k', H, W] -> [H, W]s

    return np.stack([running_argmax(planes(i)) for i in range(b)])


def upsample_classes(logits: torch.Tensor, size: tuple[int, int], classes: Sequence[int]) -> torch.Tensor:
    """``upsample(logits, size)[:, classes]`` computed for those classes only: [B, K, h, w] -> [B, len, H, W].

    Upsamples the aligned blocks of 8 classes that hold the selected ones, i.e. at most
    ``8 * len(classes)`` of the K maps; values equal the full upsample's up to 1 ulp of float32 (mostly
    bit for bit; see :func:`upsample_argmax`)."""
    classes = [int(c) for c in classes]
    k = logits.shape[1]
    if any(not 0 <= c < k for c in classes):
        raise IndexError(f"classes {classes} outside 0..{k - 1}")
    blocks = sorted({c // 8 for c in classes})
    if len(blocks) * 8 >= k:
        return upsample(logits, size)[:, classes]
    parts = {bl: upsample(logits[:, 8 * bl : 8 * bl + 8], size) for bl in blocks}
    return torch.stack([parts[c // 8][:, c % 8] for c in classes], dim=1)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize [B, K, h, w] -> [B, K, H, W] contiguous (align_corners=False, no antialias), as
    mmseg's ``resize``.

    The input is made contiguous first (a copy of the small grid tensor at most): heads whose logits come
    out of a channels-last convolution would otherwise run torch's channels-last kernel, which at
    [1, 150, 32, 32] -> 512x512 took 2.9x as long once its output was read plane by plane, and can round
    1 ulp differently from the contiguous kernel the official code's [B, K, h, w] logits run.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.contiguous()
    return F.interpolate(logits.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)


def _check_rgb_uint8(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {got}")


def _to_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] on ``device`` (values 0..255)."""
    if not (image.flags.writeable and image.flags.c_contiguous):
        image = np.array(image, order="C")  # torch.from_numpy warns on read-only arrays
    return torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()


def resize_image(image: np.ndarray, scale: tuple[int, int] | None, device: torch.device | str = "cpu") -> np.ndarray:
    """mmseg's test-time keep-ratio resize: uint8 RGB [H, W, 3] -> uint8 RGB [H', W', 3].

    ``(H', W') = test_resize_shape(H, W, scale)``; ``scale=None`` (or a scale that keeps the size)
    returns the image unchanged. Bilinear (align_corners=False, no antialias), computed on
    ``device``, rounded and clipped to uint8 levels like OpenCV's.
    """
    _check_rgb_uint8(image)
    if scale is None:
        return image
    size = test_resize_shape(image.shape[0], image.shape[1], scale)
    if size == tuple(image.shape[:2]):
        return image
    x = F.interpolate(_to_tensor(image, device), size=size, mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255)[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def normalize_image(image: np.ndarray, cfg: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> ``(image - cfg.mean) / cfg.std`` as float32 [1, 3, H, W] on ``device``."""
    _check_rgb_uint8(image)
    x = _to_tensor(image, device)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def preprocess_image(
    image: np.ndarray, cfg: ModelConfig, scale: tuple[int, int] | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalised float32 [1, 3, H', W']: ``normalize_image(resize_image(image, scale))``."""
    return normalize_image(resize_image(image, scale, device), cfg, device)


def build_model(cfg: ModelConfig) -> Segmentor:
    """A randomly initialised model set for ``cfg`` (load weights with :mod:`structtoken.checkpoint`)."""
    cfg.validate()
    return Segmentor(cfg)

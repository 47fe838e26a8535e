"""Per-block class maps of every head of a model set, as CPU numpy arrays.

:func:`compute_maps` runs the backbone once on an image and every head of the set on its features
(:meth:`structtoken.Segmentor.forward`), and keeps, per head, the K-channel class map entering
block 1, after each block and at the head output (:class:`HeadMaps`), the class x channel
attention of StructToken heads, the feature maps entering each block, and the prediction.
Everything else here is pure array code: normalising maps for display (:func:`normalize_maps`),
resizing them to the image (:func:`upsample_maps`), picking which classes to show
(:func:`select_classes`) and which feature channels a class reads (:func:`top_channels`).

Readouts (:data:`READOUTS`, :mod:`structtoken.readouts`): every stage of every head is also kept as
class scores read three ways, ``raw`` (channel k = class k), ``head`` (the head's own output layers,
the "logit lens") and ``fitted`` (the set's fitted affine lens), computed in the same pass at grid
resolution (:attr:`HeadMaps.readouts`, ``[S, K, h, w]`` each); a readout a head cannot give is
recorded with its reason (:attr:`HeadMaps.unavailable`, :func:`readout_problem`).

Shapes: K classes, a feature grid ``(h, w) = ceil(H / 16), ceil(W / 16)`` for an ``H x W`` image,
C feature channels, N blocks per head, S = N + 2 stages.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from structtoken.devices import autocast
from structtoken.heads import Head, HeadOutput
from structtoken.readouts import READOUTS, FittedReadouts, ReadoutError, readout_unavailable, stage_scores
from structtoken.segmentor import Segmentor, SegmentorOutput, upsample

from .metrics import argmax_stacks
from .roles import head_kind

__all__ = [
    "NORMALIZATIONS",
    "READOUTS",
    "HeadMaps",
    "ImageMaps",
    "compute_maps",
    "image_maps_from_output",
    "normalize_maps",
    "readout_caveat",
    "readout_problem",
    "readout_stages",
    "resolve_classes",
    "select_classes",
    "stage_names",
    "stage_tensor",
    "top_channels",
    "upsample_maps",
]

NORMALIZATIONS = ("shared", "per_map", "softmax")
"""Display normalisations of class maps (see :func:`normalize_maps`)."""

NO_MODEL_REASON = "computed without the model's heads (maps built from a bare forward output)"


def stage_names(num_blocks: int) -> tuple[str, ...]:
    """``("input", "block 1", ..., "block N", "output")`` for a head with ``num_blocks`` blocks."""
    return ("input", *(f"block {i}" for i in range(1, num_blocks + 1)), "output")


@dataclass(frozen=True)
class HeadMaps:
    """The class maps of one head on one image (float32, on the feature grid).

    Attributes:
        stages: ``[S, K, h, w]``: the class maps entering block 1 (``tokens_init``), after each
            block, and the head output (logits); S = N + 2.
        stage_names: ``("input", "block 1", ..., "block N", "output")``.
        attention: ``[N, K, C']`` class x channel attention per block (CSE: C' = C; SSE: C' = K + C,
            columns 0..K-1 are token channels), or None (PWE, per-pixel, linear).
        block_features: ``[N, C, h, w]`` the feature maps *entering* each block (the head's
            projected features for block 1, the previous block's output after), or None for
            heads without feature maps (per-pixel, linear).
        kind: head architecture: ``cse`` | ``sse`` | ``pwe`` | ``per_pixel`` | ``linear``.
        readouts: readout -> ``[S, K, h, w]`` class scores of every stage, for each readout of
            :data:`READOUTS` the head can give (``stages`` is the ``raw`` one when there is one, else
            the ``head`` one).
        unavailable: readout -> why the head cannot give it (every readout missing from ``readouts``).
        raw_caveat: a one-line warning for the ``raw`` readout of a head whose channels are not
            class-aligned (:meth:`structtoken.heads.Head.raw_caveat`), else None.
    """

    stages: np.ndarray
    stage_names: tuple[str, ...]
    attention: np.ndarray | None
    block_features: np.ndarray | None
    kind: str
    readouts: dict[str, np.ndarray] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    raw_caveat: str | None = None

    @property
    def num_blocks(self) -> int:
        """N, the number of blocks (S - 2)."""
        return self.stages.shape[0] - 2

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        arrays = [self.stages, self.attention, self.block_features, *self.readouts.values()]
        seen: set[int] = set()
        total = 0
        for a in arrays:
            if a is not None and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
        return total


class _LazyProbs(Mapping[str, np.ndarray]):
    """head -> softmax of the output logits upsampled to the image ``[K, H, W]``, computed on access.

    Not stored: K x H x W floats per head would dominate the memory of a cache of images (150 x
    512 x 683 float32 is 210 MB for one ADE20K head).
    """

    def __init__(self, heads: Mapping[str, HeadMaps], size: tuple[int, int]) -> None:
        self._heads = heads
        self._size = size

    def __getitem__(self, head: str) -> np.ndarray:
        logits = _tensor(self._heads[head].stages[-1])[None]
        return upsample(logits, self._size)[0].softmax(0).numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __repr__(self) -> str:
        return f"<probs of {', '.join(self._heads)} at {self._size[0]}x{self._size[1]}, computed on access>"


@dataclass(frozen=True)
class ImageMaps:
    """Everything the analyses need about one image, from one backbone pass.

    Attributes:
        image: ``[H, W, 3]`` uint8, the image the model saw (after the set's test-time resize).
        heads: head name -> :class:`HeadMaps`, in the set's order.
        probs: head name -> ``[K, H, W]`` float32 softmax of the output logits upsampled to the
            image (as :meth:`structtoken.Segmentor.predict`); computed when read, not stored.
        pred: head name -> ``[H, W]`` uint8 predicted class.
        grid: ``(h, w)`` the feature grid.
        seconds: time of the backbone + heads pass (including the copy to numpy).
        class_names: the K class names of the set (``class 0`` .. when unnamed).
    """

    image: np.ndarray
    heads: dict[str, HeadMaps]
    pred: dict[str, np.ndarray]
    grid: tuple[int, int]
    seconds: float
    class_names: tuple[str, ...] = ()
    probs: Mapping[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "probs", _LazyProbs(self.heads, tuple(self.image.shape[:2])))
        if not self.class_names and self.heads:
            k = next(iter(self.heads.values())).stages.shape[1]
            object.__setattr__(self, "class_names", tuple(f"class {i}" for i in range(k)))

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return (
            self.image.nbytes + sum(h.nbytes for h in self.heads.values()) + sum(p.nbytes for p in self.pred.values())
        )


# --------------------------------------------------------------------------------------- compute
def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor sharing ``a``'s memory when it may (copied when read-only or strided)."""
    a = np.asarray(a, dtype=np.float32)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, dtype=np.float32, order="C")
    return torch.from_numpy(a)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _stack(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Stack ``[1, ...]`` tensors of one image into a float32 numpy array ``[len, ...]``."""
    return _np(torch.cat([t[:1] for t in tensors], dim=0))


def stage_tensor(out: HeadOutput) -> torch.Tensor:
    """``[S, Cs, h, w]`` stages of the first image of a head's output (:meth:`HeadOutput.stage_maps`: the
    maps entering block 1, after each block, and the logits; S = N + 2), on the output's device."""
    return torch.cat([m[:1] for m in out.stage_maps()], dim=0)


def _argmax_classes(logits: torch.Tensor) -> np.ndarray:
    """Class index of ``[K, H, W]`` logits -> ``[H, W]`` uint8 (int32 when K > 256); first max wins.

    On the CPU :func:`analysis.metrics.argmax_stacks` (a running maximum: several times faster than torch's
    argmax, about 3x faster than numpy's over the class axis).
    """
    if logits.device.type == "cpu":
        return argmax_stacks(logits.detach().float().numpy()[None])[0]
    return logits.argmax(0).cpu().numpy().astype(np.uint8 if logits.shape[0] <= 256 else np.int32)


def head_readouts(
    name: str, head: Head | None, out: HeadOutput, fitted: FittedReadouts | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every readout of the first image of ``out`` (the output of ``head``, named ``name``):
    (readout -> ``[S, K, h, w]`` float32 scores, readout -> reason for each one it cannot give).

    ``head`` None (no model at hand) gives only ``raw`` (the stage maps as they are, when they are
    K-channel maps). ``fitted`` is the set's :class:`structtoken.readouts.FittedReadouts` or None.
    """
    scores: dict[str, np.ndarray] = {}
    reasons: dict[str, str] = {}
    for r in READOUTS:
        if head is None:
            if r == "raw" and out.stage_field == "tokens":
                scores[r] = _np(stage_tensor(out))
            else:
                reasons[r] = NO_MODEL_REASON if r != "raw" else "the stages are not K-channel class maps"
            continue
        reason = readout_unavailable(name, head, r, fitted)
        if reason is not None:
            reasons[r] = reason
            continue
        try:
            per = stage_scores(name, head, out, r, fitted)
        except (ReadoutError, ValueError) as e:
            reasons[r] = str(e)
            continue
        scores[r] = _np(torch.cat([t[:1].float() for t in per], dim=0))
    return scores, reasons


def head_maps(name: str, out: HeadOutput, head: Head | None = None, fitted: FittedReadouts | None = None) -> HeadMaps:
    """:class:`HeadMaps` of the first image of a :class:`structtoken.HeadOutput` (with every readout
    when the ``head`` module that produced it is given; see :func:`head_readouts`)."""
    blocks = out.blocks
    readouts, unavailable = head_readouts(name, head, out, fitted)
    if "raw" in readouts:
        stages = readouts["raw"]
    elif "head" in readouts:
        stages = readouts["head"]
    else:
        stages = _np(stage_tensor(out))
    attention = None
    if blocks and all(b.attention is not None for b in blocks):
        attention = _stack([b.attention for b in blocks])
    features = None
    f0 = out.features_init
    if blocks and f0 is not None and all(b.features is not None for b in blocks[:-1]):
        features = _stack([f0, *(b.features for b in blocks[:-1])])
    caveat = head.raw_caveat() if isinstance(head, Head) and "raw" in readouts else None
    return HeadMaps(
        stages=stages,
        stage_names=stage_names(len(blocks)),
        attention=attention,
        block_features=features,
        kind=head_kind(name),
        readouts=readouts,
        unavailable=unavailable,
        raw_caveat=caveat,
    )


def image_maps_from_output(
    image_uint8: np.ndarray,
    out: SegmentorOutput,
    seconds: float = 0.0,
    class_names: Sequence[str] = (),
    model: Segmentor | None = None,
) -> ImageMaps:
    """Build :class:`ImageMaps` from a forward pass on ``image_uint8`` ``[H, W, 3]`` (batch item 0).

    ``out.logits_by_head`` must be at the image size (as :meth:`Segmentor.forward` returns them).
    ``model`` (the set that produced ``out``, in eval mode) gives every readout of every head (its
    heads and ``model.fitted_readouts``); without it only ``raw`` is kept. Call under ``no_grad``.
    """
    fitted = getattr(model, "fitted_readouts", None) if model is not None else None
    heads = {
        name: head_maps(name, o, model.heads[name] if model is not None else None, fitted)
        for name, o in out.heads.items()
    }
    pred = {name: _argmax_classes(lg[0]) for name, lg in out.logits_by_head.items()}
    grid = tuple(int(v) for v in out.features.shape[-2:])
    return ImageMaps(
        image=image_uint8,
        heads=heads,
        pred=pred,
        grid=grid,
        seconds=seconds,  # type: ignore[arg-type]
        class_names=tuple(class_names),
    )


@torch.no_grad()
def compute_maps(model: Segmentor, image_uint8: np.ndarray, resize: bool = True) -> ImageMaps:
    """Run the backbone once and every head of ``model`` on one image.

    Args:
        model: a model set (any device; eval mode is used for the pass and restored after).
        image_uint8: ``[H, W, 3]`` uint8 RGB.
        resize: apply the set's test-time keep-ratio resize (``cfg.test_scale``); False runs at the
            native size.

    Returns:
        :class:`ImageMaps` with every array on the CPU as numpy (stages and every available readout
        float32 ``[S, K, h, w]``, pred uint8 ``[H', W']`` at the size the model saw). On CUDA the pass runs under bf16
        autocast and the maps are converted back to float32.
    """
    if image_uint8.dtype != np.uint8 or image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image_uint8.dtype} {image_uint8.shape}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        seen = model.resize_image(image_uint8, scale="config" if resize else None)
        names = model.cfg.class_names()
        with autocast(model.device):  # the head readouts run on the pass's (bf16 on CUDA) maps
            out = model(model.normalize(seen))
            maps = image_maps_from_output(np.ascontiguousarray(seen), out, class_names=names, model=model)
    finally:
        model.train(was_training)
    return ImageMaps(
        image=maps.image,
        heads=maps.heads,
        pred=maps.pred,
        grid=maps.grid,
        seconds=time.perf_counter() - t0,
        class_names=maps.class_names,
    )


# ----------------------------------------------------------------------------- class selection
def resolve_classes(names: Sequence[str], classes: Sequence[str | int]) -> list[int]:
    """Class indices of ``classes`` (names, or indices as ints / digit strings), in the given order,
    duplicates dropped. Names match exactly, else case-insensitively.

    Raises:
        ValueError: an unknown name or an index outside 0..K-1, listing the valid names.
    """
    lower: dict[str, int] = {}
    for i, n in enumerate(names):
        lower.setdefault(n.lower(), i)
    exact = {n: i for i, n in enumerate(names)}
    out: list[int] = []
    bad: list[str] = []
    for c in classes:
        idx: int | None = None
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            idx = int(c) if 0 <= int(c) < len(names) else None
        elif isinstance(c, str):
            s = c.strip()
            if s in exact:
                idx = exact[s]
            elif s.lower() in lower:
                idx = lower[s.lower()]
            elif s.isdigit() and int(s) < len(names):
                idx = int(s)
        if idx is None:
            bad.append(repr(c))
        elif idx not in out:
            out.append(idx)
    if bad:
        shown = ", ".join(names[:40]) + ("" if len(names) <= 40 else f", ... ({len(names)} in all)")
        raise ValueError(f"unknown class {', '.join(bad)}; valid classes: {shown}")
    return out


def select_classes(maps: ImageMaps, head: str, k: int = 4, classes: Sequence[str | int] | None = None) -> list[int]:
    """Which classes (rows) to show.

    Args:
        maps: the image's maps.
        head: whose prediction ranks the classes.
        k: how many classes by default.
        classes: the user's choice (names of ``maps.class_names`` or indices); None or empty ->
            the default.

    Returns:
        Class indices: the user's list in order, or the ``k`` classes with the largest predicted
        area in ``head``'s prediction (ties and classes absent from the prediction ordered by
        their mean output probability on the feature grid).

    Raises:
        ValueError: unknown head, or an unknown class name (the message lists the valid names).
    """
    if head not in maps.heads:
        raise ValueError(f"unknown head {head!r}; this set has {', '.join(maps.heads)}")
    num = maps.heads[head].stages.shape[1]
    if classes:
        return resolve_classes(list(maps.class_names), classes)
    area = np.bincount(maps.pred[head].ravel().astype(np.int64), minlength=num)[:num]
    logits = _tensor(maps.heads[head].stages[-1])
    mean_prob = logits.softmax(0).mean(dim=(1, 2)).numpy()
    order = np.lexsort((np.arange(num), -mean_prob, -area))
    return [int(i) for i in order[: max(0, int(k))]]


# ------------------------------------------------------------------------------------ readouts
def _head(maps: ImageMaps, head: str) -> HeadMaps:
    if head not in maps.heads:
        raise ValueError(f"unknown head {head!r}; this set has {', '.join(maps.heads)}")
    return maps.heads[head]


def _check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")


def readout_problem(maps: ImageMaps, head: str, readout: str) -> str | None:
    """Why ``head`` has no ``readout`` on these maps (a sentence), or None when it has.

    Raises:
        ValueError: an unknown readout or head.
    """
    _check_readout(readout)
    hm = _head(maps, head)
    if readout in hm.readouts:
        return None
    if not hm.readouts and not hm.unavailable:  # built by hand: ``stages`` are the raw maps
        return None if readout == "raw" else NO_MODEL_REASON
    return hm.unavailable.get(readout, f"the {readout} readout was not computed")


def readout_caveat(maps: ImageMaps, head: str, readout: str) -> str | None:
    """The one-line caveat to show with ``head``'s maps read by ``readout`` (the ``raw`` readout of a
    head whose channels are not class-aligned), or None."""
    _check_readout(readout)
    hm = _head(maps, head)
    return hm.raw_caveat if readout == "raw" else None


def readout_stages(maps: ImageMaps, head: str, readout: str = "raw") -> np.ndarray:
    """``[S, K, h, w]`` class scores of every stage of ``head`` read the ``readout`` way (on the grid).

    Raises:
        ValueError: an unknown readout (the message lists :data:`READOUTS`) or head, or a readout
            the head cannot give (the message says why).
    """
    problem = readout_problem(maps, head, readout)
    if problem is not None:
        raise ValueError(f"the {readout} readout of {head} is unavailable: {problem}")
    hm = maps.heads[head]
    return hm.readouts.get(readout, hm.stages)


# ------------------------------------------------------------------------------- normalisation
def _minmax(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    out = (x - lo) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, out, 0.0).astype(np.float32)


def _normalize_one(stack: np.ndarray, mode: str) -> np.ndarray:
    if mode == "per_map":
        lo = stack.min(axis=(-2, -1), keepdims=True)
        hi = stack.max(axis=(-2, -1), keepdims=True)
        return _minmax(stack, lo, hi)
    if mode == "softmax":
        return _tensor(stack).softmax(dim=-3).numpy()
    raise AssertionError(mode)


def normalize_maps(
    maps: np.ndarray | Mapping[str, np.ndarray], mode: str = "shared"
) -> np.ndarray | dict[str, np.ndarray]:
    """Normalise class maps for display; every output lies in [0, 1] (float32, same shapes).

    Args:
        maps: one stack ``[S, K, h, w]`` or a mapping head -> stack (stacks may differ in S).
        mode:
            ``"per_map"``: each ``[h, w]`` map min-max scaled to [0, 1] on its own (shows the
            spatial pattern of every map; values are not comparable between maps).
            ``"shared"``: per class, one min-max over all stages of all the given heads, so a
            class's maps can be compared across blocks and heads (a brighter map has larger raw
            values).
            ``"softmax"``: softmax over the class axis at each stage and pixel, then the class's
            probability: how much a stage's maps, read as logits, favour that class.
            Constant maps (zero range) become 0.

    Returns:
        The same structure as ``maps``.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    single = not isinstance(maps, Mapping)
    stacks: dict[str, np.ndarray] = {"": maps} if single else dict(maps)  # type: ignore[dict-item]
    for name, s in stacks.items():
        if np.ndim(s) != 4:
            raise ValueError(f"maps{'' if single else f'[{name!r}]'} must be [S, K, h, w], got {np.shape(s)}")
    if mode == "shared":
        ks = {np.shape(s)[1] for s in stacks.values()}
        if len(ks) != 1:
            raise ValueError(f"heads have different class counts {sorted(ks)}")
        lo = np.min([np.min(s, axis=(0, 2, 3)) for s in stacks.values()], axis=0)[None, :, None, None]
        hi = np.max([np.max(s, axis=(0, 2, 3)) for s in stacks.values()], axis=0)[None, :, None, None]
        out = {n: _minmax(np.asarray(s, dtype=np.float32), lo, hi) for n, s in stacks.items()}
    else:
        out = {n: _normalize_one(np.asarray(s, dtype=np.float32), mode) for n, s in stacks.items()}
    return out[""] if single else out


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of maps ``[..., h, w]`` to ``[..., H, W]``.

    As :class:`structtoken.Segmentor` does for logits, the whole feature grid (which covers the
    image padded to a multiple of 16) is stretched straight onto ``size``. Returns float32.
    """
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"maps must be [..., h, w], got shape {a.shape}")
    lead = a.shape[:-2]
    t = _tensor(a).reshape(1, -1, *a.shape[-2:])
    out = upsample(t, (int(size[0]), int(size[1])))
    return out.reshape(*lead, int(size[0]), int(size[1])).numpy()


# ------------------------------------------------------------------------------------ attention
def top_channels(
    attention: np.ndarray, class_id: int, k: int = 6, feature_offset: int = 0, min_weight: float = 1e-3
) -> tuple[list[int], list[float]]:
    """The feature channels class ``class_id`` draws on most: at most ``k``, each of weight >= ``min_weight``.

    A saturated softmax puts (nearly) all of a row's weight on one channel; the list then holds that one
    channel, never channels of zero weight in index order.

    Args:
        attention: ``[K, C']`` class x channel attention of one block.
        class_id: the row.
        k: at most this many channels.
        feature_offset: columns before the feature channels (SSE: K token columns), skipped.
        min_weight: channels below this weight are not listed.

    Returns:
        (feature-channel indices counted from the first feature column, their weights), largest
        weight first; possibly fewer than ``k``, possibly empty (all weight on token channels).
    """
    a = np.asarray(attention)
    if a.ndim != 2:
        raise ValueError(f"attention must be [K, C'], got shape {a.shape}")
    if not 0 <= class_id < a.shape[0]:
        raise ValueError(f"class_id {class_id} outside 0..{a.shape[0] - 1}")
    row = a[class_id, feature_offset:].astype(np.float64)
    order = [i for i in np.argsort(-row, kind="stable")[: max(0, int(k))] if row[i] >= min_weight]
    return [int(i) for i in order], [float(row[i]) for i in order]

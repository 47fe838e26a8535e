"""Model configurations: one plain dataclass, validated, and a dict registry of named models.

A :class:`ModelConfig` describes a whole *model set*: one ViT backbone and one or more named heads
that share it (``head`` first, then ``extra_heads``), plus what inference needs (normalisation,
test-time resize rule, sliding-window crop/stride, class names and colours). It round-trips
through JSON (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`), which is how our
checkpoints carry it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

from .errors import StructTokenError, clean, names

HEAD_KINDS = ("cse", "sse", "pwe", "per_pixel", "linear", "fcn", "segmenter")
"""Head architectures. New kinds go at the end: a kind's index seeds its heads' initialisation
(:func:`structtoken.train.seed_head_inits`)."""

HEAD_NAMES: dict[str, tuple[str, bool]] = {
    "cse": ("cse", False),
    "sse": ("sse", False),
    "pwe": ("pwe", False),
    "per_pixel": ("per_pixel", False),
    "per_pixel_ds": ("per_pixel", True),
    "linear": ("linear", False),
    "fcn": ("fcn", False),
    "segmenter": ("segmenter", False),
}
"""Head name -> (kind, deep supervision). A set holds each name at most once. ``linear`` (LN + 1x1 conv)
is the light head used to pre-train a backbone; it is none of the compared heads."""

STRUCTTOKEN_HEADS = ("cse", "sse", "pwe")
PER_PIXEL_HEADS = ("per_pixel", "per_pixel_ds")

PARADIGMS: dict[str, tuple[str, ...]] = {
    "structure prior": STRUCTTOKEN_HEADS,
    "static per-pixel": ("fcn", *PER_PIXEL_HEADS),
    "dynamic per-pixel": ("segmenter",),
}
"""The compared heads by paradigm (Lin et al., arXiv 2203.12612, Fig. 1): StructToken; a static classifier
(``fcn``: capacity-matched; ``per_pixel`` (± deep supervision): the paper's small peer); Segmenter's
dynamic class embeddings."""

COMPARED_HEADS: tuple[str, ...] = tuple(h for heads in PARADIGMS.values() for h in heads)
"""Every compared head name, paradigm by paradigm."""

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


IMAGE_MAX_SIDE = 4096
"""The longest image side the app analyses (``analysis.service.MAX_SIDE``); ``test_scale`` may not enlarge past it."""

BOUNDS: dict[str, tuple[int, int]] = {
    "embed_dim": (1, 4096),
    "depth": (1, 64),
    "num_heads": (1, 64),
    "num_blocks": (1, 32),
    "num_classes": (1, 1024),
    "patch_size": (4, 64),
    "mlp_ratio": (1, 16),
    "image_size": (16, IMAGE_MAX_SIDE),
    "crop_size": (16, IMAGE_MAX_SIDE),
    "stride": (1, IMAGE_MAX_SIDE),
    "test_scale": (16, IMAGE_MAX_SIDE),
}
"""Inclusive range of every integer field (both sides of a pair), checked before anything is allocated.

They cover every released configuration (ViT-T..L: embed_dim 192..1024, depth 12..24, 3..16 heads, 4 blocks,
150 classes, 512..640 px, test_scale up to 2560x640) and the sets trained here (CamVid: 192 wide, depth 8,
5 heads, 11-12 classes, 256 px) with a wide margin (ViT-g is 1536 wide, 40 deep, 24 heads; COCO-stuff has
171 classes), while keeping a config's model small enough to describe before it is built: the largest
allowed backbone (4096 wide, 64 deep) is 13 G parameters, which the load-time memory budget
(:data:`structtoken.checkpoint.MAX_MODEL_BYTES`) then refuses. Sides are at most the image cap,
:data:`IMAGE_MAX_SIDE`, so a checkpoint's ``test_scale`` cannot enlarge an image past it."""

MAX_TEXT = {"name": 200, "description": 2000, "url": 2000, "class name": 200}
"""Longest strings (characters) in a config: they reach the page and the log."""

MAX_CONFIG_JSON = 1 << 20
"""Longest config JSON accepted (bytes; the 150-class ADE20K config is about 9 KB)."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of lists / objects accepted in config JSON (a config needs 3)."""


class ConfigError(StructTokenError):
    """A model configuration that cannot be built; the message says which field and why."""


def _pair(v: Any, name: str = "value") -> tuple[int, int]:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer or a pair of integers, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) for x in v):
        raise ConfigError(f"{name} must be an integer or a pair of integers, got {clean(repr(v), 60)}")
    return (int(v[0]), int(v[1]))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _floats(v: Any, name: str, n: int | None = None) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        raise ConfigError(f"{name} must be a list of {n or 'some'} numbers, got {clean(repr(v), 60)}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise ConfigError(f"{name} must hold finite numbers, got {clean(repr(v), 60)}")
    return tuple(float(x) for x in v)


def _texts(v: Any, name: str, limit: int, max_items: int) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or len(v) > max_items:
        raise ConfigError(f"{name} must be a list of at most {max_items} strings")
    for x in v:
        if not isinstance(x, str) or len(x) > limit:
            raise ConfigError(f"{name} must hold strings of at most {limit} characters, got {clean(repr(x), 40)}")
    return tuple(v)


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # one JSON string (unrolled: no backtracking stack)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON ``text`` (brackets inside strings do not count), without
    recursion, so that a 100,000-deep document is measured instead of overflowing the parser's stack."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_config_json(text: str | bytes, source: str = "the config") -> ModelConfig:
    """A :class:`ModelConfig` from JSON, refusing documents over :data:`MAX_CONFIG_JSON` bytes or nested deeper
    than :data:`MAX_JSON_DEPTH` before parsing them. Raises :class:`ConfigError`."""
    if len(text) > MAX_CONFIG_JSON:
        raise ConfigError(
            f"{source}: config JSON of {len(text):,} bytes is over the limit of {MAX_CONFIG_JSON:,}; "
            "a model config is a few KB: re-save the set with structtoken.save_model"
        )
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{source}: config is not UTF-8 text; re-save the set with structtoken.save_model"
            ) from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ConfigError(
            f"{source}: config JSON is nested {depth} levels deep (a config needs 3, at most {MAX_JSON_DEPTH} "
            "accepted); re-save the set with structtoken.save_model"
        )
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise ConfigError(f"{source}: config is not valid JSON ({clean(e, 80)}); re-save the set") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: config JSON must be an object, got {type(d).__name__}")
    try:
        return ModelConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{source}: invalid model config: {e}") from None


@dataclass
class ModelConfig:
    """Everything needed to build, load and run a model set.

    Architecture (patch 16 ViT + heads):
        head: the primary head name (``cse`` | ``sse`` | ``pwe`` | ``per_pixel`` | ``per_pixel_ds`` | ``fcn`` |
            ``segmenter`` | ``linear``; see :data:`HEAD_NAMES`).
        extra_heads: more head names sharing the same backbone pass.
        embed_dim, depth, num_heads, mlp_ratio: the ViT; ``embed_dim`` is also the heads' channel count C.
        num_blocks: blocks per head (StructToken blocks, residual blocks of the per-pixel baseline, FCN's
            pairs of 3x3 conv-BN-ReLU, Segmenter's transformer layers).
        num_classes: K.
        image_size: the official ``image_h/image_w`` (H, W): the ViT's positional-embedding grid and the
            structure-token grid are ``image_size / 16``.
        stem: ``patch`` (16x16 patchify, as the paper) or ``conv`` (four 3x3 stride-2 conv-BN-ReLU and
            a 1x1 conv, Xiao et al. 2021, "Early convolutions help transformers see better").
        head_vit_blocks: how many of the ``depth`` ViT blocks, counted from the last, every head has a copy of
            its own (``Segmentor.head_vit``): the shared backbone runs the first ``depth - head_vit_blocks``
            blocks and each head's copy continues from there, so a head's features can move in training while
            the shared part stays frozen. 0 (the default): every head reads the shared backbone's last block.
        drop_path_rate / head_drop_path_rate: stochastic depth in backbone / heads (training only).
        exact_attention: True: explicit softmax attention in the ViT (bit-exact with the official code; the
            fidelity tests use it). False (the default, the fast path): fused scaled-dot-product attention,
            faster and within the same 1e-4 tolerance to the official fixtures (tests/test_model.py).
            :meth:`structtoken.Segmentor.set_exact_attention` switches a built set.
    Inference:
        mean, std: per-channel normalisation on the 0-255 RGB scale.
        test_mode: ``whole`` or ``slide``; crop_size / stride: sliding-window geometry (H, W).
        test_scale: keep-ratio resize (long, short) bound applied before inference, or None for native size.
    Metadata: name, classes, palette, url (release URL of the authors' checkpoint), reported_miou
        ((single-scale, multi-scale) as published), description.
    """

    head: str = "sse"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_blocks: int = 4
    num_classes: int = 150
    image_size: tuple[int, int] = (512, 512)
    extra_heads: tuple[str, ...] = ()
    patch_size: int = 16
    mlp_ratio: int = 4
    stem: str = "patch"
    head_vit_blocks: int = 0
    drop_path_rate: float = 0.1
    head_drop_path_rate: float = 0.1
    exact_attention: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_mode: str = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    test_scale: tuple[int, int] | None = None
    name: str = ""
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    url: str | None = None
    reported_miou: tuple[float, float] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size")
        if not isinstance(self.head, str):
            raise ConfigError(f"head must be a head name, got {clean(repr(self.head), 40)}")
        self.extra_heads = _texts(self.extra_heads, "extra_heads", 32, len(HEAD_NAMES))
        self.mean = _floats(self.mean, "mean", 3)
        self.std = _floats(self.std, "std", 3)
        self.classes = _texts(self.classes, "classes", MAX_TEXT["class name"], BOUNDS["num_classes"][1])
        if not isinstance(self.palette, (list, tuple)) or len(self.palette) > BOUNDS["num_classes"][1]:
            raise ConfigError(f"palette must be a list of at most {BOUNDS['num_classes'][1]} RGB triples")
        for p in self.palette:
            if not isinstance(p, (list, tuple)) or len(p) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in p):
                raise ConfigError(f"palette colours must be [r, g, b] in 0..255, got {clean(repr(p), 40)}")
        self.palette = tuple(tuple(int(c) for c in p) for p in self.palette)
        for name in ("crop_size", "stride", "test_scale"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, _pair(v, name))
        if self.reported_miou is not None:
            self.reported_miou = _floats(self.reported_miou, "reported_miou", 2)
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def heads(self) -> tuple[str, ...]:
        """All head names of the set, primary first."""
        return (self.head, *self.extra_heads)

    @property
    def token_grid(self) -> tuple[int, int]:
        """Structure-token grid (h, w) = image_size / patch_size."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that makes the config unbuildable."""
        heads = self.heads
        for h in heads:
            if h not in HEAD_NAMES:
                raise ConfigError(f"unknown head {clean(repr(h), 40)}; choose from {', '.join(HEAD_NAMES)}")
        if len(set(heads)) != len(heads):
            raise ConfigError(f"head names must be unique within a set, got {', '.join(heads)}")
        for name in ("embed_dim", "depth", "num_heads", "num_blocks", "num_classes", "patch_size", "mlp_ratio"):
            v = getattr(self, name)
            lo, hi = BOUNDS[name]
            if not _is_int(v) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {clean(repr(v), 30)}")
        for name in ("image_size", "crop_size", "stride", "test_scale"):
            v = getattr(self, name)
            lo, hi = BOUNDS[name]
            if v is not None and not (lo <= v[0] <= hi and lo <= v[1] <= hi):
                raise ConfigError(f"{name} sides must be in {lo}..{hi} px, got {v[0]}x{v[1]}")
        if not _is_int(self.head_vit_blocks) or not 0 <= self.head_vit_blocks <= self.depth:
            raise ConfigError(f"head_vit_blocks must be in 0..depth ({self.depth}), got {self.head_vit_blocks}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and self.patch_size != 16:
            raise ConfigError("the conv stem downsamples by 16: patch_size must be 16")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size or h < self.patch_size or w < self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} must be a positive multiple of patch_size {self.patch_size}: "
                "the structure-token grid and the feature grid must match (image_size / patch_size), "
                "as SSE and PWE concatenate tokens and features channel-wise"
            )
        if self.test_mode not in ("whole", "slide"):
            raise ConfigError(f"test_mode must be 'whole' or 'slide', got {self.test_mode!r}")
        if self.test_mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ConfigError("test_mode 'slide' needs crop_size and stride")
        if self.stride is not None and min(self.stride) < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need 3 values each, std > 0")
        if self.classes and len(self.classes) != self.num_classes:
            raise ConfigError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
        if self.palette and len(self.palette) != self.num_classes:
            raise ConfigError(f"{len(self.palette)} palette colours given for num_classes={self.num_classes}")
        for name in ("drop_path_rate", "head_drop_path_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1), got {clean(repr(v), 30)}")
        if not isinstance(self.exact_attention, bool):
            raise ConfigError(f"exact_attention must be true or false, got {clean(repr(self.exact_attention), 30)}")
        for name in ("name", "description", "url"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or len(v) > MAX_TEXT[name]):
                raise ConfigError(f"{name} must be a string of at most {MAX_TEXT[name]} characters")
        if not isinstance(self.stem, str) or not isinstance(self.test_mode, str):
            raise ConfigError("stem and test_mode must be strings")

    # -------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error (they would be silently dropped)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {names(unknown)}")
        try:
            return cls(**d)
        except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong kind
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"a config field has a value of the wrong type ({clean(e, 80)})") from None

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        d = asdict(self)
        d.update(changes)
        return ModelConfig(**d)

    def class_names(self) -> tuple[str, ...]:
        """Class names, or ``class 0`` .. ``class K-1`` when none are set."""
        return self.classes or tuple(f"class {i}" for i in range(self.num_classes))

    def class_palette(self) -> tuple[tuple[int, int, int], ...]:
        """Class colours, or a deterministic palette when none are set."""
        if self.palette:
            return self.palette
        import numpy as np

        rng = np.random.default_rng(0)
        return tuple(tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(self.num_classes))


# ---------------------------------------------------------------------- registry
@cache
def _ade20k() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    d = json.loads(resources.files("structtoken.resources").joinpath("ade20k.json").read_text())
    return tuple(d["classes"]), tuple(tuple(p) for p in d["palette"])


@cache
def _released() -> dict[str, ModelConfig]:
    d = json.loads(resources.files("structtoken.resources").joinpath("released_models.json").read_text())
    classes, palette = _ade20k()
    out: dict[str, ModelConfig] = {}
    for m in d["models"]:
        size = m["name"].split("_")[1].upper().replace("VIT", "ViT")
        out[m["name"]] = ModelConfig(
            head=m["head"],
            embed_dim=m["embed_dim"],
            depth=m["depth"],
            num_heads=m["num_heads"],
            num_blocks=m["num_blocks"],
            num_classes=m["num_classes"],
            image_size=m["image_size"],
            mean=m["mean"],
            std=m["std"],
            test_mode=m["test_mode"],
            crop_size=m["crop_size"],
            stride=m["stride"],
            test_scale=m["test_scale"],
            name=m["name"],
            classes=classes,
            palette=palette,
            url=m["url"],
            reported_miou=(m["miou_ss"], m["miou_ms"]),
            description=(
                f"StructToken-{m['head'].upper()} {size} on ADE20K (authors' release; "
                f"{m['miou_ss']:.2f} / {m['miou_ms']:.2f} mIoU ss/ms, {m['num_parameters'] / 1e6:.1f} M params)"
            ),
        )
    return out


RELEASED_MODELS: tuple[str, ...] = tuple(_released())
"""Names of the 11 released checkpoints, e.g. ``cse_vit-t_ade20k`` ... ``sse_vit-l_ade20k``."""

REGISTRY: dict[str, ModelConfig] = dict(_released())
"""Name -> config. The embedded CamVid set registers itself from ``structtoken.assets`` when shipped."""


def get_config(name: str) -> ModelConfig:
    """The registered config called ``name`` (a copy); :class:`ConfigError` lists the known names otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name].replace()


def ade20k_classes() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """ADE20K's 150 class names and palette, in the order of the released models' outputs."""
    return _ade20k()

"""Model configurations: one plain dataclass, validated, and a dict registry of named models.

A :class:`ModelConfig` describes a whole *model set*: one ViT backbone and one or more named heads
that share it (``head`` first, then ``extra_heads``), plus what inference needs (normalisation,
test-time resize rule, sliding-window crop/stride, class names and colours). It round-trips
through JSON (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`), which is how our
checkpoints carry it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

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


class ConfigError(ValueError):
    """A model configuration that cannot be built; the message says which field and why."""


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


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
        self.image_size = _pair(self.image_size)
        self.extra_heads = tuple(self.extra_heads)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.classes = tuple(self.classes)
        self.palette = tuple(tuple(int(c) for c in p) for p in self.palette)
        for name in ("crop_size", "stride", "test_scale"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, _pair(v))
        if self.reported_miou is not None:
            self.reported_miou = tuple(float(v) for v in self.reported_miou)
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
                raise ConfigError(f"unknown head {h!r}; choose from {', '.join(HEAD_NAMES)}")
        if len(set(heads)) != len(heads):
            raise ConfigError(f"head names must be unique within a set, got {heads}")
        for name in ("embed_dim", "depth", "num_heads", "num_classes", "patch_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if not 0 <= self.head_vit_blocks <= self.depth:
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

    # -------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error (they would be silently dropped)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

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

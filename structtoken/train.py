"""Train a model set: the embedded CamVid protocol, or any released configuration end to end.

    # the embedded CamVid set, two stages (see README "Reproduce the embedded set")
    python -m structtoken.train --recipe camvid_stage1 --out ~/.cache/structtoken/runs/stage1
    python -m structtoken.train --recipe camvid_stage2 --init-from ~/.cache/structtoken/runs/stage1/final.safetensors \
        --out ~/.cache/structtoken/runs/stage2
    # the v2 set: seven heads of the three paradigms on the v2 backbone
    python -m structtoken.train --recipe camvid_v2_stage2 \
        --init-from ~/.cache/structtoken/runs/v2_stage1/final.safetensors --out ~/.cache/structtoken/runs/v2_stage2
    # the rest of the v2 programme (block-count ablation, fine-tuned probe, more seeds): scripts/train_v2.sh
    # an official configuration (ADE20K layout, GPUs; one process per GPU)
    torchrun --nproc_per_node 8 -m structtoken.train --recipe ade20k --model sse_vit-b_ade20k --data /data/ade

Recipe: AdamW, poly schedule (power 1) with linear warmup, learning-rate multiplier for the heads,
no weight decay on positional embedding, class token and norms, cross-entropy ignoring the dataset's ignore index on
logits upsampled to the label size (optionally class-weighted from ``classes.json``). The
deep-supervision head ``per_pixel_ds`` adds ``ds_weight`` x cross-entropy of every residual block's
output (default 0.4 each, mmseg's auxiliary-head weight). With ``freeze_backbone`` the backbone runs
once per batch in eval mode without gradients and every head of the set trains on the same batch;
heads are independent (own parameters, own loss, gradient clipping per head), so one run equals
separate runs with identical data, order, schedule and seed. In a set whose heads have ViT blocks of their own
(``ModelConfig.head_vit_blocks``, recipe ``camvid_v2_probe_ft``) only the shared part is frozen: each head's copy
of the last ViT blocks trains with it (backbone learning rate, clipped with its head).

Checkpoints (``ckpt_last.pt``, read back with ``weights_only=True``) hold model, optimizer, iteration
and RNG state; ``--resume`` continues bit-exactly. Logs are JSON lines in ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import statistics
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import load_model, save_model
from .config import HEAD_KINDS, HEAD_NAMES, ModelConfig, get_config
from .data import (
    SeededDataset,
    SegmentationDataset,
    TrainTransform,
    default_camvid_root,
    epoch_order,
    load_dataset_info,
)
from .devices import autocast, resolve_device
from .segmentor import Segmentor, build_model


@dataclass
class TrainConfig:
    """A training run. ``model`` is the set to build (its heads are all trained)."""

    model: ModelConfig
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    batch_size: int = 16
    iters: int = 160_000
    lr: float = 6e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    grad_clip: float | None = None
    class_weights: bool = False
    ds_weight: float = 0.4
    freeze_backbone: bool = False
    photometric: bool = True
    seed: int = 0
    log_interval: int = 50
    ckpt_interval: int = 1000
    eval_interval: int = 0
    num_workers: int = 1
    fused_attention: bool = True
    recipe: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return json.loads(json.dumps(d))


def describe_set(cfg: ModelConfig, what: str = "") -> str:
    """A set's description generated from its config (never fixed text): dataset and classes, the ViT, the
    heads with their block count, and ``what`` (e.g. "block-count ablation") when given."""
    names = {
        "cse": "CSE",
        "sse": "SSE",
        "pwe": "PWE",
        "per_pixel": "per-pixel",
        "per_pixel_ds": "per-pixel + deep supervision",
        "fcn": "FCN",
        "segmenter": "Segmenter",
        "linear": "linear",
    }
    heads = ", ".join(names.get(h, h) for h in cfg.heads)
    stem = "conv stem" if cfg.stem == "conv" else f"{cfg.patch_size}x{cfg.patch_size} patchify"
    own = f"; each head with its own copy of the last {cfg.head_vit_blocks} ViT blocks" if cfg.head_vit_blocks else ""
    text = (
        f"{cfg.name or 'set'} ({cfg.num_classes} classes){': ' + what if what else ''}: ViT {cfg.embed_dim} wide, "
        f"depth {cfg.depth}, {cfg.num_heads} heads, {stem}; heads {heads} ({cfg.num_blocks} blocks){own}"
    )
    return text


def _camvid_model(head: str, extra: tuple[str, ...] = ()) -> ModelConfig:
    info = load_dataset_info(default_camvid_root()) if default_camvid_root().is_dir() else None
    cfg = ModelConfig(
        head=head,
        extra_heads=extra,
        embed_dim=192,
        depth=8,
        num_heads=3,
        num_blocks=4,
        num_classes=11,
        image_size=(256, 256),
        stem="conv",
        drop_path_rate=0.1,
        head_drop_path_rate=0.1,
        test_mode="whole",
        test_scale=(480, 360),
        name="camvid",
        classes=info.classes if info else (),
        palette=info.palette if info else (),
    )
    return cfg.replace(description=describe_set(cfg))


def _camvid_v2_model(head: str, extra: tuple[str, ...] = (), what: str = "set v2") -> ModelConfig:
    """The v2 set: v1's backbone architecture; its description says what it holds (from the config)."""
    cfg = _camvid_model(head, extra)
    return cfg.replace(description=describe_set(cfg, what))


RECIPES = (
    "camvid_stage1",
    "camvid_stage2",
    "camvid_v2_stage1",
    "camvid_v2_stage2",
    "camvid_v2_blocks",
    "camvid_v2_probe_ft",
    "ade20k",
)

V2_STAGE2_HEADS = ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "fcn", "segmenter")
"""The heads of the v2 set: the three paradigms (:data:`structtoken.config.PARADIGMS`)."""

V2_BLOCKS_HEADS = ("cse", "pwe")
"""The heads of the v2 block-count ablation (recipe ``camvid_v2_blocks``, ``--num-blocks N``)."""

V2_PROBE_FT_HEADS = ("per_pixel", "per_pixel_ds")
"""The deep-supervision pair of the v2 probe whose features can move (recipe ``camvid_v2_probe_ft``)."""

V2_PROBE_FT_VIT_BLOCKS = 2
"""ViT blocks (the last ones) each head of ``camvid_v2_probe_ft`` has a trainable copy of."""


RECIPE_SETS = {
    "camvid_v2_stage2": "set v2",
    "camvid_v2_blocks": "set v2, block-count ablation",
    "camvid_v2_probe_ft": "set v2, probe with trainable features",
}
"""Recipe -> what its set is, in the set's generated description (:func:`describe_set`)."""


def recipe(name: str, model: str | None = None) -> TrainConfig:
    """The named recipe (:func:`_recipe`), its name recorded in ``TrainConfig.recipe``."""
    tc = _recipe(name, model)
    tc.recipe = name
    return tc


def _recipe(name: str, model: str | None = None) -> TrainConfig:
    """Named recipes: ``camvid_stage1`` (backbone + linear head from scratch), ``camvid_stage2`` (five
    heads on the frozen stage-1 backbone), ``camvid_v2_stage1`` (the v2 backbone: v1's recipe for
    12,500 iterations, 2.5x), ``camvid_v2_stage2`` (``camvid_stage2`` with the seven heads of
    :data:`V2_STAGE2_HEADS` on the frozen v2 backbone, given with ``--init-from``), ``camvid_v2_blocks``
    (the block-count ablation: ``camvid_v2_stage2`` with :data:`V2_BLOCKS_HEADS` only, 4 blocks unless
    ``--num-blocks`` says otherwise), ``camvid_v2_probe_ft`` (``camvid_v2_stage2`` with
    :data:`V2_PROBE_FT_HEADS`, each with its own trainable copy of the last :data:`V2_PROBE_FT_VIT_BLOCKS`
    ViT blocks, initialised from the stage-1 backbone given with ``--init-from``), ``ade20k`` (an official
    configuration, ``model`` required). The v2 stage-2 recipes share schedule, batches and seeding, so for
    one seed every head sees the same data in the same order."""
    if name == "camvid_v2_blocks":
        tc = recipe("camvid_v2_stage2")
        tc.model = _camvid_v2_model(V2_BLOCKS_HEADS[0], V2_BLOCKS_HEADS[1:], "set v2, block-count ablation")
        return tc
    if name == "camvid_v2_probe_ft":
        tc = recipe("camvid_v2_stage2")
        model = _camvid_v2_model(V2_PROBE_FT_HEADS[0], V2_PROBE_FT_HEADS[1:]).replace(
            head_vit_blocks=V2_PROBE_FT_VIT_BLOCKS
        )
        tc.model = model.replace(description=describe_set(model, "set v2, probe with trainable features"))
        return tc
    if name == "camvid_v2_stage2":
        tc = recipe("camvid_stage2")
        tc.model = _camvid_v2_model(V2_STAGE2_HEADS[0], V2_STAGE2_HEADS[1:])
        return tc
    if name == "camvid_v2_stage1":
        tc = recipe("camvid_stage1")
        tc.model = _camvid_v2_model("linear")
        tc.iters = 12_500
        tc.warmup_iters = 625
        return tc
    if name == "camvid_stage1":
        return TrainConfig(
            model=_camvid_model("linear"),
            crop_size=(256, 256),
            scale=(480, 360),
            batch_size=8,
            iters=5000,
            lr=1e-3,
            head_lr_mult=1.0,
            weight_decay=0.05,
            warmup_iters=250,
            grad_clip=1.0,
            class_weights=True,
            seed=0,
            ckpt_interval=500,
            eval_interval=0,
        )
    if name == "camvid_stage2":
        return TrainConfig(
            model=_camvid_model("cse", ("sse", "pwe", "per_pixel", "per_pixel_ds")),
            crop_size=(256, 256),
            scale=(480, 360),
            batch_size=8,
            iters=1200,
            lr=1e-3,
            head_lr_mult=1.0,
            weight_decay=0.01,
            warmup_iters=60,
            grad_clip=1.0,
            class_weights=True,
            freeze_backbone=True,
            seed=0,
            ckpt_interval=200,
            eval_interval=0,
        )
    if name == "ade20k":
        if model is None:
            raise ValueError("recipe 'ade20k' needs --model (one of the released configuration names)")
        cfg = get_config(model)
        crop = cfg.image_size
        return TrainConfig(
            model=cfg,
            crop_size=crop,
            scale=(4 * crop[1], crop[1]),
            batch_size=16,
            iters=160_000,
            lr=2e-5,
            head_lr_mult=9.0,
            weight_decay=0.01,
            warmup_iters=1500,
        )
    raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")


# ----------------------------------------------------------------------------- pieces
def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Where a run's saved training config and the current one disagree, as ``"key: saved -> current"``.

    Keys the saved config lacks are fields added to the code since the run started; they do not stop a
    resume (their defaults describe what the run did). A changed or removed value does.
    """
    out = []
    for key, old in saved.items():
        if key not in current:
            out.append(f"{prefix}{key}: removed")
        elif isinstance(old, dict) and isinstance(current[key], dict):
            out.extend(config_differences(old, current[key], f"{prefix}{key}."))
        elif old != current[key]:
            out.append(f"{prefix}{key}: {old!r} -> {current[key]!r}")
    return out


def lr_factor(it: int, tc: TrainConfig) -> float:
    """mmcv poly schedule with linear warmup, as a multiple of the base learning rate."""
    poly = (1 - it / tc.iters) ** tc.poly_power
    factor = (1 - tc.min_lr / tc.lr) * poly + tc.min_lr / tc.lr
    if it < tc.warmup_iters:
        factor *= 1 - (1 - it / tc.warmup_iters) * (1 - tc.warmup_ratio)
    return factor


def param_groups(model: Segmentor, tc: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: heads get ``head_lr_mult``; no decay for pos_embed, cls_token, norms and 1-D params.
    A head's own ViT blocks (``head_vit.*``) are backbone blocks: the base learning rate."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("heads.")
        no_decay = p.ndim == 1 or any(s in name for s in ("pos_embed", "cls_token", "norm", ".tokens"))
        groups.setdefault((is_head, no_decay), []).append(p)
    return [
        {
            "params": ps,
            "lr": tc.lr * (tc.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else tc.weight_decay,
            "base_lr": tc.lr * (tc.head_lr_mult if is_head else 1.0),
        }
        for (is_head, no_decay), ps in sorted(groups.items())
    ]


def seg_loss(
    logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, ignore_index: int = 255
) -> torch.Tensor:
    """Cross-entropy of logits [B, K, h, w], upsampled bilinearly to the label size [B, H, W]; pixels
    labelled ``ignore_index`` (the dataset's ``DatasetInfo.ignore_index``) do not count."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index)


def head_losses(
    model: Segmentor,
    features: torch.Tensor | Mapping[str, torch.Tensor],
    label: torch.Tensor,
    weight: torch.Tensor | None,
    tc: TrainConfig,
    ignore_index: int = 255,
    rng_seeds: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Loss per head (deep-supervision terms included) for one batch of backbone features [B, C, h, w]: one map
    for every head, or head name -> that head's map (:meth:`Segmentor.head_features`); labels [B, H, W].
    With ``rng_seeds`` (head name -> seed, :func:`head_rng_seed`) each head's forward draws its random numbers
    (drop-path masks, dropout) from a stream of its own, so a head trains the same whichever heads share the run."""
    losses = {}
    for name, head in model.heads.items():
        with head_rng(rng_seeds.get(name) if rng_seeds else None, next(head.parameters()).device):
            out = head(features if isinstance(features, torch.Tensor) else features[name])
        loss = seg_loss(out.logits, label, weight, ignore_index)
        for aux in out.aux_logits:
            loss = loss + tc.ds_weight * seg_loss(aux, label, weight, ignore_index)
        losses[name] = loss
    return losses


def head_rng_seed(seed: int, head: str, iteration: int) -> int:
    """The seed of head ``head``'s random stream at ``iteration`` of a run seeded ``seed``: a function of the
    three only (CRC-32 of the name), so it does not depend on the other heads of the run nor on resuming."""
    return (seed * 1_000_003 + zlib.crc32(head.encode()) * 100_003 + iteration) % (2**63 - 1)


@contextlib.contextmanager
def head_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block under torch's RNG seeded with ``seed`` (CPU, and ``device`` when it is a GPU), restoring
    the global RNG state afterwards; nothing when ``seed`` is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def seed_head_inits(model: Segmentor, seed: int) -> None:
    """Re-initialise every compared head from a seed of its own, derived from (seed, head kind).

    Heads of the same kind (``per_pixel`` and ``per_pixel_ds``) thus start from identical weights, and a
    head's start does not depend on which other heads share the set. A head with an ``init_weights``
    method (``fcn``, ``segmenter``) uses it; the others reset every submodule and redraw their structure
    tokens. The light ``linear`` pre-training head keeps the initialisation it was built with. The global
    RNG is reset to ``seed`` afterwards.
    """
    for name, head in model.heads.items():
        kind = HEAD_NAMES[name][0]
        if kind == "linear":
            continue
        torch.manual_seed(seed * 1000 + HEAD_KINDS.index(kind))
        if hasattr(head, "init_weights"):
            head.init_weights()
            continue
        for m in head.modules():
            if m is not head and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if hasattr(head, "tokens"):
            nn.init.trunc_normal_(head.tokens, std=0.02)
    torch.manual_seed(seed)


def init_source_key(key: str, cfg: ModelConfig) -> str | None:
    """Where ``--init-from`` takes state-dict entry ``key`` of a set built from ``cfg``: the same key of the
    source for ``backbone.*``; for head ``h``'s own ViT block ``i`` (``head_vit.<h>.blocks.<i>.*``) the
    source's backbone block ``depth - cfg.head_vit_blocks + i``; None for the heads (seeded initialisation).

    >>> init_source_key("head_vit.per_pixel.blocks.1.attn.qkv.weight", ModelConfig(depth=8, head_vit_blocks=2))
    'backbone.blocks.7.attn.qkv.weight'
    """
    if key.startswith("backbone."):
        return key
    m = re.fullmatch(r"head_vit\.[^.]+\.blocks\.(\d+)\.(.+)", key)
    if m:
        return f"backbone.blocks.{cfg.depth - cfg.head_vit_blocks + int(m[1])}.{m[2]}"
    return None


REPO_ROOT = Path(__file__).resolve().parent.parent


def display_path(path: str | Path) -> str:
    """``path`` as a shipped file may name it: relative to the repository when inside it, else its base name
    (no machine paths in results)."""
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return p.name


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding the code (dirty: uncommitted
    changes under ``structtoken/`` or ``scripts/``, what a run executes)."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "structtoken", "scripts"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def run_provenance(tc: TrainConfig, init_from: str | None) -> dict[str, Any]:
    """Where a run comes from: recipe, seed, the ``--init-from`` file (repository-relative or base name) with its
    sha256 and the backbone origin it carries, git commit, torch and Python versions."""
    import platform

    prov: dict[str, Any] = {
        "recipe": tc.recipe,
        "seed": tc.seed,
        "heads": list(tc.model.heads),
        "git": git_state(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "init_from": None,
        "backbone": {"origin": "trained in this run"},
    }
    if init_from:
        from .checkpoint import file_sha256, read_metadata

        digest = file_sha256(init_from)
        prov["init_from"] = {"file": display_path(init_from), "sha256": digest}
        try:
            carried = json.loads(read_metadata(init_from).get("provenance", "{}")).get("backbone")
        except (ValueError, AttributeError):
            carried = None
        prov["backbone"] = carried or {"origin": "copied from init_from", **prov["init_from"]}
        prov["backbone"].setdefault("copied_from", prov["init_from"])
    return prov


def run_timing(log_path: Path) -> dict[str, Any]:
    """Wall time of the training loop and median seconds per iteration from a run's ``log.jsonl`` (the
    ``interval_s`` / ``interval_iters`` of its records; summed over resumed processes)."""
    wall, rates = 0.0, []
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "interval_s" in rec and rec.get("interval_iters"):
                wall += rec["interval_s"]
                rates.append(rec["interval_s"] / rec["interval_iters"])
    median = statistics.median(rates) if rates else None
    return {"train_wall_s": round(wall, 3), "median_s_per_iter": round(median, 4) if median else None}


def sync_from_rank0(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` (parameters, buffers) on every rank with rank 0's (torch.distributed)."""
    for t in tensors:
        torch.distributed.broadcast(t.data, src=0)


def average_gradients(params: Iterable[nn.Parameter], world: int) -> None:
    """Mean of every gradient over the ``world`` ranks, in one flat all-reduce (what
    DistributedDataParallel does in backward; done explicitly because the step calls the backbone and
    the heads separately, not through one wrapped ``forward``). Every rank holds gradients for the same
    parameters (same heads, same graph)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class Trainer:
    """Owns model, optimizer, data and the loop; ``run()`` trains to ``tc.iters``. Under torchrun
    (``WORLD_SIZE`` > 1) every rank reads its share of each epoch and gradients are averaged over
    the ranks after every backward (:func:`average_gradients`); BatchNorm statistics stay per rank and
    rank 0's are saved."""

    def __init__(
        self,
        tc: TrainConfig,
        data_root: Path,
        out_dir: Path,
        device: torch.device,
        init_from: str | None = None,
        progress: bool = True,
    ) -> None:
        self.tc, self.out, self.device, self.progress = tc, out_dir, device, progress
        self.init_from = init_from
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(tc.seed)
        self.model = build_model(tc.model)
        seed_head_inits(self.model, tc.seed)
        if init_from:
            self._init_from(init_from)
        self.model.to(device)
        self.model.set_vit_attention(not tc.fused_attention)
        if tc.freeze_backbone:
            self.model.backbone.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, tc), lr=tc.lr, betas=(0.9, 0.999))
        if self.world > 1:  # every rank starts from rank 0's weights (as DistributedDataParallel would)
            sync_from_rank0(self.model.state_dict().values())
        info = load_dataset_info(data_root)
        self.ignore_index = info.ignore_index
        self.weight = (
            torch.tensor(info.class_weights, dtype=torch.float32, device=device)
            if tc.class_weights and info.class_weights
            else None
        )
        transform = TrainTransform(
            crop_size=tc.crop_size,
            scale=tc.scale,
            photometric=tc.photometric,
            mean=tc.model.mean,
            std=tc.model.std,
            ignore_index=info.ignore_index,  # padding and the crop's class check use the dataset's ignore
        )
        self.dataset = SeededDataset(SegmentationDataset(data_root, "train"), transform, seed=tc.seed)
        self.iters_per_epoch = len(self.dataset) // (tc.batch_size * self.world)
        if self.iters_per_epoch < 1:
            raise ValueError(f"{len(self.dataset)} training images are fewer than one batch of {tc.batch_size}")
        self.val = SegmentationDataset(data_root, "val") if (data_root / "val").is_dir() else None
        self.it = 0

    def _init_from(self, path: str) -> None:
        """Copy the backbone (every ``backbone.*`` tensor) from one of our checkpoints: a stage-1 run or a set.

        Only the backbone: the heads keep their seeded initialisation (:func:`seed_head_inits`), so
        starting from a trained set (whose heads share names with ours) still trains fresh heads. Heads with
        ViT blocks of their own get copies of the source's last blocks (:func:`init_source_key`), so the
        source must hold the full-depth backbone.
        """
        src = load_model(path).state_dict()
        own = self.model.state_dict()
        source = {k: s for k in own if (s := init_source_key(k, self.tc.model)) is not None}
        bad = [s for k, s in source.items() if s not in src or src[s].shape != own[k].shape]
        if bad:
            raise ValueError(f"{path}: backbone does not fit this configuration ({len(bad)} keys, e.g. {bad[0]})")
        self.model.load_state_dict({k: src[source[k]].to(v.dtype) if k in source else v for k, v in own.items()})

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: Path) -> None:
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "iteration": self.it,
                "torch_rng": torch.get_rng_state(),
                "train_config": self.tc.to_dict(),
            },
            path,
        )

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        diff = config_differences(state["train_config"], self.tc.to_dict())
        if diff:
            raise ValueError(
                f"{path} was written by another training configuration ({'; '.join(diff[:3])}); use another --out"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.it = int(state["iteration"])

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        order = epoch_order(len(self.dataset), self.tc.seed, epoch)
        per = self.tc.batch_size
        order = (
            order[self.rank * per * self.iters_per_epoch :][: per * self.iters_per_epoch] if self.world > 1 else order
        )
        order = order[start_batch * per :]
        return DataLoader(
            self.dataset,
            batch_size=per,
            sampler=order,
            drop_last=True,
            num_workers=self.tc.num_workers,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.tc.seed),
        )

    # ------------------------------------------------------------------------- loop
    def step(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        tc, model = self.tc, self.model
        factor = lr_factor(self.it, tc)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        image, label = image.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)
        with autocast(self.device):
            if tc.freeze_backbone:  # the shared backbone; heads' own ViT blocks (head_vit) train with their heads
                model.backbone.eval()
                model.head_vit.train()
                model.heads.train()
                with torch.no_grad():
                    tokens, grid = model.backbone.forward_tokens(image)
            else:
                model.train()
                tokens, grid = model.backbone.forward_tokens(image)
            features = model.head_features(tokens, grid)  # head -> [B, C, h, w]
            seeds = {name: head_rng_seed(tc.seed, name, self.it) for name in model.heads}
            losses = head_losses(model, features, label, self.weight, tc, self.ignore_index, seeds)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.world > 1:
            average_gradients(model.parameters(), self.world)
        if tc.grad_clip:
            if tc.freeze_backbone:  # per head (with its own ViT blocks): heads stay independent
                for name in model.heads:
                    nn.utils.clip_grad_norm_(list(model.head_parameters(name)), tc.grad_clip)
            else:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.it += 1
        return {f"loss/{k}": float(v.detach()) for k, v in losses.items()} | {"lr": tc.lr * factor}

    def evaluate(self) -> dict[str, Any]:
        from .evaluate import evaluate_model

        self.model.set_vit_attention(True)
        res = evaluate_model(self.model, self.val, progress=False)
        self.model.set_vit_attention(not self.tc.fused_attention)
        return {f"val_miou/{h}": round(m["miou"], 4) for h, m in res["heads"].items()}

    def run(self, resume: bool = False, stop_at: int | None = None) -> Path | None:
        """Train to ``tc.iters`` (returns final.safetensors) or pause after ``stop_at`` (checkpointed; returns None)."""
        tc = self.tc
        stop = min(stop_at or tc.iters, tc.iters)
        ckpt = self.out / "ckpt_last.pt"
        if resume and ckpt.is_file():
            self.resume(ckpt)
            print(f"resumed from {ckpt} at iteration {self.it}", file=sys.stderr)
        prov = run_provenance(tc, self.init_from)
        config_file = self.out / "train_config.json"
        config_file.write_text(json.dumps({**tc.to_dict(), "provenance": prov}, indent=1))
        log = open(self.out / "log.jsonl", "a")  # noqa: SIM115 - closed on every exit path below
        bar = tqdm(total=tc.iters, initial=self.it, desc="train", disable=not self.progress or self.rank != 0)
        t0, seen0 = time.perf_counter(), self.it
        t_last, it_last = t0, self.it
        while self.it < stop:
            epoch, start = divmod(self.it, self.iters_per_epoch)
            for batch in self._loader(epoch, start):
                stats = self.step(batch["image"], batch["label"])
                bar.update(1)
                if self.rank == 0 and (self.it % tc.log_interval == 0 or self.it == tc.iters):
                    rate = (self.it - seen0) * tc.batch_size * self.world / (time.perf_counter() - t0)
                    rec = {
                        "iter": self.it,
                        "epoch": epoch,
                        **{k: round(v, 5) for k, v in stats.items()},
                        "images_per_s": round(rate, 2),
                        "elapsed_s": round(time.perf_counter() - t0, 1),
                        "interval_s": round(time.perf_counter() - t_last, 3),
                        "interval_iters": self.it - it_last,
                    }
                    t_last, it_last = time.perf_counter(), self.it
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{sum(v for k, v in stats.items() if k.startswith('loss')):.3f}")
                if self.rank == 0 and tc.eval_interval and self.val and self.it % tc.eval_interval == 0:
                    log.write(json.dumps({"iter": self.it, **self.evaluate()}) + "\n")
                    log.flush()
                if self.rank == 0 and (self.it % tc.ckpt_interval == 0 or self.it in (tc.iters, stop)):
                    self.save(ckpt)
                if self.it >= stop:
                    break
        bar.close()
        if self.it < tc.iters:
            log.close()
            return None
        final = self.out / "final.safetensors"
        if self.rank == 0:
            prov |= {"iterations": self.it, **run_timing(self.out / "log.jsonl")}
            config_file.write_text(json.dumps({**tc.to_dict(), "provenance": prov}, indent=1))
            meta = {"train_config": json.dumps(tc.to_dict()), "provenance": json.dumps(prov)}
            save_model(self.model, final, metadata=meta)
            if self.val is not None:
                log.write(json.dumps({"iter": self.it, "final": True, **self.evaluate()}) + "\n")
        log.close()
        return final


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m structtoken.train``."""
    p = argparse.ArgumentParser(prog="python -m structtoken.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, choices=RECIPES)
    p.add_argument("--model", default=None, help="registry name (recipe ade20k)")
    p.add_argument("--data", default=None, help="dataset root (default: $STRUCTTOKEN_CAMVID or ../shared/data/camvid)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, final.safetensors)")
    p.add_argument(
        "--init-from", default=None, help="our .safetensors whose backbone (and matching heads) to start from"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt_last.pt")
    p.add_argument("--stop-at", type=int, default=None, help="pause after this iteration (resume later with --resume)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--heads", nargs="*", default=None, help="train only these heads of the set")
    p.add_argument(
        "--num-blocks", type=int, default=None, help="blocks per head (ModelConfig.num_blocks; recipe camvid_v2_blocks)"
    )
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe named on the command line with its overrides applied; ``ValueError`` (or
    :class:`~structtoken.config.ConfigError`) names a bad value. Reads no data and builds no model."""
    tc = recipe(args.recipe, args.model)
    for field_name, value in (
        ("iters", args.iters),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("seed", args.seed),
        ("eval_interval", args.eval_interval),
        ("num_workers", args.num_workers),
    ):
        if value is not None:
            setattr(tc, field_name, value)
    if args.heads:
        unknown = [h for h in args.heads if h not in HEAD_NAMES]
        if unknown:
            raise ValueError(f"unknown head(s) {unknown}; choose from {', '.join(HEAD_NAMES)}")
        tc.model = tc.model.replace(head=args.heads[0], extra_heads=tuple(args.heads[1:]))
    if args.num_blocks is not None:
        tc.model = tc.model.replace(num_blocks=args.num_blocks)
    if tc.model.name == "camvid" and (args.heads or args.num_blocks is not None):
        tc.model = tc.model.replace(description=describe_set(tc.model, RECIPE_SETS.get(args.recipe, "")))
    if tc.warmup_iters > tc.iters:
        tc.warmup_iters = max(1, tc.iters // 20)
    tc.ckpt_interval = min(tc.ckpt_interval, tc.iters)
    return tc


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tc = train_config_from_args(args)
    except ValueError as e:  # ConfigError included
        p.error(str(e))
    data_root = Path(args.data) if args.data else default_camvid_root()
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:  # "--device cuda" without a GPU, an unknown device string
        p.error(str(e))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    try:
        trainer = Trainer(tc, data_root, Path(args.out).expanduser(), device, args.init_from)
        final = trainer.run(resume=args.resume, stop_at=args.stop_at)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {final}" if final else f"paused at iteration {trainer.it}; continue with --resume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

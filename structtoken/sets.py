"""Model sets from parts: the heads of a training run saved on their own, and a set assembled from a backbone
file and such head files.

A stage-2 run trains heads on a frozen backbone, so what it adds is its heads. :func:`save_heads` writes them
(every ``heads.<name>.*`` and ``head_vit.<name>.*`` tensor, float16 by default) as safetensors with the run's
config and provenance in the metadata; :func:`assemble_set` builds one set from a backbone file (any of our sets,
e.g. the shipped one) and several head files trained on that very backbone (checked by its sha256), in the order
given, with the fitted readouts of every part merged beside it.

    python -m structtoken.sets assemble --backbone assets/camvid/camvid_set.safetensors \
        --heads assets/camvid/v2/heads/A.safetensors assets/camvid/v2/heads/B.safetensors \
        --out assets/camvid/camvid_set_v2.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import file_sha256, load_model, read_metadata, save_model
from .config import ModelConfig
from .errors import StructTokenError
from .readouts import FittedReadouts, readouts_path
from .segmentor import Segmentor, build_model

HEADS_KEY = "structtoken_heads"
"""Metadata key of a head file: JSON ``{"config", "heads", "provenance"}``."""


class SetAssemblyError(StructTokenError):
    """Parts that do not make one set; the message says which file and why."""


def _own_keys(key: str, heads: Sequence[str]) -> bool:
    return any(key.startswith(f"heads.{h}.") or key.startswith(f"head_vit.{h}.") for h in heads)


def save_heads(
    model: Segmentor,
    path: str | Path,
    provenance: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    heads: Sequence[str] | None = None,
) -> Path:
    """Write the heads of ``model`` (all, or ``heads``; no backbone) to ``path``: floating tensors as ``dtype``,
    the config of a set of just those heads and ``provenance`` (where the run and its backbone came from) in the
    metadata. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heads = list(heads or model.cfg.heads)
    unknown = [h for h in heads if h not in model.cfg.heads]
    if unknown:
        raise SetAssemblyError(f"heads {unknown} are not in the set ({', '.join(model.cfg.heads)})")
    cfg = model.cfg.replace(head=heads[0], extra_heads=tuple(heads[1:]))
    tensors = {}
    for k, v in model.state_dict().items():
        if _own_keys(k, heads):
            v = v.detach().cpu()
            tensors[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
    meta = {"config": cfg.to_dict(), "heads": heads, "provenance": provenance or {}}
    save_file(tensors, str(path), metadata={HEADS_KEY: json.dumps(meta)})
    return path


def read_heads(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata (``config``, ``heads``, ``provenance``) of a file written by :func:`save_heads`."""
    meta_raw = read_metadata(path)
    if HEADS_KEY not in meta_raw:
        raise SetAssemblyError(f"{Path(path).name}: not a head file (no {HEADS_KEY!r} metadata)")
    return load_file(str(path)), json.loads(meta_raw[HEADS_KEY])


def backbone_digest(path: str | Path) -> tuple[str, str]:
    """(file name, sha256) identifying the backbone of the set file ``path``: the backbone file an assembled set
    records in its provenance (its backbone was copied from there unchanged), else the set file itself. Head files
    record the same pair for the backbone they were trained on, so a set assembled from a backbone file can
    serve as the backbone of later assemblies and probes."""
    path = Path(path)
    try:
        carried = json.loads(read_metadata(path).get("provenance") or "{}").get("backbone") or {}
    except (ValueError, AttributeError):
        carried = {}
    if isinstance(carried, dict) and isinstance(carried.get("sha256"), str):
        return str(carried.get("file") or path.name), carried["sha256"]
    return path.name, file_sha256(path)


def _check_trained_on(head_file: str | Path, meta: dict[str, Any], backbone: str | Path, digest: str) -> None:
    origin = ((meta.get("provenance") or {}).get("backbone") or {}).get("sha256")
    if origin != digest:
        raise SetAssemblyError(
            f"{Path(head_file).name}: its heads were trained on backbone {str(origin)[:12]}, not on "
            f"{Path(backbone).name}'s ({digest[:12]})"
        )


def assemble_set(
    backbone: str | Path,
    head_files: Sequence[str | Path],
    out: str | Path,
    dtype: torch.dtype = torch.float16,
    description: str | None = None,
) -> Segmentor:
    """One set: the backbone of the set file ``backbone`` and the heads of ``head_files`` (in that order),
    written to ``out`` (``dtype`` storage) with the parts' fitted readouts merged beside it
    (``<out stem>.readouts.safetensors``) when every part has one. Every head file must record, in its
    provenance, the backbone ``backbone`` carries (:func:`backbone_digest`: it was trained on it); configs must
    agree on everything but the heads. ``out`` may be ``backbone`` itself (it is read first). Returns the
    assembled model."""
    backbone_file, digest = backbone_digest(backbone)
    base = load_model(backbone, readouts=False)
    cfgs: list[ModelConfig] = []
    states: list[dict[str, torch.Tensor]] = []
    provs = []
    for f in head_files:
        tensors, meta = read_heads(f)
        _check_trained_on(f, meta, backbone, digest)
        prov = meta.get("provenance") or {}
        cfgs.append(ModelConfig.from_dict(meta["config"]))
        states.append(tensors)
        provs.append({"file": Path(f).name, "sha256": file_sha256(f), "heads": meta["heads"], **prov})
    names = [h for c in cfgs for h in c.heads]
    if len(set(names)) != len(names):
        raise SetAssemblyError(f"a head is given twice among {names}")
    first = cfgs[0]
    for f, c in zip(head_files, cfgs, strict=True):
        if c.replace(head=first.head, extra_heads=first.extra_heads, description="") != first.replace(description=""):
            raise SetAssemblyError(f"{Path(f).name}: its set config differs from the first head file's beyond heads")
    cfg = first.replace(head=names[0], extra_heads=tuple(names[1:]))
    if description is not None:
        cfg = cfg.replace(description=description)
    model = build_model(cfg)
    state = model.state_dict()
    base_state = base.state_dict()
    for k in state:
        if k.startswith("backbone."):
            state[k] = base_state[k].to(state[k].dtype)
    for tensors in states:
        for k, v in tensors.items():
            state[k] = v.to(state[k].dtype)
    model.load_state_dict(state)
    parts = []
    for f in head_files:
        rp = readouts_path(f)
        if not rp.is_file():
            parts = []
            break
        parts.append(FittedReadouts.load(rp))
    meta = {
        "provenance": json.dumps({"backbone": {"file": backbone_file, "sha256": digest}, "parts": provs}),
        "storage": f"{str(dtype).removeprefix('torch.')} (heads trained in float32 on a frozen backbone)",
    }
    save_model(model, out, dtype=dtype, metadata=meta)
    if parts:
        lenses = {h: v for p in parts for h, v in p.lenses.items()}
        merged_meta = dict(parts[0].metadata)
        merged_meta["heads"] = {h: v for p in parts for h, v in (p.metadata.get("heads") or {}).items()}
        merged_meta["set_file"] = Path(out).name
        merged_meta["merged_from"] = [p.path.name for p in parts if p.path is not None]
        FittedReadouts(lenses=lenses, metadata=merged_meta).save(readouts_path(out))
    elif readouts_path(out).is_file():  # a readout file of what was there before would not fit these heads
        readouts_path(out).unlink()
    return load_model(out)


@dataclass
class HeadGroup:
    """Heads of one head file, built and loaded on their own (no backbone), to run on a set's backbone features.

    Attributes:
        file: the head file's name; seed: the training seed its provenance records (None when it records none);
        cfg: the config of a set of just these heads; heads: name -> head module (eval mode, float32).
    """

    file: str
    seed: int | None
    cfg: ModelConfig
    heads: dict[str, torch.nn.Module]


def load_head_group(path: str | Path, backbone: str | Path | None = None) -> HeadGroup:
    """The heads of the head file ``path`` (:func:`save_heads`) as modules. With ``backbone`` (a set file), the
    file must record that set's backbone (:func:`backbone_digest`). Heads with ViT blocks of their own
    (``head_vit``) are refused: they need more than the shared backbone map. Raises :class:`SetAssemblyError`."""
    from .heads import build_head

    tensors, meta = read_heads(path)
    if backbone is not None:
        _check_trained_on(path, meta, backbone, backbone_digest(backbone)[1])
    cfg = ModelConfig.from_dict(meta["config"])
    if cfg.head_vit_blocks:
        raise SetAssemblyError(f"{Path(path).name}: its heads have ViT blocks of their own; load it as a set instead")
    heads = {}
    for name in cfg.heads:
        head = build_head(name, cfg)
        prefix = f"heads.{name}."
        own = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = head.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise SetAssemblyError(
                f"{Path(path).name}: head {name!r} does not fit its config (missing {list(missing)[:3]}, "
                f"unexpected {list(unexpected)[:3]})"
            )
        heads[name] = head.eval()
    seed = (meta.get("provenance") or {}).get("seed")
    return HeadGroup(Path(path).name, seed if isinstance(seed, int) else None, cfg, heads)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m structtoken.sets assemble ...``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m structtoken.sets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="a set from a backbone set file and head files")
    a.add_argument("--backbone", required=True)
    a.add_argument("--heads", nargs="+", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--description", default=None, help="the set's description (default: built from its config)")
    args = p.parse_args(argv)
    try:
        model = assemble_set(args.backbone, args.heads, args.out, description=args.description)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB): heads {', '.join(model.cfg.heads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

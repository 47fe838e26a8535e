"""Checkpoints: the authors' mmseg files, our own safetensors format, and fetching released weights.

* :func:`convert_official_state_dict` renames an official StructToken state dict
  (``backbone.*`` / ``decode_head.*``, mmseg 0.20.2 names) to ours through tables of regex rules,
  in the manner of timm's ``checkpoint_filter_fn``; every key must match a rule.
* :func:`load_state_dict_strict` loads and names every missing, unexpected and mis-shaped key.
* Our format is safetensors with the :class:`~structtoken.config.ModelConfig` as JSON in the file's
  metadata, so the file alone rebuilds the model (:func:`save_model` / :func:`load_model`).
* :func:`fetch_checkpoint` downloads a released checkpoint into a cache with a progress bar and
  resume, and says exactly what to do when there is no network.
* A set file may have fitted readouts beside it (``<stem>.readouts.safetensors``, see
  :mod:`structtoken.readouts`); :func:`load_model` attaches them as ``model.fitted_readouts``.
* Pickles are only ever read with ``torch.load(weights_only=True)``; one that needs anything beyond
  tensors, containers and numpy scalars is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .config import REGISTRY, ConfigError, ModelConfig, get_config
from .readouts import READOUTS_SUFFIX, FittedReadouts, ReadoutError, readouts_path
from .segmentor import Segmentor, build_model

FORMAT_KEY = "structtoken_config"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class CheckpointUnavailable(CheckpointError):
    """A released checkpoint that is not cached and cannot be downloaded (e.g. offline)."""


# --------------------------------------------------------------------------- official -> ours
_BACKBONE_RULES: list[tuple[str, str]] = [
    (r"^backbone\.cls_token$", "backbone.cls_token"),
    (r"^backbone\.pos_embed$", "backbone.pos_embed"),
    (r"^backbone\.patch_embed\.projection\.(weight|bias)$", r"backbone.patch_embed.proj.\1"),
    (r"^backbone\.layers\.(\d+)\.ln1\.(weight|bias)$", r"backbone.blocks.\1.norm1.\2"),
    (r"^backbone\.layers\.(\d+)\.ln2\.(weight|bias)$", r"backbone.blocks.\1.norm2.\2"),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$", r"backbone.blocks.\1.attn.qkv.\2"),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)$", r"backbone.blocks.\1.attn.proj.\2"),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)$", r"backbone.blocks.\1.mlp.fc1.\2"),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)$", r"backbone.blocks.\1.mlp.fc2.\2"),
]
_HEAD_COMMON_RULES: list[tuple[str, str]] = [
    (r"^decode_head\.kernels$", "{h}.tokens"),
    (r"^decode_head\.dec_proj\.(weight|bias)$", r"{h}.proj.\1"),
    (r"^decode_head\.residual_block\.((?:norm|conv)[12]\.(?:weight|bias))$", r"{h}.residual.\1"),
]
_DW = r"((?:query_map|key_map|value_map|out_project)\.(?:conv|norm)[123]\.(?:weight|bias))"
_FFN = r"((?:pwconv1|pwconv2|dwconv|norm1|norm2|norm3)\.(?:weight|bias))"
_HEAD_RULES: dict[str, list[tuple[str, str]]] = {
    "cse": [
        (rf"^decode_head\.layers\.(\d+)\.cross_attn\.{_DW}$", r"{h}.blocks.\1.attn.\2"),
        (rf"^decode_head\.layers\.(\d+)\.ffn1\.{_FFN}$", r"{h}.blocks.\1.ffn_tokens.\2"),
        (rf"^decode_head\.layers\.(\d+)\.ffn2\.{_FFN}$", r"{h}.blocks.\1.ffn_features.\2"),
    ],
    "sse": [
        (rf"^decode_head\.layers\.(\d+)\.cross_attn\.{_DW}$", r"{h}.blocks.\1.attn.\2"),
        (rf"^decode_head\.layers\.(\d+)\.ffn1\.{_FFN}$", r"{h}.blocks.\1.ffn.\2"),
    ],
    "pwe": [
        (rf"^decode_head\.layers\.(\d+)\.attn\.{_DW}$", r"{h}.blocks.\1.attn.\2"),
        (
            r"^decode_head\.layers\.(\d+)\.attn\.attn_pw_conv\.(weight|bias)$",
            r"{h}.blocks.\1.attn.pw_conv.\2",
        ),
        (rf"^decode_head\.layers\.(\d+)\.ffn1\.{_FFN}$", r"{h}.blocks.\1.ffn.\2"),
    ],
}


def _unwrap(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Take ``state_dict`` out of an mmcv container and drop a DDP ``module.`` prefix."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor: not a state dict")
        out[k.removeprefix("module.")] = v
    return out


def detect_official_head(sd: Mapping[str, Any]) -> str:
    """The StructToken head kind (``cse`` | ``sse`` | ``pwe``) of an official state dict, from telltale keys."""
    keys = _unwrap(sd).keys()
    if not any(k.startswith("decode_head.") for k in keys):
        raise CheckpointError(
            "not an official StructToken checkpoint: no 'decode_head.*' keys "
            f"(first keys: {', '.join(list(keys)[:5]) or 'none'})"
        )
    if any(".attn.attn_pw_conv." in k for k in keys):
        return "pwe"
    if any(".ffn2." in k for k in keys):
        return "cse"
    if any(".cross_attn." in k for k in keys):
        # CSE's last block has no ffn2, so a 1-block CSE looks like SSE except for the query width.
        q = sd.get("decode_head.layers.0.cross_attn.query_map.conv1.weight")
        k = sd.get("decode_head.layers.0.cross_attn.key_map.conv1.weight")
        if q is not None and k is not None and q.shape[0] != k.shape[0]:
            return "cse"
        return "sse"
    raise CheckpointError("unrecognised decode head: no cross_attn / attn_pw_conv keys")


def convert_official_state_dict(sd: Mapping[str, Any], head_name: str | None = None) -> dict[str, torch.Tensor]:
    """Rename an official mmseg StructToken state dict to this project's keys.

    Args:
        sd: ``{"backbone.*": ..., "decode_head.*": ...}``, or the mmcv container holding it under
            ``state_dict``; a ``module.`` prefix is dropped.
        head_name: name of the head in our model set; defaults to the detected kind (``cse`` / ``sse`` / ``pwe``).
    Returns:
        A new dict ``{ "backbone.*", "heads.<head_name>.*" }`` with the same tensors (float32).
    Raises:
        CheckpointError: naming every key no rule knows.
    """
    sd = _unwrap(sd)
    kind = detect_official_head(sd)
    prefix = f"heads.{head_name or kind}"
    rules = [(re.compile(p), r) for p, r in _BACKBONE_RULES]
    rules += [(re.compile(p), r.replace("{h}", prefix)) for p, r in _HEAD_COMMON_RULES + _HEAD_RULES[kind]]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        for pattern, repl in rules:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value.float()
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) of this {kind.upper()} checkpoint have no counterpart: " + ", ".join(unknown[:20])
        )
    return out


def infer_official_config(sd: Mapping[str, Any]) -> ModelConfig:
    """Rebuild the :class:`ModelConfig` of an official state dict from its shapes.

    A released configuration with the same architecture lends its name, normalisation, test
    settings and classes; otherwise ImageNet normalisation and whole-image inference are assumed.
    """
    sd = _unwrap(sd)
    kind = detect_official_head(sd)
    try:
        pos = sd["backbone.pos_embed"]
        tokens = sd["decode_head.kernels"]
    except KeyError as e:
        raise CheckpointError(f"official checkpoint lacks {e.args[0]!r}") from None
    embed_dim = pos.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"backbone\.layers\.(\d+)\.", k)))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"decode_head\.layers\.(\d+)\.", k)))
    num_classes, gh, gw = tokens.shape[1:]
    arch = dict(
        head=kind,
        embed_dim=embed_dim,
        depth=depth,
        num_blocks=blocks,
        num_classes=num_classes,
        image_size=(gh * 16, gw * 16),
    )
    for cfg in REGISTRY.values():
        if cfg.url and all(getattr(cfg, k) == v for k, v in arch.items()):
            return cfg.replace()
    return ModelConfig(num_heads=max(1, embed_dim // 64), **arch, name=f"{kind}_custom")


def load_state_dict_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``sd`` into ``model``; :class:`CheckpointError` names every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [
        f"{k}: {tuple(sd[k].shape)} in {source}, {tuple(own[k].shape)} in model"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shape)):
            if items:
                more = f" (+{len(items) - 15} more)" if len(items) > 15 else ""
                parts.append(f"{len(items)} {title}: " + "; ".join(items[:15]) + more)
        raise CheckpointError(f"{source} does not fit this model — " + " | ".join(parts))
    model.load_state_dict(dict(sd), strict=True)


# --------------------------------------------------------------------------- safe reading
_NUMPY_SAFE = [np.dtype, np.bool_, np.float64, np.float32, np.int64, np.int32]


def _numpy_scalar_globals() -> list[Any]:
    out: list[Any] = list(_NUMPY_SAFE)
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    out.append(scalar)
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts numpy scalars (mmcv ``meta``) and refuses
    anything else, with an error saying what the pickle wanted to import."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError ...
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            found = re.findall(r"(?:GLOBAL|global) ([\w\.]+(?: [\w\.]+)?)", msg)
            what = f" (it asks for {found[0]})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to unpickle this file: it contains code or objects other than weights{what}. "
                "Only tensors and plain containers are loaded (torch.load(weights_only=True)); "
                "convert trusted files to .safetensors first."
            ) from None
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated or corrupt file?): {msg.splitlines()[0]}"
        ) from None


# --------------------------------------------------------------------------- our format
def save_model(
    model: Segmentor,
    path: str | Path,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` as safetensors with its config (JSON) in the metadata; ``dtype`` (e.g. float16)
    casts floating tensors for storage. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {FORMAT_KEY: json.dumps(model.cfg.to_dict()), "format_version": FORMAT_VERSION, **(metadata or {})}
    save_file(tensors, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of one of our safetensors files."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies the set a readout file was fitted on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def load_fitted_readouts(model: Segmentor, set_path: str | Path) -> FittedReadouts | None:
    """The fitted readouts beside the set file ``set_path``, checked against ``model``; None when
    there is no such file. :class:`CheckpointError` (naming the file) for a corrupt, mis-shaped or
    stale one (fitted on another version of the set)."""
    set_path = Path(set_path)
    rp = readouts_path(set_path)
    if not rp.is_file():
        return None
    try:
        fitted = FittedReadouts.load(rp, model)
    except ReadoutError as e:
        raise CheckpointError(f"{e} (delete it or refit it)") from None
    want = fitted.metadata.get("set_sha256")
    if want and want != file_sha256(set_path):
        raise CheckpointError(
            f"{rp} was fitted on another version of {set_path.name} (sha256 {want[:12]}..., the set is "
            f"{file_sha256(set_path)[:12]}...); refit it with python -m structtoken.fit_readouts or delete it"
        )
    return fitted


def load_model(path: str | Path, device: str | torch.device = "cpu", readouts: bool = True) -> Segmentor:
    """Rebuild a model set from one of our safetensors files (config from its metadata), in eval mode.

    With ``readouts``, fitted readouts beside the file (:func:`structtoken.readouts.readouts_path`) are
    loaded into ``model.fitted_readouts`` (None when there are none)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.name.endswith(READOUTS_SUFFIX):
        raise CheckpointError(f"{path}: a fitted-readout file, not a model set; load the set file beside it")
    meta = read_metadata(path)
    if FORMAT_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a StructToken config in its metadata")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta[FORMAT_KEY]))
    except (ConfigError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config in metadata: {e}") from None
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read tensors (truncated or corrupt?): {e}") from None
    model = build_model(cfg)
    load_state_dict_strict(model, {k: v.float() for k, v in sd.items()}, source=str(path))
    model.eval()
    if readouts:
        model.fitted_readouts = load_fitted_readouts(model, path)
    return model.to(device)


def load_official(path: str | Path, cfg: ModelConfig | None = None, device: str | torch.device = "cpu") -> Segmentor:
    """Build and load a model from an authors' mmseg ``.pth`` (read with weights_only=True)."""
    raw = torch_load_safe(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict with a state_dict, got {type(raw).__name__}")
    try:
        sd = _unwrap(raw)
        cfg = cfg or infer_official_config(sd)
        model = build_model(cfg)
        load_state_dict_strict(model, convert_official_state_dict(sd, cfg.head), source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model.eval().to(device)


# --------------------------------------------------------------------------- fetching
def cache_dir() -> Path:
    """Where released checkpoints are kept: ``$STRUCTTOKEN_CACHE`` or torch.hub's checkpoint folder."""
    env = os.environ.get("STRUCTTOKEN_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def fetch_checkpoint(
    url: str,
    dest_dir: str | Path | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    progress_callback: Any = None,
) -> Path:
    """Download ``url`` into the cache (resuming a partial ``.part`` file) and return its path.

    A file already in the cache is returned without touching the network. ``progress_callback(done, total)``
    is called as bytes arrive (for UIs); ``progress`` shows a tqdm bar on stderr.

    Raises:
        CheckpointUnavailable: when the download fails, saying which URL to fetch and where to put it.
    """
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    target = dest_dir / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(target.suffix + ".part")
    done = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if done and resp.status != 206:  # server ignored the range: start over
                done = 0
            length = resp.headers.get("Content-Length")
            total = done + int(length) if length else None
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=target.name, disable=not progress)
            with open(part, "ab" if done else "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
                    if progress_callback is not None:
                        progress_callback(done, total)
            bar.close()
            if total is not None and done != total:
                raise OSError(f"connection closed after {done} of {total} bytes")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointUnavailable(
            f"could not download {url} ({getattr(e, 'reason', e)}). If this machine is offline, fetch that file "
            f"elsewhere and put it at {target} (or pass its path as the model); a partial download in {part} "
            "resumes on the next try."
        ) from None
    part.replace(target)
    return target


def resolve_model(
    spec: str | Path, device: str | torch.device = "cpu", progress: bool = True, progress_callback: Any = None
) -> Segmentor:
    """A ready model from a registry name, one of our ``.safetensors`` files or an official ``.pth``.

    Registry names with a release URL are fetched into the cache on first use.
    """
    s = str(spec)
    if s in REGISTRY:
        cfg = get_config(s)
        if cfg.url is None:
            raise CheckpointError(f"model {s!r} has no weights to download")
        path = fetch_checkpoint(cfg.url, progress=progress, progress_callback=progress_callback)
        return load_official(path, cfg, device)
    p = Path(s)
    if not p.exists():
        raise CheckpointError(f"unknown model {s!r}: neither a file nor one of: {', '.join(REGISTRY)}")
    if p.suffix == ".safetensors":
        return load_model(p, device)
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return load_official(p, device=device)
    raise CheckpointError(f"{p}: unknown checkpoint type {p.suffix!r} (use .safetensors or an official .pth)")

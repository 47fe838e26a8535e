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
import math
import os
import re
import struct
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import REGISTRY, ModelConfig, get_config, parse_config_json
from .devices import release_memory
from .errors import StructTokenError, base_name, clean, names
from .readouts import READOUTS_SUFFIX, FittedReadouts, ReadoutError, readouts_path
from .segmentor import Segmentor, build_model

FORMAT_KEY = "structtoken_config"
FORMAT_VERSION = "1"

DEFAULT_MAX_MODEL_BYTES = 4 * 2**30
"""Default of :func:`max_model_bytes`: 4 GiB, three times the largest released set (ViT-L, 1.2 GB in float32)."""
MAX_HEADER_BYTES = 16 * 2**20
"""Longest safetensors header accepted (the 150-class ViT-L set's is under 100 KB)."""
MAX_PICKLE_BYTES = 64 * 2**20
"""Longest pickle (``data.pkl``) accepted in a ``.pth`` archive (a state dict's is a few hundred KB)."""
MAX_RECORDS = 10_000
"""Most records accepted in a ``.pth`` archive (ViT-L has about 500 tensors, 1,500 with Adam's state)."""
MAX_INFLATE_RATIO = 64
"""A compressed ``.pth`` record may declare at most this many times its stored size (deflate of float
weights gains ~1.1x; ``torch.save`` stores records uncompressed): more is a zip bomb."""
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Dtypes a file may store a floating tensor of the model in (read as float32)."""


class CheckpointError(StructTokenError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def max_model_bytes() -> int:
    """The memory budget of one loaded set, in bytes: ``STRUCTTOKEN_MAX_MODEL_BYTES`` (e.g. ``8e9``) or
    :data:`DEFAULT_MAX_MODEL_BYTES`. A file whose tensors, or whose model in float32, need more is
    refused before anything of that size is allocated (the ``.pth`` archive's declared record sizes,
    the model built on the ``meta`` device)."""
    value = os.environ.get("STRUCTTOKEN_MAX_MODEL_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_MODEL_BYTES
    try:
        out = int(float(value))
    except ValueError:
        out = 0
    if out < 1:
        raise CheckpointError(f"STRUCTTOKEN_MAX_MODEL_BYTES: expected a number of bytes > 0, got {clean(value, 30)!r}")
    return out


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


class CheckpointUnavailable(CheckpointError):
    """A released checkpoint that is not cached and cannot be downloaded (e.g. offline)."""

    limit = 500  # the URL and the destination must arrive whole to be of use


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
        if not isinstance(k, str):
            raise CheckpointError(f"a state dict key is a {type(k).__name__}, not a name: not a state dict")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"entry {clean(k)!r} is a {type(v).__name__}, not a tensor: not a state dict")
        out[k.removeprefix("module.")] = v
    return out


def detect_official_head(sd: Mapping[str, Any]) -> str:
    """The StructToken head kind (``cse`` | ``sse`` | ``pwe``) of an official state dict, from telltale keys."""
    keys = _unwrap(sd).keys()
    if not any(k.startswith("decode_head.") for k in keys):
        raise CheckpointError(
            f"not an official StructToken checkpoint: no 'decode_head.*' keys (first keys: {names(keys) or 'none'})"
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
            f"{len(unknown)} key(s) of this {kind.upper()} checkpoint have no counterpart: {names(unknown)}"
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
    if pos.ndim != 3 or tokens.ndim != 4:
        raise CheckpointError(
            f"official checkpoint has a pos_embed of shape {tuple(pos.shape)} and kernels of shape "
            f"{tuple(tokens.shape)}; expected [1, N, C] and [1, K, h, w]"
        )
    embed_dim = pos.shape[-1]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.layers\.(\d{1,9})\.", k))}
    head_layers = {int(m.group(1)) for k in sd if (m := re.match(r"decode_head\.layers\.(\d{1,9})\.", k))}
    if not layers or not head_layers:
        raise CheckpointError(f"official checkpoint has no {'backbone' if not layers else 'decode_head'}.layers.* keys")
    depth, blocks = 1 + max(layers), 1 + max(head_layers)
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


def _fit_problems(
    own: Mapping[str, tuple[tuple[int, ...], torch.dtype]], got: Mapping[str, tuple[tuple[int, ...], Any]]
) -> list[str]:
    """Missing, unexpected and mis-shaped names of ``got`` against ``own`` (name -> (shape, dtype)), each
    group as ``N kind: at most 3 names (+M more)``; names are cleaned and shortened."""
    missing = [k for k in own if k not in got]
    unexpected = [k for k in got if k not in own]
    shape = [
        f"{clean(k)}: {tuple(got[k][0])} in file, {tuple(own[k][0])} in model"
        for k in own
        if k in got and tuple(got[k][0]) != tuple(own[k][0])
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            parts.append(f"{len(items)} {title}: {names(items)}")
    if shape:
        parts.append(
            f"{len(shape)} mis-shaped: "
            + "; ".join(shape[:2])
            + (f" (+{len(shape) - 2} more)" if len(shape) > 2 else "")
        )
    return parts


def load_state_dict_strict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint", assign: bool = False
) -> None:
    """Copy ``sd`` into ``model``; :class:`CheckpointError` names the missing, unexpected and mis-shaped keys
    (how many of each, at most three names each, shortened).

    ``assign``: the tensors of ``sd`` (made contiguous) become the model's parameters and buffers instead of
    being copied into them (``requires_grad`` stays the model's): how a set built on the ``meta`` device
    gets its weights without being built a second time."""
    own = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    parts = _fit_problems(own, {k: (tuple(v.shape), v.dtype) for k, v in sd.items()})
    if parts:
        raise CheckpointError(f"{clean(source, 60)} does not fit this model: " + " | ".join(parts))
    if assign:
        model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)
        left = [k for k, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:  # a tensor the state dict does not hold (a non-persistent buffer) would stay without values
            raise CheckpointError(f"{clean(source, 60)}: {len(left)} tensor(s) not in the state dict: {names(left)}")
    else:
        model.load_state_dict(dict(sd), strict=True)


def _check_weights(
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    found: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    name: str,
) -> None:
    """Refuse a file whose tensors (name -> (shape, dtype)) do not fit the model's (built on ``meta``): names,
    shapes, then dtypes (a floating tensor may be stored as float32 / float16 / bfloat16, others as they are)."""
    parts = _fit_problems(expected, found)
    if parts:
        raise CheckpointError(
            f"{name} does not fit its own config: " + " | ".join(parts) + "; the file is damaged or was edited"
        )
    odd = [
        (k, dt)
        for k, (_, dt) in found.items()
        if not ((dt in WEIGHT_DTYPES) if expected[k][1].is_floating_point else dt == expected[k][1])
    ]
    if odd:
        kinds = sorted({str(dt).removeprefix("torch.") for _, dt in odd})
        raise CheckpointError(
            f"{name}: {len(odd)} tensor(s) of a dtype the model does not use ({', '.join(kinds[:3])}): "
            f"{names(k for k, _ in odd)}; store weights as float32, float16 or bfloat16"
        )


def _check_finite(sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse NaN or infinite values, naming how many tensors hold them and at most three."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{name}: {len(bad)} tensor(s) hold NaN or infinite values: {names(bad)}; "
            "the weights are broken (a diverged training run?): use another checkpoint"
        )


def _meta_model(cfg: ModelConfig, name: str) -> tuple[Segmentor, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """The set ``cfg`` describes, built on the ``meta`` device (no memory), and its name -> (shape, dtype);
    refuses a set whose float32 weights exceed :func:`max_model_bytes`. The loaders check a file against
    it, then give it the file's tensors (:func:`load_state_dict_strict` with ``assign``)."""
    with torch.device("meta"):
        model = build_model(cfg)
    own = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    need = sum(math.prod(shape) * 4 for shape, _ in own.values())
    budget = max_model_bytes()
    if need > budget:
        raise CheckpointError(
            f"{name}: its model needs {_gb(need)}, over the memory budget of {_gb(budget)}; "
            "raise STRUCTTOKEN_MAX_MODEL_BYTES if this machine has the memory"
        )
    return model, own


def _guarded(name: str, load: Callable[[], Segmentor]) -> Segmentor:
    """Run ``load``; every exception becomes a :class:`CheckpointError` naming the file once (a refusal of
    our own keeps its words, with the file name put first), and memory is handed back on failure."""
    try:
        return load()
    except StructTokenError as e:
        msg = str(e)
        err = CheckpointError(msg if msg.startswith(name) else f"{name}: {msg}")
    except (MemoryError, RuntimeError) as e:  # the allocator (alloc_cpu.cpp ...) or torch refusing a tensor
        what = "not enough memory" if isinstance(e, MemoryError) or "alloc" in str(e).lower() else "torch refused it"
        err = CheckpointError(f"{name}: cannot load ({what}: {type(e).__name__}); the file is corrupt or too large")
    except RecursionError:
        err = CheckpointError(f"{name}: cannot load: its contents are nested too deeply; not a checkpoint")
    except Exception as e:  # IndexError, KeyError, TypeError, ... from a malformed file
        err = CheckpointError(
            f"{name}: cannot load: malformed contents ({type(e).__name__}: {clean(e, 60)}); "
            "use an intact .safetensors set or an official .pth"
        )
    release_memory(full_collect=False)
    raise err from None


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


def check_archive(path: str | Path) -> int:
    """Check a ``.pth`` (torch's zip format) from its central directory before anything is inflated: at most
    :data:`MAX_RECORDS` records, a pickle of at most :data:`MAX_PICKLE_BYTES`, no compressed record declaring
    more than :data:`MAX_INFLATE_RATIO` times its stored size (a zip bomb), and declared sizes summing to
    at most :func:`max_model_bytes`. Returns the declared total. Raises :class:`CheckpointError`.

    Torch's legacy (pre-1.6) format is refused: its storages declare their sizes inside the pickle, so
    they cannot be checked before allocation."""
    path = Path(path)
    name = base_name(path)
    budget = max_model_bytes()
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            start = f.read(4)
        if start == b"PK\x03\x04":
            raise CheckpointError(
                f"{name}: cannot read checkpoint: the archive's directory is missing (truncated?); send the file again"
            )
        raise CheckpointError(
            f"{name}: not a zip-format torch checkpoint (a legacy pre-1.6 file, or not a checkpoint at all); "
            "re-save it with torch.save in torch >= 1.6, or convert it to .safetensors"
        )
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{name}: cannot read the checkpoint archive ({clean(e, 60)}): truncated or corrupt?"
        ) from None
    if len(infos) > MAX_RECORDS:
        raise CheckpointError(
            f"{name}: the archive holds {len(infos):,} records (at most {MAX_RECORDS:,}); not a checkpoint"
        )
    total = 0
    size = path.stat().st_size
    for info in infos:
        if info.compress_size > size or (
            info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
        ):
            raise CheckpointError(
                f"{name}: record {clean(info.filename)!r} declares {info.file_size:,} bytes but the file holds "
                f"{min(info.compress_size, size):,} for it: truncated or forged; send an intact file"
            )
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATE_RATIO * info.compress_size + 4096:
            raise CheckpointError(
                f"{name}: record {clean(info.filename)!r} inflates {info.compress_size:,} stored bytes to "
                f"{info.file_size:,} (a zip bomb?); save checkpoints with torch.save, which does not compress"
            )
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{name}: its pickle declares {_gb(info.file_size)} (at most {_gb(MAX_PICKLE_BYTES)}); not a checkpoint"
            )
        total += info.file_size
    if total > budget:
        raise CheckpointError(
            f"{name}: its records declare {_gb(total)}, over the memory budget of {_gb(budget)}; "
            "raise STRUCTTOKEN_MAX_MODEL_BYTES if this is a genuine checkpoint"
        )
    return total


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts numpy scalars (mmcv ``meta``) and refuses
    anything else, with an error saying what the pickle wanted to import. The archive is checked first
    (:func:`check_archive`: sizes, zip bombs, the memory budget)."""
    path = Path(path)
    name = base_name(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{name} is empty (0 bytes): the upload or download did not complete; send the file again"
        )
    check_archive(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, RecursionError, IndexError ...
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            found = re.findall(r"(?:GLOBAL|global):? ([\w\.]+)", msg)
            what = f" (it asks for {clean(found[0], 40)})" if found else ""
            raise CheckpointError(
                f"{name}: refusing to unpickle: it holds code or objects other than weights{what}. "
                "Only tensors and plain containers are loaded; convert trusted files to .safetensors"
            ) from None
        first = clean(msg.splitlines()[0] if msg.strip() else "", 60)
        raise CheckpointError(
            f"{name}: cannot read checkpoint ({type(e).__name__}{': ' + first if first else ''}): "
            "truncated or corrupt? Send the file again"
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """(metadata, name -> (shape, dtype)) of a safetensors file, from its header alone (nothing else is read):
    the header's length, JSON depth and entries are checked first. Raises :class:`CheckpointError`."""
    path = Path(path)
    name = base_name(path)
    bad = f"{name}: not a readable safetensors file"
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(f"{name} is empty (0 bytes): the upload or download did not complete; send it again")
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{bad} (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{bad} (its header declares {n:,} bytes, the file has {size:,}): truncated or corrupt?"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read the file ({type(e).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{bad} (its header is not UTF-8 JSON)") from None
    from .config import json_depth

    if json_depth(text) > 6:
        raise CheckpointError(f"{bad} (its header JSON is nested {json_depth(text)} levels deep)")
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{bad} (header: {clean(e, 60)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{bad} (its metadata is not a map of strings)")
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for key, entry in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{bad} (entry {clean(key)!r} has no dtype / shape)") from None
        if dtype is None:
            raise CheckpointError(
                f"{name}: tensor {clean(key)!r} has dtype {clean(entry['dtype'], 10)}, which no model uses"
            )
        tensors[key] = (shape, dtype)
    return meta, tensors


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of one of our safetensors files (from its checked header, :func:`read_header`)."""
    return read_header(path)[0]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies the set a readout file was fitted on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def load_fitted_readouts(model: Segmentor, set_path: str | Path) -> FittedReadouts | None:
    """The fitted readouts beside the set file ``set_path``, checked against ``model``; None when
    there is no such file. A corrupt or mis-shaped file raises :class:`CheckpointError` naming it; one
    fitted on another version of the set (its ``set_sha256``) is returned with ``problem`` saying so,
    so the set still loads and the ``fitted`` readout reports itself unavailable."""
    set_path = Path(set_path)
    rp = readouts_path(set_path)
    if not rp.is_file():
        return None
    try:
        fitted = FittedReadouts.load(rp, model)
    except ReadoutError as e:
        raise CheckpointError(f"{e} (delete it or refit it)") from None
    want = fitted.metadata.get("set_sha256")
    if want:
        have = file_sha256(set_path)
        if want != have:
            fitted.problem = (
                f"{rp} was fitted on another version of {set_path.name} (sha256 {want[:12]}..., the set is "
                f"{have[:12]}...); refit it with python -m structtoken.fit_readouts --model {set_path} "
                "--data DATA_DIR --split train"
            )
    return fitted


def load_model(path: str | Path, device: str | torch.device = "cpu", readouts: bool = True) -> Segmentor:
    """Rebuild a model set from one of our safetensors files (config from its metadata), in eval mode.

    Nothing is allocated before the file is known to fit: the config is parsed with size and depth limits
    and checked against :data:`structtoken.config.BOUNDS`, the set is built on the ``meta`` device and
    every tensor's name, shape and dtype in the header is compared with it, the model must fit
    :func:`max_model_bytes`; then the tensors are read, refused if any holds NaN or infinity, and
    copied into the set. Every failure is a :class:`CheckpointError` naming the file's base name, and
    hands the memory back (:func:`structtoken.devices.release_memory`).

    With ``readouts``, fitted readouts beside the file (:func:`structtoken.readouts.readouts_path`) are
    loaded into ``model.fitted_readouts`` (None when there are none)."""
    path = Path(path)
    name = base_name(path)
    return _guarded(name, lambda: _load_model(path, name, device, readouts))


def _load_model(path: Path, name: str, device: str | torch.device, readouts: bool) -> Segmentor:
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file")
    if path.name.endswith(READOUTS_SUFFIX):
        raise CheckpointError(f"{name}: a fitted-readout file, not a model set; load the set file beside it")
    meta, header = read_header(path)
    if FORMAT_KEY not in meta:
        raise CheckpointError(
            f"{name}: a safetensors file without a StructToken config in its metadata; save sets with save_model"
        )
    cfg = parse_config_json(meta[FORMAT_KEY], source=name)
    model, own = _meta_model(cfg, name)
    _check_weights(own, header, name)
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{name}: cannot read its tensors ({clean(e, 60)}): truncated or corrupt?") from None
    _check_finite(sd, name)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    load_state_dict_strict(model, sd, source=name, assign=True)
    del sd
    model.eval()
    if readouts:
        model.fitted_readouts = load_fitted_readouts(model, path)
    return model.to(device)


def load_official(path: str | Path, cfg: ModelConfig | None = None, device: str | torch.device = "cpu") -> Segmentor:
    """Build and load a model from an authors' mmseg ``.pth`` (read with weights_only=True, after
    :func:`check_archive`); the tensors are checked against the set built on the ``meta`` device (names,
    shapes, dtypes, finite values) before the set is allocated. Raises :class:`CheckpointError`."""
    path = Path(path)
    name = base_name(path)
    return _guarded(name, lambda: _load_official(path, name, cfg, device))


def _load_official(path: Path, name: str, cfg: ModelConfig | None, device: str | torch.device) -> Segmentor:
    raw = torch_load_safe(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{name}: expected a dict with a state_dict, got a {type(raw).__name__}")
    sd = _unwrap(raw)
    del raw
    odd = [k for k, v in sd.items() if v.dtype not in WEIGHT_DTYPES]
    if odd:
        kinds = sorted({str(sd[k].dtype).removeprefix("torch.") for k in odd})
        raise CheckpointError(
            f"{name}: {len(odd)} tensor(s) of a dtype the model does not use ({', '.join(kinds[:3])}): "
            f"{names(odd)}; store weights as float32, float16 or bfloat16"
        )
    cfg = cfg or infer_official_config(sd)
    model, own = _meta_model(cfg, name)
    converted = convert_official_state_dict(sd, cfg.head)
    del sd
    _check_weights(own, {k: (tuple(v.shape), torch.float32) for k, v in converted.items()}, name)
    _check_finite(converted, name)
    load_state_dict_strict(model, converted, source=name, assign=True)
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
            f"elsewhere and put it at {target} (or pass its path as the model); a partial download "
            "(.part beside it) resumes on the next try."
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
        raise CheckpointError(f"unknown model {clean(s)!r}: neither a file nor one of: {', '.join(REGISTRY)}")
    if p.suffix == ".safetensors":
        return load_model(p, device)
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return load_official(p, device=device)
    raise CheckpointError(
        f"{base_name(p)}: unknown checkpoint type {clean(p.suffix, 12)!r} (use .safetensors or an official .pth)"
    )

"""The one function the UI calls: :func:`analyze` an image with a model set.

It turns any image input into uint8 RGB (:func:`load_image`), loads the set (cached), runs the
backbone and every head once per (set, image) (cached), and builds the figures, table, summary and
downloads of the asked analysis from the cached arrays, so changing the analysis, the classes,
the normalisation or the block does not run the model again. Every bad input raises
:class:`AnalysisError` with a message meant for a person. Thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError

from structtoken.assets import EMBEDDED
from structtoken.checkpoint import CheckpointError
from structtoken.config import ConfigError
from structtoken.devices import resolve_device
from structtoken.segmentor import Segmentor

from . import figures as F
from .maps import NORMALIZATIONS, ImageMaps, compute_maps, select_classes
from .probe import (
    ANALYSES,
    NORMALIZATION_LABELS,
    attention_heads,
    attention_view,
    comparison_heads,
    comparison_view,
    prediction_view,
    probe_summary,
    structtoken_heads,
    supported_analyses,
)

__all__ = [
    "ANALYSES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "NORMALIZATIONS",
    "AnalysisError",
    "AnalysisResult",
    "analyze",
    "clear_caches",
    "load_image",
    "report_path",
    "shipped_report",
]

MIN_SIDE = 16
"""Smallest image side accepted (one 16-pixel patch)."""
MAX_SIDE = 4096
"""Images with a longer side are downscaled (with a notice)."""
MAX_PIXELS = 40_000_000
"""Images with more pixels are downscaled (with a notice)."""
DEFAULT_NUM_CLASSES = 4
"""Rows shown by default (the classes with the largest predicted area)."""

_MAX_MODELS = 2
_MAX_MAPS = 8

ANALYSIS_TITLES = {
    "prediction": "Prediction",
    "comparison": "StructToken vs. per-pixel baseline, block by block",
    "probe": "Deep-supervision probe",
    "attention": "Class × channel attention",
}


class AnalysisError(ValueError):
    """A bad input or an impossible request; the message says what to do."""


@dataclass
class AnalysisResult:
    """Everything the UI shows for one :func:`analyze` call.

    Attributes:
        figure: static matplotlib figure (the grid, the prediction, or channel maps).
        plot: interactive plotly view.
        overlay: ``[H, W, 3]`` uint8 prediction overlay of the chosen head on the image the model saw.
        curves: dataset-level per-block curves from the set's shipped report (None without a report).
        table, table_headers: numbers shown beside the picture (rows of ``len(table_headers)`` cells).
        summary: markdown: what is shown, verdicts, notices.
        maps: raw arrays for a ``.npz`` download (``image``, ``<head>/stages`` [S, K, h, w],
            ``<head>/attention`` [N, K, C'], ``pred/<head>`` [H, W], ``selected_class_ids``, ...).
        metrics: JSON-ready numbers for a download.
        timings: seconds: ``model_load``, ``backbone+heads``, ``figures``, ``total``; ``cached``: bool
            (the image's maps came from the cache).
        classes: the set's class names; selected_classes: the rows shown.
        available: analysis -> None if the set supports it, else the reason.
    """

    figure: Figure | None
    plot: go.Figure | None
    overlay: np.ndarray | None
    curves: go.Figure | None
    table: list[list[Any]]
    table_headers: list[str]
    summary: str
    maps: dict[str, np.ndarray]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    classes: list[str]
    selected_classes: list[str]
    available: dict[str, str | None] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ images
def _wh(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _pil_to_array(im: Image.Image, notices: list[str]) -> tuple[np.ndarray, int | None]:
    """Decode a PIL image into an array (and its bit depth when the mode says it)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        raise AnalysisError(
            f"the image is {im.width}x{im.height} px ({im.width * im.height / 1e6:.0f} MP), "
            "over the decoder's "
            f"safety limit of {limit / 1e6:.0f} MP (decompression-bomb guard); downscale it before uploading"
        )
    with contextlib.suppress(EOFError, AttributeError):
        im.seek(0)
    if getattr(im, "n_frames", 1) > 1:
        notices.append("the file holds several frames; the first one is analysed")
    if im.format == "JPEG" and (max(im.size) > MAX_SIDE or im.width * im.height > MAX_PIXELS):
        # decode big JPEGs at a reduced scale (a power of 2 that stays above the final size)
        f = min(MAX_SIDE / max(im.size), math.sqrt(MAX_PIXELS / (im.width * im.height)))
        size0 = im.size
        im.draft("RGB", (math.ceil(im.width * f), math.ceil(im.height * f)))
        if im.size != size0:
            notices.append(f"JPEG of {size0[0]}x{size0[1]} px decoded at reduced scale ({im.width}x{im.height})")
    im.load()
    transposed = ImageOps.exif_transpose(im)
    if transposed is not None and transposed is not im:
        im = transposed
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), 16
    if mode in ("I", "F"):
        return np.asarray(im), None
    if mode == "1":
        return np.asarray(im.convert("L")), 8
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA")), 8
    if mode == "L":
        return np.asarray(im), 8
    return np.asarray(im.convert("RGB")), 8


def _to_unit_float(arr: np.ndarray, notices: list[str], bits: int | None) -> np.ndarray:
    """Any numeric array -> float32 in [0, 1] (16-bit scaled by its range, floats in 0..1 or 0..255)."""
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if arr.dtype == np.uint16 or bits == 16:
            return arr.astype(np.float32) / 65535.0
        if lo >= 0 and hi <= 255:
            return arr.astype(np.float32) / 255.0
        if lo >= 0 and hi <= 65535:
            notices.append(f"{arr.dtype} image with values up to {hi} read as 16-bit (0..65535)")
            return arr.astype(np.float32) / 65535.0
        notices.append(f"{arr.dtype} image with values {lo}..{hi} rescaled to 0..255")
        return ((arr.astype(np.float64) - lo) / max(hi - lo, 1)).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float32)
        finite = np.isfinite(a)
        if not finite.all():
            if not finite.any():
                raise AnalysisError("the image holds no finite values (all NaN or infinite)")
            notices.append(f"{int((~finite).sum())} NaN / infinite values set to black")
            a = np.where(finite, a, 0.0).astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return a
        if lo >= 0.0 and hi <= 255.0:
            notices.append(f"float image with values up to {hi:.4g} read as 0..255")
            return a / 255.0
        notices.append(f"float image with values {lo:.4g}..{hi:.4g} rescaled to 0..255")
        return ((a - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    raise AnalysisError(f"unsupported pixel type {arr.dtype}: expected integers, floats or booleans")


def _array_to_rgb(arr: np.ndarray, notices: list[str], bits: int | None = None) -> np.ndarray:
    """Numeric array ``[H, W]``, ``[H, W, 1..4]`` (or channel-first ``[1..4, H, W]``) -> uint8
    ``[H, W, 3]``."""
    if arr.dtype == object or not (
        arr.dtype == bool or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise AnalysisError(f"unsupported pixel type {arr.dtype}: expected integers, floats or booleans")
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
        notices.append("channel-first array read as [H, W, C]")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise AnalysisError(
            f"an image array must be [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA); got shape {tuple(arr.shape)}"
        )
    if arr.size == 0:
        raise AnalysisError(f"the image is empty ({_wh(arr.shape)} px)")
    c = arr.shape[2]
    has_alpha = c in (2, 4)
    if arr.dtype == np.uint8 and bits in (None, 8):
        color = arr[:, :, : c - 1] if has_alpha else arr
        rgb = np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color
        if has_alpha:
            alpha = arr[:, :, -1]
            if alpha.min() < 255:
                a = alpha.astype(np.float32)[:, :, None] / 255.0
                rgb = np.clip(rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
                notices.append("transparent pixels composited on white")
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    unit = _to_unit_float(arr, notices, bits)
    color = unit[:, :, : c - 1] if has_alpha else unit
    if color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    if has_alpha:
        a = unit[:, :, -1:]
        if a.min() < 1.0:
            color = color * a + (1.0 - a)
            notices.append("transparent pixels composited on white")
    return np.ascontiguousarray(np.clip(color * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _open_bytes_or_path(image: Any, notices: list[str]) -> tuple[np.ndarray, int | None]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        src: Any = io.BytesIO(bytes(image))
        name = "the uploaded data"
        if not bytes(image):
            raise AnalysisError("the uploaded data is empty (0 bytes)")
    else:
        path = Path(os.fspath(image)).expanduser()
        name = path.name or str(path)
        if not path.is_file():
            raise AnalysisError(f"image file not found: {path}")
        if path.stat().st_size == 0:
            raise AnalysisError(f"{name} is empty (0 bytes)")
        src = path
    try:
        with Image.open(src) as im:
            return _pil_to_array(im, notices)
    except AnalysisError:
        raise
    except Image.DecompressionBombError as e:
        raise AnalysisError(f"{name} is too large to decode safely ({e}); downscale it before uploading") from None
    except UnidentifiedImageError:
        raise AnalysisError(f"{name} is not an image this app can read (PNG, JPEG, BMP, TIFF, WebP, GIF ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise AnalysisError(f"could not decode {name}: the file looks truncated or corrupt ({e})") from None


def load_image(image: Any) -> tuple[np.ndarray, list[str]]:
    """Turn an image input into uint8 RGB ``[H, W, 3]`` and a list of notices (sentences).

    Accepts a numpy array (uint8 / uint16 / other ints / float / bool; ``[H, W]``, ``[H, W, 1]``,
    ``[H, W, 2]`` grey + alpha, ``[H, W, 3]``, ``[H, W, 4]``), a PIL image, raw file bytes or a
    file path. 16-bit values are scaled by their full range (not clipped); floats in [0, 1] are
    scaled by 255; alpha is composited on white; greyscale is repeated to 3 channels. Images
    larger than :data:`MAX_SIDE` px on a side or :data:`MAX_PIXELS` pixels are downscaled (a
    notice says so).

    Raises:
        AnalysisError: empty, too small (< :data:`MIN_SIDE` px), undecodable, corrupt or
            unsupported input.
    """
    notices: list[str] = []
    bits: int | None = None
    if image is None:
        raise AnalysisError("no image given: upload an image or pick an example")
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(image, str) and not image.strip():
            raise AnalysisError("no image given: the path is empty")
        arr, bits = _open_bytes_or_path(image, notices)
    elif isinstance(image, Image.Image):
        try:
            arr, bits = _pil_to_array(image, notices)
        except AnalysisError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise AnalysisError(f"could not decode the image: it looks truncated or corrupt ({e})") from None
    elif isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        try:
            arr = np.asarray(image)
        except (TypeError, ValueError) as e:
            raise AnalysisError(f"could not read the image array: {e}") from None
    else:
        raise AnalysisError(
            f"unsupported image input {type(image).__name__}: pass a numpy array, a PIL image or a file path"
        )
    rgb = _array_to_rgb(arr, notices, bits)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise AnalysisError(
            f"the image is {w}x{h} px, too small: at least {MIN_SIDE}x{MIN_SIDE} px is needed (one 16-px patch)"
        )
    if max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        f = min(MAX_SIDE / max(h, w), math.sqrt(MAX_PIXELS / (h * w)))
        nh, nw = max(1, int(h * f)), max(1, int(w * f))
        if min(nh, nw) < MIN_SIDE:
            raise AnalysisError(
                f"the image is {w}x{h} px: its aspect ratio is too extreme to fit {MAX_SIDE} px per side "
                "while "
                f"keeping {MIN_SIDE} px on the short side"
            )
        rgb = np.array(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0))
        notices.append(
            f"image downscaled from {w}x{h} to {nw}x{nh} px (limit: {MAX_SIDE} px per side, {MAX_PIXELS / 1e6:.0f} MP)"
        )
    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:
        rgb = rgb.copy()
    return rgb, notices


def image_key(rgb: np.ndarray) -> str:
    """Content hash of a uint8 image (blake2b of shape + bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ reports
def report_path(model_spec: str | os.PathLike[str]) -> Path | None:
    """Where a set's shipped dataset report would be: ``assets/camvid/report/metrics.json`` for the
    embedded ``camvid`` set, ``<folder of the checkpoint>/report/metrics.json`` for an existing
    checkpoint file, None otherwise (registry names)."""
    s = str(model_spec)
    if s in EMBEDDED:
        return EMBEDDED[s].parent / "report" / "metrics.json"
    p = Path(s).expanduser()
    if p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt") and p.is_file():
        return p.parent / "report" / "metrics.json"
    return None


_REPORTS: dict[str, tuple[float, dict[str, Any] | None, go.Figure | None]] = {}
_REPORT_LOCK = threading.Lock()


def _report_entry(model_spec: str) -> tuple[dict[str, Any] | None, go.Figure | None, Path | None]:
    path = report_path(model_spec)
    if path is None or not path.is_file():
        return None, None, path
    mtime = path.stat().st_mtime
    key = str(path)
    with _REPORT_LOCK:
        hit = _REPORTS.get(key)
        if hit is not None and hit[0] == mtime:
            return hit[1], hit[2], path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    curves = None
    if data is not None:
        heads = _report_heads(data)
        if heads:
            try:
                curves = F.block_curves_plotly(heads, title="Per-block metrics on the dataset (shipped report)")
            except (ValueError, TypeError, KeyError):
                curves = None
    with _REPORT_LOCK:
        _REPORTS[key] = (mtime, data, curves)
    return data, curves, path


def _report_heads(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("probe", "meta") and isinstance(v, dict) and "blocks" in v}


def shipped_report(model_spec: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The dataset report (``metrics.json`` of ``python -m analysis report``) shipped with a set, or
    None when there is none (or it cannot be read). See :func:`report_path` for where it is looked for."""
    return _report_entry(str(model_spec))[0]


# ------------------------------------------------------------------------------------- caches
@dataclass
class _ModelEntry:
    model: Segmentor
    lock: threading.Lock
    key: tuple[Any, ...]


_CACHE_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple[Any, ...], _ModelEntry] = OrderedDict()
_MAPS: OrderedDict[tuple[Any, ...], ImageMaps] = OrderedDict()


def clear_caches() -> None:
    """Forget every cached model set, image maps and report."""
    with _CACHE_LOCK:
        _MODELS.clear()
        _MAPS.clear()
    with _REPORT_LOCK:
        _REPORTS.clear()


def _model_key(spec: str, device: torch.device) -> tuple[Any, ...]:
    path = EMBEDDED.get(spec) or Path(spec).expanduser()
    try:
        st = path.stat() if path.is_file() else None
    except OSError:
        st = None
    if st is None:
        return (spec, str(device))
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))


def _progress(progress: Callable[..., Any] | None, frac: float, desc: str) -> None:
    if progress is not None:
        progress(float(frac), desc)


def _get_model(spec: str, device: torch.device, progress: Callable[..., Any] | None) -> tuple[_ModelEntry, float]:
    key = _model_key(spec, device)
    with _CACHE_LOCK:
        entry = _MODELS.get(key)
        if entry is not None:
            _MODELS.move_to_end(key)
            return entry, 0.0
    from structtoken.assets import load_any

    with _LOAD_LOCK:
        with _CACHE_LOCK:  # loaded by another thread meanwhile?
            entry = _MODELS.get(key)
        if entry is not None:
            return entry, 0.0
        t0 = time.perf_counter()
        _progress(progress, 0.02, f"loading model {spec}")

        def on_bytes(done: int, total: int | None) -> None:
            if total:
                _progress(
                    progress,
                    0.02 + 0.5 * done / total,
                    f"downloading {spec}: {done / 1e6:.0f} / {total / 1e6:.0f} MB",
                )

        try:
            model = load_any(spec, device=device, progress=False, progress_callback=on_bytes)
        except (CheckpointError, ConfigError) as e:
            raise AnalysisError(str(e)) from None
        except (ValueError, OSError, RuntimeError) as e:
            raise AnalysisError(f"could not load model {spec!r}: {e}") from None
        model.eval()
        entry = _ModelEntry(model=model, lock=threading.Lock(), key=key)
        with _CACHE_LOCK:
            _MODELS[key] = entry
            while len(_MODELS) > _MAX_MODELS:
                old, _ = _MODELS.popitem(last=False)
                for k in [k for k in _MAPS if k[0] == old]:
                    del _MAPS[k]
        return entry, time.perf_counter() - t0


def _freeze(maps: ImageMaps) -> None:
    """Make the cached arrays read-only: results hand them out, and nobody may change the cache."""
    arrays = [maps.image, *maps.pred.values()]
    for hm in maps.heads.values():
        arrays += [a for a in (hm.stages, hm.attention, hm.block_features) if a is not None]
    for a in arrays:
        a.setflags(write=False)


def _get_maps(
    entry: _ModelEntry, rgb: np.ndarray, progress: Callable[..., Any] | None
) -> tuple[ImageMaps, bool, float]:
    key = (entry.key, image_key(rgb))
    with _CACHE_LOCK:
        hit = _MAPS.get(key)
        if hit is not None:
            _MAPS.move_to_end(key)
            return hit, True, 0.0
    with entry.lock:
        with _CACHE_LOCK:
            hit = _MAPS.get(key)
        if hit is not None:
            return hit, True, 0.0
        _progress(progress, 0.55, "running the backbone and heads")
        try:
            maps = compute_maps(entry.model, rgb, resize=True)
        except torch.cuda.OutOfMemoryError:
            raise AnalysisError("out of GPU memory for this image; try a smaller image or device 'cpu'") from None
        except RuntimeError as e:
            raise AnalysisError(f"the model could not run on this image ({e})") from None
    _freeze(maps)
    with _CACHE_LOCK:
        _MAPS[key] = maps
        while len(_MAPS) > _MAX_MAPS:
            _MAPS.popitem(last=False)
    return maps, False, maps.seconds


# ------------------------------------------------------------------------------------ analyze
def _choose_head(heads: Sequence[str], analysis: str, head: str | None) -> str:
    st = structtoken_heads(heads)
    if analysis == "attention":
        allowed = attention_heads(heads)
        if head is None:
            return allowed[0]
        if head not in allowed:
            raise AnalysisError(f"head {head!r} has no class x channel attention; choose one of {', '.join(allowed)}")
        return head
    if head is None:
        return st[0] if st else heads[0]
    if head not in heads:
        raise AnalysisError(f"this set has no head {head!r}; its heads are {', '.join(heads)}")
    if analysis in ("comparison", "probe") and st and head not in st:
        raise AnalysisError(
            f"{head!r} is not a StructToken head; for the {analysis} pick one of {', '.join(st)} "
            "(the per-pixel heads are always part of the grid)"
        )
    return head


def _validate(analysis: str, normalize: str, block: Any, opacity: Any) -> None:
    if analysis not in ANALYSES:
        raise AnalysisError(f"unknown analysis {analysis!r}; choose one of {', '.join(ANALYSES)}")
    if normalize not in NORMALIZATIONS:
        raise AnalysisError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, (int, np.integer))):
        raise AnalysisError(f"block must be a whole number or None, got {block!r}")
    try:
        op = float(opacity)
    except (TypeError, ValueError):
        raise AnalysisError(f"opacity must be a number in [0, 1], got {opacity!r}") from None
    if not 0.0 <= op <= 1.0:
        raise AnalysisError(f"opacity must be in [0, 1], got {opacity!r}")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return 100.0 * f if math.isfinite(f) else None


def _dataset_table(report_heads: dict[str, Any], heads: Sequence[str], metric: str) -> tuple[list[str], list[list]]:
    shown = [h for h in heads if h in report_heads] or list(report_heads)
    n = max(len(report_heads[h].get("blocks") or []) for h in shown)
    headers = [
        f"head (dataset {F.METRIC_LABELS.get(metric, metric)} %)",
        "input",
        *(f"block {i}" for i in range(1, n + 1)),
        "output",
    ]
    rows = []
    for h in shown:
        m = report_heads[h]
        blocks = list(m.get("blocks") or [])
        vals = [_pct((m.get("input") or {}).get(metric))]
        vals += [_pct((blocks[i] or {}).get(metric)) if i < len(blocks) else None for i in range(n)]
        vals.append(_pct((m.get("final") or {}).get(metric)))
        rows.append([F.head_label(h), *(None if v is None else round(v, 1) for v in vals)])
    return headers, rows


def _probe_from_report(report: dict[str, Any] | None, st_head: str | None) -> dict[str, Any] | None:
    if not report:
        return None
    probe = report.get("probe")
    heads = _report_heads(report)
    if isinstance(probe, dict) and isinstance(probe.get("seeds"), dict) and probe["seeds"]:
        return probe_summary(probe["seeds"], heads or None, structtoken_head=st_head)
    if heads and "per_pixel_ds" in heads:
        return probe_summary({}, heads, structtoken_head=st_head)
    return None


def analyze(
    image: Any,
    model: str = "camvid",
    analysis: str = "comparison",
    head: str | None = None,
    classes: list[str] | None = None,
    normalize: str = "shared",
    block: int | None = None,
    opacity: float = 0.5,
    device: str = "auto",
    progress: Callable[..., Any] | None = None,
) -> AnalysisResult:
    """Analyse one image with one model set.

    Args:
        image: numpy array (uint8 / uint16 / float / bool; grey, RGB, RGBA), PIL image, file bytes
            or a file path (see :func:`load_image`).
        model: ``"camvid"`` (the embedded set), a released checkpoint name or a checkpoint path.
        analysis: one of :data:`ANALYSES`: ``prediction`` (overlay + class areas), ``comparison``
            (a StructToken head vs. the per-pixel baseline, block by block), ``probe`` (per-pixel
            with vs. without deep supervision, next to StructToken), ``attention`` (class x channel
            attention of a CSE / SSE block and the channels a class reads).
        head: the StructToken head to show (default: the set's first; for ``attention`` its first
            CSE / SSE head; for ``prediction`` any head of the set).
        classes: class names (or indices) for the rows; None / empty -> the 4 largest predicted.
        normalize: one of :data:`NORMALIZATIONS` (see :func:`analysis.maps.normalize_maps`).
        block: ``attention``: the block 1..N (default N); ``comparison`` / ``probe``: show only that
            stage (0 = input maps, 1..N blocks, N + 1 = output; None = all).
        opacity: overlay opacity in [0, 1].
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        progress: optional ``progress(fraction, description)`` callback (downloads, model pass).

    Returns:
        :class:`AnalysisResult`.

    Raises:
        AnalysisError: any bad input or unsupported request, with a readable message.
    """
    t_start = time.perf_counter()
    _validate(analysis, normalize, block, opacity)
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise AnalysisError("no model given: use 'camvid', a released model name or a checkpoint path")
    spec = str(model).strip()
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as e:
        raise AnalysisError(str(e)) from None
    rgb, notices = load_image(image)
    entry, t_load = _get_model(spec, dev, progress)
    cfg = entry.model.cfg
    available = supported_analyses(cfg)
    if available.get(analysis):
        raise AnalysisError(f"{ANALYSIS_TITLES[analysis]} is not available: {available[analysis]}")
    heads = list(cfg.heads)
    head_name = _choose_head(heads, analysis, head)
    maps, cached, t_fwd = _get_maps(entry, rgb, progress)
    _progress(progress, 0.8, "drawing figures")
    t_fig = time.perf_counter()
    names = list(cfg.class_names())
    palette = cfg.class_palette()
    try:
        class_ids = select_classes(maps, head_name, DEFAULT_NUM_CLASSES, classes or None)
    except ValueError as e:
        raise AnalysisError(str(e)) from None
    if not class_ids:
        raise AnalysisError("no classes selected")

    report, curves, rpath = _report_entry(spec)
    if curves is not None:  # the cached figure is shared: hand out a copy the caller may change
        curves = go.Figure(curves)
    title = f"{ANALYSIS_TITLES[analysis]}: {cfg.name or Path(spec).name}"
    probe_info = None
    try:
        if analysis == "prediction":
            view = prediction_view(maps, head_name, palette, float(opacity))
        elif analysis == "attention":
            view = attention_view(maps, head_name, block, class_ids)
        else:
            grid_heads = comparison_heads(heads, analysis, head_name)
            view = comparison_view(maps, grid_heads, head_name, class_ids, normalize, block, title=title)
            if analysis == "probe":
                probe_info = _probe_from_report(report, head_name)
                rh = _report_heads(report) if report else {}
                if rh:
                    view.table_headers, view.table = _dataset_table(rh, grid_heads, "mask_ap")
    except ValueError as e:
        raise AnalysisError(str(e)) from None
    overlay_head = head_name
    overlay = F.overlay(maps.image, maps.pred[overlay_head], palette, alpha=float(opacity))
    t_fig_end = time.perf_counter()

    # ---------------------------------------------------------------- summary
    lines = [f"### {ANALYSIS_TITLES[analysis]}"]
    seen = maps.image.shape
    lines.append(
        f"Model set **{cfg.name or spec}** ({', '.join(heads)}); shown head: **{F.head_label(head_name)}**; "
        f"image {_wh(seen)} px, feature grid {maps.grid[0]}x{maps.grid[1]} cells."
    )
    if analysis == "prediction":
        lines.append(
            f"The {F.head_label(head_name)} prediction over the image (opacity {float(opacity):.2f}); the "
            "table lists the predicted area of each class for every head of the set."
        )
    elif analysis in ("comparison", "probe"):
        grid_heads = comparison_heads(heads, analysis, head_name)
        lines.append(
            "Rows: classes; columns: the class maps entering block 1 (*input*), after each block, "
            "and the head "
            f"output, for {', '.join(F.head_label(h) for h in grid_heads)}. Normalisation: "
            f"**{normalize}** ({NORMALIZATION_LABELS[normalize]})."
        )
        if analysis == "comparison":
            lines.append(
                "StructToken's maps are class-wise structure tokens refined block by block; the per-pixel "
                "baseline's are the K-channel outputs of its residual blocks. The table gives, per stage, "
                "the "
                "share of grid cells whose argmax class already equals the head's output."
            )
        else:
            lines.append(
                "Does deep supervision (a loss on every block's map) give the per-pixel baseline "
                "StructToken-like intermediate maps and a better final mIoU?"
            )
            if probe_info is not None:
                lines.append(f"**Verdict (training seeds):** {probe_info['verdict']}")
                if probe_info.get("blocks"):
                    lines.append(f"**Block maps (dataset):** {probe_info['blocks']['verdict']}")
            elif report is not None:
                lines.append("The shipped report has no seed results for the probe yet.")
    elif analysis == "attention":
        lines.append(
            f"How much each class (row) of {F.head_label(head_name)} draws on each feature channel in "
            "that block, and the feature maps of the channels the first selected class uses most."
        )
    if block is not None and analysis in ("comparison", "probe"):
        lines.append(f"Only one stage is shown: *{view.metrics.get('stage', block)}*.")
    lines += view.notes
    if tuple(seen[:2]) != tuple(rgb.shape[:2]):
        notices.append(
            f"the set resizes images to fit {cfg.test_scale[0]}x{cfg.test_scale[1]} before inference: "
            f"{_wh(rgb.shape)} → {_wh(seen)} px"
            if cfg.test_scale
            else f"image resized from {_wh(rgb.shape)} to {_wh(seen)} px"
        )
    if cfg.test_mode == "slide":
        notices.append("this set is evaluated with a sliding window; the maps here come from one whole-image pass")
    if report is None:
        where = f" ({rpath})" if rpath is not None else ""
        notices.append(f"no dataset report shipped with this set{where}: dataset-level curves are not available")
    if notices:
        lines.append("**Notices:** " + "; ".join(notices) + ".")
    if view.table and view.table_headers:
        lines.append(_md_table(view.table_headers, view.table))
    summary = "\n\n".join(lines)

    # ---------------------------------------------------------------- downloads
    arrays: dict[str, np.ndarray] = {
        "image": maps.image,
        "selected_class_ids": np.asarray(class_ids, dtype=np.int64),
    }
    for h, hm in maps.heads.items():
        arrays[f"{h}/stages"] = hm.stages
        arrays[f"{h}/stage_names"] = np.asarray(hm.stage_names)
        if hm.attention is not None:
            arrays[f"{h}/attention"] = hm.attention
        arrays[f"pred/{h}"] = maps.pred[h]
    arrays.update(view.arrays)
    timings = {
        "model_load": round(t_load, 4),
        "backbone+heads": round(t_fwd, 4),
        "figures": round(t_fig_end - t_fig, 4),
        "total": round(time.perf_counter() - t_start, 4),
        "cached": cached,
    }
    metrics: dict[str, Any] = {
        "model": spec,
        "model_name": cfg.name,
        "heads": heads,
        "analysis": analysis,
        "head": head_name,
        "normalize": normalize,
        "block": None if block is None else int(block),
        "classes": names,
        "selected_classes": [names[c] for c in class_ids],
        "input_size_wh": [int(rgb.shape[1]), int(rgb.shape[0])],
        "image_size_wh": [int(seen[1]), int(seen[0])],
        "grid_hw": list(maps.grid),
        **view.metrics,
        "notices": notices,
        "timings": timings,
    }
    if probe_info is not None:
        metrics["probe"] = probe_info
    if report is not None:
        metrics["dataset_report"] = {k: v for k, v in report.items() if k != "probe"}
    _progress(progress, 1.0, "done")
    return AnalysisResult(
        figure=view.figure,
        plot=view.plot,
        overlay=overlay,
        curves=curves,
        table=view.table,
        table_headers=view.table_headers,
        summary=summary,
        maps=arrays,
        metrics=_json_ready(metrics),
        timings=timings,
        classes=names,
        selected_classes=[names[c] for c in class_ids],
        available=available,
    )


def _json_ready(x: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, tuples -> lists (recursively)."""
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x

"""The service between the models and the UI: an :class:`Explorer` analyses an image with a model set.

``Explorer().analyze(AnalysisRequest(image, model="camvid", analysis="comparison"))`` turns any image
input into uint8 RGB (:func:`load_image`), loads the set (cached), runs the backbone and every head
once per (set, image) (cached), and asks the analysis (from the registry :data:`ANALYSES`) for the
view of the cached arrays, so changing the analysis, the classes, the normalisation or the block does
not run the model again. :meth:`Explorer.describe_model` tells the controls what a set offers
without loading its weights when it can. Every bad input raises :class:`AnalysisError` with a
message meant for a person. An Explorer owns its caches and is thread-safe.
"""

from __future__ import annotations

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
from typing import Any, Generic, TypeVar

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from PIL import Image

from structtoken.assets import EMBEDDED, available_models, load_any
from structtoken.checkpoint import FORMAT_KEY, read_metadata
from structtoken.checkpoint import max_model_bytes as max_model_bytes_budget
from structtoken.config import REGISTRY, ModelConfig, parse_config_json
from structtoken.devices import head_workers, release_memory, resolve_device
from structtoken.errors import StructTokenError, base_name, clean
from structtoken.heads import build_head
from structtoken.io import ImageReadError, read_image
from structtoken.readouts import NO_FITTED_REASON, readout_unavailable, readouts_path
from structtoken.segmentor import Segmentor

from . import figures as F
from .analyses import ANALYSES, Analysis, View, ViewRequest
from .domain import class_areas, domain_check, reference_frequencies
from .grid import PlacedFigure
from .labels import head_label
from .maps import (
    NORMALIZATIONS,
    READOUTS,
    ImageMaps,
    compute_maps,
    readout_caveat,
    readout_problem,
    select_classes,
)
from .probe import report_heads, report_reference, report_seed_curves
from .saturation import attention_saturation, saturation_sentence
from .values import json_ready, md_table

SATURATION_SCALES = (0.25, 0.5, 1.0)
"""Input sizes (multiples of the image's) at which the attention view measures the score spread."""

__all__ = [
    "ANALYSES",
    "DEVICES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "NORMALIZATIONS",
    "READOUTS",
    "AnalysisError",
    "AnalysisInfo",
    "AnalysisRequest",
    "AnalysisResult",
    "Explorer",
    "ModelInfo",
    "load_image",
    "report_path",
    "save_downloads",
    "save_images",
]

MIN_SIDE = 16
"""Smallest image side accepted (one 16-pixel patch)."""
MAX_SIDE = 4096
"""Images with a longer side are downscaled (with a notice)."""
MAX_PIXELS = 40_000_000
"""Images with more pixels are downscaled (with a notice)."""
DEFAULT_NUM_CLASSES = 4
"""Rows shown by default (the classes with the largest predicted area)."""
DEVICES = ("auto", "cpu", "cuda")
"""Where the model runs: ``auto`` is CUDA when available."""
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class AnalysisError(ValueError):
    """A bad input or an impossible request; the message says what to do."""


@dataclass(frozen=True)
class AnalysisRequest:
    """What the UI asks for.

    Attributes:
        image: numpy array (uint8 / uint16 / float / bool; grey, RGB, RGBA), PIL image, file bytes or a
            file path (see :func:`load_image`).
        model: ``"camvid"`` (the embedded set), a released checkpoint name or a checkpoint path.
        analysis: a key of :data:`ANALYSES`.
        head: the head to show (None: the analysis's default, the set's first StructToken head).
        classes: class names (or indices) for the rows; None / empty -> the 4 largest predicted.
        normalize: one of :data:`NORMALIZATIONS` (see :func:`analysis.maps.normalize_maps`).
        block: ``attention``: the block 1..N (None: N); ``comparison`` / ``probe``: only that stage
            (0 = input maps, 1..N blocks, N + 1 = output; None = all).
        opacity: overlay opacity in [0, 1].
        device: one of :data:`DEVICES`.
        readout: how stages are read as class scores, one of :data:`READOUTS`.
        interactive: build the interactive plotly view (False: ``plot`` is None, a cheaper request; the page
            asks for it only while its tab is open).
        curves: put the set's dataset curves into the result (False: ``curves`` is None, a cheaper request;
            ``curves_available`` still says whether the set has them: a page that draws them on its own,
            :meth:`Explorer.dataset_curves`).
        baseline: ``comparison`` only: the baseline shown beside the chosen head, one of the analysis's
            ``baseline_choices`` (``per_pixel``, ``per_pixel_ds``, ``fcn``, ``segmenter`` where the set has them) or
            ``"all"`` (every baseline without deep supervision); None: the paper's per-pixel peer. Other analyses
            ignore it.
    """

    image: Any
    model: str = "camvid"
    analysis: str = "comparison"
    head: str | None = None
    classes: Sequence[str | int] | None = None
    normalize: str = "shared"
    block: int | None = None
    opacity: float = 0.5
    device: str = "auto"
    readout: str = "raw"
    interactive: bool = True
    curves: bool = True
    baseline: str | None = None


@dataclass
class AnalysisResult:
    """Everything the UI shows for one :meth:`Explorer.analyze` call.

    Attributes:
        static: the static figure (the grid, the prediction, or channel maps): a matplotlib figure, or a
            :class:`analysis.grid.PlacedFigure` (the block grids); read it through :attr:`figure` (matplotlib:
            the PDF; a placed figure is built on first use) and :attr:`pixels`.
        plot: interactive plotly view.
        overlay: ``[H', W', 3]`` uint8 prediction overlay of the chosen head on the image the model saw, with
            a class legend on its right (:func:`analysis.figures.overlay_with_legend`).
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

    static: Figure | PlacedFigure | None
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
    curves_available: bool = False

    @property
    def figure(self) -> Figure | None:
        """The static figure as a matplotlib figure (the PDF; a placed figure is drawn now, once), or None."""
        return self.static.figure if isinstance(self.static, PlacedFigure) else self.static

    @property
    def pixels(self) -> np.ndarray | None:
        """``[H, W, 3]`` uint8 of a placed static figure (the page's figure and the PNG), else None."""
        return self.static.pixels if isinstance(self.static, PlacedFigure) else None


@dataclass(frozen=True)
class AnalysisInfo:
    """What the controls offer for one analysis of one set.

    Attributes:
        name, label, title: the analysis's key, control label and heading.
        reason: None when the set supports it, else why not.
        head_control: the head control's label; heads: the heads the user may pick (first = default).
        blocks: (label, block) options of the block control (None = every stage / the last block).
        baselines: the heads the chosen head can be shown beside one at a time (``AnalysisRequest.baseline``);
            empty when the analysis has no such choice.
    """

    name: str
    label: str
    title: str
    reason: str | None
    head_control: str
    heads: tuple[str, ...]
    blocks: tuple[tuple[str, int | None], ...]
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """What a model set offers, for the controls (see :meth:`Explorer.describe_model`).

    Attributes:
        spec: the model as asked for; name: its configured name (or the file name).
        source: ``ours`` (a safetensors set with its config), ``official`` (the authors' release or an
            mmseg ``.pth``) or ``unknown`` (missing or unreadable file).
        known: whether the config is known; an official ``.pth`` needs its weights read first (known
            once the set has been analysed).
        heads, classes, num_blocks: of the set (empty / None when not known).
        analyses: analysis name -> :class:`AnalysisInfo`, in display order (empty when not known).
        readouts: readout (:data:`READOUTS`, in order) -> None when the set offers it, else why not
            (a sentence; empty when the config is not known). A readout counts as offered when at
            least one head gives it; a head that lacks it is left out of the grid with a note.
            ``fitted`` is judged from the loaded set's lenses, or, before the set is loaded, from
            the presence of its ``<stem>.readouts.safetensors`` file.
    """

    spec: str
    name: str
    source: str
    known: bool
    heads: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    num_blocks: int | None = None
    analyses: dict[str, AnalysisInfo] = field(default_factory=dict)
    readouts: dict[str, str | None] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ images
def _wh(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def load_image(image: Any) -> tuple[np.ndarray, list[str]]:
    """Turn an image input into uint8 RGB ``[H, W, 3]`` and a list of notices (sentences).

    Reads it with the project's one reader, :func:`structtoken.io.read_image` (its 16-bit, alpha,
    grey and EXIF rules), then applies the app's size policy: at least :data:`MIN_SIDE` px a side;
    images larger than :data:`MAX_SIDE` px on a side or :data:`MAX_PIXELS` pixels are downscaled (a
    notice says so).

    Raises:
        AnalysisError: empty, too small (< :data:`MIN_SIDE` px), undecodable, corrupt or
            unsupported input.
    """
    notices: list[str] = []
    try:
        rgb = read_image(image, notices, max_side=MAX_SIDE, max_pixels=MAX_PIXELS)
    except ImageReadError as e:
        raise AnalysisError(str(e)) from None
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


# ------------------------------------------------------------------------------------ reports
def report_path(model_spec: str | os.PathLike[str]) -> Path | None:
    """Where a set's shipped dataset report would be: ``assets/camvid/report/metrics.json`` for the
    embedded ``camvid`` set, ``<folder of the checkpoint>/report/metrics.json`` for an existing
    checkpoint file, None otherwise (registry names)."""
    s = str(model_spec)
    if s in EMBEDDED:
        return EMBEDDED[s].parent / "report" / "metrics.json"
    p = Path(s).expanduser()
    if p.suffix in CHECKPOINT_SUFFIXES and p.is_file():
        return p.parent / "report" / "metrics.json"
    return None


def _read_report(path: Path) -> dict[str, Any] | None:
    """A report's JSON, or None when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class _Curves:
    """A report's per-block curves under one readout, before they are drawn: per head, stage -> metrics
    (means over seeds when the report has seeds, with their range as ``bands``)."""

    heads: dict[str, Any]
    title: str
    bands: dict[str, Any] | None = None
    reference: dict[str, float] | None = None

    def figure(self) -> go.Figure | None:
        """The plotly figure (:func:`analysis.figures.block_curves_plotly`), or None when it cannot be drawn."""
        try:
            return F.block_curves_plotly(self.heads, title=self.title, bands=self.bands, reference=self.reference)
        except (ValueError, TypeError, KeyError):
            return None


def _report_curves(data: dict[str, Any] | None, readout: str = "raw") -> _Curves | None:
    """The per-block curves a report holds under ``readout`` (None without head entries for it). Cheap:
    nothing is drawn."""
    if data is None:
        return None
    try:
        over = report_seed_curves(data, readout)
        if over is not None:
            means, bands, seeds, split = over
            order = [h for h in (data.get("meta") or {}).get("heads") or [] if h in means]
            means = {h: means[h] for h in [*order, *(h for h in means if h not in order)]}
            title = (
                f"Per-block metrics on {split or 'the dataset'}, {readout} readout: mean over training seeds "
                f"(band: their range; seeds {', '.join(str(s) for s in seeds)}, count per head in the legend)"
            )
            return _Curves(means, title, bands, report_reference(data))
        heads = report_heads(data, readout)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not heads:
        return None
    title = f"Per-block metrics on the dataset, {readout} readout (shipped report)"
    return _Curves(heads, title, reference=report_reference(data))


# ------------------------------------------------------------------------------------- caches
K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A thread-safe least-recently-used mapping of at most ``size`` entries and, when ``max_bytes`` is
    given, at most that many bytes (each entry's as given to :meth:`put`; the newest entry is always kept)."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._items: OrderedDict[K, V] = OrderedDict()
        self._bytes: dict[K, int] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: K, value: V, nbytes: int = 0) -> list[K]:
        """Store ``value`` (``nbytes`` large); returns the keys evicted to make room."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._bytes[key] = int(nbytes)
            evicted = []
            while len(self._items) > self.size or (
                self.max_bytes is not None and len(self._items) > 1 and sum(self._bytes.values()) > self.max_bytes
            ):
                old = self._items.popitem(last=False)[0]
                self._bytes.pop(old, None)
                evicted.append(old)
            return evicted

    def nbytes(self) -> int:
        """Bytes held, as given to :meth:`put`."""
        with self._lock:
            return sum(self._bytes.values())

    def drop(self, keep: Callable[[K], bool]) -> None:
        """Forget every entry whose key ``keep`` rejects."""
        with self._lock:
            for k in [k for k in self._items if not keep(k)]:
                del self._items[k]
                self._bytes.pop(k, None)

    def values(self) -> list[V]:
        with self._lock:
            return list(self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class _ModelEntry:
    spec: str
    key: tuple[Any, ...]
    model: Segmentor
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while the model runs: one image pass at a time per model."""


def _model_key(spec: str, device: torch.device) -> tuple[Any, ...]:
    """The file (resolved path, mtime, size) and device, so an overwritten checkpoint is reloaded."""
    path = EMBEDDED.get(spec) or Path(spec).expanduser()
    try:
        st = path.stat() if path.is_file() else None
    except OSError:
        st = None
    if st is None:
        return (spec, str(device))
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))


def image_key(rgb: np.ndarray) -> str:
    """Content hash of a uint8 image (blake2b of shape + bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def _freeze(maps: ImageMaps) -> None:
    """Make the cached arrays read-only: results hand them out, and nobody may change the cache."""
    arrays = [maps.image, *maps.pred.values()]
    for hm in maps.heads.values():
        arrays += [a for a in (hm.stages, hm.attention, hm.block_features, *hm.readouts.values()) if a is not None]
    for a in arrays:
        a.setflags(write=False)


def _progress(progress: Callable[..., Any] | None, frac: float, desc: str) -> None:
    if progress is not None:
        progress(float(frac), desc)


def _cheap_config(spec: str) -> tuple[str, ModelConfig | None]:
    """(source, config) of a set without loading weights; the config is None when it needs them."""
    if spec in REGISTRY:
        return "official", REGISTRY[spec]
    path = EMBEDDED.get(spec) or Path(spec).expanduser()
    if not path.is_file():
        return "unknown", None
    if path.suffix != ".safetensors":
        return "official", None
    try:
        meta = read_metadata(path)
        return "ours", parse_config_json(meta[FORMAT_KEY], path.name) if FORMAT_KEY in meta else None
    except Exception:  # a cheap hint only; analysing the set reports the real problem
        return "unknown", None


# ------------------------------------------------------------------------------------ explorer
class Explorer:
    """Analyses images with model sets, keeping the last models, image maps and reports in memory.

    Args:
        max_models: model sets kept loaded (evicting one forgets its images' maps).
        max_maps: (set, image) backbone passes kept.
        max_model_bytes: bytes of weights the loaded sets may hold together (the newest set is always
            kept); default ``STRUCTTOKEN_MODEL_CACHE_BYTES``, else the one-set budget
            :func:`structtoken.checkpoint.max_model_bytes` (4 GiB). Evicted sets' memory is handed back to
            the system (:func:`structtoken.devices.release_memory`).
    """

    def __init__(self, max_models: int = 2, max_maps: int = 8, max_model_bytes: int | None = None) -> None:
        if max_model_bytes is None:
            env = os.environ.get("STRUCTTOKEN_MODEL_CACHE_BYTES", "").strip()
            max_model_bytes = int(float(env)) if env else max_model_bytes_budget()
        self._models: _LRU[tuple[Any, ...], _ModelEntry] = _LRU(max_models, max_bytes=max_model_bytes)
        self._maps: _LRU[tuple[tuple[Any, ...], str], ImageMaps] = _LRU(max_maps)
        self._reports: dict[str, tuple[float, dict[str, Any] | None]] = {}  # path -> (mtime, JSON)
        self._curves: dict[tuple[str, str], tuple[float, _Curves | None, go.Figure | None]] = {}
        self._reports_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._saturation: _LRU[tuple[Any, ...], list[dict[str, Any]]] = _LRU(16)
        self._overlays: _LRU[tuple[Any, ...], np.ndarray] = _LRU(16)

    @property
    def analyses(self) -> dict[str, Analysis]:
        """The registry: analysis name -> analysis, in display order."""
        return ANALYSES

    @staticmethod
    def available_models() -> list[str]:
        """The sets that can be named: the embedded ones (offline) first, then the released checkpoints."""
        return available_models()

    # ------------------------------------------------------------------------------- analyse
    def analyze(self, request: AnalysisRequest, progress: Callable[[float, str], Any] | None = None) -> AnalysisResult:
        """Analyse one image with one model set (see :class:`AnalysisRequest`).

        Args:
            request: what to show.
            progress: optional ``progress(fraction, description)`` callback (downloads, model pass).

        Raises:
            AnalysisError: any bad input or unsupported request, with a readable message.
        """
        t_start = time.perf_counter()
        analysis, spec, device = self._validate(request)
        rgb, notices = load_image(request.image)
        entry, t_load = self._model_entry(spec, device, progress)
        cfg = entry.model.cfg
        reason = analysis.supported(cfg)
        if reason:
            raise AnalysisError(f"{analysis.title} is not available: {reason}")
        try:
            head = analysis.choose_head(cfg, request.head)
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        maps, cached, t_fwd = self._image_maps(entry, rgb, progress)
        _progress(progress, 0.8, "drawing figures")
        t_fig = time.perf_counter()
        report, rpath, _ = self._report(spec)
        series = self._curves_entry(spec, request.readout)[1]
        # drawn only when asked for (a page draws them in an event of its own: Explorer.dataset_curves)
        curves = self.dataset_curves(spec, request.readout) if request.curves and series is not None else None
        try:
            shown = list(analysis.heads(cfg, head, request.baseline or None))
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        if analysis.uses_readout:
            chosen = head if analysis.chosen_needs_readout else None
            shown, readout_notices = _readout_heads(maps, shown, chosen, request.readout)
            notices += readout_notices
        try:
            class_ids = select_classes(maps, head, analysis.default_classes, list(request.classes or []) or None)
            if not class_ids:
                raise ValueError("no classes selected")
            view_request = ViewRequest(
                head=head,
                heads=tuple(shown),
                class_ids=tuple(class_ids),
                normalize=request.normalize,
                block=None if request.block is None else int(request.block),
                opacity=float(request.opacity),
                readout=request.readout,
                palette=cfg.class_palette(),
                title=f"{analysis.view_title(shown)}: {cfg.name or Path(spec).name}",
                report=report,
                interactive=request.interactive,
            )
            view = analysis.view(maps, view_request)
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        if analysis.name == "attention":
            rows = self._attention_saturation(entry, rgb, head, view.metrics.get("attention_block"))
            if rows:
                view.metrics["saturation"] = rows
                view.notes.append(saturation_sentence(rows))
        overlay = self._overlay(entry, maps, head, view_request)
        t_fig = time.perf_counter() - t_fig
        notices += _notices(cfg, rgb, maps, report is not None, rpath)
        if analysis.name != "prediction":  # the prediction view words the check itself, typical or not
            notices += _domain_notice(maps, head)
        timings = {
            "model_load": round(t_load, 4),
            "backbone+heads": round(t_fwd, 4),
            "figures": round(t_fig, 4),
            "total": round(time.perf_counter() - t_start, 4),
            "cached": cached,
        }
        names = list(cfg.class_names())
        _progress(progress, 1.0, "done")
        return AnalysisResult(
            static=view.figure,
            plot=view.plot,
            overlay=overlay,
            # the cached figure is shared: a copy (of an already validated figure: 3 ms instead of 50)
            curves=curves,
            table=view.table,
            table_headers=view.table_headers,
            summary=_summary(analysis, view, view_request, cfg, spec, maps, notices),
            maps=_arrays(maps, view),
            metrics=json_ready(_metrics(request, spec, cfg, maps, rgb, view_request, view, report, notices, timings)),
            timings=timings,
            classes=names,
            selected_classes=[names[c] for c in class_ids],
            available={name: a.supported(cfg) for name, a in ANALYSES.items()},
            curves_available=series is not None,
        )

    def _validate(self, request: AnalysisRequest) -> tuple[Analysis, str, torch.device]:
        if request.analysis not in ANALYSES:
            raise AnalysisError(f"unknown analysis {request.analysis!r}; choose one of {', '.join(ANALYSES)}")
        if request.normalize not in NORMALIZATIONS:
            raise AnalysisError(
                f"unknown normalisation {request.normalize!r}; choose one of {', '.join(NORMALIZATIONS)}"
            )
        if request.readout not in READOUTS:
            raise AnalysisError(f"unknown readout {request.readout!r}; choose one of {', '.join(READOUTS)}")
        block = request.block
        if block is not None and (isinstance(block, bool) or not isinstance(block, (int, np.integer))):
            raise AnalysisError(f"block must be a whole number or None, got {block!r}")
        try:
            opacity = float(request.opacity)
        except (TypeError, ValueError):
            raise AnalysisError(f"opacity must be a number in [0, 1], got {request.opacity!r}") from None
        if not 0.0 <= opacity <= 1.0:
            raise AnalysisError(f"opacity must be in [0, 1], got {request.opacity!r}")
        if not isinstance(request.model, (str, os.PathLike)) or not str(request.model).strip():
            raise AnalysisError("no model given: use 'camvid', a released model name or a checkpoint path")
        return ANALYSES[request.analysis], str(request.model).strip(), _device(request.device)

    # -------------------------------------------------------------------------------- models
    def describe_model(self, spec: str) -> ModelInfo:
        """What the set ``spec`` offers the controls: its heads, classes, blocks and, per analysis,
        whether it is supported (and why not) and which heads and blocks it offers. Reads only the
        config (a loaded set's, a registered one, or a safetensors file's metadata); never the weights."""
        spec = str(spec).strip()
        source, cfg = _cheap_config(spec)
        loaded = next((e for e in self._models.values() if e.spec == spec), None)
        if loaded is not None:
            cfg = loaded.model.cfg
        name = (cfg.name if cfg is not None else "") or Path(spec).name
        if cfg is None:
            return ModelInfo(spec=spec, name=name, source=source, known=False)
        analyses = {
            key: AnalysisInfo(
                name=key,
                label=a.label,
                title=a.title,
                reason=a.supported(cfg),
                head_control=a.head_control,
                heads=tuple(a.head_choices(cfg)),
                blocks=tuple(a.block_choices(cfg.num_blocks)),
                baselines=tuple(a.baseline_choices(cfg)),
            )
            for key, a in ANALYSES.items()
        }
        return ModelInfo(
            spec=spec,
            name=name,
            source=source,
            known=True,
            heads=tuple(cfg.heads),
            classes=tuple(cfg.class_names()),
            num_blocks=cfg.num_blocks,
            analyses=analyses,
            readouts=_set_readouts(spec, cfg, loaded.model if loaded is not None else None),
        )

    def model(self, spec: str, device: str = "auto") -> Segmentor:
        """The set ``spec`` on ``device``, loaded once and shared with :meth:`analyze`."""
        return self._model_entry(str(spec).strip(), _device(device), None)[0].model

    def cached_models(self) -> list[str]:
        """The specs of the loaded sets, least recently used first."""
        return [e.spec for e in self._models.values()]

    def clear(self) -> None:
        """Forget every loaded set, image maps and report."""
        self._models.clear()
        self._maps.clear()
        self._overlays.clear()
        with self._reports_lock:
            self._reports.clear()
            self._curves.clear()
        release_memory()

    def _model_entry(
        self, spec: str, device: torch.device, progress: Callable[..., Any] | None
    ) -> tuple[_ModelEntry, float]:
        key = _model_key(spec, device)
        entry = self._models.get(key)
        if entry is not None:
            return entry, 0.0
        with self._load_lock:
            entry = self._models.get(key)  # loaded by another thread meanwhile?
            if entry is not None:
                return entry, 0.0
            t0 = time.perf_counter()
            _progress(progress, 0.02, f"loading model {spec}")

            def on_bytes(done: int, total: int | None) -> None:
                if total:
                    mb = f"{done / 1e6:.0f} / {total / 1e6:.0f} MB"
                    _progress(progress, 0.02 + 0.5 * done / total, f"downloading {spec}: {mb}")

            try:
                model = load_any(spec, device=device, progress=False, progress_callback=on_bytes)
            except StructTokenError as e:
                raise AnalysisError(str(e)) from None
            except Exception as e:  # e.g. CUDA out of memory moving the set: say so in the project's words
                release_memory()
                raise AnalysisError(
                    f"could not load model {base_name(spec)} ({type(e).__name__}: {clean(e, 80)}); "
                    "try another model or device 'cpu'"
                ) from None
            model.eval().set_exact_attention(False)  # the fast path (fused SDPA), same tolerance to the fixtures
            if device.type == "cpu":  # the heads side by side, one thread each (Segmentor.set_head_workers)
                try:
                    model.set_head_workers(head_workers())
                except ValueError as e:
                    raise AnalysisError(str(e)) from None
            entry = _ModelEntry(spec=spec, key=key, model=model)
            nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            evicted = self._models.put(key, entry, nbytes)
            for old in evicted:
                self._maps.drop(lambda k, old=old: k[0] != old)
            if evicted:
                release_memory()  # the evicted sets' pages back to the system, not kept by the allocator
            return entry, time.perf_counter() - t0

    def _attention_saturation(self, entry: _ModelEntry, rgb: np.ndarray, head: str, block: Any) -> list[dict[str, Any]]:
        """Score spread and entropy of ``head``'s block ``block`` (1-based) at 1/4, 1/2 and 1x this image's size
        (:func:`analysis.saturation.attention_saturation`), cached per (set, image, head, block); [] if it fails."""
        if not isinstance(block, int):
            return []
        key = (entry.key, image_key(rgb), head, block)
        hit = self._saturation.get(key)
        if hit is not None:
            return hit
        try:
            with entry.lock:
                rows = attention_saturation(entry.model, rgb, head, block, SATURATION_SCALES)
        except (RuntimeError, ValueError):
            return []
        self._saturation.put(key, rows)
        return rows

    def _overlay(self, entry: _ModelEntry, maps: ImageMaps, head: str, view: ViewRequest) -> np.ndarray:
        """The prediction overlay with its legend (read-only; cached: a control change other than the head or
        the opacity redraws nothing of it, and :func:`save_images` encodes it once)."""
        key = (entry.key, image_key(maps.image), head, round(view.opacity, 4))
        hit = self._overlays.get(key)
        if hit is None:
            hit = F.overlay_with_legend(maps.image, maps.pred[head], view.palette, maps.class_names, alpha=view.opacity)
            hit.setflags(write=False)
            self._overlays.put(key, hit)
        return hit

    def _image_maps(
        self, entry: _ModelEntry, rgb: np.ndarray, progress: Callable[..., Any] | None
    ) -> tuple[ImageMaps, bool, float]:
        """The image's maps from the cache, else from one pass of the model (one pass at a time per model)."""
        key = (entry.key, image_key(rgb))
        hit = self._maps.get(key)
        if hit is not None:
            return hit, True, 0.0
        with entry.lock:
            hit = self._maps.get(key)
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
            self._maps.put(key, maps)
        return maps, False, maps.seconds

    # ------------------------------------------------------------------------------- reports
    def dataset_curves(self, spec: str, readout: str = "raw") -> go.Figure | None:
        """The set's dataset-level per-block curves under ``readout`` (a copy: the caller may restyle it), or
        None without a shipped report. Drawn on the first call per readout, then cached."""
        key, series, fig = self._curves_entry(str(spec).strip(), readout)
        if series is None:
            return None
        if fig is None:
            fig = series.figure()
            with self._reports_lock:
                hit = self._curves.get(key)
                if hit is not None and hit[1] is series:  # the report did not change meanwhile
                    self._curves[key] = (hit[0], series, fig)
        # the cached figure is shared: a copy (of an already validated figure: 3 ms instead of 50)
        return None if fig is None else go.Figure(fig.to_dict(), _validate=False)

    def shipped_report(self, spec: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The dataset report (``metrics.json`` of ``python -m analysis report``) shipped with a set, or
        None when there is none (or it cannot be read). See :func:`report_path` for where it is looked for."""
        return self._report(str(spec))[0]

    def _report(self, spec: str) -> tuple[dict[str, Any] | None, Path | None, float]:
        """(report, where it is looked for, its mtime), re-read when the file changes."""
        path = report_path(spec)
        if path is None or not path.is_file():
            return None, path, 0.0
        mtime = path.stat().st_mtime
        with self._reports_lock:
            hit = self._reports.get(str(path))
        if hit is None or hit[0] != mtime:
            hit = (mtime, _read_report(path))
            with self._reports_lock:
                self._reports[str(path)] = hit
        return hit[1], path, mtime

    def _curves_entry(self, spec: str, readout: str) -> tuple[tuple[str, str], _Curves | None, go.Figure | None]:
        """(cache key, the report's curves under ``readout`` before they are drawn, the drawn figure if it
        was drawn already); re-read with the report."""
        data, path, mtime = self._report(spec)
        key = (str(path), readout)
        if data is None:
            return key, None, None
        with self._reports_lock:
            hit = self._curves.get(key)
        if hit is None or hit[0] != mtime:
            hit = (mtime, _report_curves(data, readout), None)
            with self._reports_lock:
                self._curves[key] = hit
        return key, hit[1], hit[2]


def _device(spec: str) -> torch.device:
    if spec not in DEVICES:
        raise AnalysisError(f"unknown device {spec!r}; choose one of {', '.join(DEVICES)}")
    try:
        return resolve_device(spec)
    except (ValueError, RuntimeError) as e:
        raise AnalysisError(str(e)) from None


# ---------------------------------------------------------------------------------- readouts
def _set_readouts(spec: str, cfg: ModelConfig, model: Segmentor | None) -> dict[str, str | None]:
    """readout -> None when some head of the set gives it, else why not (see :attr:`ModelInfo.readouts`)."""
    if model is not None:
        heads = dict(model.heads.items())
        fitted = getattr(model, "fitted_readouts", None)
    else:
        try:
            with torch.device("meta"):  # only their readout contract is read: no weights are made
                heads = {h: build_head(h, cfg) for h in cfg.heads}
        except Exception as e:  # a config the heads cannot be built from: say so instead of guessing
            return {r: f"the heads of this set cannot be built ({e})" for r in READOUTS}
        fitted = None
    out: dict[str, str | None] = {}
    for r in READOUTS:
        if r == "fitted" and model is None:
            path = EMBEDDED.get(spec) or Path(spec).expanduser()
            out[r] = None if path.suffix == ".safetensors" and readouts_path(path).is_file() else NO_FITTED_REASON
            continue
        reasons = {h: readout_unavailable(h, m, r, fitted) for h, m in heads.items()}
        if any(v is None for v in reasons.values()):
            out[r] = None
        else:
            out[r] = "; ".join(dict.fromkeys(v for v in reasons.values() if v)) or f"no head gives the {r} readout"
    return out


def _readout_heads(maps: ImageMaps, heads: list[str], chosen: str | None, readout: str) -> tuple[list[str], list[str]]:
    """(the heads that give ``readout``, notices): heads without it are left out with a notice saying
    why; the raw caveat of a head whose channels are not class-aligned is a notice too.

    Raises:
        AnalysisError: the ``chosen`` head (None: none is required) has no such readout, or no head has.
    """
    problems = {h: readout_problem(maps, h, readout) for h in heads}
    if chosen is not None and problems.get(chosen) is not None:
        raise AnalysisError(f"the {readout} readout is not available for {head_label(chosen)}: {problems[chosen]}")
    notices = [f"{head_label(h)} left out: no {readout} readout ({why})" for h, why in problems.items() if why]
    kept = [h for h in heads if problems[h] is None]
    if not kept:
        raise AnalysisError(f"no head shown here gives the {readout} readout: {'; '.join(notices)}")
    for h in kept:
        caveat = readout_caveat(maps, h, readout)
        if caveat:
            notices.append(f"{head_label(h)} under the raw readout: {caveat}")
    return kept, notices


# ---------------------------------------------------------------------------------- result parts
def _domain_notice(maps: ImageMaps, head: str) -> list[str]:
    """The out-of-domain sentence (:func:`analysis.domain.domain_check` of ``head``'s prediction) when the
    image is unusual or far from the set's training domain; nothing for a typical image or an unknown set."""
    reference = reference_frequencies(maps.class_names)
    if reference is None:
        return []
    check = domain_check(class_areas(maps.pred[head], len(maps.class_names)), reference, maps.class_names)
    return [] if check.level == "typical" else [check.message.rstrip(".")]


def _notices(cfg: ModelConfig, rgb: np.ndarray, maps: ImageMaps, has_report: bool, report_at: Path | None) -> list[str]:
    """Sentences about what happened to the image and what the set lacks."""
    out = []
    seen = maps.image.shape
    if tuple(seen[:2]) != tuple(rgb.shape[:2]):
        out.append(
            f"the set resizes images to fit {cfg.test_scale[0]}x{cfg.test_scale[1]} before inference: "
            f"{_wh(rgb.shape)} → {_wh(seen)} px"
            if cfg.test_scale
            else f"image resized from {_wh(rgb.shape)} to {_wh(seen)} px"
        )
    if cfg.test_mode == "slide":
        out.append("this set is evaluated with a sliding window; the maps here come from one whole-image pass")
    if not has_report:
        where = f" ({report_at})" if report_at is not None else ""
        out.append(f"no dataset report shipped with this set{where}: dataset-level curves are not available")
    return out


def _summary(
    analysis: Analysis,
    view: View,
    request: ViewRequest,
    cfg: ModelConfig,
    spec: str,
    maps: ImageMaps,
    notices: list[str],
) -> str:
    """Markdown: the heading, the set and image, the analysis's own prose, notes, notices and the table."""
    heads = ", ".join(head_label(h) for h in cfg.heads)
    lines = [
        f"### {analysis.view_title(request.heads)}",
        f"Model set **{cfg.name or spec}** ({heads}); shown head: **{head_label(request.head)}**; "
        f"image {_wh(maps.image.shape)} px, feature grid {maps.grid[0]}x{maps.grid[1]} cells; classes shown: "
        f"{', '.join(maps.class_names[c] for c in request.class_ids)}.",
        analysis.describe(view, request),
        *view.notes,
    ]
    if notices:
        lines.append("**Notices:** " + "; ".join(notices) + ".")
    if view.table and view.table_headers:
        lines.append(md_table(view.table_headers, view.table))
    return "\n\n".join(lines)


def _arrays(maps: ImageMaps, view: View) -> dict[str, np.ndarray]:
    """The ``.npz`` download: the image, every head's stages, attention and prediction, the view's arrays."""
    arrays: dict[str, np.ndarray] = {"image": maps.image}
    for h, hm in maps.heads.items():
        arrays[f"{h}/stages"] = hm.stages
        for r, a in hm.readouts.items():
            arrays[f"{h}/readout_{r}"] = a
        arrays[f"{h}/stage_names"] = np.asarray(hm.stage_names)
        if hm.attention is not None:
            arrays[f"{h}/attention"] = hm.attention
        arrays[f"pred/{h}"] = maps.pred[h]
    return {**arrays, **view.arrays}


def _metrics(
    request: AnalysisRequest,
    spec: str,
    cfg: ModelConfig,
    maps: ImageMaps,
    rgb: np.ndarray,
    view_request: ViewRequest,
    view: View,
    report: dict[str, Any] | None,
    notices: list[str],
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The JSON download: the request as resolved, the view's numbers, notices, timings, the report."""
    names = list(cfg.class_names())
    out: dict[str, Any] = {
        "model": spec,
        "model_name": cfg.name,
        "heads": list(cfg.heads),
        "analysis": request.analysis,
        "head": view_request.head,
        "heads_shown": list(view_request.heads),
        "baseline": request.baseline or None,
        "normalize": view_request.normalize,
        "readout": view_request.readout,
        "block": view_request.block,
        "classes": names,
        "selected_classes": [names[c] for c in view_request.class_ids],
        "selected_class_ids": list(view_request.class_ids),
        "input_size_wh": [int(rgb.shape[1]), int(rgb.shape[0])],
        "image_size_wh": [int(maps.image.shape[1]), int(maps.image.shape[0])],
        "grid_hw": list(maps.grid),
        **view.metrics,
        "notices": notices,
        "timings": timings,
    }
    if report is not None:
        out["dataset_report"] = {k: v for k, v in report.items() if k != "probe"}
    return out


# ------------------------------------------------------------------------------------ downloads
def figure_png_bytes(result: AnalysisResult) -> bytes:
    """The result's static figure as PNG bytes: its ``pixels`` when it has them, else ``figure`` drawn."""
    if result.pixels is not None:
        return _png_of(result.pixels)
    return F.figure_to_png_bytes(result.figure)


def save_images(result: AnalysisResult, folder: Path, stem: str) -> tuple[Path | None, Path | None]:
    """The images a page shows of one result, written once into ``folder``: (the figure PNG, which is
    also its PNG download, and the prediction overlay PNG); None for what the result lacks. PNGs at
    zlib level 1 (:data:`analysis.figures.PNG_COMPRESS_LEVEL`): lossless, a few times faster to write."""
    figure = overlay = None
    if result.static is not None:
        figure = folder / f"{stem}.png"
        figure.write_bytes(figure_png_bytes(result))
    if result.overlay is not None:
        overlay = folder / f"{stem}_overlay.png"
        overlay.write_bytes(_png_of(result.overlay))
    return figure, overlay


_PNGS: _LRU[int, tuple[np.ndarray, bytes]] = _LRU(8)
"""PNG bytes of recently encoded read-only images (the cached overlays), by ``id`` (checked by identity)."""


def _png_of(image: np.ndarray) -> bytes:
    """``[H, W, 3]`` uint8 as PNG bytes; a read-only image (a cached one) is encoded once."""
    hit = _PNGS.get(id(image))
    if hit is not None and hit[0] is image:
        return hit[1]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png", compress_level=F.PNG_COMPRESS_LEVEL)
    if not image.flags.writeable:
        _PNGS.put(id(image), (image, buf.getvalue()))
    return buf.getvalue()


def save_downloads(
    result: AnalysisResult, folder: Path, stem: str, which: Sequence[str] = ("png", "pdf", "npz", "json")
) -> dict[str, Path | None]:
    """Write the downloads ``which`` (any of ``png``, ``pdf``: the figure; ``npz``: the maps; ``json``:
    the numbers) of one result into ``folder``, each once, named from ``stem``. Returns
    ``{"png", "pdf", "npz", "json"}`` paths (None for what was not asked for, or has nothing to write)."""
    out: dict[str, Path | None] = {"png": None, "pdf": None, "npz": None, "json": None}
    if result.static is not None:
        if "png" in which:
            out["png"] = folder / f"{stem}.png"
            out["png"].write_bytes(figure_png_bytes(result))
        if "pdf" in which:
            out["pdf"] = folder / f"{stem}.pdf"
            out["pdf"].write_bytes(F.figure_to_pdf_bytes(result.figure))
    if result.maps and "npz" in which:
        out["npz"] = folder / f"{stem}_maps.npz"
        # uncompressed: 3 ms instead of ~130 ms per request for a file ~1.4x larger (float maps compress poorly)
        np.savez(out["npz"], **{k: np.asarray(v) for k, v in result.maps.items()})
    if "json" in which:
        out["json"] = folder / f"{stem}_metrics.json"
        out["json"].write_text(json.dumps(result.metrics, indent=2, default=str))
    return out

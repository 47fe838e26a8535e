"""StructToken Explorer: a Gradio app to see, block by block, how StructToken heads build a segmentation.

Layout and events only: every analysis goes through an :class:`analysis.service.Explorer`, which
owns the models and caches; :func:`build_demo` lays out the page for one Explorer. Importing this
module has no side effects; ``python app.py`` (also how Hugging Face Spaces runs it) calls
:func:`main`.

    python app.py                      # http://127.0.0.1:7860
    GRADIO_SERVER_NAME=0.0.0.0 python app.py
    STRUCTTOKEN_DEFAULT_MODEL=path/to/set.safetensors python app.py
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from analysis.labels import HEAD_LABELS, NORMALIZATION_LABELS
from analysis.service import (
    READOUTS,
    AnalysisError,
    AnalysisInfo,
    AnalysisRequest,
    AnalysisResult,
    Explorer,
    ModelInfo,
    save_downloads,
    save_pdf,
)

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
MAX_FILE_SIZE = "20mb"
CAMVID_EXAMPLES = 6
KEEP_REQUEST_DIRS = 64  # per-request download folders kept on disk (older ones are deleted)
DEFAULT_ANALYSIS = "comparison"
ALL_BLOCKS = -1
"""The block control's "every stage" (comparison, probe) / "last block" (attention) value."""

log = logging.getLogger("structtoken.app")


def default_model() -> str:
    """The set the page opens with: ``$STRUCTTOKEN_DEFAULT_MODEL`` (a name or a file), else ``camvid``."""
    return os.environ.get("STRUCTTOKEN_DEFAULT_MODEL") or "camvid"


TITLE = "StructToken Explorer"
INTRO = """
# StructToken Explorer

StructToken (Lin et al., *StructToken: Rethinking Semantic Segmentation with Structural Prior*,
[arXiv:2203.12612](https://arxiv.org/abs/2203.12612)) segments an image with **learnable structure
tokens**: one spatial map per class, refined by a few blocks that let the tokens interact with the ViT
features (CSE: cross-slice extraction, SSE: self-slice extraction, PWE: point-wise extraction). Upload an
image to see, block by block, how the StructToken heads and a per-pixel baseline (with and without deep
supervision) build their answers, with numbers beside the pictures.
"""
HELP = """
* **Prediction**: the chosen head's segmentation over the image (any head of the set, the per-pixel ones
  included) and, in the numbers, the area each class takes in the prediction of every head.
* **Paper comparison** (the paper's Fig. 3 layout): rows are classes, columns the class maps entering block 1
  (*input*), after every block and at the head *output*, for the chosen StructToken head and the per-pixel
  baseline side by side. The white line is the class's boundary in the chosen head's prediction. The numbers
  give, per stage, the share of feature-grid cells whose strongest class already equals the head's output.
* **Deep-supervision probe**: the same grid for the per-pixel baseline without and with deep supervision
  (a loss on every block's map) next to StructToken: does deep supervision alone give StructToken-like
  block maps? The verdict and the dataset numbers come from the set's shipped report (training seeds).
* **Token–feature attention** (CSE and SSE heads): how much each class token reads each feature channel in
  the chosen block, and the feature maps of the channels the first selected class reads most.
* **Block**: show one stage only (*input*, *block k*, *output*) instead of every stage; for the attention,
  which block.
* **Normalisation**: *shared per class* puts every map of a class on one colour scale (compare stages and
  heads); *per map* stretches each map on its own (see shape); *softmax* shows class probabilities.
* **Classes**: empty means the classes with the largest predicted area; pick others by name.
* **Dataset-level curves** (when the set ships an evaluation report): mIoU, mask AP and boundary F1 of every
  block's maps on the validation set.
* **Examples**: a synthetic street scene and public-domain photos shipped with the app, then the first CamVid
  validation frames when the dataset folder is present (read in place, never copied).
* **Downloads**: the figure (PNG/PDF), every map of every head (`.npz`) and the numbers (`.json`).
"""

CSS = """
.gradio-container {max-width: 1400px !important; margin: auto;}
#st-intro p {font-size: 0.95rem; line-height: 1.45;}
#st-availability p {font-size: 0.85rem; color: var(--body-text-color-subdued);}
#st-summary {min-height: 3rem;}
.st-downloads button {min-width: 0;}
#st-summary td:first-child, #st-summary th:first-child {white-space: nowrap;}
#st-summary table {font-size: 0.85rem;}
#st-plot {overflow-x: auto !important;}
#st-plot .js-plotly-plot {width: max-content;}
"""


# --------------------------------------------------------------------------- platform
def _gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` on Hugging Face (ZeroGPU) Spaces; the function itself everywhere else."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def _on_spaces() -> bool:
    try:
        import spaces  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def tune_malloc(threshold: int = 256 * 1024) -> bool:
    """glibc only: serve every allocation above ``threshold`` bytes with its own mmap, returned to the system
    when freed. By default glibc raises that threshold as big buffers come and go, and the image-sized
    arrays of concurrent requests then fragment the heaps of the worker threads. ``bench/bench_app.py``
    measured the server's RSS growing 356 MB from request 10 to 200 without this and :func:`tidy_memory`,
    63 MB with both. Returns whether the setting was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD; fixing it stops the adjustment
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


class MemoryTidier:
    """Frees the previous requests' figures before each request. Matplotlib figures are reference
    cycles, so they would wait for a full garbage collection, which is rare, and pile up meanwhile. The
    first call freezes the long-lived objects (modules, the models), so later collections only scan what
    requests created and cost milliseconds (``app_gc_s`` in the timings)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frozen = False

    def __call__(self) -> None:
        with self._lock:
            gc.collect()
            if not self._frozen:
                gc.freeze()
                self._frozen = True


class RequestFolders:
    """A fresh folder per request's downloads, under one temporary root; only the newest ``keep`` are kept."""

    def __init__(self, keep: int = KEEP_REQUEST_DIRS) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._dirs: collections.deque[Path] = collections.deque()
        self._root: Path | None = None

    def new(self) -> Path:
        with self._lock:
            if self._root is None or not self._root.is_dir():
                self._root = Path(tempfile.mkdtemp(prefix="structtoken_app_"))
            d = Path(tempfile.mkdtemp(dir=self._root))
            self._dirs.append(d)
            while len(self._dirs) > self.keep:
                shutil.rmtree(self._dirs.popleft(), ignore_errors=True)
        return d


# --------------------------------------------------------------------------- models and examples
def _model_label(name: str) -> str:
    if os.sep in name or name.endswith(CHECKPOINT_SUFFIXES):
        return f"{Path(name).name} (local)"
    if name == "camvid":
        return "camvid (embedded, offline)"
    return name


def model_names(explorer: Explorer) -> list[str]:
    """The models the picker offers: the default first, then the embedded and released sets."""
    first = default_model()
    return [first, *(n for n in explorer.available_models() if n != first)]


def camvid_root() -> Path:
    env = os.environ.get("STRUCTTOKEN_CAMVID")
    return Path(env).expanduser() if env else (ROOT.parent / "shared" / "data" / "camvid")


def _camvid_val_images(n: int = CAMVID_EXAMPLES) -> list[Path]:
    """The first ``n`` CamVid validation frames (read in place, never copied into the project)."""
    root = camvid_root()
    images = root / "val" / "images"
    if not images.is_dir():
        return []
    names: list[str] = []
    listing = root / "val.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    out: list[Path] = []
    if names:
        for stem in names:
            hits = [images / f"{stem}{s}" for s in (".png", ".jpg", ".jpeg")]
            hit = next((h for h in hits if h.is_file()), None)
            if hit is not None:
                out.append(hit)
            if len(out) >= n:
                break
    else:
        out = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    return out


def example_images() -> list[Path]:
    """Shipped examples (street scene first), then CamVid validation frames when the dataset is present."""
    shipped = sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    shipped.sort(key=lambda p: (not p.name.startswith("street"), p.name))
    return [*shipped, *_camvid_val_images()]


# --------------------------------------------------------------------------- argument handling
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).stem if os.sep in text else text).strip("-") or "model"


def _is_array(x: Any) -> bool:
    return hasattr(x, "__array_interface__") or type(x).__module__.startswith("numpy")


def _payload_path(value: Any) -> str | None:
    """A file component's raw payload (events run with ``preprocess=False``) -> its server-side path."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (list, tuple)):
        return _payload_path(value[0]) if value else None
    path = getattr(value, "path", None)
    if path:
        return str(path)
    return str(value) if isinstance(value, (str, Path)) else None


def _has_image(image: Any) -> bool:
    return _is_array(image) or _payload_path(image) is not None


def _key_of(value: Any, labels: Mapping[str, str], what: str, default: str) -> str:
    """A control value (a key or its label, any case) -> the key."""
    if value in (None, ""):
        return default
    s = str(value).strip()
    for key, label in labels.items():
        if s.lower() in (key.lower(), label.lower()):
            return key
    raise gr.Error(f"unknown {what} {s!r}; choose one of: {', '.join(labels)}")


def _classes_arg(classes: Any) -> list[str] | None:
    if classes in (None, "", []):
        return None
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    return [str(c) for c in classes] or None


def _head_arg(head: Any) -> str | None:
    if head in (None, "", "auto"):
        return None
    s = str(head).strip()
    for key, label in HEAD_LABELS.items():
        if s.lower() in (key, label.lower()):
            return key
    return s


def _block_arg(block: Any) -> int | None:
    """Block control -> service ``block``: -1 / None = every stage (attention: the last block);
    comparison and probe: 0 = input maps, 1..N = after that block, N + 1 = output; attention: 1..N."""
    if block in (None, "", "all", "last"):
        return None
    try:
        f = float(block)
    except (TypeError, ValueError):
        raise gr.Error(f"block must be a whole number (-1 = all), got {block!r}") from None
    if f != int(f):
        raise gr.Error(f"block must be a whole number (-1 = all), got {block!r}")
    return None if int(f) < 0 else int(f)


def _opacity_arg(opacity: Any) -> float:
    if opacity in (None, ""):
        return 0.5
    try:
        v = float(opacity)
    except (TypeError, ValueError):
        raise gr.Error(f"opacity must be a number in [0, 1], got {opacity!r}") from None
    if not 0.0 <= v <= 1.0:
        raise gr.Error(f"opacity must be in [0, 1], got {opacity!r}")
    return v


def _block_choices(info: AnalysisInfo) -> list[tuple[str, int]]:
    return [(label, ALL_BLOCKS if b is None else b) for label, b in info.blocks]


# --------------------------------------------------------------------------- outputs
OUTPUT_NAMES = (
    "figure",
    "plot",
    "overlay",
    "curves",
    "table",
    "summary",
    "timings",
    "download_png",
    "download_pdf",
    "download_npz",
    "download_json",
)
"""What ``/analyze`` returns, in order (the page also keeps a private state for its controls)."""
FAILED_SUMMARY = "*No result: the analysis stopped with the error shown at the top right; change the input and retry.*"
PLOT_MAX_WIDTH = 1800  # px: wider interactive mosaics are scaled down to this (the results column scrolls)


def _table_value(rows: Sequence[Sequence[Any]] | None, headers: Sequence[str] | None) -> Any:
    import pandas as pd

    headers = list(headers or [])
    rows = [list(r) for r in rows or []]
    if not headers and rows:
        headers = [f"col {i}" for i in range(len(rows[0]))]
    return pd.DataFrame(rows, columns=headers)


def fit_plot(fig: Any) -> Any:
    """Cap a plotly figure's fixed width (scaling a fixed height in proportion, so aspect-locked mosaics
    keep their shape); the results column scrolls sideways for figures wider than itself, so the hover
    values stay legible instead of being squeezed."""
    if fig is None or not hasattr(fig, "update_layout"):
        return fig
    width, height = fig.layout.width, fig.layout.height
    if width and width > PLOT_MAX_WIDTH:
        fig.update_layout(width=PLOT_MAX_WIDTH, height=int(height * PLOT_MAX_WIDTH / width) if height else None)
    return fig


def clear_for_new_image(image: Any) -> tuple[Any, ...]:
    """A new (or no) image: drop the previous image's results before analysing the new one."""
    summary = "*Analysing…*" if _has_image(image) else "*Upload an image or pick an example.*"
    return (None, None, None, None, None, summary, None, None, None, None, None, None)


def _progress_adapter(progress: Any) -> Callable[[float, str], None] | None:
    if progress is None:
        return None

    def report(frac: float | None, desc: str | None = None) -> None:
        with contextlib.suppress(Exception):  # progress is cosmetic; never fail a request over it
            progress(frac, desc=desc)

    return report


# --------------------------------------------------------------------------- events
class ExplorerUI:
    """The page's event handlers for one :class:`Explorer` (what the page and ``/analyze`` call).

    Args:
        explorer: the service.
        folders: where each request's downloads go.
    """

    def __init__(self, explorer: Explorer, folders: RequestFolders | None = None) -> None:
        self.explorer = explorer
        self.folders = folders or RequestFolders()
        self.tidy_memory = MemoryTidier()
        self._run = _gpu(self._analyze)
        labels = {key: a.label for key, a in explorer.analyses.items()}
        self.analysis_labels: dict[str, str] = labels

    def _analyze(self, request: AnalysisRequest, progress: Callable | None = None) -> AnalysisResult:
        return self.explorer.analyze(request, progress)

    def model_spec(self, model: Any, checkpoint: Any) -> str:
        """The model the service gets: an uploaded checkpoint, else one of the picker's names (never a
        free path: API callers cannot point the server at its own files)."""
        ckpt = _payload_path(checkpoint)
        if ckpt:
            if not ckpt.lower().endswith(CHECKPOINT_SUFFIXES):
                raise gr.Error(f"checkpoint {Path(ckpt).name!r}: expected a .safetensors or .pth file")
            return ckpt
        allowed = model_names(self.explorer)
        name = str(model).strip() if model not in (None, "") else allowed[0]
        if name not in allowed:
            raise gr.Error(f"unknown model {name!r}; choose one of: {', '.join(allowed)}")
        return name

    def analysis_key(self, value: Any) -> str:
        """An analysis control value (key or label) -> the registry key."""
        return _key_of(value, self.analysis_labels, "analysis", DEFAULT_ANALYSIS)

    # ---------------------------------------------------------------- the analysis
    def analyze_image(
        self,
        image: Any,
        model: Any = None,
        analysis: Any = DEFAULT_ANALYSIS,
        head: Any = None,
        classes: Any = None,
        normalize: Any = "shared",
        block: Any = ALL_BLOCKS,
        opacity: Any = 0.5,
        checkpoint: Any = None,
        readout: Any = "raw",
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects the tracker through the default
        pdf: bool = True,
    ) -> tuple[Any, ...]:
        """Run one analysis of ``image``: the outputs of :data:`OUTPUT_NAMES`, then the controls' state.

        ``pdf=False`` (the page) leaves the figure PDF to :meth:`render_pending_pdf`, a follow-up step.
        Every :class:`analysis.service.AnalysisError` becomes a ``gr.Error`` with its message; any other
        exception is logged and reported as ``internal error: ...`` (the server stays up).
        """
        t0 = time.perf_counter()
        img = image if _is_array(image) else _payload_path(image)
        if img is None:
            raise gr.Error("Upload an image first (or pick one of the examples).")
        try:
            spec = self.model_spec(model, checkpoint)
            request = AnalysisRequest(
                image=img,
                model=spec,
                analysis=self.analysis_key(analysis),
                head=_head_arg(head),
                classes=_classes_arg(classes),
                normalize=_key_of(normalize, NORMALIZATION_LABELS, "normalisation", "shared"),
                block=_block_arg(block),
                opacity=_opacity_arg(opacity),
                readout=str(readout or "raw"),
            )
            t_gc = time.perf_counter()
            self.tidy_memory()
            t_gc = time.perf_counter() - t_gc
            try:
                result = self._run(request, None if _on_spaces() else _progress_adapter(progress))
            except AnalysisError as e:
                raise gr.Error(str(e), title="Cannot analyse this") from None
            t1 = time.perf_counter()
            stem = f"structtoken_{request.analysis}_{_slug(spec)}"
            folder = self.folders.new()
            files = {k: None if v is None else str(v) for k, v in save_downloads(result, folder, stem, pdf).items()}
            t2 = time.perf_counter()
            timings = dict(result.timings or {})
            timings.update(
                app_gc_s=round(t_gc, 4),
                app_service_s=round(t1 - t0, 4),
                app_downloads_s=round(t2 - t1, 4),
                app_total_s=round(time.perf_counter() - t0, 4),
            )
            pending = None if pdf or result.figure is None else folder / f"{stem}.pdf"
            state = {
                "spec": spec,
                "analysis": request.analysis,
                "head": result.metrics.get("head"),
                "block": ALL_BLOCKS if request.block is None else request.block,
                "selected": list(result.selected_classes),
                "has_curves": result.curves is not None,
                # the page's follow-up step renders the PDF from this figure into this path
                "pdf_figure": result.figure if pending is not None else None,
                "pdf_path": pending,
            }
            return (
                files["png"],
                fit_plot(result.plot),
                result.overlay,
                result.curves,
                _table_value(result.table, result.table_headers),
                result.summary or "",
                timings,
                files["png"],
                files["pdf"],
                files["npz"],
                files["json"],
                state,
            )
        except gr.Error:
            raise
        except Exception as e:  # the event boundary: report, keep serving
            log.exception("analysis failed")
            msg = str(e).splitlines()[0] if str(e) else ""
            raise gr.Error(f"internal error: {type(e).__name__}{': ' + msg if msg else ''}") from None

    def analyze_page(self, *args: Any, progress: gr.Progress = gr.Progress()) -> Any:  # noqa: B008
        """The page's Analyze button: as the API, with the PDF rendered in a follow-up step."""
        return self.analyze_image(*args, progress=progress, pdf=False)

    def analyze_if_image(self, *args: Any, progress: gr.Progress = gr.Progress()) -> Any:  # noqa: B008
        """The page's analysis (its controls re-run it): nothing without an image; the PDF comes after."""
        if not _has_image(args[0]):
            return tuple(gr.skip() for _ in range(len(OUTPUT_NAMES) + 1))
        return self.analyze_image(*args, progress=progress, pdf=False)

    def render_pending_pdf(self, state: dict[str, Any] | None) -> Any:
        """The page's follow-up step: the figure PDF of the last run (the picture is already shown)."""
        if not state or state.get("pdf_figure") is None:
            return gr.skip()
        try:
            return str(save_pdf(state["pdf_figure"], Path(state["pdf_path"])))
        except Exception:  # a missing PDF must not break the page
            log.exception("PDF export failed")
            return None
        finally:
            state["pdf_figure"] = None  # drop the figure from the session

    # ---------------------------------------------------------------- controls
    def control_updates(
        self, info: ModelInfo, analysis: str, head: str | None, block: Any, selected: Sequence[str] | None
    ) -> tuple[Any, Any, Any, Any, Any]:
        """Updates for (analysis, availability, head, block, classes) that fit the set ``info``."""
        if not info.known:  # an official .pth before its first run: keep the controls as they are
            choices = [(label, key) for key, label in self.analysis_labels.items()]
            return gr.update(choices=choices, value=analysis), "", gr.update(), gr.update(), gr.update()
        available = {key: a.reason for key, a in info.analyses.items()}
        if available.get(analysis):  # the current choice is impossible with this set: fall back
            analysis = next((a for a in (DEFAULT_ANALYSIS, "prediction") if not available.get(a)), analysis)
        analysis_up = gr.update(
            choices=[(a.label + (" (n/a)" if a.reason else ""), key) for key, a in info.analyses.items()],
            value=analysis,
        )
        availability = "  \n".join(
            f"**{a.label}** is not available: {a.reason}" for a in info.analyses.values() if a.reason
        )
        shown = info.analyses[analysis]
        options = list(shown.heads)
        head_up = gr.update(
            choices=[(HEAD_LABELS.get(h, h), h) for h in options],
            value=head if head in options else (options[0] if options else None),
            interactive=len(options) > 1,
            label=shown.head_control,
        )
        blocks = _block_choices(shown)
        b = _block_arg(block)
        b = ALL_BLOCKS if b is None else b
        block_up = gr.update(
            choices=blocks, value=b if b in [v for _, v in blocks] else ALL_BLOCKS, interactive=len(blocks) > 1
        )
        keep = [c for c in (selected or []) if c in info.classes]
        return analysis_up, availability, head_up, block_up, gr.update(choices=list(info.classes), value=keep)

    def refresh_controls(
        self,
        model: Any,
        checkpoint: Any,
        analysis: Any,
        head: Any,
        block: Any,
        classes: Any,
        reset_classes: bool = False,
    ) -> tuple[Any, ...]:
        """Cheap (no weights loaded): fit the controls to the chosen set before analysing."""
        try:
            spec = self.model_spec(model, checkpoint)
            key = self.analysis_key(analysis)
        except gr.Error:
            return tuple(gr.skip() for _ in range(5))
        info = self.explorer.describe_model(spec)
        out = self.control_updates(info, key, _head_arg(head), block, [] if reset_classes else _classes_arg(classes))
        if reset_classes and not info.known:
            out = (*out[:4], gr.update(choices=[], value=[]))
        return out

    def on_model_change(self, *args: Any) -> tuple[Any, ...]:
        return self.refresh_controls(*args, reset_classes=True)

    def controls_from_result(self, state: dict[str, Any] | None) -> tuple[Any, ...]:
        """After a run: the set's heads, blocks and classes (now known, the set being loaded)."""
        if not state:
            return tuple(gr.skip() for _ in range(6))
        info = self.explorer.describe_model(state["spec"])
        fitted = self.control_updates(info, state["analysis"], state["head"], state["block"], state["selected"])
        return (*fitted, gr.update(visible=bool(state.get("has_curves"))))


# --------------------------------------------------------------------------- layout
def build_demo(explorer: Explorer) -> gr.Blocks:
    """The page for ``explorer``. Cheap: reads the default set's config, loads no weights."""
    ui = ExplorerUI(explorer)
    models = model_names(explorer)
    info = explorer.describe_model(models[0])
    first = info.analyses.get(DEFAULT_ANALYSIS) or AnalysisInfo(
        DEFAULT_ANALYSIS, "", "", None, "StructToken head", (), (("every stage", None),)
    )
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600), analytics_enabled=False) as demo:
        gr.Markdown(INTRO, elem_id="st-intro")
        with gr.Accordion("How to read this", open=False):
            gr.Markdown(HELP)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=340):
                image = gr.Image(
                    sources=["upload", "clipboard", "webcam"],
                    type="numpy",
                    label="Image",
                    height=300,
                    elem_id="st-image",
                )
                run = gr.Button("Analyze", variant="primary", elem_id="st-run")
                gr.Examples(
                    examples=[[str(p)] for p in example_images()],
                    inputs=[image],
                    label="Examples",
                    examples_per_page=12,
                )
                model = gr.Dropdown(
                    choices=[(_model_label(m), m) for m in models],
                    value=models[0],
                    label="Model set",
                    info="camvid is embedded (offline); released ADE20K sets download on first use.",
                )
                with gr.Accordion("Local checkpoint (overrides the model set)", open=False):
                    checkpoint = gr.File(
                        label="StructToken checkpoint (.safetensors from this project, or an official .pth)",
                        file_types=list(CHECKPOINT_SUFFIXES),
                        file_count="single",
                        elem_id="st-checkpoint",
                    )
                analysis = gr.Radio(
                    choices=[(a.label, key) for key, a in explorer.analyses.items()],
                    value="comparison",
                    label="Analysis",
                    elem_id="st-analysis",
                )
                availability = gr.Markdown("", elem_id="st-availability")
                with gr.Row():
                    head = gr.Dropdown(
                        choices=[(HEAD_LABELS.get(h, h), h) for h in first.heads],
                        value=None,
                        label="StructToken head",
                        scale=1,
                        elem_id="st-head",
                    )
                    block = gr.Dropdown(
                        choices=_block_choices(first),
                        value=ALL_BLOCKS,
                        label="Block",
                        scale=1,
                        elem_id="st-block",
                    )
                classes = gr.Dropdown(
                    choices=[],
                    value=[],
                    multiselect=True,
                    label="Classes",
                    elem_id="st-classes",
                    info="Empty: the classes with the largest predicted area.",
                )
                normalize = gr.Radio(
                    choices=[(label, key) for key, label in NORMALIZATION_LABELS.items()],
                    value="shared",
                    label="Normalisation",
                    elem_id="st-normalize",
                )
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                readout = gr.Dropdown(
                    choices=list(READOUTS),
                    value=READOUTS[0],
                    label="Readout",
                    info="How a stage's map is read as class scores; raw: channel k = class k.",
                    interactive=len(READOUTS) > 1,
                    elem_id="st-readout",
                )
            with gr.Column(scale=7, min_width=480):
                with gr.Tabs():
                    with gr.Tab("Figure"):
                        figure = gr.Image(
                            label="Figure",
                            type="filepath",
                            interactive=False,
                            elem_id="st-figure",
                            buttons=["download", "fullscreen"],
                        )
                    with gr.Tab("Interactive"):
                        plot = gr.Plot(label="Interactive plot", elem_id="st-plot")
                    with gr.Tab("Overlay"):
                        overlay = gr.Image(
                            label="Prediction overlay",
                            type="numpy",
                            interactive=False,
                            elem_id="st-overlay",
                            format="png",
                        )
                with gr.Row(elem_classes="st-downloads"):
                    dl_png = gr.DownloadButton("Figure PNG", size="sm", elem_id="st-dl-png")
                    dl_pdf = gr.DownloadButton("Figure PDF", size="sm", elem_id="st-dl-pdf")
                    dl_npz = gr.DownloadButton("Maps .npz", size="sm", elem_id="st-dl-npz")
                    dl_json = gr.DownloadButton("Metrics JSON", size="sm", elem_id="st-dl-json")
                summary = gr.Markdown("*Upload an image or pick an example.*", label="Summary", elem_id="st-summary")
                with gr.Accordion("The numbers as a table (sort, copy)", open=False):
                    table = gr.Dataframe(label="Numbers", interactive=False, wrap=True, elem_id="st-table")
                with gr.Accordion(
                    "Dataset-level curves (validation set, shipped report)", open=True, visible=False
                ) as curves_box:
                    curves = gr.Plot(label="Dataset-level curves", elem_id="st-curves")
                with gr.Accordion("Timings", open=False):
                    timings = gr.JSON(label="Timings (s)")
        state = gr.State(None, time_to_live=1800)
        api_run = gr.Button("analyze (API)", visible=False)

        inputs = [image, model, analysis, head, classes, normalize, block, opacity, checkpoint, readout]
        outputs = [
            figure,
            plot,
            overlay,
            curves,
            table,
            summary,
            timings,
            dl_png,
            dl_pdf,
            dl_npz,
            dl_json,
            state,
        ]
        controls = [analysis, availability, head, block, classes]
        quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
        refresh_in = [model, checkpoint, analysis, head, block, classes]

        def run_then_fit(dep: Any, fn: Callable, **kw: Any) -> None:
            dep = dep(fn, inputs=inputs, outputs=outputs, preprocess=False, concurrency_id="analyze", **kw)
            dep.failure(lambda: FAILED_SUMMARY, outputs=summary, **quiet)
            done = dep.success(ui.controls_from_result, inputs=state, outputs=[*controls, curves_box], **quiet)
            if fn != ui.analyze_image:
                done.then(
                    ui.render_pending_pdf,
                    inputs=state,
                    outputs=dl_pdf,
                    show_progress="hidden",
                    api_visibility="private",
                    concurrency_id="pdf",
                    concurrency_limit=2,
                )

        # the API: one call returns everything, the PDF included (the page itself uses the same
        # function with the PDF rendered in a follow-up step, so the picture shows up first)
        run_then_fit(
            api_run.click,
            ui.analyze_image,
            api_name="analyze",
            api_description="Analyse an image; block -1 = every stage (attention: the last block).",
        )
        private = dict(api_visibility="private", trigger_mode="always_last")
        run_then_fit(run.click, ui.analyze_page, api_visibility="private", trigger_mode="once")
        cleared = image.change(
            clear_for_new_image, inputs=image, outputs=outputs, preprocess=False, trigger_mode="always_last", **quiet
        )
        run_then_fit(cleared.then, ui.analyze_if_image, api_visibility="private")
        for control in (head, classes, normalize, block, readout):
            run_then_fit(control.input, ui.analyze_if_image, **private)
        run_then_fit(opacity.release, ui.analyze_if_image, **private)
        # a new analysis refits the controls to the set; a new set also forgets the chosen classes
        refits = [(analysis.input, ui.refresh_controls)]
        refits += [(event, ui.on_model_change) for event in (model.input, checkpoint.upload, checkpoint.clear)]
        for event, refit in refits:
            fitted = event(
                refit, inputs=refresh_in, outputs=controls, preprocess=False, trigger_mode="always_last", **quiet
            )
            run_then_fit(fitted.then, ui.analyze_if_image, api_visibility="private")
        demo.load(ui.refresh_controls, inputs=refresh_in, outputs=controls, preprocess=False, **quiet)

    demo.queue(default_concurrency_limit=2, max_size=32)
    demo.explorer_ui = ui  # type: ignore[attr-defined]  # the handlers, for tests and benchmarks
    return demo


def launch_kwargs() -> dict[str, Any]:
    """What ``launch`` needs besides host and port (also used by the tests and the benchmark)."""
    allowed = [str(EXAMPLES_DIR)]
    val = camvid_root() / "val" / "images"
    if val.is_dir():
        allowed.append(str(val))
    return dict(
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=allowed,
        theme=gr.themes.Soft(
            primary_hue="indigo",
            neutral_hue="slate",
            font=[gr.themes.Font(f) for f in ("Inter", "Helvetica Neue", "Arial", "sans-serif")],
            font_mono=[gr.themes.Font(f) for f in ("JetBrains Mono", "Menlo", "monospace")],
        ),
        css=CSS,
        ssr_mode=False,
    )


def main() -> None:
    """Serve the app: ``python app.py`` (Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; default
    127.0.0.1, 7860 or the next free port)."""
    logging.basicConfig(level=logging.INFO)
    tune_malloc()
    build_demo(Explorer()).launch(**launch_kwargs())


if __name__ == "__main__":
    main()

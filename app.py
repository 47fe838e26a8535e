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

import os

if __name__ == "__main__":
    # OpenMP reads its wait policy once, when torch loads it, so it is set before any import that loads
    # torch: idle workers sleep instead of spinning, which keeps a 2-thread forward from slowing 3-10x
    # beside a busy neighbour (structtoken.devices.CPU_THREAD_POLICY, bench/bench_threads.py; a test
    # checks the two agree). Only when run as a script: importing this module stays side-effect free.
    for _key, _value in {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}.items():
        os.environ.setdefault(_key, _value)

import atexit
import contextlib
import functools
import gc
import logging
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from structtoken.assets import CHECKOUT_ASSETS, asset_path
from structtoken.errors import StructTokenError

if __package__:  # installed by pip: this file is structtoken.app, the analysis layer structtoken.analysis (setup.py)
    from .analysis import labels as _labels
    from .analysis import service as _service
else:  # a checkout or a Space: app.py beside the repository's analysis/
    from analysis import labels as _labels
    from analysis import service as _service

HEAD_LABELS, NORMALIZATION_LABELS = _labels.HEAD_LABELS, _labels.NORMALIZATION_LABELS
READOUTS = _service.READOUTS
AnalysisError, AnalysisInfo, AnalysisRequest = _service.AnalysisError, _service.AnalysisInfo, _service.AnalysisRequest
AnalysisResult, Explorer, ModelInfo = _service.AnalysisResult, _service.Explorer, _service.ModelInfo
figure_png_bytes, save_downloads, save_images = _service.figure_png_bytes, _service.save_downloads, _service.save_images

ROOT = CHECKOUT_ASSETS.parent
"""The checkout's root (where ../shared/data/camvid is looked for)."""
EXAMPLES_DIR = asset_path("examples")
"""The shipped example photos: ``assets/examples`` of the checkout, or of the install."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
MAX_FILE_SIZE = "20mb"
CAMVID_EXAMPLES = 6
TEMP_BUDGET_BYTES = int(float(os.environ.get("STRUCTTOKEN_TEMP_BUDGET_MB", "512")) * 1e6)
"""Bytes the whole temporary area (uploads, Gradio's cache, the app's outputs) may hold; the oldest
files are removed beyond it (``$STRUCTTOKEN_TEMP_BUDGET_MB``, default 512)."""
DOWNLOADS = ("png", "pdf", "npz", "json")
"""What a request may ask to download: the figure (PNG, PDF), the maps (.npz), the numbers (JSON)."""
MAX_PAGE_SESSIONS = 4096
"""Page sessions whose image changes are remembered (the oldest forgotten first)."""
DEFAULT_ANALYSIS = "comparison"
ALL_BLOCKS = -1
"""The block control's "every stage" (comparison, probe) / "last block" (attention) value."""

log = logging.getLogger("structtoken.app")


def default_model() -> str:
    """The set the page opens with: ``$STRUCTTOKEN_DEFAULT_MODEL`` (a name or a file), else ``camvid``."""
    return os.environ.get("STRUCTTOKEN_DEFAULT_MODEL") or "camvid"


TITLE = "StructToken Explorer"
INTRO = """
**StructToken Explorer**: how StructToken ([arXiv:2203.12612](https://arxiv.org/abs/2203.12612)) and
per-pixel heads build their class maps, block by block.
"""
HELP = """
* **Paper comparison** (the paper's Fig. 3, stages as rows): a column per class and head, the chosen StructToken
  head beside a baseline (*Compare with*: the paper's per-pixel peer by default, the same with deep supervision,
  FCN, Segmenter, or all baselines without deep supervision at once, with smaller maps); the top row is the image
  with the class's boundary (white line), then the
  class map entering block 1 (*input*), after each block and the head's *output*. The table gives, per stage, the
  share of feature-grid cells whose strongest class already equals the head's output.
* **Focus on one class**: one class (*Focus class*), a column per head of the set, the stages as rows; the white
  line is the class's boundary in the prediction of the head named in *Boundary from head*.
* **Deep-supervision probe**: the per-pixel baseline without and with deep supervision beside StructToken (two
  classes unless you pick more). The verdict and the dataset numbers come from the set's shipped report.
* **Token–feature attention** (CSE and SSE heads): how much each class token reads each channel in one block.
* **Prediction**: the chosen head's segmentation; the table gives each class's area for every head.
* **Classes**: automatic (largest predicted area, following each new image) until you pick classes yourself;
  *Automatic classes* returns to automatic. **Normalisation**: *shared per class* puts every map of a class on one
  colour scale (compare stages and heads); *per map* stretches each map on its own (see shape); *softmax* shows
  class probabilities.
* **Downloads** are rendered when you click them (progress on the file box): the figure (PNG, PDF), every map of
  every head (`.npz`) and the numbers (JSON). The API gives them with its `downloads` input.

"""
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "StructToken",
        "a segmentation head that keeps one learnable *structure token* (a spatial map) per class and refines"
        " them block by block (Lin et al., arXiv 2203.12612)",
    ),
    (
        "CSE",
        "*cross-slice extraction*: each block's class tokens attend to the feature channels (cross attention,"
        " class × channel)",
    ),
    (
        "SSE",
        "*self-slice extraction*: self attention over the tokens and the feature channels together",
    ),
    (
        "PWE",
        "*point-wise extraction*: a 1x1 convolution mixes tokens and features instead of attention",
    ),
    (
        "Per-pixel",
        "the paper's peer (static per-pixel classification): residual blocks on K class channels, then a 1x1 "
        "classifier; *+ deep sup.*: the same trained with a loss on every block's map",
    ),
    (
        "FCN",
        "static per-pixel classification with a wider head: convolutions on the backbone's C feature channels, "
        "then a 1x1 classifier (mmseg's FCN head); its blocks are features, read through the *head* or *fitted* "
        "readout",
    ),
    (
        "Segmenter",
        "dynamic per-pixel classification (Strudel et al. 2021): class embeddings and patch tokens pass through "
        "transformer layers together, and each pixel's scores are its products with the class embeddings",
    ),
    (
        "stage",
        "*input* (the maps entering block 1), *block i* (after block i), *output* (the head's logits)",
    ),
    (
        "readout *raw*",
        "channel k read as class k, as in the paper (not applicable to a head whose channels are not classes)",
    ),
    (
        "readout *head*",
        "the head's own remaining output layers applied to the stage: the *logit lens*",
    ),
    (
        "readout *fitted*",
        "an affine map per stage fitted on the train split with the model frozen: the *tuned lens*",
    ),
    (
        "mIoU",
        "mean over classes of intersection over union of the predicted and true masks",
    ),
    (
        "mask AP",
        "average precision of a class map's values ranking its class's pixels (how well the map separates the"
        " class, before any threshold)",
    ),
    (
        "boundary F1",
        "F1 of predicted against true class boundaries, within a small pixel tolerance (2 px in the dataset report)",
    ),
    (
        "reference (dataset curves)",
        "the label itself at the heads' feature grid (1/16 of the image): per cell the share of each class, "
        "upsampled and scored like a stage: what a map right in every cell scores at that resolution (read the "
        "heads' numbers, boundary F1 above all, against it rather than against 100)",
    ),
    (
        "entropy (nats)",
        "of a class's attention softmax over channels, natural log: 0 = all weight on one channel, ln C = "
        "uniform over C",
    ),
    (
        "paired t",
        "a t test on per-seed differences (the same seed trained both heads); the 95 % CI is of the mean difference",
    ),
    (
        "out of domain",
        "the predicted class areas are far (total-variation distance) from the training split's class frequencies",
    ),
)
"""Terms a reader of the page meets, and what they mean (the glossary under "How to read this")."""
HELP += "\n**Glossary**\n\n| term | meaning |\n| --- | --- |\n" + "\n".join(f"| {t} | {m} |" for t, m in GLOSSARY)
READOUT_LABELS: dict[str, str] = {
    "raw": "raw (as in the paper)",
    "head": "through the head",
    "fitted": "fitted (per stage, train split)",
}
"""The readout control's choices (keys as :data:`analysis.maps.READOUTS` names them)."""
CONTROLS_USED: dict[str, frozenset[str]] = {
    "prediction": frozenset({"head"}),
    "comparison": frozenset({"head", "baseline", "block", "classes", "normalize", "readout"}),
    "probe": frozenset({"head", "block", "classes", "normalize", "readout"}),
    "focus": frozenset({"head", "focus_class", "normalize", "readout"}),
    "attention": frozenset({"head", "block", "classes"}),
}
"""Which controls change each analysis (the others are disabled while it is shown); an analysis not
listed here gets every control."""
ALL_CONTROLS = frozenset({"head", "baseline", "block", "classes", "normalize", "readout", "focus_class"})
ALL_BASELINES = "all"
"""The baseline control's value for every baseline without deep supervision side by side (the service's
``analysis.analyses.comparison.EVERY_BASELINE``); its default is the paper's per-pixel peer."""
AUTO_CLASSES_LABEL = "Classes: automatic (largest predicted area, follows the image)"
USER_CLASSES_LABEL = "Classes: your pick (Automatic classes returns to automatic)"

CSS = """
.gradio-container {max-width: 100% !important;}
.gradio-container .main.fillable {padding-left: 12px !important; padding-right: 12px !important;}
#st-intro p {font-size: 0.92rem; line-height: 1.4; margin: 0;}
#st-availability p {font-size: 0.85rem; color: var(--body-text-color-subdued);}
#st-error {border-left: 4px solid var(--error-border-color, #dc2626); padding: 0.4rem 0.8rem;
  background: var(--error-background-fill, #fef2f2);}
#st-error p {margin: 0;}
#st-summary {min-height: 3rem;}
#st-summary td:first-child, #st-summary th:first-child {white-space: nowrap;}
#st-summary table {font-size: 0.85rem; display: block; overflow-x: auto; max-width: 100%;}
.st-downloads button {min-width: 0;}
#st-figure, #st-figure .image-container, #st-figure button {height: auto !important; max-height: none !important;}
#st-figure img {width: auto !important; height: auto !important; max-width: 100% !important;
  max-height: calc(100vh - 40px) !important; object-fit: contain !important; margin: 30px auto 0 0;}
  /* one figure pixel per screen pixel where it fits, the whole figure within the window's height;
     its buttons (download, full screen) sit above it, not on its titles */
#st-intro {padding-left: 34px;}  /* clear of the sidebar's toggle when the sidebar is closed */
#st-results {min-width: 0; overflow-x: auto;}
#st-plot, #st-curves {overflow-x: auto !important; max-width: 100%;}
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


class MemoryTidier:
    """Frees the previous requests' garbage (matplotlib figures are reference cycles, which would wait
    for a rare full collection and pile up meanwhile) before the next request, off its path when it can:
    :meth:`after_request` schedules a full collection ``idle_s`` after a request ends, and the next
    request (:meth:`__call__`) collects only when that has not run yet (requests back to back). The first
    call freezes the long-lived objects (modules, the models), so collections only scan what requests
    created (``app_gc_s`` in the timings: ~0 when the idle collection ran)."""

    def __init__(self, idle_s: float = 0.3) -> None:
        self._lock = threading.Lock()
        self._frozen = False
        self._dirty = False
        self._timer: threading.Timer | None = None
        self.idle_s = idle_s

    def _collect(self) -> None:
        with self._lock:
            if self._dirty or not self._frozen:
                gc.collect()
                self._dirty = False
            if not self._frozen:
                gc.freeze()
                self._frozen = True

    def __call__(self) -> None:
        """Before a request: collect now unless the idle collection has already run."""
        if self._timer is not None:
            self._timer.cancel()
        self._collect()

    def after_request(self) -> None:
        """After a request: its garbage is collected ``idle_s`` later, unless the next request comes first."""
        with self._lock:
            self._dirty = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.idle_s, self._collect)
        self._timer.daemon = True
        self._timer.start()


class TempArea:
    """Where the app's files go: one folder per request under ``root`` (Gradio's upload and cache
    folder, so Gradio serves them as they are instead of copying them), each file written once under
    a unique name. The whole ``root`` is kept under ``budget`` bytes by removing the oldest files
    (when the app owns it: ``owned``; else only the app's own folder), and removed at exit.

    Args:
        root: the temporary area (default: Gradio's upload folder, ``$GRADIO_TEMP_DIR``).
        budget: bytes kept at most.
        owned: whether the app made ``root`` for itself (then all of it is the app's to trim and remove).
    """

    def __init__(self, root: Path | None = None, budget: int = TEMP_BUDGET_BYTES, owned: bool = False) -> None:
        from gradio.utils import get_upload_folder

        self.root = Path(root or get_upload_folder()).resolve()
        self.budget = budget
        self.owned = owned
        self.outputs = self.root / f"structtoken_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._removed = False

    def new_folder(self) -> Path:
        """A fresh folder for one request's files (unique: concurrent requests never share a file)."""
        d = self.outputs / uuid.uuid4().hex
        d.mkdir(parents=True, exist_ok=True)
        return d

    def size(self) -> int:
        """Bytes under the area (all of ``root`` when owned, else the app's own folder)."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        base = self.root if self.owned else self.outputs
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = p.stat()
                    out.append((st.st_mtime, st.st_size, p))
        return out

    def trim(self) -> int:
        """Remove the oldest files until the area holds at most 80 % of the budget (when it is over
        the budget); returns the bytes removed."""
        with self._lock:
            files = self._files()
            total = sum(size for _, size, _ in files)
            if total <= self.budget:
                return 0
            freed = 0
            for _, size, p in sorted(files):
                if total - freed <= 0.8 * self.budget:
                    break
                with contextlib.suppress(OSError):
                    p.unlink()
                    freed += size
                    with contextlib.suppress(OSError):
                        p.parent.rmdir()  # an emptied request folder
            return freed

    def remove(self) -> None:
        """Delete the area (all of it when owned, else the app's own folder); idempotent."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
            shutil.rmtree(self.root if self.owned else self.outputs, ignore_errors=True)


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


EXAMPLE_CAPTIONS: dict[str, str] = {
    "street_synthetic.jpg": "Synthetic street scene (drawn, CamVid-like)",
    "astronaut.jpg": "Astronaut portrait",
    "chelsea.jpg": "Cat",
    "coffee.jpg": "Coffee cup",
    "rocket.jpg": "Rocket launch",
}
"""Caption of each shipped example (a file without one is captioned by its name)."""
STREET_EXAMPLES = ("street_synthetic.jpg",)
"""Shipped examples in the domain of a street-scene set (CamVid); the others are out of its domain."""


def example_images() -> list[Path]:
    """Shipped examples (street scene first), then CamVid validation frames when the dataset is present."""
    shipped = sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    shipped.sort(key=lambda p: (not p.name.startswith("street"), p.name))
    return [*shipped, *_camvid_val_images()]


def set_kind(classes: Sequence[str]) -> str:
    """``"street"`` for a street-scene set (a few classes, Road among them: CamVid), else ``"general"``
    (ADE20K's 150 classes, or a set whose classes are not known before its weights are read)."""
    names = {c.lower() for c in classes}
    return "street" if "road" in names and len(names) <= 20 else "general"


def example_entries(kind: str) -> list[tuple[Path, str]]:
    """(image, caption) of the examples suited to a set of ``kind`` (:func:`set_kind`), in domain first.

    ``street``: the synthetic street, the CamVid val frames (when present), then the other shipped
    photos, captioned as out of domain. ``general``: every shipped photo, then the CamVid frames.
    """
    shipped = [p for p in example_images() if p.parent == EXAMPLES_DIR]
    camvid = [(p, f"CamVid val frame {p.stem}") for p in _camvid_val_images()]
    own = [(p, EXAMPLE_CAPTIONS.get(p.name, p.stem)) for p in shipped]
    if kind == "street":
        street = [(p, c) for p, c in own if p.name in STREET_EXAMPLES]
        away = [(p, f"{c} (out of domain for a street model)") for p, c in own if p.name not in STREET_EXAMPLES]
        return [*street, *camvid, *away]
    return [*own, *camvid]


# --------------------------------------------------------------------------- argument handling
def _refuse(message: str, title: str = "Cannot analyse this") -> gr.Error:
    """A user-input error: shown to the person, logged as one line by the caller, no traceback."""
    return gr.Error(message, title=title, print_exception=False)


def _private_dirs() -> list[str]:
    """Server folders whose paths a message must not show (uploads and temporary files)."""
    dirs = {tempfile.gettempdir(), os.environ.get("GRADIO_TEMP_DIR", "")}
    return sorted((d.rstrip(os.sep) for d in dirs if d), key=len, reverse=True)


def scrub_paths(text: str, *paths: str) -> str:
    """``text`` with every server path under the temporary folders (where uploads land) and every one of
    ``paths`` replaced by its file name: messages never show where the server keeps files."""
    for p in sorted((str(p) for p in paths if p), key=len, reverse=True):
        if os.sep in p:
            text = text.replace(p, Path(p).name)
    for d in _private_dirs():
        text = re.sub(re.escape(d) + r"(?:/[^\s'\"`)]+)*/([^\s'\"`)/]+)", r"\1", text)
    return text


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


def _readable_roots() -> list[Path]:
    """Where a file handed to a handler may be: Gradio's upload folder, the system's temporary folder
    (Gradio's own rule for files) and the example folders the page serves."""
    from gradio.utils import get_upload_folder

    roots = [Path(get_upload_folder()), Path(tempfile.gettempdir()), *(Path(p) for p in launch_allowed_paths())]
    return [r.resolve() for r in roots]


def _check_upload(path: str, what: str) -> None:
    """Refuse a file path that is not an upload (or an example): the API cannot make the server read
    its own files, even where a payload slips past Gradio's checks."""
    p = Path(path).expanduser().resolve()
    if not any(p == r or r in p.parents for r in _readable_roots()):
        raise _refuse(f"{what} {p.name!r} was not uploaded: files reach this app only as uploads")


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
    raise _refuse(f"unknown {what} {s!r}; choose one of: {', '.join(labels)}")


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


def _baseline_arg(baseline: Any) -> str | None:
    """Baseline control -> service ``baseline``: None / "" = the paper's per-pixel peer; "all" = every baseline
    without deep supervision; a head key or its display name = that head."""
    if baseline in (None, ""):
        return None
    if baseline == ALL_BASELINES:
        return ALL_BASELINES
    return _head_arg(baseline)


def _baseline_choices(baselines: Sequence[str]) -> list[tuple[str, str]]:
    every = ("Every baseline without deep supervision (smaller maps)", ALL_BASELINES)
    return [*((HEAD_LABELS.get(h, h), h) for h in baselines), every]


def _baseline_value(baseline: Any, baselines: Sequence[str]) -> str | None:
    """The baseline control's value: the one asked for when the set offers it, else the paper's peer."""
    b = _baseline_arg(baseline)
    if b == ALL_BASELINES or b in baselines:
        return b
    return baselines[0] if baselines else None


def _block_arg(block: Any) -> int | None:
    """Block control -> service ``block``: -1 / None = every stage (attention: the last block);
    comparison and probe: 0 = input maps, 1..N = after that block, N + 1 = output; attention: 1..N."""
    if block in (None, "", "all", "last"):
        return None
    try:
        f = float(block)
    except (TypeError, ValueError):
        raise _refuse(f"block must be a whole number (-1 = all), got {block!r}") from None
    if f != int(f):
        raise _refuse(f"block must be a whole number (-1 = all), got {block!r}")
    return None if int(f) < 0 else int(f)


def _opacity_arg(opacity: Any) -> float:
    if opacity in (None, ""):
        return 0.5
    try:
        v = float(opacity)
    except (TypeError, ValueError):
        raise _refuse(f"opacity must be a number in [0, 1], got {opacity!r}") from None
    if not 0.0 <= v <= 1.0:
        raise _refuse(f"opacity must be in [0, 1], got {opacity!r}")
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
PAGE_OUTPUT_NAMES = (*OUTPUT_NAMES[:7], "state", "error", "curves_box", "table_box")
"""What the page's analysis updates: the shown outputs (downloads are rendered when asked for), the
state, the error notice and the visibility of the curves and table sections."""


def _downloads_arg(value: Any) -> tuple[str, ...]:
    """The ``downloads`` input (None, a name, a comma-separated string or a list) -> names in :data:`DOWNLOADS`."""
    if value in (None, "", [], ()):
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v.lower().lstrip(".") for v in items if v]
    bad = [v for v in items if v not in DOWNLOADS]
    if bad:
        raise _refuse(f"unknown download {bad[0]!r}; choose any of: {', '.join(DOWNLOADS)}")
    return tuple(d for d in DOWNLOADS if d in items)


SIDEBAR_WIDTH = 320
"""px: the controls' sidebar; at a 1400 px window the results get about 1058 px (the figure >= 1000 px)."""
PLOT_WIDTH = 1000
"""px: about the results column's width at a 1400 px window; plotly figures take the column's width and
keep the height they would have at this width."""


def _table_value(rows: Sequence[Sequence[Any]] | None, headers: Sequence[str] | None) -> Any:
    import pandas as pd

    headers = list(headers or [])
    rows = [list(r) for r in rows or []]
    if not headers and rows:
        headers = [f"col {i}" for i in range(len(rows[0]))]
    return pd.DataFrame(rows, columns=headers)


DOWNLOAD_LABELS = {"png": "Figure PNG", "pdf": "Figure PDF", "npz": "Maps .npz", "json": "Numbers JSON"}
"""The page's download buttons (keys of :data:`DOWNLOADS`)."""
SAVE_DOWNLOAD_JS = """() => { setTimeout(() => {
  const a = document.querySelector('#st-download a[download], #st-download a[href]'); if (a) a.click(); }, 100); }"""
"""Browser-side: once a download button's file is rendered, save it (the file box keeps a link too)."""
AFTER_FIGURE_JS = """() => new Promise(done => { const t0 = performance.now(); const wait = () => {
  const i = document.querySelector('#st-figure img');
  if (!i || (i.complete && i.naturalWidth > 0) || performance.now() - t0 > 3000) done(); else setTimeout(wait, 25); };
  wait(); })"""
"""Resolves once the page's figure has loaded (or after 3 s): the dataset curves wait for it."""
RELAYOUT_PLOTS_JS = """() => { setTimeout(() => window.dispatchEvent(new Event("resize")), 60); }"""
"""Browser-side: after the Interactive tab opens, a window resize event makes Gradio's responsive plotly
figures re-measure their now visible container (plotly is bundled, there is no ``window.Plotly``)."""


def fit_plot(fig: Any) -> Any:
    """Let a plotly figure take the results column's width (autosize) instead of a fixed width wider
    than the column, which clipped its right half; its height is scaled as if it were :data:`PLOT_WIDTH`
    wide, so an aspect-locked mosaic keeps its shape and every panel, title and legend entry shows."""
    if fig is None or not hasattr(fig, "update_layout"):
        return fig
    width, height = fig.layout.width, fig.layout.height
    if width and height and width > PLOT_WIDTH:
        height = max(260, int(height * PLOT_WIDTH / width))
    fig.update_layout(width=None, height=height, autosize=True)
    if fig.layout.title and fig.layout.title.text:  # a long title wraps instead of running off the plot
        fig.update_layout(title_font_size=14)
    return fig


NO_IMAGE = "Upload an image first (or pick one of the examples)."


def ask_for_image(image: Any) -> Any:
    """The Analyze button's first step: without an image, the notice asks for one (the page's analysis then
    changes nothing); with one, the notice is left to the analysis."""
    return gr.skip() if _has_image(image) else error_box(NO_IMAGE)


def error_box(message: str | None) -> Any:
    """The results area's error notice: shown with ``message`` until the next run, hidden for None."""
    if not message:
        return gr.update(value="", visible=False)
    return gr.update(value=f"**Cannot analyse this:** {message}", visible=True)


def clear_for_new_image(image: Any) -> tuple[Any, ...]:
    """A new (or no) image: drop the previous image's results before analysing the new one (the page's
    outputs, :data:`PAGE_OUTPUT_NAMES`); the dataset curves, which belong to the set, stay."""
    summary = "*Analysing…*" if _has_image(image) else "*Upload an image or pick an example.*"
    hidden = gr.update(visible=False)
    return (None, None, None, gr.skip(), None, summary, None, None, error_box(None), gr.skip(), hidden)


class ProgressReport:
    """The service's ``progress(fraction, description)`` over gradio's tracker. A module-level class, not a
    closure: ``spaces.GPU`` (ZeroGPU) pickles the arguments into its GPU worker, which relays the steps
    back to the page, so the steps ("loading model", "running the backbone and heads", ...) show there too."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def __call__(self, frac: float | None, desc: str | None = None) -> None:
        with contextlib.suppress(Exception):  # progress is cosmetic; never fail a request over it
            self.progress(frac, desc=desc)


def _progress_adapter(progress: Any) -> Callable[[float, str], None] | None:
    return None if progress is None else ProgressReport(progress)


# --------------------------------------------------------------------------- events
class ExplorerUI:
    """The page's event handlers for one :class:`Explorer` (what the page and ``/analyze`` call).

    Args:
        explorer: the service.
        area: where each request's files go (default: a folder of its own in Gradio's upload folder).
    """

    def __init__(self, explorer: Explorer, area: TempArea | None = None) -> None:
        self.explorer = explorer
        self.area = area or TempArea()
        self.tidy_memory = MemoryTidier()
        self._run = _gpu(self._analyze)
        labels = {key: a.label for key, a in explorer.analyses.items()}
        self.analysis_labels: dict[str, str] = labels
        self._images: OrderedDict[str, int] = OrderedDict()  # page session -> how many times its image changed
        self._images_lock = threading.Lock()

    def image_version(self, request: gr.Request | None) -> int | None:
        """How many times the image of ``request``'s page has changed (None outside a page session)."""
        session = getattr(request, "session_hash", None)
        if session is None:
            return None
        with self._images_lock:
            return self._images.get(session, 0)

    def new_image(self, image: Any, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The page's image changed (a new one, or none): a page run still going for the old image
        will not show its results (:meth:`analyze_page` compares :meth:`image_version`), then the old
        results are cleared (:func:`clear_for_new_image`)."""
        session = getattr(request, "session_hash", None)
        if session is not None:
            with self._images_lock:
                self._images[session] = self._images.pop(session, 0) + 1
                while len(self._images) > MAX_PAGE_SESSIONS:
                    self._images.popitem(last=False)
        return clear_for_new_image(image)

    def _analyze(self, request: AnalysisRequest, progress: Callable | None = None) -> AnalysisResult:
        return self.explorer.analyze(request, progress)

    def model_spec(self, model: Any, checkpoint: Any) -> str:
        """The model the service gets: an uploaded checkpoint, else one of the picker's names (never a
        free path: API callers cannot point the server at its own files)."""
        ckpt = _payload_path(checkpoint)
        if ckpt:
            _check_upload(ckpt, "checkpoint")
            if not ckpt.lower().endswith(CHECKPOINT_SUFFIXES):
                raise _refuse(f"checkpoint {Path(ckpt).name!r}: expected a .safetensors or .pth file")
            return ckpt
        allowed = model_names(self.explorer)
        name = str(model).strip() if model not in (None, "") else allowed[0]
        if name not in allowed:
            raise _refuse(f"unknown model {name!r}; choose one of: {', '.join(allowed)}")
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
        baseline: Any = None,
        downloads: Any = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects the tracker through the default
        display: bool = True,
        *,
        interactive: bool = True,
        curves: bool = True,
    ) -> tuple[Any, ...]:
        """Run one analysis of ``image``: the outputs of :data:`OUTPUT_NAMES`, then the controls' state.

        ``downloads``: which of :data:`DOWNLOADS` to write (a list, or one name); none by default, so a
        request renders only what it shows. ``display=False`` (a page download) skips the figure and
        overlay images. The page's own calls also say whether its interactive plot is wanted
        (``interactive``) and leave out the dataset curves (``curves=False``: the page draws them in an
        event of their own, :meth:`page_curves`).

        Every bad input (an :class:`analysis.service.AnalysisError` or a bad argument) becomes a
        ``gr.Error`` with its message, free of server paths, logged as one line; any other exception
        is logged with its traceback and reported as ``internal error: ...`` (the server stays up).
        """
        try:
            return self._analyze_image(
                image,
                model,
                analysis,
                head,
                classes,
                normalize,
                block,
                opacity,
                checkpoint,
                readout,
                baseline,
                progress,
                _downloads_arg(downloads),
                display,
                interactive,
                curves,
            )
        except gr.Error as e:
            e.message = scrub_paths(str(e.message), _payload_path(checkpoint) or "")
            log.warning("request refused: %s", e.message)
            raise
        except StructTokenError as e:  # a library refusal that reached the boundary: one line, its own words
            msg = scrub_paths(str(e), _payload_path(checkpoint) or "")
            log.warning("request refused: %s", msg)
            raise _refuse(msg) from None
        except Exception as e:  # the event boundary: report, keep serving
            log.exception("analysis failed")
            msg = scrub_paths(str(e).splitlines()[0] if str(e) else "", _payload_path(checkpoint) or "")
            raise gr.Error(
                f"internal error: {type(e).__name__}{': ' + msg if msg else ''}", print_exception=False
            ) from None
        finally:
            self.tidy_memory.after_request()

    def _analyze_image(
        self,
        image: Any,
        model: Any,
        analysis: Any,
        head: Any,
        classes: Any,
        normalize: Any,
        block: Any,
        opacity: Any,
        checkpoint: Any,
        readout: Any,
        baseline: Any,
        progress: Any,
        downloads: tuple[str, ...],
        display: bool,
        interactive: bool = True,
        curves: bool = True,
    ) -> tuple[Any, ...]:
        t0 = time.perf_counter()
        img = image if _is_array(image) else _payload_path(image)
        if img is None:
            raise _refuse(NO_IMAGE)
        if not _is_array(img):
            _check_upload(img, "image")
        spec = self.model_spec(model, checkpoint)
        readout_key = _key_of(readout, READOUT_LABELS, "readout", "raw")
        request = AnalysisRequest(
            image=img,
            model=spec,
            analysis=self.analysis_key(analysis),
            head=_head_arg(head),
            classes=_classes_arg(classes),
            normalize=_key_of(normalize, NORMALIZATION_LABELS, "normalisation", "shared"),
            block=_block_arg(block),
            opacity=_opacity_arg(opacity),
            readout=readout_key,
            baseline=_baseline_arg(baseline),
            interactive=interactive and display,
            curves=display and curves,
        )
        t_gc = time.perf_counter()
        self.tidy_memory()
        t_gc = time.perf_counter() - t_gc
        try:
            result = self._run(request, _progress_adapter(progress))
        except AnalysisError as e:
            raise _refuse(str(e)) from None
        t1 = time.perf_counter()
        stem = f"structtoken_{request.analysis}_{_slug(spec)}"
        folder = self.area.new_folder()
        figure, overlay = save_images(result, folder, stem) if display else (None, None)
        asked = tuple(d for d in downloads if not (d == "png" and figure is not None))
        files = {k: None if v is None else str(v) for k, v in save_downloads(result, folder, stem, asked).items()}
        if figure is not None and "png" in downloads:
            files["png"] = str(figure)  # the figure shown is the PNG download: written once
        self.area.trim()
        t2 = time.perf_counter()
        timings = dict(result.timings or {})
        timings.update(
            app_gc_s=round(t_gc, 4),
            app_service_s=round(t1 - t0, 4),
            app_files_s=round(t2 - t1, 4),
            app_total_s=round(time.perf_counter() - t0, 4),
        )
        metrics = result.metrics or {}
        state = {
            "spec": spec,
            "analysis": request.analysis,
            "head": metrics.get("head"),
            "block": ALL_BLOCKS if request.block is None else request.block,
            "selected": list(result.selected_classes),
            "focus_class": metrics.get("focus_class"),
            "image_classes": _classes_by_area(metrics, result.selected_classes),
            "readout": request.readout,
            "baseline": request.baseline,
            "has_curves": result.curves_available,
            "has_table": bool(result.table),
        }
        return (
            None if figure is None else str(figure),
            fit_plot(result.plot) if display else None,
            None if overlay is None else str(overlay),
            fit_plot(result.curves) if display else None,
            _table_value(result.table, result.table_headers),
            scrub_paths(result.summary or "", spec),
            timings,
            files["png"],
            files["pdf"],
            files["npz"],
            files["json"],
            state,
        )

    def _page_api_args(self, args: Sequence[Any]) -> list[Any]:
        """The page's inputs (the API's, then the class mode and the clicked focus class) -> the API's:
        ``auto`` class mode asks for automatic classes (the page's chips are the last automatic pick,
        so the classes are chosen afresh for this image); a clicked focus class is the focus view's class."""
        *api, class_mode, focus_pick = args[:13]
        if class_mode != "user":
            api[4] = None  # classes: automatic
        if focus_pick and self._analysis_key_or_none(api[2]) == "focus":
            api[4] = [focus_pick]
        return api

    def analyze_page(
        self,
        image: Any,
        model: Any,
        analysis: Any,
        head: Any,
        classes: Any,
        normalize: Any,
        block: Any,
        opacity: Any,
        checkpoint: Any,
        readout: Any,
        baseline: Any,
        class_mode: Any = "auto",
        focus_pick: Any = None,
        plot_open: Any = True,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects the tracker through the default
    ) -> tuple[Any, ...]:
        """The page's analysis: the API's inputs, then the class mode and the focus class the user
        clicked (None: the focus view's default, the largest class) and whether the Interactive tab is
        open. No downloads: those are rendered when asked for (:meth:`download_page`). Without an image it
        changes nothing (the controls re-run it; the Analyze button asks for an image first,
        :func:`ask_for_image`). ``request`` (the page session, which Gradio passes because the parameters
        are positional) lets a run whose image was removed or replaced meanwhile (:meth:`new_image`) show
        nothing.

        Returns :data:`PAGE_OUTPUT_NAMES`. A refused request returns empty results and the message in
        the notice (it stays until the next run), instead of a toast that fades while the page still
        points to it; the sections without content are hidden.
        """
        # the interactive plot (~0.5 MB of JSON for a comparison, and plotly's drawing in the browser) is
        # built and sent only while its tab is open; opening the tab runs the analysis again (from the cache).
        # The dataset curves follow in an event of their own (page_curves), so the figure does not wait for
        # plotly to draw them, and they are sent only when the set or the readout changes.
        if not _has_image(image):
            return tuple(gr.skip() for _ in PAGE_OUTPUT_NAMES)
        args = (image, model, analysis, head, classes, normalize, block, opacity, checkpoint, readout, baseline)
        args += (class_mode, focus_pick)
        plot_open = bool(plot_open)
        version = self.image_version(request)
        try:
            out = self.analyze_image(*self._page_api_args(args), progress=progress, interactive=plot_open, curves=False)
        except gr.Error as e:
            if self.image_version(request) != version:  # the image was removed or replaced meanwhile
                return tuple(gr.skip() for _ in PAGE_OUTPUT_NAMES)
            empty = (None, None, None, gr.skip(), None, "", None, None)
            return (*empty, error_box(str(e.message)), gr.skip(), gr.update(visible=False))
        if self.image_version(request) != version:  # the results of an image no longer on the page
            return tuple(gr.skip() for _ in PAGE_OUTPUT_NAMES)
        state = out[-1]
        return (
            out[0],
            out[1] if plot_open else None,
            out[2],
            gr.skip(),  # the curves: page_curves
            *out[4:7],
            state,
            error_box(None),
            gr.skip(),  # the curves' section: page_curves
            gr.update(visible=bool(state.get("has_table"))),
        )

    def page_curves(self, state: dict[str, Any] | None, shown: Any) -> tuple[Any, Any, Any]:
        """The dataset curves after a page run: (curves, their section, the (set, readout) now shown). Sent
        only when the run's set or readout differs from what the page shows; hidden after a refused run
        or for a set without a shipped report."""
        if not state or not state.get("has_curves"):
            return None, gr.update(visible=False), None
        key = [state["spec"], state["readout"]]
        if shown == key:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            fig = self.explorer.dataset_curves(state["spec"], state["readout"])
        except Exception:  # a report that became unreadable: no curves, the run itself said what it could
            log.exception("dataset curves failed")
            fig = None
        return fit_plot(fig), gr.update(visible=fig is not None), key if fig is not None else None

    def _analysis_key_or_none(self, value: Any) -> str | None:
        try:
            return self.analysis_key(value)
        except gr.Error:
            return None

    def download_page(
        self,
        what: str,
        image: Any,
        model: Any,
        analysis: Any,
        head: Any,
        classes: Any,
        normalize: Any,
        block: Any,
        opacity: Any,
        checkpoint: Any,
        readout: Any,
        baseline: Any,
        class_mode: Any = "auto",
        focus_pick: Any = None,
        plot_open: Any = True,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects the tracker through the default
    ) -> Any:
        """A page download button: ``what`` (one of :data:`DOWNLOADS`) of what the controls show now (the
        page's inputs, as :meth:`analyze_page`), rendered on request (the maps come from the cache). Works
        whenever it is clicked: before the page's own run has finished, it shares that run's model pass.
        A refusal is a message (toast)."""
        args = (image, model, analysis, head, classes, normalize, block, opacity, checkpoint, readout, baseline)
        args += (class_mode, focus_pick)
        out = self.analyze_image(
            *self._page_api_args(args), downloads=[what], progress=progress, display=False, interactive=False
        )
        return gr.update(value=out[OUTPUT_NAMES.index(f"download_{what}")], visible=True)

    # ---------------------------------------------------------------- controls
    def control_updates(
        self,
        info: ModelInfo,
        analysis: str,
        head: str | None,
        block: Any,
        selected: Sequence[str] | None,
        readout: str | None = None,
        class_mode: str = "auto",
        baseline: str | None = None,
    ) -> tuple[Any, ...]:
        """Updates for :data:`CONTROL_NAMES` that fit the set ``info`` and the analysis shown: the controls
        the analysis does not use are disabled (the baseline control, which only the comparison has, hidden),
        the readouts the set lacks are left out (the reason shown)."""
        if not info.known:  # an official .pth before its first run: keep the controls as they are
            choices = [(label, key) for key, label in self.analysis_labels.items()]
            return (gr.update(choices=choices, value=analysis), "", *(gr.update() for _ in CONTROL_NAMES[2:]))
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
        used = CONTROLS_USED.get(analysis, ALL_CONTROLS)
        shown = info.analyses[analysis]
        options = list(shown.heads)
        head_up = gr.update(
            choices=[(HEAD_LABELS.get(h, h), h) for h in options],
            value=head if head in options else (options[0] if options else None),
            interactive="head" in used and len(options) > 1,
            label=shown.head_control,
        )
        bases = list(getattr(shown, "baselines", ()) or ())
        baseline_up = gr.update(
            choices=_baseline_choices(bases),
            value=_baseline_value(baseline, bases),
            visible="baseline" in used and len(bases) > 0,
        )
        blocks = _block_choices(shown)
        b = _block_arg(block)
        b = ALL_BLOCKS if b is None else b
        block_up = gr.update(
            choices=blocks,
            value=b if b in [v for _, v in blocks] else ALL_BLOCKS,
            interactive="block" in used and len(blocks) > 1,
        )
        keep = [c for c in (selected or []) if c in info.classes]
        # the user's own picks stay as they are: a run that finishes while they pick more classes must
        # not put back its (shorter) selection, which would drop the newer picks (and their next run)
        chips = {} if class_mode == "user" else {"value": keep}
        classes_up = gr.update(
            choices=list(info.classes),
            interactive="classes" in used,
            label=USER_CLASSES_LABEL if class_mode == "user" else AUTO_CLASSES_LABEL,
            **chips,
        )
        normalize_up = gr.update(interactive="normalize" in used)
        reasons = readout_reasons(info)
        offered = readout_choices(info)
        value = readout if readout in [r for _, r in offered] else _first_readout(offered)
        missing = "; ".join(
            f"*{READOUT_LABELS.get(r, r)}* is not available: {why}" for r, why in reasons.items() if why
        )
        readout_up = gr.update(
            # "" clears a reason shown for an earlier set (None would leave it)
            choices=offered,
            value=value,
            interactive="readout" in used and len(offered) > 1,
            info=missing or "",
        )
        return analysis_up, availability, head_up, baseline_up, block_up, classes_up, normalize_up, readout_up

    def refresh_controls(
        self,
        model: Any,
        checkpoint: Any,
        analysis: Any,
        head: Any,
        block: Any,
        classes: Any,
        readout: Any = None,
        class_mode: str = "auto",
        baseline: Any = None,
        reset_classes: bool = False,
    ) -> tuple[Any, ...]:
        """Cheap (no weights loaded): fit the controls to the chosen set before analysing; the last two
        outputs are the focus-class control, the class mode, the clicked focus class (forgotten with a new
        set) and the examples suited to the set (street / general)."""
        n = len(CONTROL_NAMES) + 5
        try:
            spec = self.model_spec(model, checkpoint)
            key = self.analysis_key(analysis)
        except gr.Error:
            return tuple(gr.skip() for _ in range(n))
        info = self.explorer.describe_model(spec)
        mode = "auto" if reset_classes else class_mode
        picked = [] if reset_classes else _classes_arg(classes)
        out = self.control_updates(info, key, _head_arg(head), block, picked, str(readout or "raw"), mode, baseline)
        if reset_classes and not info.known:
            i = CONTROL_NAMES.index("classes")
            out = (*out[:i], gr.update(choices=[], value=[], label=AUTO_CLASSES_LABEL), *out[i + 1 :])
        focus_up = gr.update(visible=key == "focus")
        kind = set_kind(info.classes) if info.known else "general"
        pick = None if reset_classes else gr.skip()
        examples = (gr.update(visible=kind == "street"), gr.update(visible=kind != "street"))
        return (*out, focus_up, mode, pick, *examples)

    def on_model_change(self, *args: Any) -> tuple[Any, ...]:
        """A new set forgets the chosen classes (back to automatic)."""
        return self.refresh_controls(*args, reset_classes=True)

    def controls_from_result(self, state: dict[str, Any] | None, class_mode: str = "auto") -> tuple[Any, ...]:
        """After a run: the set's heads, blocks and classes (now known, the set being loaded); the chips
        show the classes shown, the focus-class control the image's classes by predicted area."""
        if not state:
            return tuple(gr.skip() for _ in range(len(CONTROL_NAMES) + 1))
        info = self.explorer.describe_model(state["spec"])
        fitted = self.control_updates(
            info,
            state["analysis"],
            state["head"],
            state["block"],
            state["selected"],
            state.get("readout"),
            class_mode,
            state.get("baseline"),
        )
        focus = state.get("focus_class")
        choices = state.get("image_classes") or []
        focus_up = gr.update(
            choices=choices,
            value=focus if focus in [v for _, v in choices] else None,
            visible=state["analysis"] == "focus",
        )
        return (*fitted, focus_up)


PREFERRED_READOUTS = ("head", "raw", "fitted")
"""The page's first readout: the first of these the set offers (``head`` reads every kind of head; ``raw``
does not apply to heads whose channels are not classes)."""


def _first_readout(offered: Sequence[tuple[str, str]]) -> str | None:
    keys = [r for _, r in offered]
    return next((r for r in PREFERRED_READOUTS if r in keys), keys[0] if keys else None)


def readout_choices(info: ModelInfo) -> list[tuple[str, str]]:
    """The readout control's choices for a set: (label, readout) of each readout it offers."""
    return [(READOUT_LABELS.get(r, r), r) for r, why in readout_reasons(info).items() if why is None]


def first_readout(info: ModelInfo) -> str | None:
    """The readout the page opens a set with (:data:`PREFERRED_READOUTS`; also the warm-up's)."""
    return _first_readout(readout_choices(info))


def readout_reasons(info: ModelInfo) -> dict[str, str | None]:
    """Readout -> None when the set offers it, else why not (``ModelInfo.readouts``; before the service
    reports it, the readouts the service accepts (:data:`analysis.service.READOUTS`) are offered)."""
    reasons = getattr(info, "readouts", None)
    if reasons is None:
        reasons = {r: None if r in READOUTS else "not offered by this version of the service" for r in READOUT_LABELS}
    return dict(reasons)


def _classes_by_area(metrics: Mapping[str, Any], selected: Sequence[str]) -> list[tuple[str, str]]:
    """(label, class) choices of the focus-class control: the image's classes by predicted area (the
    focus view's numbers), else the classes shown."""
    areas = metrics.get("class_area_percent_by_head") or metrics.get("image_class_area_percent") or {}
    if areas:
        return [(f"{c} ({v:.0f}%)", c) for c, v in sorted(areas.items(), key=lambda kv: -kv[1])]
    return [(c, c) for c in selected]


CONTROL_NAMES = ("analysis", "availability", "head", "baseline", "block", "classes", "normalize", "readout")
"""What :meth:`ExplorerUI.control_updates` updates, in order."""


# --------------------------------------------------------------------------- layout
def build_demo(explorer: Explorer, area: TempArea | None = None) -> gr.Blocks:
    """The page for ``explorer``. Cheap: reads the default set's config, loads no weights.

    Controls live in a sidebar; the results take the page's width, the figure first, then the summary
    (verdict and numbers), the downloads and the tables.
    """
    ui = ExplorerUI(explorer, area)
    models = model_names(explorer)
    info = explorer.describe_model(models[0])
    first = info.analyses.get(DEFAULT_ANALYSIS) or AnalysisInfo(
        DEFAULT_ANALYSIS, "", "", None, "StructToken head", (), (("every stage", None),), ()
    )
    first_kind = set_kind(info.classes) if info.known else "general"
    readouts = readout_reasons(info)
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600), analytics_enabled=False, fill_width=True) as demo:
        with gr.Sidebar(width=SIDEBAR_WIDTH, open=True, elem_id="st-sidebar", label="Controls"):
            image = gr.Image(
                sources=["upload", "clipboard", "webcam"],
                type="numpy",
                label="Image",
                height=220,
                elem_id="st-image",
            )
            run = gr.Button("Analyze", variant="primary", elem_id="st-run")
            example_boxes = {}
            for kind in ("street", "general"):
                entries = example_entries(kind)
                with gr.Column(visible=kind == first_kind, elem_id=f"st-examples-{kind}") as box:
                    gr.Examples(
                        examples=[[str(p)] for p, _ in entries],
                        example_labels=[c for _, c in entries],
                        inputs=[image],
                        label="Examples" + (" (street scenes first)" if kind == "street" else ""),
                        examples_per_page=12,
                    )
                example_boxes[kind] = box
            model = gr.Dropdown(
                choices=[(_model_label(m), m) for m in models],
                value=models[0],
                label="Model set",
                info="camvid is embedded (offline); released ADE20K sets download on first use.",
                elem_id="st-model",
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
                value=DEFAULT_ANALYSIS,
                label="Analysis",
                elem_id="st-analysis",
            )
            availability = gr.Markdown("", elem_id="st-availability")
            focus_class = gr.Radio(
                choices=[],
                value=None,
                label="Focus class (click one; by predicted area)",
                visible=False,
                elem_id="st-focus-class",
            )
            head = gr.Dropdown(
                choices=[(HEAD_LABELS.get(h, h), h) for h in first.heads],
                value=None,
                label="StructToken head",
                elem_id="st-head",
            )
            baseline = gr.Dropdown(
                choices=_baseline_choices(first.baselines),
                value=_baseline_value(None, first.baselines),
                label="Compare with",
                info="The baseline(s) beside the StructToken head",
                visible=bool(first.baselines),
                elem_id="st-baseline",
            )
            block = gr.Dropdown(choices=_block_choices(first), value=ALL_BLOCKS, label="Block", elem_id="st-block")
            offered = readout_choices(info)
            readout = gr.Dropdown(
                choices=offered,
                value=_first_readout(offered),
                label="Readout (how a stage is read as class scores)",
                info="; ".join(f"{READOUT_LABELS.get(r, r)}: n/a, {why}" for r, why in readouts.items() if why) or None,
                interactive=len(offered) > 1,
                elem_id="st-readout",
            )
            classes = gr.Dropdown(
                choices=list(info.classes),
                value=[],
                multiselect=True,
                label=AUTO_CLASSES_LABEL,
                elem_id="st-classes",
            )
            reset_classes = gr.Button("Automatic classes", size="sm", elem_id="st-auto-classes")
            normalize = gr.Radio(
                choices=[(label, key) for key, label in NORMALIZATION_LABELS.items()],
                value="shared",
                label="Normalisation",
                elem_id="st-normalize",
            )
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
        with gr.Column(elem_id="st-results"):
            gr.Markdown(INTRO, elem_id="st-intro")
            error = gr.Markdown("", visible=False, elem_id="st-error")
            with gr.Tabs():
                with gr.Tab("Figure") as figure_tab:
                    figure = gr.Image(
                        label="Figure",
                        show_label=False,
                        type="filepath",
                        interactive=False,
                        elem_id="st-figure",
                        buttons=["download", "fullscreen"],
                    )
                with gr.Tab("Interactive") as interactive_tab:
                    plot = gr.Plot(label="Interactive plot", show_label=False, elem_id="st-plot")
                # a plot drawn while its tab was hidden got plotly's fallback width (700 px): re-measure
                interactive_tab.select(fn=None, js=RELAYOUT_PLOTS_JS)
                plot_open = gr.State(False)  # whether the Interactive tab is open (the plot is sent only then)
                with gr.Tab("Overlay") as overlay_tab:
                    overlay = gr.Image(
                        label="Prediction overlay",
                        show_label=False,
                        type="numpy",
                        interactive=False,
                        elem_id="st-overlay",
                        format="png",
                    )
            summary = gr.Markdown("*Upload an image or pick an example.*", label="Summary", elem_id="st-summary")
            # downloads are rendered when asked for (not on every run): a button renders its file for what
            # the controls show, with progress on the file box, and the browser then saves it
            with gr.Row(elem_classes="st-downloads"):
                dl_buttons = {
                    what: gr.Button(label, size="sm", elem_id=f"st-dl-{what}")
                    for what, label in DOWNLOAD_LABELS.items()
                }
            dl_file = gr.File(
                label="Download (rendered when you click a button above)",
                interactive=False,
                height=60,
                visible=False,  # shown with its first file
                elem_id="st-download",
            )
            with gr.Accordion(
                "Dataset-level curves (CamVid val, the shipped report)", open=True, visible=False
            ) as curves_box:
                curves = gr.Plot(label="Dataset-level curves", show_label=False, elem_id="st-curves")
            with gr.Accordion("The numbers as a table (sort, copy)", open=False, visible=False) as table_box:
                table = gr.Dataframe(label="Numbers", interactive=False, wrap=True, elem_id="st-table")
            with gr.Accordion("How to read this", open=False):
                gr.Markdown(HELP)
            with gr.Accordion("Timings", open=False):
                timings = gr.JSON(label="Timings (s)")
        state = gr.State(None, time_to_live=1800)
        class_mode = gr.State("auto")
        focus_pick = gr.State(None)  # the focus class the user clicked (None: the largest class)
        api_run = gr.Button("analyze (API)", visible=False)
        api_downloads = gr.CheckboxGroup(list(DOWNLOADS), value=[], visible=False, label="downloads")
        api_files = [gr.File(visible=False, label=f"download_{what}") for what in DOWNLOADS]

        inputs = [image, model, analysis, head, classes, normalize, block, opacity, checkpoint, readout, baseline]
        outputs = [figure, plot, overlay, curves, table, summary, timings, *api_files, state]
        page_inputs = [*inputs, class_mode, focus_pick, plot_open]
        curves_shown = gr.State(None)  # the (set, readout) whose dataset curves the page shows
        page_outputs = [*outputs[:7], state, error, curves_box, table_box]
        controls = [analysis, availability, head, baseline, block, classes, normalize, readout]
        quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
        refresh_in = [model, checkpoint, analysis, head, block, classes, readout, class_mode, baseline]
        refresh_out = [
            *controls,
            focus_class,
            class_mode,
            focus_pick,
            example_boxes["street"],
            example_boxes["general"],
        ]

        def then_fit(dep: Any) -> None:
            dep.success(ui.controls_from_result, inputs=[state, class_mode], outputs=[*controls, focus_class], **quiet)

        def page_run(dep: Any, fn: Callable, **kw: Any) -> None:
            ran = dep(fn, inputs=page_inputs, outputs=page_outputs, preprocess=False, concurrency_id="analyze", **kw)
            then_fit(ran)
            # the curves once the figure is on screen (plotly's drawing would otherwise hold up its display)
            ran.then(fn=None, js=AFTER_FIGURE_JS, **quiet).then(
                ui.page_curves, inputs=[state, curves_shown], outputs=[curves, curves_box, curves_shown], **quiet
            )

        # the API: one call returns what it shows and the downloads it asks for (``downloads``: any of
        # png, pdf, npz, json); errors come back as errors. The page uses the same function without
        # downloads (its buttons render them on request) and shows errors in the results area.
        api_run.click(
            ui.analyze_image,
            inputs=[*inputs, api_downloads],
            outputs=outputs,
            preprocess=False,
            concurrency_id="analyze",
            api_name="analyze",
            api_description="Analyse an image; block -1 = every stage (attention: the last block); "
            "readout: raw | head | fitted; baseline (comparison): per_pixel | per_pixel_ds | fcn | segmenter | all "
            "(None: the paper's per-pixel peer); "
            "downloads (optional, last): any of png, pdf, npz, json "
            "(rendered only when asked for).",
        )
        for what, button in dl_buttons.items():
            button.click(
                functools.partial(ui.download_page, what),
                inputs=page_inputs,
                outputs=dl_file,
                preprocess=False,
                concurrency_id="analyze",
                api_visibility="private",
                show_progress="full",
                show_progress_on=[button],  # the file box is hidden until its first file
            ).success(fn=None, js=SAVE_DOWNLOAD_JS)
        private = dict(api_visibility="private", trigger_mode="always_last")
        asked = run.click(ask_for_image, inputs=image, outputs=error, preprocess=False, **quiet)
        page_run(asked.then, ui.analyze_page, api_visibility="private", trigger_mode="once")
        cleared = image.change(
            ui.new_image,
            inputs=image,
            outputs=page_outputs,
            preprocess=False,
            trigger_mode="always_last",
            **quiet,
        )
        page_run(cleared.then, ui.analyze_page, api_visibility="private")
        # a control change redraws from the cached maps in a fraction of a second: outside the queue it is
        # answered ~0.1 s sooner (no queue round trips). ZeroGPU runs its GPU work in queued events: queued there.
        direct = {} if _on_spaces() else {"queue": False}
        # a pick from a dropdown: its ``select``, once. Gradio's dropdown also sends ``input`` when it loses
        # focus after the pick (and on any blur), which would run the analysis twice per pick, the second
        # run's figure arriving last (bench/bench_browser.py saw 0.1 s more for the dropdowns than the radio)
        for event in (head.select, baseline.select, block.select, readout.select, normalize.input):
            page_run(event, ui.analyze_page, **direct, **private)
        page_run(opacity.release, ui.analyze_page, **private)
        focused = focus_class.input(lambda c: c, inputs=focus_class, outputs=focus_pick, **quiet)
        page_run(focused.then, ui.analyze_page, **private)
        # picking classes makes them the user's; clearing them (or the reset) returns to automatic
        picked = classes.input(
            lambda c: ("user" if c else "auto", gr.update(label=USER_CLASSES_LABEL if c else AUTO_CLASSES_LABEL)),
            inputs=classes,
            outputs=[class_mode, classes],
            **quiet,
        )
        page_run(picked.then, ui.analyze_page, **private)
        reset = reset_classes.click(
            lambda: ("auto", gr.update(value=[], label=AUTO_CLASSES_LABEL), None),
            outputs=[class_mode, classes, focus_pick],
            **quiet,
        )
        page_run(reset.then, ui.analyze_page, **private)
        # a new analysis refits the controls to the set; a new set also forgets the chosen classes
        refits = [(analysis.input, ui.refresh_controls)]
        refits += [(event, ui.on_model_change) for event in (model.select, checkpoint.upload, checkpoint.clear)]
        for event, refit in refits:
            fitted = event(
                refit, inputs=refresh_in, outputs=refresh_out, preprocess=False, trigger_mode="always_last", **quiet
            )
            page_run(fitted.then, ui.analyze_page, api_visibility="private")
        # the Interactive tab: open -> the plot is drawn (a run from the cache); closed -> no plot is sent
        opened = interactive_tab.select(lambda: True, outputs=plot_open, **quiet)
        page_run(opened.then, ui.analyze_page, **private)
        for tab in (figure_tab, overlay_tab):
            tab.select(lambda: False, outputs=plot_open, **quiet)
        demo.load(ui.refresh_controls, inputs=refresh_in, outputs=refresh_out, preprocess=False, **quiet)

    demo.queue(default_concurrency_limit=2, max_size=32)
    demo.explorer_ui = ui  # type: ignore[attr-defined]  # the handlers, for tests and benchmarks
    return demo


def launch_allowed_paths() -> list[str]:
    """The folders the page serves files from besides uploads: the examples (shipped, CamVid val)."""
    allowed = [str(EXAMPLES_DIR)]
    val = camvid_root() / "val" / "images"
    if val.is_dir():
        allowed.append(str(val))
    return allowed


def launch_kwargs() -> dict[str, Any]:
    """What ``launch`` needs besides host and port (also used by the tests and the benchmark)."""
    return dict(
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=launch_allowed_paths(),
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
    from structtoken.devices import configure_cpu_threads, tune_malloc  # the policy of the block at the top

    tune_malloc()
    configure_cpu_threads()
    area = own_temp_area()
    explorer = Explorer()
    try:
        # load the default set and draw the first example's analysis while Gradio builds and serves the page
        # (the second core), so the visitor's first analysis finds the model loaded and that example cached
        threading.Thread(target=warm_up, args=(explorer,), name="structtoken-warm-up", daemon=True).start()
        demo = build_demo(explorer, area=area)
        demo.launch(prevent_thread_lock=True, **launch_kwargs())
        demo.block_thread()  # until SIGINT / SIGTERM (see own_temp_area)
    finally:
        area.remove()


def warm_up(explorer: Explorer) -> None:
    """Load the default set and run the page's first request for its first example (the synthetic street, at
    its own size): the analysis as the page asks for it (no dataset curves, no interactive plot), its PNG,
    then the dataset curves the page asks for next (:meth:`ExplorerUI.page_curves`). The visitor's first
    analysis then finds the model loaded, the kernels for that image size ready and, for that example, its
    maps cached; the figure does not wait for the curves to be drawn (errors only logged: the page reports
    them when a visitor asks)."""
    import numpy as np

    try:
        t0 = time.perf_counter()
        spec = default_model()
        first = next(iter(example_entries("street")), None)
        image = first[0] if first else np.zeros((360, 480, 3), np.uint8)
        readout = first_readout(explorer.describe_model(spec)) or "raw"
        request = AnalysisRequest(
            image, model=spec, analysis=DEFAULT_ANALYSIS, readout=readout, interactive=False, curves=False
        )
        figure_png_bytes(explorer.analyze(request))
        t1 = time.perf_counter()
        explorer.dataset_curves(spec, request.readout)
        log.info(
            "warmed up: first analysis in %.1f s, dataset curves %.1f s later (model %s loaded)",
            t1 - t0,
            time.perf_counter() - t1,
            spec,
        )
    except Exception as e:  # a missing or offline default set: the first request says so
        log.warning("warm-up skipped: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)


def own_temp_area() -> TempArea:
    """A temporary area of the app's own: ``$GRADIO_TEMP_DIR`` set to a fresh folder (uploads, Gradio's
    cache and the app's outputs all land there), kept under the byte budget, and removed at exit, on
    SIGINT (Gradio's own handler closes the server) and SIGTERM (turned into the same interruption)
    alike. A ``$GRADIO_TEMP_DIR`` set by the user is used as it is, and only the app's folder in it is
    trimmed and removed."""
    preset = os.environ.get("GRADIO_TEMP_DIR")
    if preset:
        area = TempArea(Path(preset), owned=False)
    else:
        root = tempfile.mkdtemp(prefix="structtoken_app_")
        os.environ["GRADIO_TEMP_DIR"] = root
        area = TempArea(Path(root), owned=True)
    atexit.register(area.remove)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # launch() closes the server on it, then main's finally removes the area

    with contextlib.suppress(ValueError):  # not in the main thread: leave the handler as it is
        signal.signal(signal.SIGTERM, interrupt)
    return area


if __name__ == "__main__":
    main()

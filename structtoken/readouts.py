"""Readouts: every stage of every head read as class scores [B, K, h, w], three ways.

A head with N blocks has S = N + 2 stages (stage 0 enters block 1, stage i leaves block i, stage
N + 1 is the output); :func:`stage_maps` gives their maps, [B, Cs, h, w] each. A readout turns one
stage's maps into class scores [B, K, h, w]:

``raw``
    The maps as they are, channel k = class k (the paper's view of structure tokens). Defined only where
    a stage is a K-channel class map by construction: StructToken (the tokens; its output block is
    residual, so token k stays class k), ``per_pixel_ds`` (every residual block's output is trained as
    class logits), ``linear``. ``per_pixel`` (its final 1x1 classifier mixes the K channels densely),
    ``fcn`` (C feature channels) and ``segmenter`` (d-channel patch tokens) have none:
    :func:`readout_unavailable` says why, and no claim uses it for them.
``head``
    The head's own remaining output layers applied to the stage (the "logit lens"): the final
    ``residual`` block for StructToken, the 1x1 ``classifier`` for the per-pixel heads and ``fcn``,
    decoder norm + projections + L2 norm + patch·class product + mask norm for ``segmenter``.
    At stage N it equals the logits (eval mode), at stage N + 1 it is the identity.
``fitted``
    A per-stage affine map Ws -> K fitted on the train split with the model frozen (the "tuned lens",
    Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"), by
    :func:`fit_readouts`, reading every per-pixel channel the stage hands to the next block
    (:meth:`structtoken.heads.Head.fitted_maps`): StructToken the tokens and features (K + C; K after
    the last block), ``per_pixel`` K, ``fcn`` C, ``segmenter`` the patch tokens (d). Kept beside the set as
    ``<set stem>.readouts.safetensors`` (no pickle; the fit's settings as JSON in the file's metadata);
    :func:`structtoken.checkpoint.load_model` attaches it as ``model.fitted_readouts``.

The fit (:func:`fit_readouts`): ``pixels_per_image`` labelled (non-ignore) pixels per train image,
drawn uniformly without replacement from ``numpy.random.default_rng([seed, image index])``; each
image preprocessed as at test time (:meth:`Segmentor.preprocess`, the set's ``test_scale``); every
stage's maps sampled bilinearly at the label's pixel centres with the convention of the logits'
upsampling (align_corners=False, border clamp: the value the upsampled map has at that pixel);
per (head, stage) multinomial logistic regression: inputs standardised per channel (mean / std over
the samples; folded back into the stored weight and bias, so the file maps raw maps), cross-entropy,
class-weighted with the dataset's median-frequency weights when the set was trained with them,
plus ``l2`` x the squared Frobenius norm of the standardised weight (bias free), minimised full
batch in float64 by ``torch.optim.LBFGS`` (strong Wolfe line search) for ``iterations`` iterations
from zero. All of it, the train accuracy and loss per stage are recorded in the file's metadata.

Public API::

    READOUTS = ("raw", "head", "fitted")
    stage_maps(out) -> tuple[Tensor, ...]                          # S maps [B, Cs, h, w]
    readout_unavailable(head_name, head, readout, fitted) -> str | None
    stage_scores(head_name, head, out, readout, fitted=None) -> tuple[Tensor, ...]  # S x [B, K, h, w]
    FittedReadouts(lenses, metadata).save(path) / FittedReadouts.load(path, model=None)
    fit_readouts(model, dataset, ...) -> FittedReadouts
    readouts_path(set_path) -> Path                                # <stem>.readouts.safetensors
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import HEAD_NAMES
from .errors import StructTokenError
from .heads import Head, HeadOutput

READOUTS = ("raw", "head", "fitted")
"""The readouts of a stage, in the order the UI offers them."""

READOUTS_SUFFIX = ".readouts.safetensors"
FORMAT_KEY = "structtoken_readouts"
FORMAT_VERSION = "2"
"""2: ``fitted`` reads :meth:`Head.fitted_maps` (StructToken: tokens and features); 1 read the stage maps only."""
FIT_COMMAND = "python -m structtoken.fit_readouts --model SET --data DATA_DIR --split train"
NO_FITTED_REASON = f"no fitted readout file beside the set; fit one with {FIT_COMMAND}"


class ReadoutError(StructTokenError):
    """A fitted-readout file that cannot be used, or a readout that cannot be computed; the message
    names the file or the reason."""


def readouts_path(set_path: str | Path) -> Path:
    """Where the fitted readouts of a set file live: ``dir/<stem>.readouts.safetensors``."""
    p = Path(set_path)
    return p.with_name(p.name.removesuffix(".safetensors") + READOUTS_SUFFIX)


def stage_maps(out: HeadOutput) -> tuple[torch.Tensor, ...]:
    """The S = N + 2 stage maps of a head output, [B, Cs, h, w] each (see :meth:`HeadOutput.stage_maps`)."""
    return out.stage_maps()


def fitted_input_channels(head: nn.Module, out: HeadOutput) -> list[int]:
    """The width Ws of what the ``fitted`` readout reads at each stage of ``out`` (input, blocks, output)."""
    return [int(m.shape[1]) for m in head.fitted_maps(out)]


def readout_definitions(head_name: str, head: nn.Module) -> dict[str, str]:
    """One sentence per readout saying what it reads for this head (for reports and result files)."""
    raw_reason = head.raw_unavailable() if isinstance(head, Head) else "no readout contract"
    return {
        "raw": (
            "not applicable: " + raw_reason
            if raw_reason
            else "each stage's K channels as they are, channel k as class k (true by construction for this head)"
        ),
        "head": f"{getattr(head, 'head_readout_text', 'the head output layers')} (the logit lens)",
        "fitted": (
            f"a per-stage affine map to the K classes, fitted on the train split with the model frozen, reading "
            f"{getattr(head, 'fitted_input_text', 'the stage maps')} (the tuned lens)"
        ),
    }


# ----------------------------------------------------------------------------- fitted lenses
@dataclass(frozen=True)
class StageLens:
    """An affine map from a stage's Cs channels to K class scores: weight [K, Cs], bias [K]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        """maps [B, Cs, h, w] -> scores [B, K, h, w]."""
        w = self.weight.to(device=maps.device, dtype=maps.dtype)
        b = self.bias.to(device=maps.device, dtype=maps.dtype)
        return torch.einsum("kc,bchw->bkhw", w, maps) + b.view(1, -1, 1, 1)


@dataclass
class FittedReadouts:
    """Fitted per-stage affine readouts of the heads of one set.

    Attributes:
        lenses: head name -> one :class:`StageLens` per stage (S = N + 2 of them).
        metadata: the fit's settings and results (JSON-ready; see the module docstring).
        path: the file it was loaded from or saved to, if any (for messages).
        problem: why the lenses must not be used although the file is sound (e.g. it was fitted on
            another version of the set), else None; :func:`readout_unavailable` reports it.
    """

    lenses: dict[str, tuple[StageLens, ...]]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    problem: str | None = None

    def apply(self, head_name: str, stage: int, maps: torch.Tensor) -> torch.Tensor:
        """Scores [B, K, h, w] of ``maps`` [B, Cs, h, w], the maps of ``stage`` of head ``head_name``."""
        lenses = self.lenses[head_name]
        lens = lenses[stage]
        if maps.shape[1] != lens.weight.shape[1]:
            raise ReadoutError(
                f"{self._where()}: the fitted readout of {head_name} stage {stage} reads {lens.weight.shape[1]} "
                f"channels, the maps have {maps.shape[1]}"
            )
        return lens(maps)

    def _where(self) -> str:
        return str(self.path) if self.path else "fitted readouts"

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write as safetensors (float32 ``<head>.stage<i>.weight`` / ``.bias``; metadata JSON under
        ``structtoken_readouts``). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, lenses in self.lenses.items():
            for s, lens in enumerate(lenses):
                tensors[f"{name}.stage{s}.weight"] = lens.weight.detach().float().cpu().contiguous()
                tensors[f"{name}.stage{s}.bias"] = lens.bias.detach().float().cpu().contiguous()
        meta = dict(self.metadata)
        meta["format_version"] = FORMAT_VERSION
        meta["stages"] = {name: len(lenses) for name, lenses in self.lenses.items()}
        save_file(tensors, str(path), metadata={FORMAT_KEY: json.dumps(meta)})
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> FittedReadouts:
        """Read a file written by :meth:`save`; with ``model`` (a Segmentor), check it fits that set.

        Raises:
            ReadoutError: naming the file, for a missing, unreadable, foreign or mis-shaped file.
        """
        path = Path(path)
        if not path.is_file():
            raise ReadoutError(f"{path}: no such file")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw_meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ReadoutError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
        if FORMAT_KEY not in raw_meta:
            raise ReadoutError(f"{path}: not a fitted-readout file (no {FORMAT_KEY!r} metadata)")
        try:
            meta = json.loads(raw_meta[FORMAT_KEY])
            stages = {str(k): int(v) for k, v in meta["stages"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReadoutError(f"{path}: invalid fitted-readout metadata ({e!r})") from None
        lenses: dict[str, tuple[StageLens, ...]] = {}
        expected = set()
        for name, n in stages.items():
            row = []
            for s in range(n):
                wk, bk = f"{name}.stage{s}.weight", f"{name}.stage{s}.bias"
                expected |= {wk, bk}
                if wk not in tensors or bk not in tensors:
                    raise ReadoutError(f"{path}: missing tensor {wk if wk not in tensors else bk}")
                w, b = tensors[wk].float(), tensors[bk].float()
                if w.ndim != 2 or b.shape != (w.shape[0],):
                    raise ReadoutError(
                        f"{path}: {name} stage {s} has weight {tuple(w.shape)} and bias {tuple(b.shape)}; "
                        "expected [K, Cs] and [K]"
                    )
                row.append(StageLens(w, b))
            lenses[name] = tuple(row)
        extra = sorted(set(tensors) - expected)
        if extra:
            raise ReadoutError(f"{path}: unexpected tensors {', '.join(extra[:5])}")
        out = cls(lenses=lenses, metadata=meta, path=path)
        version = str(meta.get("format_version", "1"))
        if version != FORMAT_VERSION:
            out.problem = (
                f"{path.name} was fitted under readout definition {version} (the stage maps only), "
                f"not {FORMAT_VERSION} "
                f"(every channel a stage hands on); refit it with {FIT_COMMAND}"
            )
            return out
        if model is not None:
            out.check(model)
        return out

    def check(self, model: nn.Module) -> None:
        """Raise :class:`ReadoutError` unless every lens fits ``model`` (a Segmentor): known head,
        same number of stages, Cs -> K shapes of that head's stage maps."""
        cfg = model.cfg
        gh, gw = cfg.token_grid
        p = next(model.parameters())
        features = torch.zeros(1, cfg.embed_dim, gh, gw, device=p.device, dtype=p.dtype)
        problems = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for name, lenses in self.lenses.items():
                if name not in model.heads:
                    problems.append(f"head {name!r} is not in the set (heads: {', '.join(model.heads)})")
                    continue
                head = model.heads[name]
                shapes = [(cfg.num_classes, m.shape[1]) for m in head.fitted_maps(head(features))]
                if len(shapes) != len(lenses):
                    problems.append(f"{name} has {len(shapes)} stages, the file {len(lenses)}")
                    continue
                for s, (lens, want) in enumerate(zip(lenses, shapes, strict=True)):
                    if tuple(lens.weight.shape) != want:
                        problems.append(f"{name} stage {s}: weight {tuple(lens.weight.shape)}, model needs {want}")
        model.train(was_training)
        if problems:
            raise ReadoutError(
                f"{self._where()} does not fit this set ({'; '.join(problems[:6])}); refit it with {FIT_COMMAND}"
            )


# ----------------------------------------------------------------------------- readouts
def readout_unavailable(
    head_name: str, head: nn.Module, readout: str, fitted: FittedReadouts | None = None
) -> str | None:
    """Why ``readout`` cannot read head ``head_name`` (a reason to show), or None when it can.

    ``fitted`` is the set's :class:`FittedReadouts` (``model.fitted_readouts``), or None.
    """
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose from {', '.join(READOUTS)}")
    if readout == "raw":
        if not isinstance(head, Head):
            return f"{type(head).__name__} does not implement the readout contract"
        return head.raw_unavailable()
    if readout == "head":
        return None if isinstance(head, Head) else f"{type(head).__name__} does not implement the readout contract"
    if fitted is None:
        return NO_FITTED_REASON
    if fitted.problem is not None:
        return fitted.problem
    if head_name not in fitted.lenses:
        held = ", ".join(fitted.lenses) or "none"
        return (
            f"{fitted._where()} has no fitted readout for head {head_name!r} (it holds {held}); "
            f"refit with {FIT_COMMAND}"
        )
    return None


def stage_scores(
    head_name: str,
    head: nn.Module,
    out: HeadOutput,
    readout: str,
    fitted: FittedReadouts | None = None,
) -> tuple[torch.Tensor, ...]:
    """Class scores of every stage of ``out`` (the output of ``head``) read by ``readout``.

    Returns S = N + 2 tensors [B, K, h, w], stage 0 .. N + 1. Raises :class:`ReadoutError` with the
    reason of :func:`readout_unavailable` when the readout is unavailable. Runs under the caller's
    grad mode; ``head`` should be in eval mode (dropout / drop-path would act otherwise).
    """
    reason = readout_unavailable(head_name, head, readout, fitted)
    if reason is not None:
        raise ReadoutError(f"{readout} readout of {head_name}: {reason}")
    if readout == "fitted":
        maps = head.fitted_maps(out)
        assert fitted is not None
        if len(fitted.lenses[head_name]) != len(maps):
            raise ReadoutError(
                f"{fitted._where()}: {head_name} has {len(fitted.lenses[head_name])} fitted stages, "
                f"the output {len(maps)}"
            )
        return tuple(fitted.apply(head_name, s, m) for s, m in enumerate(maps))
    maps = stage_maps(out)
    if readout == "raw":
        return tuple(head.raw_readout(s, m, out) for s, m in enumerate(maps))
    return tuple(head.readout(s, m, out) for s, m in enumerate(maps))


# ----------------------------------------------------------------------------- fitting
def sample_pixels(label: np.ndarray, n: int, rng: np.random.Generator, ignore_index: int = 255) -> np.ndarray:
    """Up to ``n`` distinct labelled pixels of ``label`` [H, W], uniformly: flat indices [n'] (sorted)."""
    labelled = np.flatnonzero(label.ravel() != ignore_index)
    if labelled.size <= n:
        return labelled
    return np.sort(rng.choice(labelled, size=n, replace=False))


def sample_maps(maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Values of maps [1, C, h, w] at pixel centres (rows, cols) [n] of an image of ``size`` (H, W): [n, C].

    The same values as the maps upsampled to (H, W) bilinearly with align_corners=False (the logits'
    upsampling, :func:`structtoken.segmentor.upsample`) would have at those pixels.
    """
    h_img, w_img = size
    gx = (cols.to(maps.dtype) + 0.5) * (2.0 / w_img) - 1.0
    gy = (rows.to(maps.dtype) + 0.5) * (2.0 / h_img) - 1.0
    grid = torch.stack((gx, gy), dim=-1).view(1, 1, -1, 2).to(maps.device)
    v = F.grid_sample(maps[:1], grid, mode="bilinear", padding_mode="border", align_corners=False)  # [1, C, 1, n]
    return v[0, :, 0].transpose(0, 1)


def fit_affine(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    l2: float = 1e-4,
    iterations: int = 100,
    standardize: bool = True,
) -> tuple[StageLens, dict[str, float]]:
    """Multinomial logistic regression x [n, C] -> y [n] (0..K-1), as the module docstring describes.

    Returns the lens (on the raw inputs) and ``{"train_accuracy", "train_loss"}`` (the loss with
    the penalty, on the standardised problem).
    """
    x = x.double()
    y = y.long()
    mean = x.mean(0) if standardize else torch.zeros(x.shape[1], dtype=x.dtype)
    std = x.std(0, unbiased=False).clamp_min(1e-6) if standardize else torch.ones(x.shape[1], dtype=x.dtype)
    z = (x - mean) / std
    wt = class_weights.double() if class_weights is not None else None
    w = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iterations,
        max_eval=iterations * 5 // 4 + 1,
        history_size=20,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, weight=wt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = float(closure().detach())
    with torch.no_grad():
        weight = w / std  # [K, C]
        bias = b - weight @ mean
        acc = float(((x @ weight.T + bias).argmax(1) == y).double().mean()) if len(y) else math.nan
    return StageLens(weight.float(), bias.float()), {"train_accuracy": acc, "train_loss": loss}


def fit_readouts(
    model: nn.Module,
    dataset: Any,
    pixels_per_image: int = 128,
    l2: float = 1e-4,
    iterations: int = 100,
    class_weights: Sequence[float] | None = None,
    seed: int = 0,
    heads: Sequence[str] | None = None,
    max_images: int | None = None,
    standardize: bool = True,
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> FittedReadouts:
    """Fit a :class:`StageLens` per (head, stage) of ``model`` (a Segmentor, frozen, eval mode) on
    ``dataset`` (a :class:`structtoken.data.SegmentationDataset`, normally the train split).

    Args:
        pixels_per_image: labelled pixels sampled per image (fewer if an image has fewer).
        l2: weight of the squared norm of the standardised weights.
        iterations: L-BFGS iterations (one full-batch ``step`` with ``max_iter=iterations``).
        class_weights: per-class cross-entropy weights (the dataset's median-frequency weights when
            the set was trained with them), or None for plain cross-entropy.
        seed: pixel sampling seed (image i draws from ``default_rng([seed, i])``).
        heads: head names to fit (default: all of the set's).
        max_images: use only the first images of the split.
        metadata: extra entries for the file's metadata (e.g. the set file and its digest).
    """
    from tqdm.auto import tqdm

    names = list(heads) if heads is not None else list(model.heads)
    k = model.cfg.num_classes
    ignore = dataset.info.ignore_index
    n_images = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n_images < 1:
        raise ValueError("fit_readouts needs at least one image")
    samples: dict[str, list[list[torch.Tensor]]] = {n: [] for n in names}
    labels = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(n_images), desc="fit readouts: sampling", disable=not progress):
            image, label = dataset.load_pair(i)
            flat = sample_pixels(label, pixels_per_image, np.random.default_rng([seed, i]), ignore)
            if flat.size == 0:
                continue
            rows = torch.from_numpy(flat // label.shape[1])
            cols = torch.from_numpy(flat % label.shape[1])
            labels.append(torch.from_numpy(label.ravel()[flat].astype(np.int64)))
            out = model(model.preprocess(image), heads=names)  # every head on the features it reads
            for name in names:
                maps = model.heads[name].fitted_maps(out.heads[name])
                per = [sample_maps(m.float(), rows, cols, label.shape).cpu() for m in maps]
                if not samples[name]:
                    samples[name] = [[] for _ in per]
                for s, v in enumerate(per):
                    samples[name][s].append(v)
    model.train(was_training)
    if not labels:
        raise ValueError("no labelled pixels in the dataset")
    y = torch.cat(labels)
    wt = torch.tensor(list(class_weights), dtype=torch.float64) if class_weights is not None else None
    lenses: dict[str, tuple[StageLens, ...]] = {}
    results: dict[str, Any] = {}
    jobs = [(n, s) for n in names for s in range(len(samples[n]))]
    bar = tqdm(total=len(jobs), desc="fit readouts: L-BFGS", disable=not progress)
    for name in names:
        row, accs, losses, chans = [], [], [], []
        for per_stage in samples[name]:
            x = torch.cat(per_stage)
            lens, stats = fit_affine(x, y, k, wt, l2, iterations, standardize)
            row.append(lens)
            accs.append(round(stats["train_accuracy"], 6))
            losses.append(round(stats["train_loss"], 6))
            chans.append(int(x.shape[1]))
            bar.update(1)
        lenses[name] = tuple(row)
        results[name] = {
            "kind": HEAD_NAMES.get(name, (name, False))[0],
            "definitions": readout_definitions(name, model.heads[name]),
            "channels": chans,
            "train_accuracy": accs,
            "train_loss": losses,
        }
    bar.close()
    meta = {
        "split": getattr(dataset, "split", None),
        "num_images": n_images,
        "num_pixels": len(y),
        "pixels_per_image": pixels_per_image,
        "pixel_sampling": "uniform over labelled (non-ignore) pixels, without replacement, "
        "numpy default_rng([seed, image index])",
        "seed": seed,
        "preprocess": "Segmentor.preprocess (the set's test_scale), whole image",
        "grid": "stage maps sampled bilinearly at label pixel centres, align_corners=False, border clamp "
        "(= the logits' bilinear upsampling to the label size)",
        "loss": "cross-entropy, class-weighted" if wt is not None else "cross-entropy, unweighted",
        "class_weights": list(class_weights) if class_weights is not None else None,
        "l2": l2,
        "l2_on": "standardised weight (squared Frobenius norm), not the bias",
        "standardize": standardize,
        "optimizer": "torch.optim.LBFGS, full batch, float64, strong Wolfe, history 20, from zero",
        "iterations": iterations,
        "num_classes": k,
        "heads": results,
        **(metadata or {}),
    }
    return FittedReadouts(lenses=lenses, metadata=meta)

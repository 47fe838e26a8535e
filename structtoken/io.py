"""The one image reader: any image input -> uint8 RGB ``[H, W, 3]``.

Used by the predict CLI, the dataset reader and the analysis service, so that a file gives the same
pixels wherever it is opened. The rules, in the order they apply:

* **Sources**: a file path (``str`` / ``os.PathLike``), the file's bytes, a PIL image, or an array
  (numpy, torch tensor or anything with ``__array__``) ``[H, W]``, ``[H, W, 1..4]`` or channel-first
  ``[1..4, H, W]``.
* **Orientation**: files and PIL images are turned upright by their EXIF orientation tag
  (:func:`PIL.ImageOps.exif_transpose`); arrays carry no tag and are taken as they are.
* **Frames**: of a multi-frame file (GIF, TIFF) the first frame is read (with a notice).
* **Bit depth**: 8-bit data is kept; **16-bit data is divided by 65535** (never by the image's own
  maximum, which would change its brightness); other integer arrays with values in 0..255 are read
  as 8-bit, in 0..65535 as 16-bit (with a notice), others are rescaled by their range (with a
  notice). Floats in 0..1 are scaled by 255, in 0..255 are taken as they are (notice), others are
  rescaled by their range (notice); NaN / infinite values become black (notice).
* **Alpha**: transparent pixels are composited on white (with a notice); opaque alpha is dropped.
* **Grey**: one channel is repeated to three.

Errors raise :class:`ImageReadError` with a message for a person; it names a file by its base name
only, never by its folder (which may be a server's temporary upload folder). Size limits are the
caller's; :func:`read_image` can decode large JPEGs at a reduced scale to save memory.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import StructTokenError

__all__ = ["ImageReadError", "read_image", "read_label"]

_FORMATS = "PNG, JPEG, BMP, TIFF, WebP, GIF ..."


class ImageReadError(StructTokenError):
    """An input that is not a readable image; the message says why (file base name only)."""


# ------------------------------------------------------------------------------------- decoding
def _wh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _name_of(path: Path) -> str:
    return path.name or "the file"


def _pil_to_array(
    im: Image.Image, notices: list[str], max_side: int | None, max_pixels: int | None
) -> tuple[np.ndarray, int | None]:
    """Decode a PIL image into an array and its bit depth (8, 16, or None when the mode does not say)."""
    with contextlib.suppress(EOFError, AttributeError):
        im.seek(0)
    if getattr(im, "n_frames", 1) > 1:
        notices.append("the file holds several frames; the first one is read")
    if im.format == "JPEG" and (max_side or max_pixels):
        f = min(
            max_side / max(im.size) if max_side else 1.0,
            math.sqrt(max_pixels / (im.width * im.height)) if max_pixels else 1.0,
        )
        if f < 1.0:
            # decode big JPEGs at a reduced scale (a power of 2, down to 1/8, that stays above the final size):
            # done before the size guard, which then judges the pixels that are really decoded
            size0 = im.size
            im.draft("RGB", (math.ceil(im.width * f), math.ceil(im.height * f)))
            if im.size != size0:
                notices.append(f"JPEG of {size0[0]}x{size0[1]} px decoded at reduced scale ({im.width}x{im.height})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        raise ImageReadError(
            f"the image is {im.width}x{im.height} px ({im.width * im.height / 1e6:.0f} MP), over the decoder's "
            f"safety limit of {limit / 1e6:.0f} MP (decompression-bomb guard; JPEGs up to {2 * limit / 1e6:.0f} MP "
            "are decoded at reduced scale); downscale it before uploading"
        )
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


def _open_file(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    notices: list[str],
    max_side: int | None,
    max_pixels: int | None,
) -> tuple[np.ndarray, int | None]:
    """Decode a file given by path or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "the image data"
        if not data:
            raise ImageReadError("the image data is empty (0 bytes)")
        src: Any = io.BytesIO(data)
    else:
        path = Path(os.fspath(source)).expanduser()
        name = _name_of(path)
        if not path.is_file():
            raise ImageReadError(f"image file not found: {name}")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{name} is empty (0 bytes)")
        src = path
    try:
        with Image.open(src) as im:
            return _pil_to_array(im, notices, max_side, max_pixels)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageReadError(
            f"{name} is too large to decode safely (over {limit:.0f} MP, decompression-bomb guard); "
            "downscale it before uploading"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name} is not an image in a format that can be read ({_FORMATS})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageReadError(f"could not decode {name}: the file looks truncated or corrupt ({e})") from None


# ------------------------------------------------------------------------------------- pixel rules
def _to_unit_float(arr: np.ndarray, notices: list[str], bits: int | None) -> np.ndarray:
    """Any numeric array -> float32 in [0, 1] (the bit-depth rules of the module docstring)."""
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
                raise ImageReadError("the image holds no finite values (all NaN or infinite)")
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
    raise ImageReadError(f"unsupported pixel type {arr.dtype}: expected integers, floats or booleans")


def _array_to_rgb(arr: np.ndarray, notices: list[str], bits: int | None = None) -> np.ndarray:
    """Numeric array ``[H, W]``, ``[H, W, 1..4]`` (or channel-first ``[1..4, H, W]``) -> uint8 ``[H, W, 3]``."""
    if arr.dtype == object or not (
        arr.dtype == bool or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ImageReadError(f"unsupported pixel type {arr.dtype}: expected integers, floats or booleans")
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
        notices.append("channel-first array read as [H, W, C]")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"an image array must be [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA); got shape {tuple(arr.shape)}"
        )
    if arr.size == 0:
        raise ImageReadError(f"the image is empty ({_wh(arr.shape)} px)")
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


# ------------------------------------------------------------------------------------- public API
def read_image(
    source: Any,
    notices: list[str] | None = None,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read an image input as uint8 RGB ``[H, W, 3]`` (C-contiguous, writable, a copy of the input).

    Args:
        source: a file path (``str`` / ``os.PathLike``), the file's ``bytes``, a PIL image, or an
            array / tensor ``[H, W]``, ``[H, W, 1..4]`` or ``[1..4, H, W]`` (see the module docstring
            for the bit-depth, alpha, orientation and grey rules).
        notices: if given, sentences about what was done to the pixels (alpha composited, 16-bit
            read, first frame only, ...) are appended to it.
        max_side, max_pixels: JPEGs larger than these are decoded at a reduced power-of-2 scale that
            stays at or above the limits (a notice says so). Nothing else is resized here: the exact
            downscale, if any, is the caller's.

    Raises:
        ImageReadError: no input, a missing, empty, undecodable or corrupt file, or an array of an
            unsupported shape or type. The message names a file by its base name only.
    """
    notes: list[str] = [] if notices is None else notices
    bits: int | None = None
    if source is None:
        raise ImageReadError("no image given: upload an image or pick an example")
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(source, str) and not source.strip():
            raise ImageReadError("no image given: the path is empty")
        arr, bits = _open_file(source, notes, max_side, max_pixels)
    elif isinstance(source, Image.Image):
        try:
            arr, bits = _pil_to_array(source, notes, max_side, max_pixels)
        except ImageReadError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageReadError(f"could not decode the image: it looks truncated or corrupt ({e})") from None
    elif hasattr(source, "detach") and hasattr(source, "cpu"):  # a torch tensor
        arr = source.detach().cpu().numpy()
    elif isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        try:
            arr = np.asarray(source)
        except (TypeError, ValueError) as e:
            raise ImageReadError(f"could not read the image array: {e}") from None
    else:
        raise ImageReadError(
            f"unsupported image input {type(source).__name__}: pass a numpy array, a PIL image or a file path"
        )
    rgb = _array_to_rgb(arr, notes, bits)
    if not rgb.flags.writeable or np.may_share_memory(rgb, arr):
        rgb = rgb.copy()
    return rgb


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map (a single-channel 8-bit file, PIL mode ``L`` or ``P``) as uint8 ``[H, W]``.

    The values are the class indices as stored (a palette file gives its indices, not its colours).
    The file is turned by its EXIF orientation tag like :func:`read_image`, so an image and its label
    stay aligned when both carry one.

    Raises:
        ImageReadError: a missing, undecodable or corrupt file, or one that is not single-channel 8-bit.
    """
    p = Path(os.fspath(path)).expanduser()
    name = _name_of(p)
    if not p.is_file():
        raise ImageReadError(f"label file not found: {name}")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise ImageReadError(
                    f"label {name} has PIL mode {im.mode!r}; expected a single-channel 8-bit PNG (mode 'L') "
                    "holding class indices"
                )
            upright = ImageOps.exif_transpose(im)
            return np.array(upright if upright is not None else im, dtype=np.uint8)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"label {name} is not an image in a format that can be read ({_FORMATS})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"could not decode label {name}: the file looks truncated or corrupt ({e})") from None

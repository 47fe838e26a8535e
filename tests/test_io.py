"""The one image reader (structtoken.io) on tiny generated files: one rule per concern."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structtoken.io import ImageReadError, read_image, read_label


def _save(tmp_path: Path, name: str, im: Image.Image, **kw) -> Path:
    path = tmp_path / name
    im.save(path, **kw)
    return path


def _rgb(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_from_every_source_kind(tmp_path: Path) -> None:
    arr = _rgb()
    path = _save(tmp_path, "a.png", Image.fromarray(arr))
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), Image.open(path), arr):
        out = read_image(source)
        assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
        np.testing.assert_array_equal(out, arr)
        assert out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(read_image(torch.from_numpy(arr)), arr)


def test_array_input_is_copied_not_aliased() -> None:
    arr = _rgb()
    out = read_image(arr)
    out[0, 0] = 0
    assert not np.may_share_memory(out, arr)
    ro = _rgb()
    ro.flags.writeable = False
    assert read_image(ro).flags.writeable


def test_16bit_png_divides_by_65535(tmp_path: Path) -> None:
    grey = np.zeros((4, 5), np.uint16)
    grey[0, 0], grey[0, 1], grey[0, 2] = 65535, 32768, 1000  # a dark 16-bit image stays dark
    path = _save(tmp_path, "g16.png", Image.fromarray(grey))
    notices: list[str] = []
    out = read_image(path, notices)
    assert out.shape == (4, 5, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert out[0, 1, 0] == 128  # 32768 / 65535 * 255 = 127.5 -> 128
    assert out[0, 2, 0] == 4  # 1000 / 65535 * 255 = 3.9, not 255 (the old CLI divided by the max)
    assert (out[1:] == 0).all() and notices == []
    dim = np.full((4, 5), 1000, np.uint16)  # the image's own maximum must not brighten it
    assert (read_image(_save(tmp_path, "dim.png", Image.fromarray(dim))) == 4).all()


def test_16bit_array_and_int_arrays() -> None:
    notices: list[str] = []
    assert (read_image(np.full((3, 3), 65535, np.uint16), notices) == 255).all()
    assert notices == []
    assert (read_image(np.full((3, 3), 200, np.int32)) == 200).all()  # values in 0..255: 8-bit
    out = read_image(np.full((3, 3), 1000, np.int32), notices)  # values in 0..65535: 16-bit
    assert (out == 4).all() and notices == ["int32 image with values up to 1000 read as 16-bit (0..65535)"]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :3, 3] = 255  # left opaque red, right transparent
    rgba[0, 5, 3] = 128  # half transparent
    notices: list[str] = []
    out = read_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")), notices)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[1, 4]) == (255, 255, 255)
    assert tuple(out[0, 5]) == (227, 127, 127)  # 200 * 128/255 + 255 * 127/255 = 227.4
    assert notices == ["transparent pixels composited on white"]
    opaque: list[str] = []
    rgba[..., 3] = 255
    read_image(rgba, opaque)
    assert opaque == []  # opaque alpha is just dropped


def test_la_and_grayscale(tmp_path: Path) -> None:
    la = _save(tmp_path, "la.png", Image.new("LA", (5, 4), (100, 255)))
    out = read_image(la)
    assert out.shape == (4, 5, 3) and (out == 100).all()
    half = read_image(Image.new("LA", (5, 4), (0, 0)))
    assert (half == 255).all()  # fully transparent black on white
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    out = read_image(_save(tmp_path, "l.png", Image.fromarray(grey, "L")))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    assert (read_image(Image.new("1", (5, 4), 1)) == 255).all()


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 3), 1)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((0, 0), 0)
    out = read_image(_save(tmp_path, "p.png", im))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[2, 3]) == (200, 100, 50)
    notices: list[str] = []
    out = read_image(_save(tmp_path, "pt.png", im, transparency=0), notices)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[2, 3]) == (200, 100, 50)
    assert notices == ["transparent pixels composited on white"]


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path) -> None:
    # stored 8 wide x 4 high, left half white; orientation 6 = "rotate 90° clockwise to display"
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "rot.jpg", Image.fromarray(stored), exif=exif, quality=100)
    out = read_image(path)
    assert out.shape == (8, 4, 3)  # displayed: 4 wide x 8 high
    assert out[:4].mean() > 200 and out[4:].mean() < 50  # the white half is now on top
    plain = read_image(_save(tmp_path, "plain.jpg", Image.fromarray(stored), quality=100))
    assert plain.shape == (4, 8, 3)


def test_multi_frame_file_reads_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    notices: list[str] = []
    out = read_image(path, notices)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert notices == ["the file holds several frames; the first one is read"]


def test_floats_and_channel_first() -> None:
    assert (read_image(np.full((3, 4, 3), 0.5, np.float32)) == 128).all()
    notices: list[str] = []
    assert (read_image(np.full((3, 4, 3), 200.0), notices) == 200).all()
    assert notices == ["float image with values up to 200 read as 0..255"]
    notices = []
    out = read_image(np.zeros((3, 5, 6), np.uint8), notices)
    assert out.shape == (5, 6, 3) and notices == ["channel-first array read as [H, W, C]"]


def test_large_jpeg_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = _save(tmp_path, "big.jpg", Image.new("RGB", (400, 200), (0, 128, 0)))
    notices: list[str] = []
    out = read_image(path, notices, max_side=100)
    assert out.shape == (50, 100, 3)  # a power-of-2 draft scale at or above the limit; no further resize here
    assert notices == ["JPEG of 400x200 px decoded at reduced scale (100x50)"]
    assert read_image(path).shape == (200, 400, 3)


# ------------------------------------------------------------------------------------- errors
def _message(source: object) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(source)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_text_file_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "tmpab12cd" / "holiday.jpg"
    path.parent.mkdir()
    path.write_text("this is not an image at all\n" * 10)
    assert _message(path) == (
        "holiday.jpg is not an image in a format that can be read (PNG, JPEG, BMP, TIFF, WebP, GIF ...)"
    )


def test_corrupt_and_truncated_bytes(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(good, "PNG")
    truncated = tmp_path / "upload" / "cut.png"
    truncated.parent.mkdir()
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    msg = _message(truncated)
    assert msg.startswith("could not decode cut.png: the file looks truncated or corrupt (")
    assert str(truncated.parent) not in msg
    assert _message(b"\x89PNG\r\n\x1a\n garbage").startswith(
        "could not decode the image data: the file looks truncated or corrupt ("
    )
    assert _message(b"\x00\x01 random bytes " * 8) == (
        "the image data is not an image in a format that can be read (PNG, JPEG, BMP, TIFF, WebP, GIF ...)"
    )
    assert _message(b"").startswith("the image data is empty (0 bytes)")


def test_missing_and_empty_files_name_only_the_base_name(tmp_path: Path) -> None:
    folder = tmp_path / "gradio" / "0123456789abcdef"
    folder.mkdir(parents=True)
    assert _message(folder / "gone.png") == "image file not found: gone.png"
    (folder / "empty.jpg").write_bytes(b"")
    assert _message(folder / "empty.jpg") == "empty.jpg is empty (0 bytes)"
    assert _message(None) == "no image given: upload an image or pick an example"
    assert _message("  ") == "no image given: the path is empty"


def test_bad_arrays_and_types() -> None:
    assert _message(np.zeros((0, 0, 3), np.uint8)) == "the image is empty (0x0 px)"
    assert _message(np.zeros((20, 20, 5), np.uint8)).startswith("an image array must be [H, W] (grey)")
    assert _message(np.full((4, 4), np.nan)) == "the image holds no finite values (all NaN or infinite)"
    assert _message(np.zeros((4, 4), np.complex64)).startswith("unsupported pixel type complex64")
    assert _message(3.5) == ("unsupported image input float: pass a numpy array, a PIL image or a file path")


def test_decompression_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path, "big.png", Image.new("RGB", (300, 200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert "downscale it before uploading" in _message(path)


# ------------------------------------------------------------------------------------- labels
def test_read_label(tmp_path: Path) -> None:
    lab = np.array([[0, 1, 255], [2, 2, 0]], np.uint8)
    out = read_label(_save(tmp_path, "l.png", Image.fromarray(lab, "L")))
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, lab)
    p = Image.fromarray(lab, "L").convert("P")
    np.testing.assert_array_equal(read_label(_save(tmp_path, "p.png", p)), lab)  # indices, not colours
    with pytest.raises(ImageReadError, match=r"^label rgb.png has PIL mode 'RGB'; expected a single-channel"):
        read_label(_save(tmp_path, "rgb.png", Image.new("RGB", (3, 2))))
    with pytest.raises(ImageReadError, match=r"^label file not found: nope.png$"):
        read_label(tmp_path / "nope.png")


def test_a_big_jpeg_is_drafted_before_the_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG over the decoder's limit that decodes at reduced scale within it is read (the 12000x9000 photo of
    issue 24, scaled down 10x here); a PNG of the same size is refused saying the limit and what to do."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8))
    jpg, png = _save(tmp_path, "big.jpg", im), _save(tmp_path, "big.png", im)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # 1 MP: the 1.08 MP files are over it
    notices: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        rgb = read_image(jpg, notices, max_side=600)
        assert rgb.shape == (450, 600, 3) and "decoded at reduced scale (600x450)" in notices[0]
        msg = _message(png)
    assert "1200x900 px" in msg and "safety limit of 1 MP" in msg and "downscale it before uploading" in msg
    assert isinstance(ImageReadError("x"), ValueError) and len(msg) <= 300 and "\n" not in msg

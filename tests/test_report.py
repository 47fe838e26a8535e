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
    assert "no Per-pixel and no Per-pixel + deep sup. head" in released["probe"]  # display names
    pwe = supported_analyses(tiny_config(head="pwe", extra_heads=("per_pixel",)))
    assert pwe["comparison"] is None
    assert "no Per-pixel + deep sup. head" in pwe["probe"]
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
    # seeds recorded out of order: pairs match by seed, never by position
    for seed, (pp, ds) in [(2, (0.39, 0.44)), (0, (0.40, 0.45)), (1, (0.41, 0.47))]:
        f = tmp_path / f"seed{seed}.json"
        f.write_text(json.dumps({"seed": seed, "heads": {"per_pixel": {"miou": pp}, "per_pixel_ds": {"miou": ds}}}))
        seeds.append(str(f))
    seeds.sort()
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
    assert list(m) == ["meta", "readouts", "reference", "claims", "probe"]
    # the label at the grid's resolution, scored like a stage: a 64x64 label on a 4x4 grid keeps most of it
    ref = m["reference"]
    assert ref["definition"].startswith("the label itself at the heads' feature grid")
    assert 0.0 < ref["boundary_f1"] <= 100.0 and 50.0 < ref["miou"] <= 100.0
    # claims against every baseline of the set, one readout definition per head, provenance of the set file
    assert set(m["claims"]["head"]) == {"per_pixel", "per_pixel_ds"}
    assert set(m["claims"]["raw"]) == {"per_pixel_ds"}
    assert set(m["claims"]["head"]["per_pixel"]) == {"cse", "sse", "pwe"}
    assert all(e["n"] == 1 and e["verdict"] is None for e in m["claims"]["head"]["per_pixel"]["cse"])
    assert m["meta"]["set_file"]["file"] == tiny_set.name and len(m["meta"]["set_file"]["sha256"]) == 64
    assert m["meta"]["result_files"] == [{"file": f"seed{s}.json", "seed": s} for s in (0, 1, 2)]
    assert m["meta"]["readout_definitions"]["per_pixel"]["raw"].startswith("not applicable")
    assert m["meta"]["fitted_input_channels"]["cse"][0] == 4 + 32
    assert m["readouts"]["raw"]["per_pixel"]["applicable"] is False
    md = (out / "report.md").read_text()
    assert "not applicable" in md and "one run each: no interval" in md and "Per-pixel + deep sup." in md
    heads = ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds"]
    # a tiny random set has no fitted file: fitted is absent, with its reason in meta
    assert list(m["readouts"]) == ["raw", "head", "fitted"] and m["readouts"]["fitted"] == {}
    assert set(m["meta"]["unavailable"]["fitted"]) == set(heads) and m["meta"]["fitted"] is None
    # raw only where channel k is class k by construction: not per_pixel (its reason in meta)
    assert [h for h, e in m["readouts"]["raw"].items() if "blocks" in e] == [h for h in heads if h != "per_pixel"]
    assert "not class maps by construction" in m["meta"]["unavailable"]["raw"]["per_pixel"]
    for r in ("raw", "head"):
        for head in [h for h, e in m["readouts"][r].items() if "blocks" in e]:
            entry = m["readouts"][r][head]
            assert set(entry) == {"input", "blocks", "final"}
            assert len(entry["blocks"]) == 2
            for stage in (entry["input"], *entry["blocks"], entry["final"]):
                assert {"miou", "mask_ap", "boundary_f1", "pixel_accuracy", "iou_per_class"} <= set(stage)
                for key in ("miou", "mask_ap", "boundary_f1", "pixel_accuracy"):
                    assert stage[key] is not None and 0.0 <= stage[key] <= 100.0
                assert len(stage["iou_per_class"]) == 4
    assert list(m["readouts"]["head"]) == heads
    for head in [
        h for h, e in m["readouts"]["raw"].items() if "blocks" in e
    ]:  # the head readout's last block and output are the output; raw's output too
        h, raw = m["readouts"]["head"][head], m["readouts"]["raw"][head]
        assert h["blocks"][-1] == h["final"] == raw["final"]
    assert m["meta"]["n_images"] == 3 and m["meta"]["split"] == "val" and m["meta"]["unit"] == "percent (0-100)"
    assert m["meta"]["model"] == tiny_set.name and "date" in m["meta"] and m["meta"]["seconds"] >= 0
    assert m["meta"]["data"] == "data"
    probe = m["probe"]
    assert {"pairs", "delta_mean", "delta_sd", "ci95", "p_value", "n", "verdict"} <= set(probe)
    assert probe["pairs"] == [
        {"seed": 0, "baseline": pytest.approx(40.0), "treated": pytest.approx(45.0)},
        {"seed": 1, "baseline": pytest.approx(41.0), "treated": pytest.approx(47.0)},
        {"seed": 2, "baseline": pytest.approx(39.0), "treated": pytest.approx(44.0)},
    ]
    # deltas 5, 6, 5: mean 5.333, sd 0.5774, t(0.975, 2) = 4.3027 -> half width 1.434
    assert probe["n"] == 3 and probe["delta_mean"] == pytest.approx(16 / 3)
    assert probe["delta_sd"] == pytest.approx(0.57735, abs=1e-5)
    assert probe["ci95"] == pytest.approx([16 / 3 - 1.43424, 16 / 3 + 1.43424], abs=1e-4)
    assert probe["verdict"].startswith("deep supervision (per_pixel_ds vs per_pixel) raises final mIoU by +5.3")
    assert [s["source"] for s in probe["sources"]] == ["seed0.json", "seed1.json", "seed2.json"]
    md = (out / "report.md").read_text()
    assert "raises final mIoU by +5.3" in md and "| StructToken-CSE |" in md
    assert "Reference, the label itself at the heads' feature grid" in md and f"mIoU {ref['miou']:.1f}" in md
    assert "## mIoU per stage, head readout (%)" in md and "has no fitted readout" in md
    assert m["meta"]["seed"] is None  # a set saved without a training config
    assert "one training run of each head (one training seed (not recorded); val split)" in md
    assert "they are not tested differences between heads" in md
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
    with pytest.raises(ValueError, match=r"train_config\.json"):  # no seed, no pairing
        read_probe_run(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"seed": 7, "iters": 30}))
    assert read_probe_run(tmp_path) == (7, {"per_pixel": 0.4, "per_pixel_ds": 0.42})
    with pytest.raises(ValueError, match="not a training run folder"):
        read_probe_run(tmp_path / "nope")


def test_probe_sources_pair_by_seed_and_refuse_a_repeated_seed(tmp_path: Path) -> None:
    from analysis.report import collect_probe, read_probe_json

    shipped = tmp_path / "val_results.json"  # the shipped set's evaluate JSON records no seed: seed 0
    shipped.write_text(json.dumps({"heads": {"per_pixel": {"miou": 0.5}, "per_pixel_ds": {"miou": 0.49}}}))
    assert read_probe_json(shipped) == (0, {"per_pixel": 0.5, "per_pixel_ds": 0.49})
    run = tmp_path / "probe_seed0"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"seed": 0}))
    (run / "log.jsonl").write_text(json.dumps({"final": True, "val_miou/per_pixel": 0.4}))
    with pytest.raises(ValueError, match=r"seed 0 is given twice \(val_results.json and probe_seed0\)"):
        collect_probe([shipped], [run])


def _entry(blocks_miou, blocks_ap):
    return {"input": {}, "blocks": [{"miou": a, "mask_ap": b} for a, b in zip(blocks_miou, blocks_ap)], "final": {}}


def test_claims_cover_every_baseline_and_only_the_readouts_that_read_both() -> None:
    from analysis.claims import block_claims, claims_table

    readouts = {
        "raw": {
            "cse": _entry([30, 40], [50, 60]),
            "per_pixel_ds": _entry([35, 38], [10, 12]),
            "per_pixel": {"applicable": False, "reason": "channel k is not class k"},
        },
        "head": {"cse": _entry([20, 50], [40, 60]), "per_pixel": _entry([45, 48], [55, 58])},
    }
    heads = ["cse", "per_pixel", "per_pixel_ds"]
    claims = block_claims({0: readouts}, heads)
    assert set(claims) == {"raw", "head"}
    assert set(claims["raw"]) == {"per_pixel_ds"}  # raw reads no per_pixel: no raw line against it
    assert set(claims["head"]) == {"per_pixel"}
    b1, b2 = claims["raw"]["per_pixel_ds"]["cse"]
    assert (b1["block"], b1["diff_mean"], b1["n"], b1["verdict"]) == (1, -5, 1, None)  # one run: no verdict
    assert "ci95" not in b1 and b2["diff_mean"] == 2 and b2["mask_ap"]["diff_mean"] == 48
    table = "\n".join(claims_table(claims))
    assert "one run each: no interval" in table and "| StructToken-CSE | Per-pixel + deep sup. | -5.0 | +2.0 |" in table


def test_claims_over_seeds_are_paired_differences_with_a_t_interval() -> None:
    from analysis.claims import block_claims

    # block 1 differences over seeds 0, 1, 2: 5, 6, 5 (mean 5.333, sd 0.5774, t(0.975, 2) = 4.3027 -> +-1.434)
    # block 2: -1, +1, 0 (the interval contains 0: no verdict)
    per_seed = {
        s: {"head": {"cse": _entry([40 + d1, 50 + d2], [1, 1]), "fcn": _entry([40, 50], [1, 1])}}
        for s, d1, d2 in ((0, 5, -1), (1, 6, 1), (2, 5, 0))
    }
    per_seed[1]["head"]["fcn"]["blocks"][0]["miou"] -= 10  # shared seed effect: cancels in the pairing
    per_seed[1]["head"]["cse"]["blocks"][0]["miou"] -= 10
    (b1, b2) = block_claims(per_seed, ["cse", "fcn"])["head"]["fcn"]["cse"]
    assert b1["n"] == 3 and b1["seeds"] == [0, 1, 2] and b1["diff_mean"] == pytest.approx(16 / 3)
    assert b1["ci95"] == pytest.approx([16 / 3 - 1.43424, 16 / 3 + 1.43424], abs=1e-4)
    assert b1["verdict"] == "above"
    assert b2["diff_mean"] == pytest.approx(0) and b2["verdict"] is None and b2["ci95"][0] < 0 < b2["ci95"][1]
    assert b1["mask_ap"]["ci95"] is None and b1["mask_ap"]["verdict"] is None  # no spread: no interval


def test_the_structtoken_heads_pair_with_each_other_block_by_block() -> None:
    from analysis.claims import block_claims, claims_table, structtoken_pairs

    assert structtoken_pairs(["cse", "sse", "pwe", "per_pixel"]) == [("cse", "sse"), ("cse", "pwe"), ("sse", "pwe")]
    per_seed = {
        s: {"head": {"cse": _entry([40, 50], [1, 1]), "pwe": _entry([43 + s, 50], [1, 1])}} for s in (0, 1, 2)
    }  # pwe minus cse at block 1: 3, 4, 5
    pairs = block_claims(per_seed, ["cse", "pwe"], structtoken_pairs(["cse", "pwe"]))
    (b1, _b2) = pairs["head"]["cse"]["pwe"]
    assert b1["diff_mean"] == pytest.approx(4.0) and b1["verdict"] == "above"
    table = claims_table(pairs, "miou", ("second", "first"))
    assert table[0].startswith("**head readout**, mIoU: second minus first")
    assert table[4].startswith("| StructToken-PWE | StructToken-CSE | +4.0 [")


def test_parallel_scoring_gives_the_same_numbers(tmp_path: Path, tiny_set: Path) -> None:
    from analysis.report import evaluate_stages
    from structtoken.checkpoint import load_model
    from structtoken.data import SegmentationDataset

    _write_dataset(tmp_path / "data", 2)
    ds = SegmentationDataset(tmp_path / "data", "val")
    model = load_model(tiny_set)
    import threading

    import torch

    serial = evaluate_stages(model, ds, progress=False, workers=1)[0]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1, or the check below could not tell the workers' setting from ours
    try:
        parallel = evaluate_stages(model, ds, progress=False, workers=2)[0]
        # the workers run torch on one thread each; the caller's setting, and that of threads started
        # later, is what it was
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert torch.get_num_threads() == 2 and later == [2]
    finally:
        torch.set_num_threads(before)
    assert serial["raw"] and serial["head"]
    for r, per_head in serial.items():
        for head, stages in per_head.items():
            for a, b in zip(stages, parallel[r][head], strict=True):
                assert a.compute() == b.compute()


def test_batched_scoring_equals_the_per_stack_accumulators(tmp_path: Path, tiny_set: Path) -> None:
    from analysis.maps import image_maps_from_output, readout_stages
    from analysis.report import StageMetrics, evaluate_stages
    from structtoken.checkpoint import load_model
    from structtoken.data import SegmentationDataset
    from structtoken.segmentor import upsample

    _write_dataset(tmp_path / "data", 2)
    ds = SegmentationDataset(tmp_path / "data", "val")
    model = load_model(tiny_set)
    acc = evaluate_stages(model, ds, progress=False)[0]
    for r in ("raw", "head"):
        for head in ("cse", "per_pixel" if r == "head" else "per_pixel_ds"):
            ref = None
            for i in range(len(ds)):
                image, label = ds.load_pair(i)
                with torch.no_grad():  # the report's input: preprocess at the native size
                    out = model(model.preprocess(image, scale=None))
                    maps = image_maps_from_output(image, out, model=model)
                stack = torch.from_numpy(np.array(readout_stages(maps, head, r)))  # [S, K, h, w]
                up = upsample(stack, tuple(label.shape)).numpy()  # [S, K, H, W], as the report does
                ref = ref or [StageMetrics(4, 255) for _ in range(up.shape[0])]
                for s, m in enumerate(ref):
                    m.update(up[s], up[s].argmax(0), label)
            for a, b in zip(acc[r][head], ref, strict=True):
                got, want = a.compute(), b.compute()
                assert got["miou"] == pytest.approx(want["miou"], abs=1e-6)
                assert got["mask_ap"] == pytest.approx(want["mask_ap"], abs=1e-6)
                assert got["boundary_f1"] == pytest.approx(want["boundary_f1"], abs=1e-6)


def test_label_on_grid_is_the_share_of_each_class_per_cell() -> None:
    from analysis.report import label_on_grid

    label = np.array(
        [
            [0, 0, 1, 1],
            [0, 255, 1, 2],
            [2, 2, 255, 255],
            [2, 2, 255, 255],
        ]
    )
    grid = label_on_grid(label, 3, (2, 2), 255).numpy()  # [K, 2, 2]
    assert grid.shape == (3, 2, 2) and grid.dtype == np.float32
    # top left: three 0 and one ignored -> 3/4 of the cell is class 0 (ignored pixels count for no class)
    np.testing.assert_allclose(grid[:, 0, 0], [0.75, 0.0, 0.0])
    np.testing.assert_allclose(grid[:, 0, 1], [0.0, 0.75, 0.25])
    np.testing.assert_allclose(grid[:, 1, 0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(grid[:, 1, 1], [0.0, 0.0, 0.0])  # ignored only
    # at the label's own size it is the one-hot label: argmax gives the label back where it is not ignored
    full = label_on_grid(label, 3, (4, 4), 255).numpy()
    valid = label != 255
    assert (full.argmax(0)[valid] == label[valid]).all() and full.sum(0)[~valid].max() == 0


def test_the_reference_is_scored_like_a_stage(tmp_path: Path, tiny_set: Path) -> None:
    from analysis.report import StageMetrics, evaluate_stages, label_on_grid
    from structtoken.checkpoint import load_model
    from structtoken.data import SegmentationDataset
    from structtoken.segmentor import upsample

    _write_dataset(tmp_path / "data", 2)
    ds = SegmentationDataset(tmp_path / "data", "val")
    model = load_model(tiny_set)
    got = StageMetrics(4, 255)
    evaluate_stages(model, ds, progress=False, reference=got)
    want = StageMetrics(4, 255)
    for i in range(len(ds)):
        image, label = ds.load_pair(i)
        with torch.no_grad():
            out = model(model.preprocess(image, scale=None))
        grid = tuple(out.features.shape[-2:])
        up = upsample(label_on_grid(label, 4, grid, 255)[None], tuple(label.shape))[0].numpy()
        want.update(up, up.argmax(0), label)
    assert got.confusion.num_images == len(ds)
    for key in ("miou", "mask_ap", "boundary_f1"):
        assert got.compute()[key] == pytest.approx(want.compute()[key], abs=1e-6)


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

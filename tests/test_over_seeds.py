"""Summaries over training seeds from run results (:mod:`analysis.over_seeds`), on hand-made results with known
answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.over_seeds import ablation, load_runs, probe_ft, spread, stage2_per_seed, stage_spread


def _stage(miou: float) -> dict:
    return {"miou": miou, "mask_ap": miou + 10.0, "boundary_f1": miou / 2}


def _run(name: str, recipe: str, seed: int, heads: dict[str, list[float]], final: dict[str, float], n: int = 2):
    """A run result: per head its stage mIoUs (input, blocks..., final) in percent, its final whole mIoU (fraction)."""
    readouts = {}
    for r in ("raw", "head"):
        readouts[r] = {
            h: {"input": _stage(v[0]), "blocks": [_stage(x) for x in v[1:-1]], "final": _stage(v[-1])}
            for h, v in heads.items()
        }
    if "per_pixel" in heads:
        readouts["raw"]["per_pixel"] = {"applicable": False, "reason": "not class maps"}
    return {
        "format": "structtoken-run-result/1",
        "file": name,
        "heads": list(heads),
        "train_config": {"recipe": recipe, "seed": seed, "model": {"num_blocks": n, "head_vit_blocks": 2}},
        "final": {"whole": {h: {"miou": v} for h, v in final.items()}},
        "stages": {"split": "val", "readouts": readouts},
    }


RUNS = [
    _run("st0.json", "camvid_v2_stage2", 0, {"cse": [10, 20, 30, 40], "pwe": [5, 6, 7, 8]}, {"cse": 0.5, "pwe": 0.6}),
    _run("st1.json", "camvid_v2_stage2", 1, {"cse": [12, 22, 34, 44], "pwe": [5, 6, 7, 8]}, {"cse": 0.52, "pwe": 0.6}),
    _run("base0.json", "camvid_v2_stage2", 0, {"per_pixel": [1, 2, 3, 4]}, {"per_pixel": 0.4}),
    _run("b1s0.json", "camvid_v2_blocks", 0, {"cse": [1, 2, 3], "pwe": [4, 5, 6]}, {"cse": 0.3, "pwe": 0.45}, n=1),
    _run("b1s1.json", "camvid_v2_blocks", 1, {"cse": [1, 2, 3], "pwe": [4, 5, 6]}, {"cse": 0.35, "pwe": 0.47}, n=1),
    _run("ft0.json", "camvid_v2_probe_ft", 0, {"per_pixel": [1, 2, 3, 4]}, {"per_pixel": 0.50, "per_pixel_ds": 0.52}),
    _run("ft1.json", "camvid_v2_probe_ft", 1, {"per_pixel": [1, 2, 3, 4]}, {"per_pixel": 0.48, "per_pixel_ds": 0.51}),
]


def test_spread_of_known_values() -> None:
    s = spread([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([4.0])["sd"] is None and spread([])["mean"] is None
    assert spread([1.0, float("nan"), 3.0])["n"] == 2  # a missing value does not count


def test_stage_spread_pairs_seeds_per_head_and_skips_what_a_readout_cannot_read() -> None:
    per_seed = stage2_per_seed(RUNS)
    assert sorted(per_seed) == [0, 1] and set(per_seed[0]["head"]) == {"cse", "pwe", "per_pixel"}
    sp = stage_spread(per_seed)
    cse = sp["head"]["cse"]
    assert cse["seeds"] == [0, 1]
    assert cse["blocks"][0]["miou"]["values"] == [20.0, 22.0] and cse["blocks"][0]["miou"]["mean"] == 21.0
    assert cse["blocks"][1]["miou"]["min"] == 30.0 and cse["blocks"][1]["miou"]["max"] == 34.0
    assert math.isclose(cse["final"]["miou"]["sd"], math.sqrt(8.0))  # (40, 44)
    assert cse["input"]["mask_ap"]["mean"] == 21.0  # (20 + 22) / 2
    assert sp["head"]["per_pixel"]["seeds"] == [0]  # one seed: its own spread
    assert sp["head"]["per_pixel"]["final"]["miou"]["sd"] is None
    assert "per_pixel" not in sp["raw"]  # raw does not read the per-pixel baseline


def test_a_head_in_two_runs_of_one_seed_is_refused() -> None:
    twice = [RUNS[0], {**RUNS[0], "file": "again.json"}]
    with pytest.raises(ValueError, match=r"head cse of seed 0 is also in st0\.json"):
        stage2_per_seed(twice)


def test_probe_with_trainable_features_pairs_by_seed() -> None:
    pf = probe_ft(RUNS)
    assert [(p["seed"], p["baseline"], p["treated"]) for p in pf["pairs"]] == [(0, 50.0, 52.0), (1, 48.0, 51.0)]
    assert math.isclose(pf["delta_mean"], 2.5) and pf["n"] == 2
    assert "last 2 ViT blocks" in pf["features"]
    assert probe_ft(RUNS[:5]) is None  # no such runs


def test_ablation_joins_stage2_as_four_blocks() -> None:
    ab = ablation(RUNS)
    assert list(ab["by_blocks"]) == ["1", "2"]  # the stage-2 runs here have 2 blocks (n=2)
    one = ab["by_blocks"]["1"]
    assert one["seeds"] == [0, 1] and one["runs"] == ["b1s0.json", "b1s1.json"]
    assert one["final"]["cse"] == pytest.approx([30.0, 35.0])  # percent
    assert one["final_spread"]["pwe"]["mean"] == pytest.approx(46.0)
    assert one["blocks"]["head"]["cse"] == [[2.0], [2.0]]
    assert ab["by_blocks"]["2"]["final"]["cse"] == pytest.approx([50.0, 52.0])  # from stage 2
    assert ablation(RUNS[:3]) is None  # no ablation runs


def test_load_runs_reads_a_folder_and_refuses_other_json(tmp_path: Path) -> None:
    for r in RUNS[:2]:
        (tmp_path / r["file"]).write_text(json.dumps({k: v for k, v in r.items() if k != "file"}))
    assert [r["file"] for r in load_runs(tmp_path)] == ["st0.json", "st1.json"]
    (tmp_path / "zz.json").write_text("{}")
    with pytest.raises(ValueError, match=r"zz\.json is not a run result"):
        load_runs(tmp_path)


def test_the_ablation_figure_draws_each_block_count_and_the_final_mIoU() -> None:
    from analysis.figures import ablation_figure

    fig = ablation_figure(ablation(RUNS), "head")
    cse, _pwe, final = fig.axes
    assert [t.get_text() for t in cse.get_legend().get_texts()] == ["N = 1", "N = 2"]
    mean_n2 = next(line for line in cse.get_lines() if line.get_label() == "N = 2")
    assert list(mean_n2.get_ydata()) == [21.0, 32.0]  # blocks 1-2 of the stage-2 runs: (20, 22), (30, 34)
    assert [t.get_text() for t in final.get_legend().get_texts()] == ["StructToken-CSE", "StructToken-PWE"]
    assert list(final.get_lines()[0].get_ydata()) == pytest.approx([32.5, 51.0])  # CSE final, N = 1 and 2

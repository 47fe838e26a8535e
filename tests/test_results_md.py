"""README's and docs/results.md's result tables equal what the shipped JSON gives (analysis.results_md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from analysis.results_md import ROOT, SOURCES, render, stale_files


def test_readme_and_results_doc_match_the_shipped_json():
    stale = stale_files()
    assert not stale, f"{[p.name for p in stale]} differ from the shipped JSON: run python -m analysis results-md"


def _copy(tmp: Path) -> Path:
    for rel in ("README.md", "docs/results.md", SOURCES["final"], SOURCES["report"], SOURCES["v2claims"]):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp / rel)
    runs = ROOT / SOURCES["runs"]
    if runs.is_dir():
        shutil.copytree(runs, tmp / SOURCES["runs"])
    return tmp


def test_an_edited_number_or_a_changed_result_is_caught(tmp_path):
    root = _copy(tmp_path)
    assert stale_files(root) == []
    readme = root / "README.md"
    text = readme.read_text()
    assert "| 50.23 |" in text  # the shipped set's CSE mIoU
    readme.write_text(text.replace("| 50.23 |", "| 50.32 |", 1))  # a hand edit of it
    assert stale_files(root) == [readme]
    readme.write_text(text)
    val = json.loads((root / SOURCES["final"]).read_text())
    val["heads"]["cse"]["miou"] += 0.01  # a new result without regenerating the docs
    (root / SOURCES["final"]).write_text(json.dumps(val))
    assert set(stale_files(root)) == {readme, root / "docs/results.md"}
    for path, new in render(root).items():
        path.write_text(new)
    assert stale_files(root) == [] and "| StructToken-CSE | 1.66 | 2.26 | 51.23 |" in readme.read_text()


def test_the_set_v2_claims_follow_their_json(tmp_path):
    root = _copy(tmp_path)
    claims = root / SOURCES["v2claims"]
    data = json.loads(claims.read_text())
    data["claims"]["head"]["per_pixel"]["cse"][0]["diff_mean"] = 12.345  # a changed claim, docs not regenerated
    claims.write_text(json.dumps(data))
    assert stale_files(root) == [root / "docs/results.md"]
    for path, new in render(root).items():
        path.write_text(new)
    assert stale_files(root) == [] and "+12.3" in (root / "docs/results.md").read_text()


def _run_file(folder: Path, name: str, seed: int, finals: dict[str, float]) -> None:
    blocks = [{"miou": 10.0 * (i + 1) + seed} for i in range(2)]
    stages = {h: {"input": {"miou": 1.0}, "blocks": blocks, "final": {"miou": 100 * v}} for h, v in finals.items()}
    res = {
        "format": "structtoken-run-result/1",
        "run": Path(name).stem,
        "evaluation": {},
        "heads": list(finals),
        "train_config": {"recipe": "camvid_v2_stage2", "seed": seed, "model": {"num_blocks": 2}},
        "final": {p: {h: {"miou": v} for h, v in finals.items()} for p in ("whole", "slide")},
        "stages": {"split": "val", "readouts": {"head": stages}},
    }
    (folder / name).write_text(json.dumps(res))


def test_pairs_of_heads_and_stage_spread_come_from_the_runs(tmp_path):
    from analysis.results_md import pairwise_block, stage_spread_block

    for seed, (cse, pp) in enumerate([(0.50, 0.48), (0.52, 0.49), (0.54, 0.51)]):
        _run_file(tmp_path, f"st{seed}.json", seed, {"cse": cse})
        _run_file(tmp_path, f"base{seed}.json", seed, {"per_pixel": pp})
    rows = [line for line in pairwise_block(tmp_path) if line.startswith("| StructToken-CSE")]
    # per_pixel minus cse: -2, -3, -3 points -> mean -2.67, SD 0.577, t(0.975, 2) = 4.303: +-1.43; t = 8, p = 0.015
    assert rows == ["| StructToken-CSE | Per-pixel | 0, 1, 2 | -2.67 | [-4.10, -1.23] | 0.02 |"]
    lines = stage_spread_block(tmp_path)
    cse = next(line for line in lines if line.startswith("| StructToken-CSE"))
    assert cse == "| StructToken-CSE | 0, 1, 2 | 1.0 ± 0.0 | 11.0 ± 1.0 | 21.0 ± 1.0 | 52.0 ± 2.0 |"


def test_the_runs_table_is_called_partial_until_every_head_has_the_stage2_seeds(tmp_path):
    from analysis.results_md import v2_block, v2_claims_block

    def caption(lines: list[str]) -> str:
        return next(line for line in lines if line.startswith("Stage 2, final val mIoU"))

    for seed in (0, 1):
        _run_file(tmp_path, f"st{seed}.json", seed, {"cse": 0.5})
        _run_file(tmp_path, f"base{seed}.json", seed, {"per_pixel": 0.5})
    assert "partial" in caption(v2_block(tmp_path))
    _run_file(tmp_path, "st2.json", 2, {"cse": 0.5})
    assert "partial" in caption(v2_block(tmp_path))  # per_pixel still lacks seed 2
    _run_file(tmp_path, "base2.json", 2, {"per_pixel": 0.5})
    assert "partial" not in caption(v2_block(tmp_path))
    claims = tmp_path / "claims.json"
    for seeds, partial in (([0, 1], True), ([0, 1, 2], False)):
        claims.write_text(json.dumps({"meta": {"seeds": seeds}, "claims": {}}))
        assert ("Partial" in v2_claims_block(claims)[0]) is partial


def test_verdicts_name_heads_by_their_display_names():
    """The probe verdicts are stored with head keys (metrics.json, the runs) and shown with display names."""
    from analysis.labels import display_names
    from analysis.results_md import probe_block

    assert display_names("deep supervision (per_pixel_ds vs per_pixel), cse") == (
        "deep supervision (Per-pixel + deep sup. vs Per-pixel), StructToken-CSE"
    )
    report = {"probe": {"verdict": "per_pixel_ds vs per_pixel", "pairs": [{"seed": 0, "baseline": 1, "treated": 2}]}}
    assert probe_block(report)[0] == "**Verdict:** Per-pixel + deep sup. vs Per-pixel"

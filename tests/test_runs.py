"""Run result files (``python -m analysis run-result``) and sets assembled from head files."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import tiny_tc, write_dataset

from analysis.runs import main as run_result_main
from structtoken import load_model, save_model
from structtoken.segmentor import build_model
from structtoken.sets import SetAssemblyError, assemble_set
from structtoken.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A backbone set and two stage-2 runs on it (head groups of one seed), tiny and finished."""
    tmp = tmp_path_factory.mktemp("runs")
    data = write_dataset(tmp / "data")
    src = save_model(build_model(tiny_tc().model), tmp / "backbone_set.safetensors")
    runs = {}
    for name, heads in (("st", ("cse", "pwe")), ("base", ("per_pixel", "per_pixel_ds"))):
        tc = tiny_tc(freeze_backbone=True, iters=2, log_interval=1)
        tc.model = tc.model.replace(head=heads[0], extra_heads=heads[1:])
        tc.recipe = "tiny_stage2"
        Trainer(tc, data, tmp / name, torch.device("cpu"), init_from=str(src), progress=False).run()
        runs[name] = tmp / name
    return tmp, data, src, runs


def test_run_result_holds_provenance_finals_and_every_readout(finished_runs, capsys):
    tmp, data, _src, runs = finished_runs
    out = tmp / "results" / "st.json"
    heads_out = tmp / "heads" / "st.safetensors"
    code = run_result_main(
        [
            str(runs["st"]),
            "--name",
            "st",
            "--out",
            str(out),
            "--data",
            str(data),
            "--heads-out",
            str(heads_out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert str(tmp) not in out.read_text()  # no machine paths
    prov = res["train_config"]["provenance"]
    assert prov["recipe"] == "tiny_stage2" and prov["init_from"]["file"] == "backbone_set.safetensors"
    assert prov["iterations"] == 2 and prov["median_s_per_iter"] > 0
    assert set(res["final"]["whole"]) == set(res["final"]["slide"]) == {"cse", "pwe"}
    assert 0 <= res["final"]["whole"]["cse"]["miou"] <= 1
    stages = res["stages"]["readouts"]
    for r in ("raw", "head", "fitted"):
        for h in ("cse", "pwe"):
            entry = stages[r][h]
            assert entry["applicable"] and len(entry["blocks"]) == 2, (r, h)
            assert 0 <= entry["blocks"][0]["miou"] <= 100
    assert stages["fitted"]["cse"]["input_channels"] == [3 + 32, 3 + 32, 3, 3]  # K + C, K after the last block
    assert "not applicable" not in res["readout_definitions"]["cse"]["raw"]
    assert res["costs"]["cse"]["params_m"] > 0
    assert heads_out.is_file() and heads_out.with_name("st.readouts.safetensors").is_file()


def test_raw_is_not_applicable_to_per_pixel_in_a_run_result(finished_runs, capsys):
    tmp, data, _src, runs = finished_runs
    out = tmp / "results" / "base.json"
    heads_out = tmp / "heads" / "base.safetensors"
    args = [str(runs["base"]), "--name", "base", "--out", str(out), "--data", str(data), "--no-progress"]
    assert run_result_main([*args, "--heads-out", str(heads_out)]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    raw = res["stages"]["readouts"]["raw"]
    assert raw["per_pixel"]["applicable"] is False and "not class maps" in raw["per_pixel"]["reason"]
    assert raw["per_pixel_ds"]["applicable"] is True
    assert res["readout_definitions"]["per_pixel"]["raw"].startswith("not applicable")


def test_a_set_assembles_from_head_files_of_its_backbone(finished_runs):
    tmp, data, src, runs = finished_runs
    files = [tmp / "heads" / "st.safetensors", tmp / "heads" / "base.safetensors"]
    for f, name in zip(files, ("st", "base"), strict=True):  # made here when the tests above did not run first
        if not f.is_file():
            args = [str(runs[name]), "--name", name, "--out", str(tmp / f"{name}.json"), "--data", str(data)]
            assert run_result_main([*args, "--heads-out", str(f), "--no-progress"]) == 0
    out = tmp / "assembled.safetensors"
    model = assemble_set(src, files, out)
    assert model.cfg.heads == ("cse", "pwe", "per_pixel", "per_pixel_ds")
    st = load_model(runs["st"] / "final.safetensors")
    for k, v in st.state_dict().items():  # heads as trained (float16 storage), the backbone as the source's
        if k.startswith("heads."):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=2e-3, atol=1e-4)
    base = load_model(src)
    for k, v in base.state_dict().items():
        if k.startswith("backbone."):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-3, atol=1e-3)
    assert model.fitted_readouts is not None and set(model.fitted_readouts.lenses) == set(model.cfg.heads)
    other = save_model(build_model(tiny_tc().model), tmp / "other_backbone.safetensors")
    with pytest.raises(SetAssemblyError, match="trained on backbone"):
        assemble_set(other, files, tmp / "wrong.safetensors")


def _head_files(finished_runs) -> list:
    tmp, data, _src, runs = finished_runs
    files = [tmp / "heads" / "st.safetensors", tmp / "heads" / "base.safetensors"]
    for f, name in zip(files, ("st", "base"), strict=True):  # made here when the tests above did not run first
        if not f.is_file():
            args = [
                str(runs[name]),
                "--name",
                name,
                "--out",
                str(tmp / "results" / f"{name}.json"),
                "--data",
                str(data),
            ]
            assert run_result_main([*args, "--heads-out", str(f), "--no-progress"]) == 0
    return files


def test_report_evaluates_other_seeds_pairs_on_the_sets_backbone_and_carries_the_runs(finished_runs, tmp_path):
    """The probe of a report over head files: another seed's deep-supervision pair, run on the set's backbone map,
    scores exactly as the same heads inside an assembled set; the run results add spread, claims and ablation."""
    from analysis.report import build_report
    from structtoken.data import SegmentationDataset
    from structtoken.evaluate import training_seed
    from structtoken.sets import load_head_group

    tmp, data, src, _runs = finished_runs
    files = _head_files(finished_runs)
    tc = tiny_tc(freeze_backbone=True, iters=2, log_interval=1, seed=5)
    tc.model = tc.model.replace(head="per_pixel", extra_heads=("per_pixel_ds",))
    tc.recipe = "tiny_stage2"
    Trainer(tc, data, tmp_path / "seed5", torch.device("cpu"), init_from=str(src), progress=False).run()
    seed5 = tmp_path / "seed5.safetensors"
    args = [
        str(tmp_path / "seed5"),
        "--name",
        "seed5",
        "--out",
        str(tmp / "results" / "seed5.json"),
        "--data",
        str(data),
    ]
    assert run_result_main([*args, "--heads-out", str(seed5), "--no-progress"]) == 0
    assert load_head_group(seed5, src).seed == 5

    set_path = tmp_path / "set.safetensors"
    model = assemble_set(src, files, set_path)
    ds = SegmentationDataset(data, "val")
    res = build_report(
        model, ds, tmp_path / "rep", str(set_path), progress=False, num_examples=0, probe_heads=[seed5],
        runs=tmp / "results",
    )  # fmt: skip
    pairs = {p["seed"]: p for p in res["probe"]["pairs"]}
    own_seed = training_seed(str(set_path))  # the seed both head files record
    assert own_seed is not None
    assert sorted(pairs) == sorted([own_seed, 5])
    # the same heads inside a set: the report's final mIoU of that set's pair is what the extra path gave
    alone = assemble_set(src, [files[0], seed5], tmp_path / "set5.safetensors")
    res5 = build_report(
        alone, ds, tmp_path / "rep5", str(tmp_path / "set5.safetensors"), progress=False, num_examples=0
    )
    final = res5["readouts"]["head"]
    assert pairs[5]["baseline"] == pytest.approx(final["per_pixel"]["final"]["miou"], abs=1e-9)
    assert pairs[5]["treated"] == pytest.approx(final["per_pixel_ds"]["final"]["miou"], abs=1e-9)
    assert res["meta"]["probe_head_files"] == [{"file": "seed5.safetensors", "seed": 5}]
    assert res["meta"]["runs"]["folder"] == "results" and "seed5.json" in res["meta"]["runs"]["files"]
    assert set(res["seeds"]["stages"]["head"]) >= {"cse", "pwe", "per_pixel", "per_pixel_ds"}
    assert res["seeds"]["claims"]["head"]["per_pixel"]["cse"][0]["n"] >= 1
    assert str(tmp) not in (tmp_path / "rep" / "metrics.json").read_text()  # no machine paths
    with pytest.raises(ValueError, match="trained on backbone"):
        other = save_model(build_model(tiny_tc().model), tmp_path / "other.safetensors")
        build_report(load_model(other), ds, tmp_path / "bad", str(other), progress=False, probe_heads=[seed5])


def test_an_assembled_set_is_the_backbone_of_later_assemblies(finished_runs, tmp_path):
    """Head files record the backbone they were trained on; a set assembled from it carries that backbone's
    identity, so it can stand for it (the shipped set is replaced by an assembled one)."""
    from structtoken.sets import backbone_digest

    _tmp, _data, src, _runs = finished_runs
    files = _head_files(finished_runs)
    first = tmp_path / "first.safetensors"
    assemble_set(src, files, first)
    assert backbone_digest(first) == backbone_digest(src) == (src.name, backbone_digest(src)[1])
    again = assemble_set(first, files[1:], first)  # in place, from itself
    assert again.cfg.heads == ("per_pixel", "per_pixel_ds")
    assert backbone_digest(first)[1] == backbone_digest(src)[1]
    assert not first.with_name("first.readouts.safetensors").is_file() or again.fitted_readouts is not None

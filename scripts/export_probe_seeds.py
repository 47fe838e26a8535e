"""Store the shipped probe's per-seed results as files the report reads (issue 22: the probe reproducible).

The deep-supervision probe of the shipped report (assets/camvid/report/metrics.json, regenerated in commit
3aa61af) pairs seed 0 (assets/camvid/val_results.json) with seeds 1 and 2, whose training runs (camvid_stage2
recipe, --heads per_pixel per_pixel_ds, --seed S, the backbone copied from the shipped set; run folders
runs/probe_seed1, runs/probe_seed2) were not kept. This writes, for every seed of the report's probe pairs not
covered by val_results.json, assets/camvid/probe/seedS.json in the format of ``python -m analysis report
--probe-json`` (final val mIoU as fractions, the precision the runs' log.jsonl recorded), with where the values
come from. Run once, before the report is regenerated from these files:

    python scripts/export_probe_seeds.py
    python -m analysis report ... --probe-json assets/camvid/val_results.json assets/camvid/probe/seed*.json
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    report = json.loads((ROOT / "assets/camvid/report/metrics.json").read_text())
    seed0 = json.loads((ROOT / "assets/camvid/val_results.json").read_text())
    covered = {0} if "heads" in seed0 else set()
    out = ROOT / "assets/camvid/probe"
    out.mkdir(parents=True, exist_ok=True)
    for pair in report["probe"]["pairs"]:
        seed = int(pair["seed"])
        if seed in covered:
            continue
        record = {
            "seed": seed,
            "split": report["meta"]["split"],
            "heads": {
                "per_pixel": {"miou": round(pair["baseline"] / 100, 6)},
                "per_pixel_ds": {"miou": round(pair["treated"] / 100, 6)},
            },
            "unit": "fractions (0-1), final val mIoU, whole image",
            "provenance": {
                "run": f"runs/probe_seed{seed} (not kept)",
                "recipe": "camvid_stage2",
                "heads": ["per_pixel", "per_pixel_ds"],
                "init_from": "the shipped set's backbone per the reproduce commands of the time (not recorded in "
                "the run; the history also mentions the float32 stage-1 file)",
                "values_from": "assets/camvid/report/metrics.json probe pairs (commit 3aa61af), exported by "
                "scripts/export_probe_seeds.py",
            },
        }
        path = out / f"seed{seed}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

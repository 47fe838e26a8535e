"""README's and docs/results.md's result tables, generated from the shipped JSON (never typed by hand).

    python -m analysis results-md            # rewrite the generated blocks
    python -m analysis results-md --check    # exit 1 when a file differs from what the JSON gives (a test runs it)

Each generated block sits between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->`` (README's
headline block is ``<!-- results:begin -->`` / ``<!-- results:end -->``). Sources, all under ``assets/``:
``camvid/val_results.json`` (final predictions of the shipped set, ``python -m structtoken.evaluate``),
``camvid/report/metrics.json`` (per stage and readout, claims, probe: ``python -m analysis report``) and the set-v2
run results ``camvid/v2/runs/*.json`` (``python -m analysis run-result``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .claims import claims_table
from .labels import head_label

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "final": "assets/camvid/val_results.json",
    "report": "assets/camvid/report/metrics.json",
    "runs": "assets/camvid/v2/runs",
    "v2claims": "assets/camvid/v2/claims.json",
}


def _pct(v: Any, digits: int = 2) -> str:
    return "–" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def final_table(val: Mapping[str, Any]) -> list[str]:
    """The shipped set's final predictions: params, GFLOPs, mIoU, pixel accuracy, per-class IoU (%)."""
    classes = list(val["classes"])
    costs = val.get("costs") or {}
    heads = list(val["heads"])
    best = max(heads, key=lambda h: val["heads"][h]["miou"])
    lines = [
        f"CamVid {val.get('split', 'val')} ({val['num_images']} images, whole image at native resolution, "
        f"{len(classes)} classes), from `{SOURCES['final']}`; one training run per head (seed 0):",
        "",
        "| head | params (M) | GFLOPs @480x360 | mIoU | pixel acc | " + " | ".join(classes) + " |",
        "|---" * (5 + len(classes)) + "|",
    ]
    if "backbone" in costs:
        c = costs["backbone"]
        lines.append(f"| backbone | {c['params_m']:.2f} | {c['gflops']:.2f} |" + " |" * (2 + len(classes)))
    for h in heads:
        m, c = val["heads"][h], costs.get(h, {})
        miou = _pct(m["miou"])
        miou = f"**{miou}**" if h == best else miou
        params = f"{c['params_m']:.3g}" if c else "–"
        gflops = f"{c['gflops']:.3g}" if c else "–"
        cells = [head_label(h), params, gflops, miou, _pct(m["pixel_accuracy"])]
        cells += [_pct(v, 1) for v in m["iou_per_class"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stages_table(report: Mapping[str, Any]) -> list[str]:
    """mIoU (%) of every stage (blocks, then the output) per head and readout, from the report."""
    meta = report["meta"]
    heads = list(meta["heads"])
    readouts = report["readouts"]
    names = {"raw": "raw", "head": "head (logit lens)", "fitted": "fitted (tuned lens)"}
    lines = [
        f"CamVid {meta['split']} ({meta['n_images']} images), seed {meta.get('seed')} of each head, from "
        f"`{SOURCES['report']}`: mIoU (%) of each stage's argmax, blocks 1-N then the output (n/a: the readout does "
        "not apply to that head):",
        "",
        "| head | " + " | ".join(names[r] for r in readouts) + " |",
        "|---" * (1 + len(readouts)) + "|",
    ]
    for h in heads:
        cells = []
        for r in readouts:
            e = readouts[r].get(h)
            if not e or "blocks" not in e:
                cells.append("n/a")
                continue
            blocks = " · ".join(f"{b['miou']:.1f}" for b in e["blocks"])
            cells.append(f"{blocks} → {e['final']['miou']:.1f}")
        lines.append(f"| {head_label(h)} | " + " | ".join(cells) + " |")
    widths = meta.get("fitted_input_channels") or {}
    if widths:
        lines += ["", "The fitted readout's input width per stage (input, blocks, output):"]
        lines += [f"{head_label(h)} {', '.join(str(w) for w in ws)};" for h, ws in widths.items()]
        lines[-1] = lines[-1].rstrip(";") + "."
    return lines


def claims_block(report: Mapping[str, Any]) -> list[str]:
    """The report's claim tables (StructToken minus every baseline, per block and readout)."""
    claims = report.get("claims") or {}
    if not claims:
        return ["(the shipped report has no claims yet: regenerate it with `python -m analysis report`)"]
    return claims_table(claims, "miou") + claims_table(claims, "mask_ap")


def probe_block(report: Mapping[str, Any]) -> list[str]:
    """The deep-supervision probe: verdict and the per-seed pairs."""
    probe = report.get("probe") or {}
    if not probe.get("pairs"):
        return ["(no seed results in the shipped report)"]
    lines = [f"**Verdict:** {probe['verdict']}", "", "| seed | per-pixel | per-pixel + DS | difference |"]
    lines.append("|---|---|---|---|")
    for p in probe["pairs"]:
        lines.append(
            f"| {p['seed']} | {p['baseline']:.2f} | {p['treated']:.2f} | {p['treated'] - p['baseline']:+.2f} |"
        )
    srcs = ", ".join(f"`{s['source']}`" for s in probe.get("sources", []))
    lines += ["", f"Final val mIoU (points), whole image; sources: {srcs}."]
    return lines


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    return f"{100 * m:.2f}" if len(values) == 1 else f"{100 * m:.2f} ± {100 * statistics.stdev(values):.2f}"


def v2_block(folder: Path) -> list[str]:
    """Set v2: every committed run with its wall time, and per head the final mIoU over the seeds so far."""
    files = sorted(folder.glob("*.json"))
    if not files:
        return ["No set-v2 run has finished yet."]
    runs = [json.loads(f.read_text()) for f in files]
    lines = [
        f"Committed runs ({len(runs)}; `{SOURCES['runs']}/`, one file per run, written by `python -m analysis "
        "run-result`):",
        "",
        "| run | heads | seed | iterations | training wall time | median s/it | threads |",
        "|---|---|---|---|---|---|---|",
    ]
    finals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        tc, prov = r["train_config"], r["train_config"].get("provenance", {})
        wall = prov.get("train_wall_s")
        lines.append(
            f"| {r['run']} | {', '.join(r['heads'])} | {tc['seed']} | {prov.get('iterations')} | "
            f"{'–' if wall is None else f'{wall / 60:.0f} min'} | {prov.get('median_s_per_iter')} | "
            f"{r['evaluation'].get('torch_threads')} |"
        )
        if tc.get("recipe") == "camvid_v2_stage2":
            for h in r["heads"]:
                for proto in ("whole", "slide"):
                    finals.setdefault(h, {}).setdefault(proto, []).append(r["final"][proto][h]["miou"])
    if finals:
        lines += [
            "",
            "Stage 2, final val mIoU (%), mean ± SD over the seeds finished so far; "
            "not yet the set-v2 result while seeds are missing:",
            "",
            "| head | whole image | sliding window | seeds |",
            "|---|---|---|---|",
        ]
        for h, per in finals.items():
            lines.append(
                f"| {head_label(h)} | {_mean_sd(per['whole'])} | {_mean_sd(per['slide'])} | {len(per['whole'])} |"
            )
    return lines


def v2_claims_block(path: Path) -> list[str]:
    """Set v2's claims (``python -m analysis claims --runs``): StructToken minus each baseline per block, paired
    by seed over the seeds both runs have, mIoU and mask AP."""
    if not path.is_file():
        return ["(no set-v2 claims yet: `python -m analysis claims --runs assets/camvid/v2/runs --out " + str(
            SOURCES["v2claims"]) + "`)"]  # fmt: skip
    data = json.loads(path.read_text())
    meta = data.get("meta") or {}
    seeds = ", ".join(str(s) for s in meta.get("seeds", []))
    lines = [
        f"From `{SOURCES['v2claims']}` (`{meta.get('command', 'python -m analysis claims')}`): seeds {seeds} of "
        f"stage 2, CamVid val (101 images), paired by seed; {meta.get('interval', '')}. Not yet the set-v2 result "
        "while seeds are missing.",
        "",
    ]
    return lines + claims_table(data["claims"], "miou") + claims_table(data["claims"], "mask_ap")


def blocks(root: Path = ROOT) -> dict[str, list[str]]:
    """Every generated block by name (README's ``headline`` and the ``docs/results.md`` blocks)."""
    val = json.loads((root / SOURCES["final"]).read_text())
    report = json.loads((root / SOURCES["report"]).read_text())
    return {
        "headline": [
            *final_table(val),
            "",
            "Per-block numbers, claims and the probe: [docs/results.md](docs/results.md).",
        ],
        "final": final_table(val),
        "stages": stages_table(report),
        "claims": claims_block(report),
        "probe": probe_block(report),
        "v2": v2_block(root / SOURCES["runs"]),
        "v2claims": v2_claims_block(root / SOURCES["v2claims"]),
    }


def _replace(text: str, begin: str, end: str, body: list[str], where: str) -> str:
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{where}: markers {begin} ... {end} not found")
    return pattern.sub(lambda _: begin + "\n" + "\n".join(body).rstrip("\n") + "\n" + end, text, count=1)


def render(root: Path = ROOT) -> dict[Path, str]:
    """The new text of README.md and docs/results.md."""
    b = blocks(root)
    readme = root / "README.md"
    docs = root / "docs" / "results.md"
    out = {
        readme: _replace(
            readme.read_text(), "<!-- results:begin -->", "<!-- results:end -->", b["headline"], "README.md"
        )
    }
    text = docs.read_text()
    for name in ("final", "stages", "claims", "probe", "v2", "v2claims"):
        text = _replace(
            text, f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->", b[name], "docs/results.md"
        )
    out[docs] = text
    return out


def stale_files(root: Path = ROOT) -> list[Path]:
    """The files whose generated blocks differ from what the JSON under ``root`` gives."""
    return [path for path, text in render(root).items() if path.read_text() != text]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis results-md [--check]``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m analysis results-md", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a file would change")
    args = p.parse_args(argv)
    try:
        new = render()
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [path for path, text in new.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(ROOT)}: its result tables differ from the shipped JSON; run python -m analysis "
                "results-md",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(new[path])
        print(f"rewrote {path.relative_to(ROOT)}")
    if not stale:
        print("README.md and docs/results.md already match the shipped JSON")
    return 0

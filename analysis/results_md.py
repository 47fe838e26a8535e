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

from . import over_seeds
from .claims import claims_table
from .labels import display_names, head_label
from .probe import pairs_table

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "final": "assets/camvid/val_results.json",
    "report": "assets/camvid/report/metrics.json",
    "runs": "assets/camvid/v2/runs",
    "v2claims": "assets/camvid/v2/claims.json",
}


STAGE2_SEEDS = (0, 1, 2)
"""The seeds every head of set v2's stage 2 is trained with (issue 23); fewer make a partial table."""


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
    lines = [f"**Verdict:** {display_names(probe['verdict'])}", "", *pairs_table(probe["pairs"])]
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
    seeds: dict[str, set[int]] = {}
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
                seeds.setdefault(h, set()).add(tc["seed"])
    if finals:
        complete = all(set(STAGE2_SEEDS) <= s for s in seeds.values())
        lines += [
            "",
            "Stage 2, final val mIoU (%), mean ± SD over every seed a head was trained with (how many: the seeds "
            "column)" + (":" if complete else "; partial: not yet the set-v2 result while seeds are missing:"),
            "",
            "| head | whole image | sliding window | seeds |",
            "|---|---|---|---|",
        ]
        for h, per in finals.items():
            lines.append(
                f"| {head_label(h)} | {_mean_sd(per['whole'])} | {_mean_sd(per['slide'])} | {len(per['whole'])} |"
            )
    return lines


def v2_headline(folder: Path) -> list[str]:
    """Set v2's heads over the stage-2 seeds: parameters, GFLOPs, final val mIoU mean ± SD for both protocols."""
    runs = over_seeds.load_runs(folder) if folder.is_dir() else []
    finals: dict[str, dict[str, dict[int, float]]] = {}
    costs: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        if r["train_config"].get("recipe") != "camvid_v2_stage2" or r["train_config"]["seed"] not in STAGE2_SEEDS:
            continue
        for h in r["heads"]:
            costs.setdefault(h, (r.get("costs") or {}).get(h) or {})
            for proto in ("whole", "slide"):
                finals.setdefault(h, {}).setdefault(proto, {})[r["train_config"]["seed"]] = r["final"][proto][h]["miou"]
    if not finals:
        return ["No set-v2 stage-2 run has finished yet."]
    missing = {h: [s for s in STAGE2_SEEDS if s not in per["whole"]] for h, per in finals.items()}
    partial = any(missing.values())
    lines = [
        "Set v2 (seven heads on one frozen backbone, CamVid val, 101 images), final mIoU (%), mean ± SD over "
        f"training seeds, from `{SOURCES['runs']}/`"
        + (
            ": **partial, seeds still missing** (the table is not the set-v2 result until every head has seeds "
            f"{', '.join(str(s) for s in STAGE2_SEEDS)})"
            if partial
            else ""
        )
        + ":",
        "",
        "| head | params (M) | GFLOPs @480x360 | whole image | sliding window | seeds |",
        "|---|---|---|---|---|---|",
    ]
    order = ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "fcn", "segmenter"]
    for h in sorted(finals, key=lambda h: order.index(h) if h in order else len(order)):
        per, c = finals[h], costs.get(h) or {}
        seeds = sorted(per["whole"])
        lines.append(
            f"| {head_label(h)} | {c.get('params_m', float('nan')):.3g} | {c.get('gflops', float('nan')):.3g} | "
            f"{_mean_sd([per['whole'][s] for s in seeds])} | {_mean_sd([per['slide'][s] for s in seeds])} | "
            f"{', '.join(str(s) for s in seeds)} |"
        )
    return lines


def _stage2_finals(folder: Path) -> dict[str, dict[int, float]]:
    """head -> seed -> final val mIoU (fraction, whole image) of the stage-2 runs of :data:`STAGE2_SEEDS`."""
    out: dict[str, dict[int, float]] = {}
    for r in over_seeds.load_runs(folder) if folder.is_dir() else []:
        tc = r["train_config"]
        if tc.get("recipe") == "camvid_v2_stage2" and tc["seed"] in STAGE2_SEEDS:
            for h in r["heads"]:
                out.setdefault(h, {})[tc["seed"]] = r["final"]["whole"][h]["miou"]
    return out


def pairwise_block(folder: Path) -> list[str]:
    """Every pair of set-v2 heads: the paired difference of final val mIoU over the seeds both have, 95 % t."""
    from .stats import all_pairwise

    finals = _stage2_finals(folder)
    order = ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "fcn", "segmenter"]
    finals = {h: finals[h] for h in sorted(finals, key=lambda h: order.index(h) if h in order else len(order))}
    rows = all_pairwise(finals, metric="final mIoU", unit="points", scale=100.0)
    if not rows:
        return ["(fewer than two seeds of any pair of heads so far)"]
    lines = [
        "Final val mIoU (whole image), the second head minus the first, paired by training seed; 95 % Student t "
        "interval (n - 1 degrees of freedom), p per pair, not adjusted for the number of pairs:",
        "",
        "| first | second | seeds | difference (points) | 95 % interval | p |",
        "|---|---|---|---|---|---|",
    ]
    for c in rows:
        second, first = c.treatment.split(" instead of ")
        ci = "–" if c.ci95 is None else f"[{c.ci95[0]:+.2f}, {c.ci95[1]:+.2f}]"
        p = "–" if c.p_value is None else ("< 0.01" if c.p_value < 0.01 else f"{c.p_value:.2f}")
        lines.append(
            f"| {head_label(first)} | {head_label(second)} | {', '.join(str(x) for x in c.seeds)} | "
            f"{c.delta_mean:+.2f} | {ci} | {p} |"
        )
    return lines


def stage_spread_block(folder: Path) -> list[str]:
    """Every stage of every set-v2 head under every readout: mIoU mean ± SD over the stage-2 seeds."""
    runs = [r for r in (over_seeds.load_runs(folder) if folder.is_dir() else []) if r["train_config"]["seed"] in
            STAGE2_SEEDS and r["train_config"].get("recipe") == "camvid_v2_stage2"]  # fmt: skip
    spread = over_seeds.stage_spread(over_seeds.stage2_per_seed(runs), metrics=("miou",))
    if not spread:
        return ["No set-v2 stage-2 run has finished yet."]
    names = {"raw": "raw", "head": "head (logit lens)", "fitted": "fitted (tuned lens)"}
    order = ["cse", "sse", "pwe", "per_pixel", "per_pixel_ds", "fcn", "segmenter"]
    lines = []
    for r, per_head in spread.items():
        n = max(len(e["blocks"]) for e in per_head.values())
        lines += [
            f"**{names.get(r, r)} readout**, mIoU (%) of each stage's argmax, mean ± SD over seeds:",
            "",
            "| head | seeds | input | " + " | ".join(f"block {i}" for i in range(1, n + 1)) + " | output |",
            "|---|---|---|" + "---|" * (n + 1),
        ]
        for h in sorted(per_head, key=lambda h: order.index(h) if h in order else len(order)):
            e = per_head[h]

            def cell(st: dict) -> str:
                m = st.get("miou") or {}
                if m.get("mean") is None:
                    return "–"
                return f"{m['mean']:.1f}" + (f" ± {m['sd']:.1f}" if m.get("sd") is not None else "")

            cells = [cell(e["input"]), *(cell(b) for b in e["blocks"]), cell(e["final"])]
            lines.append(f"| {head_label(h)} | {', '.join(str(x) for x in e['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def probe_ft_block(folder: Path) -> list[str]:
    """The deep-supervision probe with trainable features (``camvid_v2_probe_ft`` runs), paired by seed."""
    pf = over_seeds.probe_ft(over_seeds.load_runs(folder)) if folder.is_dir() else None
    if not pf:
        return ["No run of the probe with trainable features has finished yet (`camvid_v2_probe_ft`, seeds 0-2)."]
    lines = [f"{pf['features']}. **Verdict:** {display_names(pf['verdict'])}", "", *pairs_table(pf["pairs"])]
    lines += ["", f"{pf['protocol']}; runs: " + ", ".join(f"`{s['source']}`" for s in pf["sources"]) + "."]
    return lines


def ablation_block(folder: Path) -> list[str]:
    """The block-count ablation: final val mIoU per N (mean ± SD over seeds) and the per-block head-readout mIoU."""
    ab = over_seeds.ablation(over_seeds.load_runs(folder)) if folder.is_dir() else None
    if not ab:
        return ["No block-count ablation run has finished yet (`camvid_v2_blocks`, N = 1, 2, 6)."]
    heads = list(ab["heads"])
    lines = [
        "Final val mIoU (%, whole image), mean ± SD over seeds (N = 4 is stage 2); then each block's mIoU under the "
        "head readout, per seed:",
        "",
        "| blocks N | seeds | " + " | ".join(head_label(h) for h in heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for n, g in ab["by_blocks"].items():
        cells = [_mean_sd([v / 100 for v in g["final"][h] if v is not None]) for h in heads]
        lines.append(f"| {n} | {', '.join(str(x) for x in g['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "| blocks N | head | seed | per-block mIoU, head readout (%) |", "|---|---|---|---|"]
    for n, g in ab["by_blocks"].items():
        for h in heads:
            for seed, row in zip(g["seeds"], (g["blocks"].get("head") or {}).get(h) or [], strict=False):
                vals = " · ".join("–" if v is None else f"{v:.1f}" for v in row)
                lines.append(f"| {n} | {head_label(h)} | {seed} | {vals} |")
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
        f"stage 2, CamVid val (101 images), paired by seed; {meta.get('interval', '')}."
        + (
            ""
            if set(STAGE2_SEEDS) <= set(meta.get("seeds", []))
            else " Partial: not yet the set-v2 result while seeds are missing."
        ),
        "",
    ]
    lines += claims_table(data["claims"], "miou") + claims_table(data["claims"], "mask_ap")
    pairs = data.get("structtoken_pairs") or {}
    if pairs:
        lines += ["The StructToken heads against each other, block by block (second minus first), paired by seed:", ""]
        lines += claims_table(pairs, "miou", ("second", "first"))
    return lines


def blocks(root: Path = ROOT) -> dict[str, list[str]]:
    """Every generated block by name (README's ``headline`` and the ``docs/results.md`` blocks)."""
    val = json.loads((root / SOURCES["final"]).read_text())
    report = json.loads((root / SOURCES["report"]).read_text())
    return {
        "headline": [
            *v2_headline(root / SOURCES["runs"]),
            "",
            "The shipped set is seed 0 of each head; its per-class numbers:",
            "",
            *final_table(val),
            "",
            "Per-block numbers, claims, the probes and the block-count ablation: [docs/results.md](docs/results.md).",
        ],
        "final": final_table(val),
        "stages": stages_table(report),
        "claims": claims_block(report),
        "probe": probe_block(report),
        "v2": v2_block(root / SOURCES["runs"]),
        "v2claims": v2_claims_block(root / SOURCES["v2claims"]),
        "probe_ft": probe_ft_block(root / SOURCES["runs"]),
        "v2pairs": pairwise_block(root / SOURCES["runs"]),
        "v2stages": stage_spread_block(root / SOURCES["runs"]),
        "ablation": ablation_block(root / SOURCES["runs"]),
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
    for name in ("final", "stages", "claims", "probe", "v2", "v2claims", "probe_ft", "ablation", "v2pairs", "v2stages"):
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

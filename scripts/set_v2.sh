#!/usr/bin/env bash
# The embedded set v2 and what is computed from it, from the committed head files and run results
# (issue 23). Each step is a command whose output is committed; rerun the whole script when a run adds a
# result (a new seed's deep-supervision pair, a run result the report summarises).
#
#   scripts/set_v2.sh                 # assemble, evaluate, report, results-md
#   STEPS="report results" scripts/set_v2.sh
#
# Environment: PYTHON (default python), STEPS (any of: assemble evaluate report results; default all),
# THREADS (torch CPU threads, default: torch's own), NICE (default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-assemble evaluate report results}
NICE=${NICE:-0}
H=assets/camvid/v2/heads
SET=assets/camvid/camvid_set.safetensors
py() { if [[ -n ${THREADS:-} ]]; then OMP_NUM_THREADS=$THREADS nice -n "$NICE" "$PYTHON" "$@"; else nice -n "$NICE" "$PYTHON" "$@"; fi; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

if want assemble; then
    # seed 0's two head groups on the shipped backbone (the set file itself: its backbone is kept as it is)
    py -m structtoken.sets assemble --backbone "$SET" \
        --heads "$H/camvid_v2_stage2_structtoken_seed0.safetensors" "$H/camvid_v2_stage2_baselines_seed0.safetensors" \
        --out "$SET" --description "CamVid (11 classes) set v2: the backbone trained here (ViT 192 wide, depth 8, conv \
stem), frozen, with seven heads trained on it (seed 0): CSE, SSE, PWE, per-pixel, per-pixel + deep supervision, FCN, \
Segmenter"
fi
if want evaluate; then
    py -m structtoken.evaluate --model camvid --json assets/camvid/val_results.json
fi
if want report; then
    # the deep-supervision pairs of the other seeds (seed 0's is in the set)
    mapfile -t probe < <(ls "$H"/*_seed[1-9].safetensors)
    py -m analysis report --model camvid --split val --out assets/camvid/report --examples 0 --no-progress \
        --probe-heads "${probe[@]}" --runs assets/camvid/v2/runs
fi
if want results; then
    py -m analysis claims --runs assets/camvid/v2/runs --out assets/camvid/v2/claims.json
    py -m analysis results-md
fi

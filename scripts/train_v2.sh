#!/usr/bin/env bash
# Every training run of the CamVid set v2 (issue 23), one after another, each on the frozen backbone of the
# shipped set; a run is done when its result file assets/camvid/v2/runs/NAME.json exists.
#
#   scripts/train_v2.sh                          # from anywhere; run folders under $STRUCTTOKEN_RUNS
#   RUNS_ONLY="camvid_v2_stage2_baselines_seed0" scripts/train_v2.sh    # just these runs
#   COMMIT=1 scripts/train_v2.sh                 # git-commit each result file the moment its run ends
#   DRY_RUN=1 scripts/train_v2.sh                # print the commands still to run, run nothing
#
# Per run: python -m structtoken.train (resumable: --resume continues from OUT/ckpt_last.pt; a run folder with its
# final.safetensors is not trained again), then python -m analysis run-result, which fits the fitted readout on
# train, evaluates on val (whole image, sliding window) and writes assets/camvid/v2/runs/NAME.json (config with
# provenance, per-head final and per-stage metrics under every readout, wall time, seconds per iteration).
# Runs that ship heads also write them (float16, no backbone) to assets/camvid/v2/heads/NAME.safetensors.
# Environment: THREADS (torch CPU threads, default 1), DEVICE (cpu | cuda | auto, default cpu), RUNS (the run
# folders' parent; default $STRUCTTOKEN_RUNS or ~/.cache/structtoken/runs: outside the checkout), NICE (default 10),
# PYTHON (default python), COMMIT (1: commit each result), RUNS_ONLY (space-separated run names).
#
# The runs (stage 2 split into two head groups per seed: heads are independent, so the groups train exactly as one
# run of all seven would; tests/test_train.py checks it):
#   camvid_v2_stage2_structtoken_seed{0,1,2}  cse sse pwe                              (seed 0 ships its heads)
#   camvid_v2_stage2_baselines_seed{0,1,2}    per_pixel per_pixel_ds fcn segmenter     (seed 0 ships all four,
#                                                                                      seeds 1-2 the pair)
#   camvid_v2_ds_seed{3,4}                    the deep-supervision pair (ships its heads)
#   camvid_v2_probe_ft_seed{0,1,2}            the pair, each with a trainable copy of the last two ViT blocks
#   camvid_v2_blocks{1,2,6}_seed{0,1}         cse and pwe with N blocks (N = 4 is stage 2)
set -euo pipefail

THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
RUNS=${RUNS:-${STRUCTTOKEN_RUNS:-$HOME/.cache/structtoken/runs}}
NICE=${NICE:-10}
PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-0}
COMMIT=${COMMIT:-0}
RUNS_ONLY=${RUNS_ONLY:-}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BACKBONE=assets/camvid/camvid_set.safetensors
RESULTS=assets/camvid/v2/runs
HEADS=assets/camvid/v2/heads
[[ $DRY_RUN == 1 ]] || mkdir -p "$RUNS"

log() {
    if [[ $DRY_RUN == 1 ]]; then
        echo "$*" >&2
    else
        echo "$(date '+%F %T') $*" | tee -a "$RUNS/train_v2.log" >&2
    fi
}

# run NAME SHIP -- TRAIN_ARGS...: train into $RUNS/NAME unless finished, then write $RESULTS/NAME.json;
# SHIP: "all" (ship every head), "pair" (ship per_pixel and per_pixel_ds), "none"
run() {
    local name=$1 ship=$2
    shift 3
    if [[ -n $RUNS_ONLY && " $RUNS_ONLY " != *" $name "* ]]; then
        return 0
    fi
    local out=$RUNS/$name result=$RESULTS/$name.json
    if [[ -f $result ]]; then
        log "skip $name (done: $result)"
        return 0
    fi
    local train=(nice -n "$NICE" "$PYTHON" -m structtoken.train "$@" --init-from "$BACKBONE"
        --out "$out" --threads "$THREADS" --device "$DEVICE" --resume)
    local evaluate=(nice -n "$NICE" "$PYTHON" -m analysis run-result "$out" --name "$name" --out "$result"
        --threads "$THREADS" --no-progress)
    local files=("$result")
    if [[ $ship != none ]]; then
        evaluate+=(--heads-out "$HEADS/$name.safetensors")
        [[ $ship == pair ]] && evaluate+=(--ship-heads per_pixel per_pixel_ds)
        files+=("$HEADS/$name.safetensors" "$HEADS/$name.readouts.safetensors")
    fi
    if [[ $DRY_RUN == 1 ]]; then
        [[ -f $out/final.safetensors ]] || echo "${train[*]}"
        echo "${evaluate[*]}"
        return 0
    fi
    mkdir -p "$out"
    if [[ ! -f $out/final.safetensors ]]; then
        log "start $name: ${train[*]}"
        if ! "${train[@]}" >>"$out/console.log" 2>&1; then
            log "FAILED $name (see $out/console.log); run the script again to continue"
            exit 1
        fi
    fi
    log "evaluate $name: ${evaluate[*]}"
    if ! "${evaluate[@]}" >>"$out/console.log" 2>&1; then
        log "FAILED evaluating $name (see $out/console.log); run the script again to continue"
        exit 1
    fi
    log "done $name: $result"
    if [[ $COMMIT == 1 ]]; then
        git add -- "${files[@]}" && git commit -q -m "set v2: result of run $name (python -m analysis run-result)" \
            -- "${files[@]}" && log "committed $name"
    fi
}

for seed in 0 1 2; do
    st_ship=none base_ship=pair
    [[ $seed == 0 ]] && st_ship=all base_ship=all
    run "camvid_v2_stage2_structtoken_seed$seed" "$st_ship" -- --recipe camvid_v2_stage2 --seed "$seed" \
        --heads cse sse pwe
    run "camvid_v2_stage2_baselines_seed$seed" "$base_ship" -- --recipe camvid_v2_stage2 --seed "$seed" \
        --heads per_pixel per_pixel_ds fcn segmenter
done
for seed in 3 4; do
    run "camvid_v2_ds_seed$seed" all -- --recipe camvid_v2_stage2 --seed "$seed" --heads per_pixel per_pixel_ds
done
for seed in 0 1 2; do
    run "camvid_v2_probe_ft_seed$seed" none -- --recipe camvid_v2_probe_ft --seed "$seed"
done
for blocks in 1 2 6; do
    for seed in 0 1; do
        run "camvid_v2_blocks${blocks}_seed$seed" none -- --recipe camvid_v2_blocks --num-blocks "$blocks" \
            --seed "$seed"
    done
done
if [[ $DRY_RUN == 1 ]]; then
    log "dry run: the commands above are the runs still to do"
else
    log "the v2 runs asked for are done (results in $RESULTS)"
fi

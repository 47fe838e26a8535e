#!/usr/bin/env bash
# Every training run of the CamVid set v2 (issue 10), one after another; resumable at every step.
#
#   scripts/train_v2.sh                          # from anywhere; runs go to runs/ in the checkout
#   THREADS=2 scripts/train_v2.sh                # more CPU threads
#   DEVICE=cuda scripts/train_v2.sh              # a GPU (bf16 autocast)
#   DRY_RUN=1 scripts/train_v2.sh                # print the training commands still to run, run nothing
#
# Run it again after an interruption: a run with its final.safetensors is skipped, the interrupted one
# continues from its ckpt_last.pt (every command has --resume). Environment: THREADS (torch CPU threads,
# --threads, default 1), DEVICE (--device: cpu | cuda | auto, default cpu), RUNS (the run folders' parent,
# relative to the checkout unless absolute; default runs), NICE (niceness, default 10), PYTHON (default python).
#
# Runs, each a folder $RUNS/NAME (log.jsonl, ckpt_last.pt, final.safetensors, console.log); progress lines
# go to $RUNS/train_v2.log:
#   camvid_v2_stage1                     the v2 backbone + linear head (12,500 iterations)
#   camvid_v2_stage2_seed{0,1,2}         the seven heads (cse sse pwe per_pixel per_pixel_ds fcn segmenter)
#   camvid_v2_ds_seed{3,4}               the deep-supervision pair only (per_pixel per_pixel_ds): seeds 3, 4
#   camvid_v2_probe_ft_seed{0,1,2}       the pair, each head with its own trainable copy of the last 2 ViT blocks
#   camvid_v2_blocks{1,2,4,6}_seed{0,1}  block-count ablation: cse and pwe with N blocks
# Every stage-2 run starts from camvid_v2_stage1's backbone; for one seed all of them see the same batches.
# The 4-block ablation runs train stage 2's cse and pwe of seeds 0 and 1 again (same data and initialisation;
# not bit-for-bit copies: the heads of a run draw their drop-path masks from one random stream).
set -euo pipefail

THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
RUNS=${RUNS:-runs}
NICE=${NICE:-10}
PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $DRY_RUN == 1 ]] || mkdir -p "$RUNS"

log() {
    if [[ $DRY_RUN == 1 ]]; then
        echo "$*" >&2
    else
        echo "$(date '+%F %T') $*" | tee -a "$RUNS/train_v2.log" >&2
    fi
}

# train NAME ARGS...: python -m structtoken.train ARGS into $RUNS/NAME, unless that run has finished
train() {
    local name=$1
    shift
    local out=$RUNS/$name
    if [[ -f $out/final.safetensors ]]; then
        log "skip $name (finished: $out/final.safetensors)"
        return 0
    fi
    local cmd=(nice -n "$NICE" "$PYTHON" -m structtoken.train "$@"
        --out "$out" --threads "$THREADS" --device "$DEVICE" --resume)
    if [[ $DRY_RUN == 1 ]]; then
        echo "${cmd[*]}"
        return 0
    fi
    mkdir -p "$out"
    log "start $name: ${cmd[*]}"
    if ! "${cmd[@]}" >>"$out/console.log" 2>&1; then
        log "FAILED $name (see $out/console.log); run the script again to continue"
        exit 1
    fi
    log "done $name"
}

STAGE1=$RUNS/camvid_v2_stage1/final.safetensors

train camvid_v2_stage1 --recipe camvid_v2_stage1
for seed in 0 1 2; do
    train "camvid_v2_stage2_seed$seed" --recipe camvid_v2_stage2 --init-from "$STAGE1" --seed "$seed"
done
for seed in 3 4; do
    train "camvid_v2_ds_seed$seed" --recipe camvid_v2_stage2 --init-from "$STAGE1" --seed "$seed" \
        --heads per_pixel per_pixel_ds
done
for seed in 0 1 2; do
    train "camvid_v2_probe_ft_seed$seed" --recipe camvid_v2_probe_ft --init-from "$STAGE1" --seed "$seed"
done
for blocks in 1 2 4 6; do
    for seed in 0 1; do
        train "camvid_v2_blocks${blocks}_seed$seed" --recipe camvid_v2_blocks --num-blocks "$blocks" \
            --init-from "$STAGE1" --seed "$seed"
    done
done
if [[ $DRY_RUN == 1 ]]; then
    log "dry run: the commands above are the runs still to do"
else
    log "all v2 runs finished under $RUNS"
fi

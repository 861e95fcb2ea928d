#!/usr/bin/env bash
# Train the proposed method and the heatmap baseline on ISBI 2015 under the same CPU budget, with a
# checkpoint every few hundred steps, then evaluate every checkpoint on Test1 (time_to_accuracy.py).
#   bash experiments/bench/run_time_to_accuracy.sh [GLOBAL_STEPS] [LOCAL_STEPS] [HEATMAP_STEPS] [OUT]
# The budget is set in steps so that both methods use the same CPU time (TrainingClock stores it in every
# checkpoint): the defaults, 1200 + 220 against 1700 steps, use about 39 CPU core-minutes each here.
# Other jobs on the machine slow the wall-clock, not the CPU time (the time axis of the comparison).
set -euo pipefail
G=${1:-1200}; L=${2:-220}; H=${3:-1700}; OUT=${4:-outputs/tta}
BIN=${BIN:-.venv/bin}
periodic() {  # a checkpoint every $2 steps in $1/checkpoints/periodic
  echo "+callbacks.periodic={_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: $1/checkpoints/periodic, filename: \"step_{step}\", every_n_train_steps: $2, save_top_k: -1, auto_insert_metric_name: false}"
}
"$BIN/landmark-train" experiment=isbi2015_global trainer.max_steps="$G" trainer.val_check_interval=300 \
  paths.output_dir="$OUT/g2l_global" "$(periodic "$OUT/g2l_global" 300)" run_test=false
"$BIN/landmark-train" experiment=isbi2015_local trainer.max_steps="$L" trainer.val_check_interval=110 \
  paths.output_dir="$OUT/g2l_local" "$(periodic "$OUT/g2l_local" 110)" run_test=false
"$BIN/landmark-train" experiment=isbi2015_heatmap trainer.max_steps="$H" trainer.val_check_interval=$((H / 5)) \
  paths.output_dir="$OUT/heatmap" "$(periodic "$OUT/heatmap" $((H / 5)))" run_test=false
"$BIN/python" experiments/bench/time_to_accuracy.py --run g2l:global="$OUT/g2l_global" \
  --run g2l:local="$OUT/g2l_local" --run heatmap:global="$OUT/heatmap" --out "$OUT"

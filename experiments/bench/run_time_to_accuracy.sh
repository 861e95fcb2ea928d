#!/usr/bin/env bash
# Train the proposed method and the heatmap baseline on ISBI 2015 under the same CPU budget, with
# periodic checkpoints, then evaluate every checkpoint on Test1 (time_to_accuracy.py), and the heatmap
# U-Net followed by the local stages ("hybrid").
#   bash experiments/bench/run_time_to_accuracy.sh [GLOBAL_STEPS] [LOCAL_STEPS] [HEATMAP_STEPS] [OUT]
# The two methods train at the same time, each with one thread on its own core (taskset, where present),
# so neither slows the other and each process's CPU time (TrainingClock, stored in every checkpoint) is
# the budget it used. The budget is set in steps; the defaults, 4000 + 2000 global-to-local steps against
# 4000 heatmap steps (the runs of experiments/bench/RESULTS.md, issue 13, third session), take about 95
# and 47 core-minutes on a core of 88 GFLOP/s. Logs: OUT/*.log.
# Between the two global-to-local stages, the final global checkpoint predicts the training images and
# its per-axis error SD (OUT/g2l_offset_sd_mm.txt) becomes the local stage's data.local_offset_sd_mm
# (its CPU time, OUT/g2l_offset_cpu_s.txt, counts towards the pipeline's budget).
# GLOBAL_EXPERIMENT / LOCAL_EXPERIMENT pick the pair (default isbi2015_global / isbi2015_local); with
# OFFSET_SD=config the local stage keeps its config's offset SD and nothing is measured (the fast pair:
# GLOBAL_EXPERIMENT=isbi2015_global_fast LOCAL_EXPERIMENT=isbi2015_local_fast OFFSET_SD=config);
# LOCAL_REPASS_MM: the second local pass only for landmarks the first moved more (default 0: all).
set -euo pipefail
G=${1:-4000}; L=${2:-2000}; H=${3:-4000}; OUT=${4:-outputs/tta}
BIN=${BIN:-.venv/bin}
GLOBAL_EXPERIMENT=${GLOBAL_EXPERIMENT:-isbi2015_global}
LOCAL_EXPERIMENT=${LOCAL_EXPERIMENT:-isbi2015_local}
OFFSET_SD=${OFFSET_SD:-measure}
mkdir -p "$OUT"
periodic() {  # a checkpoint every $2 steps in $1/checkpoints/periodic
  echo "+callbacks.periodic={_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: $1/checkpoints/periodic, filename: \"step_{step}\", every_n_train_steps: $2, save_top_k: -1, auto_insert_metric_name: false}"
}
on_core() {  # run "$@" with one thread, on core $1 when taskset exists
  local core=$1; shift
  if command -v taskset >/dev/null; then set -- taskset -c "$core" "$@"; fi
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@"
}
g2l() {
  on_core 0 "$BIN/landmark-train" experiment="$GLOBAL_EXPERIMENT" trainer.max_steps="$G" \
    trainer.val_check_interval=$((G / 4)) paths.output_dir="$OUT/g2l_global" \
    "$(periodic "$OUT/g2l_global" $((G / 4)))" run_test=false
  local final sd=() TIMEFORMAT='%U %S'
  if [ "$OFFSET_SD" != config ]; then
    final=$(ls "$OUT"/g2l_global/checkpoints/periodic/step_*.ckpt | sort -V | tail -n 1)
    # bash's time: user and system CPU seconds of the measurement
    { time on_core 0 "$BIN/python" experiments/isbi2015/validation.py "$final" --subset train --print-offset-sd \
        > "$OUT/g2l_offset_sd_mm.txt" 2>> "$OUT/g2l_offset.log"; } 2> "$OUT/g2l_offset_cpu_s.txt"
    sd=(data.local_offset_sd_mm="$(cat "$OUT/g2l_offset_sd_mm.txt")")
  fi
  on_core 0 "$BIN/landmark-train" experiment="$LOCAL_EXPERIMENT" trainer.max_steps="$L" \
    trainer.val_check_interval=$((L / 4)) paths.output_dir="$OUT/g2l_local" \
    "$(periodic "$OUT/g2l_local" $((L / 4)))" run_test=false "${sd[@]}"
}
heatmap() {
  on_core 1 "$BIN/landmark-train" experiment=isbi2015_heatmap trainer.max_steps="$H" \
    trainer.val_check_interval=$((H / 5)) paths.output_dir="$OUT/heatmap" \
    "$(periodic "$OUT/heatmap" $((H / 5)))" run_test=false
}
g2l >"$OUT/g2l.log" 2>&1 & G_PID=$!
heatmap >"$OUT/heatmap.log" 2>&1 & H_PID=$!
wait "$G_PID"; wait "$H_PID"
"$BIN/python" experiments/bench/time_to_accuracy.py --local-repass-mm "${LOCAL_REPASS_MM:-0}" --run g2l:global="$OUT/g2l_global" \
  --run g2l:local="$OUT/g2l_local" --run heatmap:global="$OUT/heatmap" \
  --run hybrid:global="$OUT/heatmap" --run hybrid:local="$OUT/g2l_local" --out "$OUT"

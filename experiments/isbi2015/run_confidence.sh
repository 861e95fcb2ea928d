#!/usr/bin/env bash
# Calibrated confidence on ISBI 2015 (issue 21): a bundle per model, calibrated on the 10 validation images
# (landmark-export calibration_dataset=isbi2015), then Test1 and Test1 mirrored left-right predicted and
# evaluated by evaluate_bundle.sh (average ground truth; confidence figures for errors > 4 mm and > 2 mm,
# review pages). The cross-fitted calibration on all 150 training images: cross_fit.sh.
#   bash experiments/isbi2015/run_confidence.sh GLOBAL.ckpt LOCAL.ckpt HEATMAP.ckpt [OUT_DIR]
# LOCAL_ITERATIONS (default 2: the chosen pipeline's two passes), LOCAL_REPASS_MM (default 0.5: the second
# only for landmarks the first moved more, the chosen pipeline). THREADS (default 2).
set -euo pipefail
GLOBAL=$1
LOCAL=$2
HEATMAP=$3
OUT=${4:-outputs/isbi2015_confidence}
HERE=$(dirname "$0")
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
"$BIN/landmark-export" global_checkpoint="$GLOBAL" local_checkpoint="$LOCAL" \
  local_iterations="${LOCAL_ITERATIONS:-2}" local_repass_mm="${LOCAL_REPASS_MM:-0.5}" \
  calibration_dataset=isbi2015 threads="$THREADS" \
  output="$OUT/global_to_local.pt" | tee "$OUT/export_global_to_local.txt"
"$BIN/landmark-export" global_checkpoint="$HEATMAP" calibration_dataset=isbi2015 threads="$THREADS" \
  output="$OUT/heatmap.pt" | tee "$OUT/export_heatmap.txt"
bash "$HERE/evaluate_bundle.sh" "$OUT/global_to_local.pt" global_to_local "$OUT" report
bash "$HERE/evaluate_bundle.sh" "$OUT/heatmap.pt" heatmap "$OUT"

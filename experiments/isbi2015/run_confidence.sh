#!/usr/bin/env bash
# Calibrated confidence on ISBI 2015 (issue 21): a bundle per model, calibrated on the 10 validation images
# (landmark-export calibration_dataset=isbi2015), then Test1 and Test1 mirrored left-right predicted and
# evaluated (average ground truth; confidence figures for errors > 4 mm and > 2 mm, review pages).
#   bash experiments/isbi2015/run_confidence.sh GLOBAL.ckpt LOCAL.ckpt HEATMAP.ckpt [OUT_DIR]
# LOCAL_ITERATIONS (default 2: the chosen pipeline's two passes). THREADS (default 2).
set -euo pipefail
GLOBAL=$1
LOCAL=$2
HEATMAP=$3
OUT=${4:-outputs/isbi2015_confidence}
DATA=${LANDMARK_LIT_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/isbi2015-ceph
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
"$BIN/landmark-export" global_checkpoint="$GLOBAL" local_checkpoint="$LOCAL" \
  local_iterations="${LOCAL_ITERATIONS:-2}" calibration_dataset=isbi2015 threads="$THREADS" \
  output="$OUT/global_to_local.pt" | tee "$OUT/export_global_to_local.txt"
"$BIN/landmark-export" global_checkpoint="$HEATMAP" calibration_dataset=isbi2015 threads="$THREADS" \
  output="$OUT/heatmap.pt" | tee "$OUT/export_heatmap.txt"
"$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" "$OUT/references.csv" --split test1 --ground-truth average
"$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" "$OUT/references_mirrored.csv" --split test1 \
  --ground-truth average --mirror-images "$OUT/mirrored_images"
for model in global_to_local heatmap; do
  for set in test1 mirrored; do
    if [ $set = test1 ]; then
      input=(input="$DATA/splits/test1.txt" input_root="$DATA/images"); refs="$OUT/references.csv"
    else
      input=(input="$OUT/mirrored_images/list.txt"); refs="$OUT/references_mirrored.csv"
    fi
    # the review page (and its pictures) for the chosen pipeline on Test1 only: drawing costs time
    report=(); if [ $model = global_to_local ] && [ $set = test1 ]; then report=(report=true); fi
    "$BIN/landmark-predict" model="$OUT/$model.pt" "${input[@]}" spacing=0.1 threads="$THREADS" \
      output_dir="$OUT/pred_${model}_$set" "${report[@]}"
    "$BIN/landmark-evaluate" predictions="$OUT/pred_${model}_$set/predictions.json" references="$refs" \
      output_dir="$OUT/eval_${model}_$set" failure_mm=4 n_worst=5 report=true
  done
done

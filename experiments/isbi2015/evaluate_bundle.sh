#!/usr/bin/env bash
# Predict Test1 and Test1 mirrored left-right with one model bundle and evaluate both (average ground
# truth; errors, SDR, confidence figures for errors > 4 mm, review pages).
#   bash experiments/isbi2015/evaluate_bundle.sh BUNDLE.pt NAME OUT_DIR [report]
# Writes OUT/pred_NAME_{test1,mirrored} and OUT/eval_NAME_{test1,mirrored} (references and mirrored
# images made once in OUT). With a fourth argument `report`, the Test1 prediction writes its review page.
# THREADS (default 2).
set -euo pipefail
MODEL=$1
NAME=$2
OUT=$3
REPORT=${4:-}
DATA=${LANDMARK_LIT_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/isbi2015-ceph
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
[ -f "$OUT/references.csv" ] || "$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" "$OUT/references.csv" \
  --split test1 --ground-truth average
[ -f "$OUT/mirrored_images/list.txt" ] || "$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" \
  "$OUT/references_mirrored.csv" --split test1 --ground-truth average --mirror-images "$OUT/mirrored_images"
for set in test1 mirrored; do
  if [ $set = test1 ]; then
    input=(input="$DATA/splits/test1.txt" input_root="$DATA/images"); refs="$OUT/references.csv"
  else
    input=(input="$OUT/mirrored_images/list.txt"); refs="$OUT/references_mirrored.csv"
  fi
  # the review page (and its pictures) on Test1 only, on request: drawing costs time
  report=(); if [ "$REPORT" = report ] && [ $set = test1 ]; then report=(report=true); fi
  "$BIN/landmark-predict" model="$MODEL" "${input[@]}" spacing=0.1 threads="$THREADS" \
    output_dir="$OUT/pred_${NAME}_$set" "${report[@]}"
  "$BIN/landmark-evaluate" predictions="$OUT/pred_${NAME}_$set/predictions.json" references="$refs" \
    output_dir="$OUT/eval_${NAME}_$set" failure_mm=4 n_worst=5 report=true
done

#!/usr/bin/env bash
# Calibrated confidence on MNI152 + AFIDs (issue 21): the pipeline's bundle calibrated on the 5 validation
# volumes of the manifest (failures: errors > 2 mm, the dataset config's failure_mm), then the 10 test
# volumes predicted and evaluated (confidence figures, review pages).
#   bash experiments/mni_afids/run_confidence.sh MANIFEST GLOBAL.ckpt LOCAL.ckpt [OUT_DIR]
# More calibration volumes, the training and test volumes unchanged (each case has its own seed):
#   python -m landmark_lit.data.mni_afids OUT30 --train 0 --val 30 --test 10 --seed 0, then MANIFEST=OUT30/manifest.json
# LOCAL_ITERATIONS (default 3, the chosen pipeline's passes); LOCAL_SHIFTS (default axes: the last pass
# averaged over sub-images moved one voxel along each axis, chosen on validation; none: off). THREADS (default 2).
set -euo pipefail
MANIFEST=$1
GLOBAL=$2
LOCAL=$3
OUT=${4:-outputs/mni_afids_confidence}
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
"$BIN/landmark-export" global_checkpoint="$GLOBAL" local_checkpoint="$LOCAL" \
  local_iterations="${LOCAL_ITERATIONS:-3}" local_shifts="${LOCAL_SHIFTS:-axes}" calibration_manifest="$MANIFEST" calibration_split=val \
  failure_mm=2 threads="$THREADS" output="$OUT/global_to_local.pt" | tee "$OUT/export.txt"
"$BIN/landmark-predict" model="$OUT/global_to_local.pt" input="$MANIFEST" input_split=test threads="$THREADS" \
  output_dir="$OUT/pred" report=true
"$BIN/landmark-evaluate" predictions="$OUT/pred/predictions.json" references="$MANIFEST" references_split=test \
  output_dir="$OUT/eval" failure_mm=2 thresholds=[1,2,3,4] n_worst=3 report=true

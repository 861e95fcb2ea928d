#!/usr/bin/env bash
# Predict the ISBI 2015 Test1 images with trained checkpoints and evaluate them against both ground-truth
# conventions (average of the two doctors; senior only), global-only and global-to-local.
#   bash experiments/isbi2015/evaluate_test1.sh GLOBAL.ckpt LOCAL.ckpt[,FINER_LOCAL.ckpt...] [OUT_DIR]
# Several local checkpoints, comma-separated, run in that order (coarse to fine). LOCAL_ITERATIONS=2 runs
# each local stage twice, the second time centred on its first answer; LOCAL_REPASS_MM=0.5 (the chosen
# pipeline) runs the second pass only for the landmarks the first moved more than 0.5 mm. MIRROR=1 runs on the Test1 images
# mirrored left-right (PNGs written to OUT/mirrored_images, references mirrored with them): a patient
# facing the other way. TEST_TIME_MIRROR=local (or whole) averages the local stages (or the whole pipeline)
# over the image and its mirror image (landmark-predict --mirror).
set -euo pipefail
GLOBAL=$1
IFS=, read -r -a locals <<< "$2"
LOCAL="[$(printf "'%s'," "${locals[@]}" | sed 's/,$//')]"
OUT=${3:-outputs/isbi2015_test1}
DATA=${LANDMARK_LIT_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/isbi2015-ceph
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
mirror=()
if [ "${MIRROR:-0}" = 1 ]; then mirror=(--mirror-images "$OUT/mirrored_images"); fi
for gt in average senior; do
  "$BIN/python" -m landmark_lit.data.isbi2015 "$DATA" "$OUT/references_$gt.csv" --split test1 --ground-truth $gt \
    "${mirror[@]}"
done
common=(input="$DATA/splits/test1.txt" input_root="$DATA/images" spacing=0.1 threads=${THREADS:-2})
if [ "${MIRROR:-0}" = 1 ]; then common=(input="$OUT/mirrored_images/list.txt" spacing=0.1 threads=${THREADS:-2}); fi
"$BIN/landmark-predict" global_checkpoint="$GLOBAL" "${common[@]}" output_dir="$OUT/pred_global"
"$BIN/landmark-predict" global_checkpoint="$GLOBAL" local_checkpoint="$LOCAL" local_iterations="${LOCAL_ITERATIONS:-1}" \
  local_repass_mm="${LOCAL_REPASS_MM:-0}" mirror="${TEST_TIME_MIRROR:-none}" "${common[@]}" output_dir="$OUT/pred_global_to_local"
for run in global global_to_local; do
  for gt in average senior; do
    "$BIN/landmark-evaluate" predictions="$OUT/pred_$run/predictions.json" references="$OUT/references_$gt.csv" \
      output_dir="$OUT/eval_${run}_$gt" n_worst=5
  done
done

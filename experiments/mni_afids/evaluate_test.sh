#!/usr/bin/env bash
# Evaluate trained MNI152 + AFIDs networks on the benchmark's test volumes: global only and
# global-to-local (multi-landmark), and single- vs multi-landmark global networks (Wilcoxon).
#   bash experiments/mni_afids/evaluate_test.sh MANIFEST GLOBAL.ckpt LOCAL.ckpt OUT [SL_GLOBAL.ckpt ...]
# LOCAL_ITERATIONS=3: the local networks run three times, each centred on their previous answer;
# LOCAL_SHIFTS=axes: the last of them averaged over sub-images moved one voxel along each axis.
# The single-landmark networks are compared with ML_GLOBAL (default GLOBAL), the multi-landmark network
# trained with the same configuration.
set -euo pipefail
MANIFEST=$1
GLOBAL=$2
LOCAL=$3
OUT=$4
shift 4
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
common=(input="$MANIFEST" input_split=test threads=${THREADS:-2})
refs=(references="$MANIFEST" references_split=test)
"$BIN/landmark-predict" global_checkpoint="$GLOBAL" "${common[@]}" output_dir="$OUT/pred_global"
"$BIN/landmark-predict" global_checkpoint="$GLOBAL" local_checkpoint="$LOCAL" \
  local_iterations="${LOCAL_ITERATIONS:-1}" local_shifts="${LOCAL_SHIFTS:-none}" "${common[@]}" output_dir="$OUT/pred_global_to_local"
for run in global global_to_local; do
  "$BIN/landmark-evaluate" predictions="$OUT/pred_$run/predictions.json" "${refs[@]}" \
    output_dir="$OUT/eval_$run" thresholds=[1,2,3,4,5] n_worst=3
done
"$BIN/landmark-compare" "runs={global-to-local: $OUT/pred_global_to_local/predictions.json, global: $OUT/pred_global/predictions.json}" \
  "${refs[@]}" output_dir="$OUT/compare_stages"
if [ $# -gt 0 ]; then
  ML_GLOBAL=${ML_GLOBAL:-$GLOBAL}
  "$BIN/landmark-predict" global_checkpoint="$ML_GLOBAL" "${common[@]}" output_dir="$OUT/pred_ml"
  sl=()
  n=0
  for ckpt in "$@"; do
    "$BIN/landmark-predict" global_checkpoint="$ckpt" "${common[@]}" output_dir="$OUT/pred_sl_$n"
    sl+=("$OUT/pred_sl_$n/predictions.json")
    n=$((n + 1))
  done
  list=$(IFS=,; echo "${sl[*]}")
  "$BIN/landmark-compare" "runs={ML: $OUT/pred_ml/predictions.json, SL: [$list]}" \
    "${refs[@]}" output_dir="$OUT/compare_sl_ml"
fi

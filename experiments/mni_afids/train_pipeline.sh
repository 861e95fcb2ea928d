#!/usr/bin/env bash
# Train the MNI152 + AFIDs global-to-local pipeline (issue 13): the global stage, then its error on the
# training volumes (per-axis SD, OUT/offset_sd_mm.txt; CPU seconds in OUT/offset_cpu_s.txt), then the
# local stage trained with sub-images centred that far off (data.local_offset_sd_mm), then (issue 24) the
# coarse local stage run between them (experiment=mni_afids_local_coarse; COARSE=0 skips it). Prediction
# runs local_checkpoint=[COARSE,LOCAL] with local_iterations=2 local_shifts=axes (experiments/mni_afids/RESULTS.md).
#   LOCAL_OVERRIDES="trainer.max_steps=1000" bash experiments/mni_afids/train_pipeline.sh MANIFEST OUT \
#       [GLOBAL_OVERRIDES...]
# The budget of each stage (CPU seconds) is in its checkpoints (TrainingClock).
set -euo pipefail
MANIFEST=$1
OUT=$2
shift 2
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/landmark-train" experiment=mni_afids_global dataset.manifest="$MANIFEST" paths.output_dir="$OUT/global" \
  run_test=false "$@" > "$OUT/global.log" 2>&1
TIMEFORMAT='%U %S'
{ time "$BIN/python" experiments/mni_afids/validation.py "$MANIFEST" "$OUT/global/checkpoints/best.ckpt" \
    --split train --print-offset-sd > "$OUT/offset_sd_mm.txt" 2>> "$OUT/offset.log"; } 2> "$OUT/offset_cpu_s.txt"
"$BIN/landmark-train" experiment=mni_afids_local dataset.manifest="$MANIFEST" paths.output_dir="$OUT/local" \
  run_test=false data.local_offset_sd_mm="$(cat "$OUT/offset_sd_mm.txt")" ${LOCAL_OVERRIDES:-} > "$OUT/local.log" 2>&1
# the coarse local stage (3 mm, 48 mm sub-images) run between them, chosen on validation (issue 24);
# COARSE=0 skips it
if [ "${COARSE:-1}" != 0 ]; then
  "$BIN/landmark-train" experiment=mni_afids_local_coarse dataset.manifest="$MANIFEST" paths.output_dir="$OUT/coarse" \
    run_test=false data.local_offset_sd_mm="$(cat "$OUT/offset_sd_mm.txt")" ${COARSE_OVERRIDES:-} > "$OUT/coarse.log" 2>&1
  echo "global: $OUT/global/checkpoints/best.ckpt  local (coarse, fine): [$OUT/coarse/checkpoints/best.ckpt,$OUT/local/checkpoints/best.ckpt]"
else
  echo "global: $OUT/global/checkpoints/best.ckpt  local: $OUT/local/checkpoints/best.ckpt"
fi

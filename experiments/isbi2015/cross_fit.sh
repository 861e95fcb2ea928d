#!/usr/bin/env bash
# Cross-fitted confidence calibration of an ISBI 2015 global-to-local pipeline (issue 21).
#   bash experiments/isbi2015/cross_fit.sh GLOBAL.ckpt LOCAL.ckpt OUT [FOLDS]
# The 150 training images are dealt into FOLDS parts (default 5; dataset.folds / dataset.fold of
# conf/dataset/isbi2015.yaml). For each fold the pipeline is trained again from its configs with that
# part held out: the global stage on core 0 and the local stage on core 1 at once, one thread each
# (GLOBAL_EXPERIMENT / LOCAL_EXPERIMENT, default isbi2015_global / isbi2015_local, plus GLOBAL_OVERRIDES /
# LOCAL_OVERRIDES; keep the chosen schedule: folds trained shorter than the deployed model calibrate it too
# optimistically, experiments/confidence/RESULTS.md). Each fold's last checkpoints (no choice on the held-out part) become OUT/foldK.pt.
# Then GLOBAL.ckpt + LOCAL.ckpt (the chosen pipeline, trained on its 140 images) is exported as
# OUT/global_to_local.pt with one calibration fitted on every fold's predictions of its held-out images
# (landmark-export calibration_folds=[...], two local passes). A fold whose bundle exists is not retrained.
set -euo pipefail
G=$1; L=$2; OUT=$3; K=${4:-5}
BIN=${BIN:-.venv/bin}
GLOBAL_EXPERIMENT=${GLOBAL_EXPERIMENT:-isbi2015_global}
LOCAL_EXPERIMENT=${LOCAL_EXPERIMENT:-isbi2015_local}
mkdir -p "$OUT"
on_core() {  # run "$@" with one thread, on core $1 when taskset exists
  local core=$1; shift
  if command -v taskset >/dev/null; then set -- taskset -c "$core" "$@"; fi
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@"
}
bundles=()
for k in $(seq 0 $((K - 1))); do
  bundles+=("$OUT/fold$k.pt")
  [ -f "$OUT/fold$k.pt" ] && continue
  fold=(dataset.folds="$K" dataset.fold="$k" calibration.enabled=false run_test=false)
  # shellcheck disable=SC2086
  on_core 0 "$BIN/landmark-train" experiment="$GLOBAL_EXPERIMENT" "${fold[@]}" \
    paths.output_dir="$OUT/fold$k/global" ${GLOBAL_OVERRIDES:-} > "$OUT/fold$k.global.log" 2>&1 &
  a=$!
  # shellcheck disable=SC2086
  on_core 1 "$BIN/landmark-train" experiment="$LOCAL_EXPERIMENT" "${fold[@]}" \
    paths.output_dir="$OUT/fold$k/local" ${LOCAL_OVERRIDES:-} > "$OUT/fold$k.local.log" 2>&1 &
  b=$!
  wait $a
  wait $b  # set -e: a failed training stops here
  "$BIN/landmark-export" global_checkpoint="$OUT/fold$k/global/checkpoints/last.ckpt" \
    local_checkpoint="$OUT/fold$k/local/checkpoints/last.ckpt" local_iterations=2 local_repass_mm=0.5 \
    output="$OUT/fold$k.pt"
done
list=$(IFS=,; echo "${bundles[*]}")
"$BIN/landmark-export" global_checkpoint="$G" local_checkpoint="$L" local_iterations=2 local_repass_mm=0.5 \
  calibration_dataset=isbi2015 "calibration_folds=[$list]" output="$OUT/global_to_local.pt"

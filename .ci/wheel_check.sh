#!/usr/bin/env bash
# The package as a user installs it: a wheel, in a fresh virtual environment outside the checkout, its
# commands run from another folder (train on the tiny synthetic config, export, predict, evaluate).
#   bash .ci/wheel_check.sh        (after `make install`, whose pip builds the wheel)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$ROOT/.venv/bin/pip" wheel --quiet --no-deps -w "$WORK/dist" "$ROOT"
python3 -m venv "$WORK/venv"
B="$WORK/venv/bin"
"$B/pip" install --quiet -c "$ROOT/constraints.txt" torch
"$B/pip" install --quiet -c "$ROOT/constraints.txt" "$WORK"/dist/landmark_lit-*.whl
mkdir "$WORK/user" && cd "$WORK/user"
export OMP_NUM_THREADS=1
"$B/landmark-train" dataset=synthetic2d net=small trainer=ci run_test=false \
  dataset.train.num_cases=2 dataset.val.num_cases=1 stage.samples_per_epoch=4 \
  dataset.train.size=40 dataset.val.size=40 dataset.test.size=40
ckpt=$(ls "$WORK"/user/outputs/train/synthetic2d/global-Rlog+C/*/checkpoints/last.ckpt)  # outputs under the current folder
"$B/landmark-export" global_checkpoint="$ckpt" output="$WORK/user/model.pt"
"$B/python" - <<'PY'
from pathlib import Path
from landmark_lit.data.io import save_nifti
from landmark_lit.data.landmark_tables import LandmarkTable, write_landmark_table
from landmark_lit.data.synthetic import SyntheticLandmarks

cases = SyntheticLandmarks(spatial_dims=2, size=40, spacing=1.0, num_cases=2, seed=5)
table = LandmarkTable(names=list(cases.landmark_names), coords={})
for i in range(len(cases)):
    case = cases[i]
    save_nifti(Path("images") / f"{case.case_id}.nii.gz", case.image, case.affine)
    table.coords[case.case_id] = case.landmarks_world
write_landmark_table("references.csv", table)
PY
"$B/landmark-predict" -i images -o predictions -m model.pt --report
"$B/landmark-evaluate" predictions=predictions/predictions.json references=references.csv output_dir=evaluation \
  report=true
test -s evaluation/summary.json && test -s predictions/predictions.csv
test -s predictions/report.html && test -s evaluation/report.html
if ls -d "$WORK"/venv/lib/python*/site-packages/outputs 2>/dev/null; then
  echo "wheel check: outputs were written into site-packages" >&2; exit 1
fi
echo "wheel check: train, export, predict and evaluate (with their review pages) ran from an installed wheel in $WORK/user"

"""How well the per-landmark confidence flags failures (error > 4 mm) on ISBI 2015.

Runs the predictor on the validation images (the 10 training images held out by the dataset config) and on
Test1 (average ground truth), records every landmark's error and the signals the confidence could be built
from, and reports the area under the ROC curve of each signal for separating errors above 4 mm from the
rest (torchmetrics' binary AUROC), the threshold chosen on the validation images, and its effect on Test1.

    python experiments/isbi2015/confidence.py GLOBAL.ckpt LOCAL.ckpt [--iterations 2] [--out DIR]
    python experiments/isbi2015/confidence.py HEATMAP.ckpt --out DIR   # a heatmap U-Net alone

Writes DIR/landmarks_{val,test1}.csv (one row per landmark) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.inference.predictor import LandmarkPredictor

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2015-ceph"
SIGNALS = ("confidence", "posterior", "spread_mm", "global_posterior", "global_spread_mm", "shift_mm")
# signals where a larger value means a more likely failure
UNCERTAINTIES = ("spread_mm", "global_spread_mm", "shift_mm")


def collect(predictor: LandmarkPredictor, source: ISBI2015Cephalograms) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {key: [] for key in ("case", "landmark", "error_mm", *SIGNALS)}
    for i in range(len(source)):
        case = source[i]
        result = predictor.predict(case.image, case.affine)
        err = np.linalg.norm(result.world - case.landmarks_world, axis=1)
        rows["case"] += [case.case_id] * len(err)
        rows["landmark"] += predictor.landmark_names
        rows["error_mm"] += err.tolist()
        for key in SIGNALS:
            value = (
                getattr(result.global_estimate, key.removeprefix("global_"))
                if key.startswith("global_")
                else getattr(result, key)
            )
            rows[key] += np.asarray(value, dtype=np.float64).tolist()
    return {k: np.asarray(v) for k, v in rows.items()}


def failure_score(data: dict[str, np.ndarray], key: str) -> np.ndarray:
    return data[key] if key in UNCERTAINTIES else -data[key]


def auroc(score: np.ndarray, failed: np.ndarray) -> float:
    return float(binary_auroc(torch.as_tensor(score, dtype=torch.float64), torch.as_tensor(failed).long()))


def read(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        key: np.asarray(
            [r[key] for r in rows] if key in ("case", "landmark") else [float(r[key]) for r in rows]
        )
        for key in rows[0]
    }


def write(path: Path, data: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(data))
        for row in zip(*data.values(), strict=True):
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("global_checkpoint")
    parser.add_argument("local_checkpoint", nargs="*")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--failure-mm", type=float, default=4.0)
    parser.add_argument("--out", default="outputs/isbi2015_confidence")
    parser.add_argument("--from-csv", action="store_true", help="reuse the landmarks_*.csv of --out")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="flagging threshold (default: the calibration's, else 0.01, the uncalibrated score's former constant)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    sets = {
        "val": lambda: ISBI2015Cephalograms(args.data, split="train", subset="val", val_count=10, val_seed=0),
        "test1": lambda: ISBI2015Cephalograms(args.data, split="test1", ground_truth="average"),
    }
    data = {}
    # the uncalibrated score's former method-wide constant, for the older tables of RESULTS.md
    threshold = 0.01 if args.threshold is None else args.threshold
    if args.from_csv:
        data = {name: read(Path(args.out) / f"landmarks_{name}.csv") for name in sets}
    else:
        predictor = LandmarkPredictor.from_checkpoints(
            args.global_checkpoint, args.local_checkpoint, args.iterations, args.threshold
        )
        threshold = threshold if predictor.confidence_threshold is None else predictor.confidence_threshold
        for name, source in sets.items():
            data[name] = collect(predictor, source())
            write(Path(args.out) / f"landmarks_{name}.csv", data[name])
    print(f"| signal | AUROC validation | AUROC Test1 | (failure: error > {args.failure_mm:g} mm) |")
    print("|---|---|---|---|")
    for key in SIGNALS:
        cells = []
        for name in sets:
            failed = data[name]["error_mm"] > args.failure_mm
            cells.append(
                f"{auroc(failure_score(data[name], key), failed):.3f} ({int(failed.sum())}/{failed.size})"
            )
        print(f"| {key} | {cells[0]} | {cells[1]} | |")
    print()
    # the combination's distance scale (landmark_confidence uses 3 x the working spacing, 0.9 mm here)
    print("| scale of (spread + shift) | AUROC validation | AUROC Test1 |")
    print("|---|---|---|")
    for scale in (0.5, 0.9, 1.0, 2.0):
        cells = []
        for name in sets:
            d, failed = data[name], data[name]["error_mm"] > args.failure_mm
            score = d["posterior"] * np.exp(-(d["spread_mm"] + d["shift_mm"]) / scale)
            cells.append(f"{auroc(-score, failed):.3f}")
        print(f"| {scale:g} mm | {cells[0]} | {cells[1]} |")
    val_failed = data["val"]["error_mm"] > args.failure_mm
    if val_failed.any():
        print(
            f"\nhighest confidence of a validation failure: {data['val']['confidence'][val_failed].max():.4f}"
        )
    print()
    print(
        "| set | threshold | flagged | failures flagged (sensitivity) | flagged that failed (precision) | MRE unflagged | MRE flagged |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in sets:
        d = data[name]
        failed = d["error_mm"] > args.failure_mm
        flagged = d["confidence"] < threshold
        sens = flagged[failed].mean() if failed.any() else float("nan")
        prec = failed[flagged].mean() if flagged.any() else float("nan")
        mre_f = d["error_mm"][flagged].mean() if flagged.any() else float("nan")
        print(
            f"| {name} | {threshold:g} | {int(flagged.sum())}/{flagged.size} | "
            f"{100 * sens:.1f} % | {100 * prec:.1f} % | {d['error_mm'][~flagged].mean():.2f} | {mre_f:.2f} |"
        )


if __name__ == "__main__":
    main()

"""What the calibrated confidence costs at prediction time: the median time of one whole prediction (image
in memory) against the median time of its scoring step alone (cues, calibrated confidence, flags, radius),
measured in one process on the same image.

    python experiments/bench/bench_confidence.py MODEL.pt IMAGE [--spacing 0.1] [--threads 2] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from landmark_lit.data.io import load_image
from landmark_lit.inference.predictor import LandmarkPredictor


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("image")
    p.add_argument("--spacing", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    predictor = LandmarkPredictor.from_bundle(args.model)
    image, affine = load_image(args.image)
    if args.spacing is not None:
        affine = np.diag([args.spacing] * (image.ndim - 1) + [1.0])
    result = predictor.predict(image, affine)  # warm-up
    whole = median_seconds(lambda: predictor.predict(image, affine), args.runs)
    est = type(result.global_estimate)(result.world, result.spread_mm, result.posterior)
    scoring = median_seconds(
        lambda: predictor.score(est, result.global_estimate, result.shift_mm), 20 * args.runs
    )
    print(json.dumps({
        "model": args.model, "calibrated": predictor.calibration is not None, "threads": args.threads,
        "prediction_s": whole, "scoring_s": scoring, "scoring_share": scoring / whole,
    }))  # fmt: skip


if __name__ == "__main__":
    main()

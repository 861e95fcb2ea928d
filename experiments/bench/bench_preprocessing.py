"""A cephalogram's preprocessing per stage, step by step: reading (JPEG decoded at 1/2), resampling to the
stage's spacing, histogram equalisation by MONAI's ``HistogramNormalize`` and by
``landmark_lit.data.transforms.equalize_histogram`` (the same numbers), and the z-score.

    python experiments/bench/bench_preprocessing.py IMAGE.jpg [--spacing 0.1] [--runs 15] [--threads 1]

Medians in ms; run with nothing else on the core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from monai.transforms import HistogramNormalize, NormalizeIntensity

from landmark_lit.data.io import load_image
from landmark_lit.data.transforms import equalize_histogram, resample_to_spacing


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--spacing", type=float, default=0.1, help="pixel size of the bitmap, mm")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    read = median_ms(lambda: load_image(args.image, jpeg_reduce=2), args.runs)
    image, affine = load_image(args.image, jpeg_reduce=2)
    affine = affine.copy()
    affine[:2, :2] *= args.spacing
    for spacing in (0.8, 0.3):
        print(json.dumps(stage_row(image, affine, spacing, args.runs) | {"read_ms": read}))


def stage_row(image, affine, spacing: float, runs: int) -> dict:
    x, _ = resample_to_spacing(image, affine, spacing)
    monai = torch.as_tensor(HistogramNormalize(num_bins=256, min=0, max=1)(x))
    ours = equalize_histogram(x)
    row = {
        "spacing_mm": spacing,
        "shape": list(x.shape[1:]),
        "max_difference": float((monai - ours).abs().max()),
    }
    row["resample_ms"] = median_ms(lambda: resample_to_spacing(image, affine, spacing), runs)
    row["histeq_monai_ms"] = median_ms(lambda: HistogramNormalize(num_bins=256, min=0, max=1)(x), runs)
    row["histeq_torch_ms"] = median_ms(lambda: equalize_histogram(x), runs)
    row["zscore_ms"] = median_ms(lambda: NormalizeIntensity(channel_wise=True)(ours.clone()), runs)
    return row


if __name__ == "__main__":
    main()

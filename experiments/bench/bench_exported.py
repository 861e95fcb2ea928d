"""The pipeline of a model bundle with its networks as PyTorch, TorchScript and ONNX Runtime (files written
by ``landmark-export ... formats=[bundle,torchscript,onnx]``): median seconds per prediction (image in
memory, after one warm-up) and the largest landmark difference from PyTorch.

    python experiments/bench/bench_exported.py outputs/models/isbi2015.pt IMAGE [--spacing 0.1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from landmark_lit.data.io import load_image
from landmark_lit.inference.export import load_exported
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import Stage, StageMeta


def median_seconds(predictor: LandmarkPredictor, image, affine, runs: int) -> float:
    predictor.predict(image, affine)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor.predict(image, affine)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("image")
    parser.add_argument("--spacing", type=float, default=None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    reference = LandmarkPredictor.from_bundle(args.bundle)
    image, affine = load_image(args.image)
    if args.spacing:
        affine = np.diag([*[args.spacing] * (image.ndim - 1), 1.0])
    ref = reference.predict(image, affine).world
    print(f"pytorch: {median_seconds(reference, image, affine, args.runs):.3f} s")
    stem = Path(args.bundle).with_suffix("")
    for suffix in ("ts", "onnx"):
        nets = [load_exported(f"{stem}.global.{suffix}")]
        nets += [load_exported(f"{stem}.local{n}.{suffix}") for n in range(len(reference.local_stages))]
        stages = [Stage(net, StageMeta.from_dict(net.meta, str(net.path)), str(net.path)) for net in nets]
        predictor = LandmarkPredictor(stages[0], stages[1:], reference.settings)
        diff = np.abs(predictor.predict(image, affine).world - ref).max()
        seconds = median_seconds(predictor, image, affine, args.runs)
        print(f"{suffix}: {seconds:.3f} s, largest landmark difference from PyTorch {diff:.2e} mm")


if __name__ == "__main__":
    main()

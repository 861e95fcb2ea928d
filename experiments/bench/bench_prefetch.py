"""Does reading the next image while the current one is predicted help a folder? Predicts the same
cephalograms one after the other and with the next file read in a background thread (one worker), in
alternating rounds, and prints milliseconds per image for each.

    python experiments/bench/bench_prefetch.py MODEL.pt IMAGE [IMAGE ...] [--spacing 0.1] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from landmark_lit.data.io import load_image
from landmark_lit.inference.predict_files import jpeg_reduction
from landmark_lit.inference.predictor import LandmarkPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--spacing", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = LandmarkPredictor.from_bundle(args.model)
    reduce = jpeg_reduction(predictor, args.spacing)
    grid = np.diag([args.spacing, args.spacing, 1.0])  # as landmark-predict: a reduced JPEG's grid scaled

    def read(path):
        image, affine = load_image(path, reduce, integers=True)
        return image, grid @ affine

    def one_after_the_other():
        for path in args.images:
            predictor.predict(*read(path))

    def prefetched():
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(read, args.images[0])
            for i in range(len(args.images)):
                image, affine = pending.result()
                if i + 1 < len(args.images):
                    pending = pool.submit(read, args.images[i + 1])
                predictor.predict(image, affine)

    one_after_the_other()  # warm-up
    for r in range(args.rounds):
        for name, run in (
            ("one after the other", one_after_the_other),
            ("next read in a thread", prefetched),
        ):
            t0 = time.perf_counter()
            run()
            ms = (time.perf_counter() - t0) / len(args.images) * 1e3
            print(f"round {r}: {name}: {ms:.1f} ms per image", flush=True)


if __name__ == "__main__":
    main()

"""Reading a gzip NIfTI volume: nibabel's own gzip reader against landmark_lit's reader (python-isal's
igzip when installed, ``landmark_lit.data.io``), the same array and affine; medians in seconds.

    python experiments/bench/bench_volume_read.py VOLUME.nii.gz [--runs 5]

Prints one JSON line. Run with nothing else on the core; the page cache holds the file after the first
read, so both readers are timed from memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import nibabel as nib
import numpy as np

from landmark_lit.data.io import load_image


def _median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 3)


def nibabel_read(path: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    ours, ours_affine = load_image(args.volume)
    ref, ref_affine = nibabel_read(args.volume)
    same = bool(np.array_equal(ours[0], ref) and np.allclose(ours_affine, ref_affine))
    row = {
        "volume": args.volume,
        "shape": list(ref.shape),
        "same_array_and_affine": same,
        "nibabel_s": _median_s(lambda: nibabel_read(args.volume), args.runs),
        "landmark_lit_s": _median_s(lambda: load_image(args.volume), args.runs),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()

"""The reduced-JPEG lever alone (``landmark-predict reduced_jpeg=true``): accuracy and time per image of
one model bundle on the ISBI 2015 validation images, decoded in full and at the reduction
:func:`~landmark_lit.inference.predict_files.jpeg_reduction` picks, interleaved image by image.

    python experiments/bench/reduced_jpeg.py MODEL.pt [--data ../shared/data/isbi2015-ceph] [--threads 2]
        [--subset val] [--runs 3] [--json OUT.json]

Prints MRE / median and the median seconds per image with reading and without, for both decodings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from landmark_lit.data.isbi2015 import SPACING_MM, ISBI2015Cephalograms
from landmark_lit.inference.predict_files import jpeg_reduction, predict_file
from landmark_lit.inference.predictor import LandmarkPredictor


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "isbi2015-ceph"))
    parser.add_argument("--subset", default="val", help="train split subset: val (default), train, all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed predictions per image and decoding")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = LandmarkPredictor.from_bundle(args.model)
    source = ISBI2015Cephalograms(args.data, split="train", subset=args.subset)
    reduce = jpeg_reduction(predictor, SPACING_MM)
    errors = {False: [], True: []}
    seconds = {False: [], True: []}
    without = {False: [], True: []}
    predict_file(predictor, source.image_path(source.ids[0]), SPACING_MM)  # warm-up
    for i in source.ids:
        ref = source.pixels(i) * SPACING_MM
        for reduced in (False, True):
            for _ in range(args.runs):
                p, _, _ = predict_file(predictor, source.image_path(i), SPACING_MM, reduced_jpeg=reduced)
                seconds[reduced].append(p.seconds)
                without[reduced].append(p.seconds_without_io)
            errors[reduced].append(np.linalg.norm(p.world - ref, axis=1))
    rows = {}
    for reduced in (False, True):
        e = np.concatenate(errors[reduced])
        rows[f"reduced 1/{reduce}" if reduced else "full"] = {
            "mre_mm": float(e.mean()),
            "median_mm": float(np.median(e)),
            "sdr_2mm": float((e <= 2).mean()),
            "seconds": float(np.median(seconds[reduced])),
            "seconds_without_io": float(np.median(without[reduced])),
        }
    diff = np.concatenate(errors[True]) - np.concatenate(errors[False])
    print(f"{len(source)} {args.subset} images, {args.threads} threads, {args.runs} runs each, interleaved")
    print("| decoding | MRE mm | median mm | SDR 2 mm % | s per image | without reading |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mre_mm']:.3f} | {r['median_mm']:.3f} | {100 * r['sdr_2mm']:.1f} | "
              f"{r['seconds']:.3f} | {r['seconds_without_io']:.3f} |")  # fmt: skip
    print(f"error change per landmark: mean {diff.mean():+.4f} mm, largest {np.abs(diff).max():.3f} mm")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "reduce": reduce, "subset": args.subset}, indent=1)
        )


if __name__ == "__main__":
    main()

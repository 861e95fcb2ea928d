"""Two (or more) local stages trained alike but for their seed, each run from the same global answer, their
answers averaged, on the ISBI 2015 validation images: does a second local seed buy accuracy?

    python experiments/isbi2015/local_seeds.py GLOBAL.ckpt LOCAL_A.ckpt LOCAL_B.ckpt [...] \
        [--iterations 2] [--repass-mm 0.5] [--data ../shared/data/isbi2015-ceph] [--subset val]

Prints a Markdown table (MRE ± SD, median (IQR), SDR at 2 and 4 mm; average ground truth) for each local
stage alone (as landmark-predict runs it), for the mean of their answers (world mm, landmark by
landmark), and for the second stage's one pass from the first one's answer (a cascade of the two seeds).
The cost of the average is one more set of local networks per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from global_seeds import global_answer  # this folder's scripts (run as a script)
from validation import DEFAULT_DATA, row

from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.inference.passes import refine_in_turn
from landmark_lit.inference.predictor import LandmarkPredictor, global_input


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("global_checkpoint")
    parser.add_argument("local_checkpoints", nargs="+")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--repass-mm", type=float, default=0.5)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--subset", default="val", choices=["val", "train"])
    args = parser.parse_args(argv)
    if len(args.local_checkpoints) < 2:
        parser.error("give at least two local checkpoints")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    source = ISBI2015Cephalograms(args.data, split="train", subset=args.subset)
    predictors = [
        LandmarkPredictor.from_checkpoints(
            args.global_checkpoint, local, local_iterations=args.iterations, local_repass_mm=args.repass_mm
        )
        for local in args.local_checkpoints
    ]
    names = [f"local {i} ({Path(c).parent.parent.name})" for i, c in enumerate(args.local_checkpoints)]
    errors: dict[str, list[np.ndarray]] = {}

    def add(name: str, world: np.ndarray, reference: np.ndarray) -> None:
        errors.setdefault(name, []).append(np.linalg.norm(world - reference, axis=1))

    for i in range(len(source)):
        case = source[i]
        start = global_answer(predictors[0], case.image, case.affine)
        x0 = global_input(predictors[0].global_stage, case.image, case.affine)[0]
        answers = []
        for name, p in zip(names, predictors, strict=True):
            answer, _ = refine_in_turn(p.local_stages, x0, case.affine, start, p.settings)
            answers.append(answer.world)
            add(name, answer.world, case.landmarks_world)
        add(f"mean of the {len(answers)}", np.mean(answers, axis=0), case.landmarks_world)
        one_pass = dataclasses.replace(predictors[1].settings, local_iterations=1)
        first = dataclasses.replace(start, world=answers[0])
        cascade, _ = refine_in_turn(predictors[1].local_stages, x0, case.affine, first, one_pass)
        add("local 1, one pass from local 0's answer", cascade.world, case.landmarks_world)
    print(
        f"{len(source)} {args.subset} images ({', '.join(source.ids)}), average ground truth, errors in mm\n"
    )
    print("| Local stage | MRE ± SD | Median (IQR) | SDR 2 mm | SDR 4 mm |\n|:--|--:|--:|--:|--:|")
    for name, errs in errors.items():
        print(row(name, np.concatenate(errs)))


if __name__ == "__main__":
    main()

"""Two (or more) global stages trained alike but for their seed, their answers averaged, on the ISBI 2015
validation images: does a second global seed buy accuracy, before and after the local stage?

    python experiments/isbi2015/global_seeds.py GLOBAL_A.ckpt GLOBAL_B.ckpt [...] --local LOCAL.ckpt \
        [--iterations 2] [--repass-mm 0.5] [--data ../shared/data/isbi2015-ceph] [--subset val]

Prints a Markdown table (MRE ± SD, median (IQR), SDR at 2 and 4 mm; average ground truth) for each global
stage alone and for the mean of their answers (world mm, landmark by landmark), each global only and
with the local stage run from that answer as landmark-predict runs it. The cost of the average is one
more global network per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from validation import DEFAULT_DATA, row  # this folder's validation script (run as a script)

from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.data.transforms import spacing_of
from landmark_lit.inference.passes import StageEstimate, decode_stage, refine_in_turn, stage_estimate
from landmark_lit.inference.predictor import LandmarkPredictor, global_input


def global_answer(predictor: LandmarkPredictor, image: np.ndarray, affine: np.ndarray) -> StageEstimate:
    """The global stage's answer as :meth:`LandmarkPredictor.predict` computes it (no mirror)."""
    g = predictor.global_stage
    _, x, aff = global_input(g, image, affine)
    scale = torch.as_tensor(spacing_of(aff), dtype=torch.float32)
    coords, spread, posterior, _, gap = decode_stage(g, x[None], scale, None)
    return stage_estimate(coords, spread, posterior, gap, aff)


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("global_checkpoints", nargs="+")
    parser.add_argument("--local", default=None, help="the local stage run from each answer")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--repass-mm", type=float, default=0.5)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--subset", default="val", choices=["val", "train"])
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    source = ISBI2015Cephalograms(args.data, split="train", subset=args.subset)
    predictors = [
        LandmarkPredictor.from_checkpoints(
            g, args.local, local_iterations=args.iterations, local_repass_mm=args.repass_mm
        )
        for g in args.global_checkpoints
    ]
    names = [f"run {i} ({Path(g).parent.parent.name})" for i, g in enumerate(args.global_checkpoints)]
    names.append(f"mean of the {len(predictors)}")
    errors: dict[str, list[np.ndarray]] = {}
    for i in range(len(source)):
        case = source[i]
        answers = [global_answer(p, case.image, case.affine) for p in predictors]
        x0 = global_input(predictors[0].global_stage, case.image, case.affine)[0]
        mean = dataclasses.replace(answers[0], world=np.mean([a.world for a in answers], axis=0))
        for name, answer in zip(names, [*answers, mean], strict=True):
            errors.setdefault(f"{name}, global only", []).append(
                np.linalg.norm(answer.world - case.landmarks_world, axis=1)
            )
            if args.local:
                p = predictors[0]
                local, _ = refine_in_turn(p.local_stages, x0, case.affine, answer, p.settings)
                errors.setdefault(f"{name}, global -> local", []).append(
                    np.linalg.norm(local.world - case.landmarks_world, axis=1)
                )
    print(
        f"{len(source)} {args.subset} images ({', '.join(source.ids)}), average ground truth, errors in mm\n"
    )
    print("| Global stage | MRE ± SD | Median (IQR) | SDR 2 mm | SDR 4 mm |\n|:--|--:|--:|--:|--:|")
    for name, errs in sorted(errors.items(), key=lambda kv: "local" in kv[0]):
        print(row(name, np.concatenate(errs)))


if __name__ == "__main__":
    main()

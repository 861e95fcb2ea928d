"""How a local stage's answers lean toward the centres of its network's output cells (MNI152 + AFIDs),
and what removing that pull in the decoder does.

A local network of output stride s votes from cells of s working voxels. Started from sub-images near the
reference, its signed error per axis is tabulated against the reference's phase in the cell grid,
(reference voxel - sub-image start) mod s. The pull's amplitude A (b(p) = A sin(2 pi (c - p) / s),
c = (s - 1) / 2: landmark_lit/inference/cell_pull.py) is fitted on one split, one pass from starts half
a cell off the references per axis (what the end of landmark-train fits on the validation images), and the
whole pipeline is run on another split with and without the decoder removing it, for each
``--local-shifts`` setting.

    python experiments/mni_afids/phase_bias.py FIT_MANIFEST EVAL_MANIFEST GLOBAL.ckpt LOCAL.ckpt \\
        [--fit-split train] [--eval-split val] [--fit-cases 15] [--iterations 3] \\
        [--local-shifts none axes] [--write LOCAL_WITH_PULL.ckpt]

Prints the table (mean signed error per phase bin, working voxels), A, and the evaluation MRE of each
pipeline; ``--write`` stores the local checkpoint with the fitted pull in its decoder.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from landmark_lit.data.manifest import ManifestCases
from landmark_lit.inference.calibrate import store_calibration
from landmark_lit.inference.cell_pull import fit_cell_pull, pass_phases
from landmark_lit.inference.predictor import LandmarkPredictor


def phase_table(stage, source, cases: int, sd_mm: np.ndarray) -> None:
    """Mean signed error per half-voxel phase bin and axis, one pass from starts ``sd_mm`` off."""
    s = int(stage.net.stride)
    rng = np.random.default_rng(0)
    phases, errors = [], []
    for i in range(min(cases, len(source))):
        case = source[i]
        starts = case.landmarks_world + rng.normal(size=case.landmarks_world.shape) * sd_mm
        ph, err = pass_phases(stage, case.image, case.affine, case.landmarks_world, starts)
        phases.append(ph)
        errors.append(err)
    ph, err = np.concatenate(phases), np.concatenate(errors)
    bins = np.linspace(0, s, 2 * s + 1)
    print(f"stride {s}; mean signed error (working voxels) per phase bin of {bins[1]:g} voxel, one pass")
    print("| axis | " + " | ".join(f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:], strict=True)) + " |")
    print("|--" * (len(bins)) + "|")
    for a in range(ph.shape[1]):
        idx = np.clip(np.digitize(ph[:, a], bins) - 1, 0, len(bins) - 2)
        cells = [f"{err[idx == b, a].mean():+.2f}" if (idx == b).any() else "" for b in range(len(bins) - 1)]
        print(f"| {a} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fit_manifest")
    p.add_argument("eval_manifest")
    p.add_argument("global_checkpoint")
    p.add_argument("local_checkpoint")
    p.add_argument("--fit-split", default="train")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--fit-cases", type=int, default=15)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--local-shifts", nargs="+", default=["none", "axes"])
    p.add_argument("--write", default=None, help="the local checkpoint with the fitted pull, written here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base = LandmarkPredictor.from_checkpoints(args.global_checkpoint, [args.local_checkpoint])
    stage = base.local_stages[-1].with_decoder(cell_pull=0.0)
    sd_mm = np.asarray(stage.meta.spacing, np.float64) * int(stage.net.stride) / 2
    fit = ManifestCases(args.fit_manifest, split=args.fit_split)
    phase_table(stage, fit, args.fit_cases, sd_mm)
    amplitude = fit_cell_pull(stage, fit, sd_mm, max_cases=args.fit_cases)
    print(f"\nA = {amplitude:.3f} working voxels (fitted on {args.fit_cases} {args.fit_split} cases)")
    if args.write:
        store_calibration(
            args.local_checkpoint, None, stage.with_decoder(cell_pull=amplitude).meta.decoder, args.write
        )
    ev = ManifestCases(args.eval_manifest, split=args.eval_split)
    print("\n| last pass | pull removed | MRE ± SD | median | SDR 2 mm |\n|:--|:--|--:|--:|--:|")
    for shifts in args.local_shifts:
        for pull in (0.0, amplitude):
            local = stage.with_decoder(cell_pull=pull)
            pred = LandmarkPredictor(
                base.global_stage, [local], local_iterations=args.iterations, local_shifts=shifts
            )
            pred._warned = True  # the stored calibration does not matter here
            e = np.concatenate([
                np.linalg.norm(pred.predict(c.image, c.affine).world - c.landmarks_world, axis=1)
                for c in (ev[i] for i in range(len(ev)))
            ])  # fmt: skip
            print(f"| {shifts} | {'yes' if pull else 'no'} | {e.mean():.3f} ± {e.std():.3f} | "
                  f"{np.median(e):.3f} | {100 * np.mean(e <= 2):.1f} % |")  # fmt: skip


if __name__ == "__main__":
    main()

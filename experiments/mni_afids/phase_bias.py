"""How a local stage's answers lean toward the centres of its network's output cells (MNI152 + AFIDs).

A local network of output stride s votes from cells of s working voxels. Started from sub-images near the
reference, its signed error per axis is tabulated against the reference's phase in the cell grid,
(reference voxel - sub-image start) mod s. A pull toward the cell centres c = (s - 1) / 2 shows as
b(phase) = A f(phase), with f a sine, sin(2 pi (c - phase) / s), or a sawtooth, the signed distance
from the phase to its cell's centre in cells, negated (answers shrunk toward the centre of the cell that
holds the landmark). A is fitted on one split (least squares, all axes together) and the answers of the
pipeline's last pass on another split are corrected by it (solved for the phase by a few fixed-point
steps): what a correction at no network cost would give, against averaging the last pass over
sub-images moved half a cell (``local_shifts``).

    python experiments/mni_afids/phase_bias.py FIT_MANIFEST EVAL_MANIFEST GLOBAL.ckpt LOCAL.ckpt \\
        [--fit-split train] [--eval-split val] [--fit-cases 15] [--iterations 3]

Prints the table (mean signed error per phase bin, working voxels), A, and the evaluation MRE before and
after the correction.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from landmark_lit.data.manifest import ManifestCases
from landmark_lit.data.transforms import local_crop_starts, voxel_to_world, world_to_voxel
from landmark_lit.inference.passes import refine_locally
from landmark_lit.inference.predictor import LandmarkPredictor


def pull(phase: np.ndarray, stride: int, shape: str) -> np.ndarray:
    """The shape of the pull toward the cell centre at ``phase`` (in [0, stride)): "sine" or "sawtooth"."""
    centre = (stride - 1) / 2
    if shape == "sine":
        return np.sin(2 * np.pi * (centre - phase) / stride)
    offset = np.mod(phase - centre + stride / 2, stride) - stride / 2  # to the cell's centre, in voxels
    return -offset / (stride / 2)


def last_pass(predictor: LandmarkPredictor, case, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's answer (K, D) voxels and the start voxels of its last local pass's sub-images."""
    stage = predictor.local_stages[-1]
    before = LandmarkPredictor(
        predictor.global_stage, predictor.local_stages, local_iterations=iterations - 1
    )
    world = before.predict(case.image, case.affine).world if iterations > 1 else None
    if world is None:
        world = LandmarkPredictor(predictor.global_stage).predict(case.image, case.affine).world
    centres = torch.as_tensor(world_to_voxel(world, case.affine), dtype=torch.float32)
    starts = local_crop_starts(centres, stage.meta.crop_size).numpy()
    est, _ = refine_locally(stage, torch.as_tensor(case.image), case.affine, world, 1)
    return world_to_voxel(est.world, case.affine), starts


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
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    predictor = LandmarkPredictor.from_checkpoints(args.global_checkpoint, [args.local_checkpoint])
    stage = predictor.local_stages[-1]
    s = int(stage.net.stride)
    rng = np.random.default_rng(0)
    phases, errors = [], []
    fit = ManifestCases(args.fit_manifest, split=args.fit_split)
    for i in range(min(args.fit_cases, len(fit))):
        case = fit[i]
        ref = world_to_voxel(case.landmarks_world, case.affine)
        start_world = case.landmarks_world + rng.normal(0, 1.0, case.landmarks_world.shape)
        centres = torch.as_tensor(world_to_voxel(start_world, case.affine), dtype=torch.float32)
        starts = local_crop_starts(centres, stage.meta.crop_size).numpy()
        est, _ = refine_locally(stage, torch.as_tensor(case.image), case.affine, start_world, 1)
        phases.append(np.mod(ref - starts, s))
        errors.append(world_to_voxel(est.world, case.affine) - ref)
    ph, err = np.concatenate(phases), np.concatenate(errors)
    bins = np.linspace(0, s, 2 * s + 1)
    print(f"stride {s}; mean signed error (working voxels) per phase bin of {bins[1]:g} voxel, "
          f"{args.fit_split} split, one pass from starts 1 mm (SD per axis) off the reference")  # fmt: skip
    print("| axis | " + " | ".join(f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:], strict=True)) + " |")
    print("|--" * (len(bins)) + "|")
    for a in range(ph.shape[1]):
        idx = np.clip(np.digitize(ph[:, a], bins) - 1, 0, len(bins) - 2)
        cells = [f"{err[idx == b, a].mean():+.2f}" if (idx == b).any() else "" for b in range(len(bins) - 1)]
        print(f"| {a} | " + " | ".join(cells) + " |")
    amplitude = {}
    for shape in ("sine", "sawtooth"):
        x = pull(ph, s, shape).ravel()
        amplitude[shape] = float((x * err.ravel()).sum() / (x * x).sum())
        print(f"\n{shape}: A = {amplitude[shape]:.3f} voxels (the pull toward the cell centres)", end="")
    print()
    ev = ManifestCases(args.eval_manifest, split=args.eval_split)
    errors_of: dict[str, list[np.ndarray]] = {"as is": [], "sine": [], "sawtooth": []}
    for i in range(len(ev)):
        case = ev[i]
        vox, starts = last_pass(predictor, case, args.iterations)
        for name in errors_of:
            fixed = vox.copy()
            for _ in range(5 if name != "as is" else 0):  # vox = true + A pull(true phase): solve for true
                fixed = vox - amplitude[name] * pull(np.mod(fixed - starts, s), s, name)
            err_mm = np.linalg.norm(voxel_to_world(fixed, case.affine) - case.landmarks_world, axis=1)
            errors_of[name].append(err_mm)
    for name, e in errors_of.items():
        e = np.concatenate(e)
        label = name if name == "as is" else f"corrected ({name})"
        print(
            f"{args.eval_split}, {args.iterations} passes, {label}: MRE {e.mean():.3f} mm, median {np.median(e):.3f}"
        )


if __name__ == "__main__":
    main()

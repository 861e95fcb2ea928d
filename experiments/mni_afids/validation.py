"""Compare pipelines on the MNI152 + AFIDs benchmark's validation volumes (or measure the global stage's
error on the training volumes), before anything touches the test split.

    python experiments/mni_afids/validation.py MANIFEST GLOBAL.ckpt --local LOCAL.ckpt --iterations 1 2 3 \\
        [--repass-mm 0.3 0.5] [--local-shifts axes faces] [--top-k 9 27] [--global-top-k 9] [--local-top-k 4]
        [--test-time-mirror local whole] [--split val]
    python experiments/mni_afids/validation.py MANIFEST GLOBAL.ckpt --split train --print-offset-sd

Prints a Markdown table (MRE ± SD, median, SDR at 2 and 4 mm) per pipeline; with ``--split train`` also
the global stage's error per axis (SD, 95th percentile of |error|), the spread a local stage meets
(``data.local_offset_sd_mm``); ``--print-offset-sd`` prints only its mean over the axes.
``--test-time-mirror`` adds each local pipeline (and its shift-averaged ones) averaged over the volume
mirrored left-right (array axis 0, the benchmark's R / L pairs of dataset/mni_afids.yaml swapped): on the
sub-images only, or the whole pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from landmark_lit.config import CONFIG_DIR
from landmark_lit.data.manifest import ManifestCases
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.settings import MirrorAverage


def row(name: str, errors: np.ndarray) -> str:
    return (
        f"| {name} | {errors.mean():.2f} ± {errors.std():.2f} | {np.median(errors):.2f} "
        f"| {100 * np.mean(errors <= 2):.1f} % | {100 * np.mean(errors <= 4):.1f} % |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("global_checkpoint")
    parser.add_argument("--local", action="append", default=[], help="local checkpoint(s), comma-separated")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1])
    parser.add_argument("--split", default="val")
    parser.add_argument("--top-k", type=int, nargs="*", default=[], help="global-only rows with top k votes")
    parser.add_argument("--global-top-k", type=int, default=None)
    parser.add_argument("--local-top-k", type=int, default=None)
    parser.add_argument("--print-offset-sd", action="store_true")
    parser.add_argument(
        "--repass-mm", type=float, nargs="*", default=[], help="partial later passes: moved more than T mm"
    )
    parser.add_argument(
        "--local-shifts", nargs="*", default=[], choices=["axes", "faces"], help="last pass shift-averaged"
    )
    parser.add_argument(
        "--test-time-mirror", nargs="*", default=[], choices=["local", "whole"], help="mirror-averaged too"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    source = ManifestCases(args.manifest, split=args.split)
    pipelines = {"global only": LandmarkPredictor.from_checkpoints(args.global_checkpoint)}
    pipelines["global only"].set_vote_top_k(args.global_top_k)
    # the benchmark's left-right mirror: array axis 0, its R / L fiducial pairs swapped
    flip = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "dataset" / "mni_afids.yaml").flip)
    mirror = MirrorAverage.from_dict(
        {"axes": flip["axes"], "pairs": flip["pairs"]}, pipelines["global only"].landmark_names
    )
    if not args.print_offset_sd:
        for k in args.top_k:
            pipelines[f"global only, top {k} cells"] = LandmarkPredictor.from_checkpoints(
                args.global_checkpoint
            )
            pipelines[f"global only, top {k} cells"].set_vote_top_k(k)
        for spec in args.local:
            for it in args.iterations:
                predictor = LandmarkPredictor.from_checkpoints(
                    args.global_checkpoint, spec.split(","), local_iterations=it
                )
                predictor.set_vote_top_k(args.global_top_k, args.local_top_k)
                pipelines[f"global -> {spec}" + (f" ({it} passes)" if it > 1 else "")] = predictor
                for t in args.repass_mm if it > 1 else []:
                    partial = LandmarkPredictor.from_checkpoints(
                        args.global_checkpoint, spec.split(","), local_iterations=it, local_repass_mm=t
                    )
                    partial.set_vote_top_k(args.global_top_k, args.local_top_k)
                    pipelines[f"global -> {spec} ({it} passes, later > {t:g} mm)"] = partial
                for shifts, scope in [(s, None) for s in args.local_shifts] + [
                    (s, m) for s in ["none", *args.local_shifts] for m in args.test_time_mirror
                ]:
                    averaged = LandmarkPredictor.from_checkpoints(
                        args.global_checkpoint, spec.split(","), local_iterations=it, local_shifts=shifts,
                        mirror=None if scope is None else dataclasses.replace(mirror, whole=scope == "whole"),
                    )  # fmt: skip
                    averaged.set_vote_top_k(args.global_top_k, args.local_top_k)
                    what = [f"last shift-averaged: {shifts}"] if shifts != "none" else []
                    what += [f"test-time mirror ({scope})"] if scope else []
                    pipelines[f"global -> {spec} ({it} passes, {', '.join(what)})"] = averaged
    errors: dict[str, list[np.ndarray]] = {name: [] for name in pipelines}
    offsets = []
    for i in range(len(source)):
        case = source[i]
        for name, predictor in pipelines.items():
            world = predictor.predict(case.image, case.affine).world
            errors[name].append(np.linalg.norm(world - case.landmarks_world, axis=1))
            if name == "global only":
                offsets.append(world - case.landmarks_world)
    off = np.concatenate(offsets)
    off = off[np.isfinite(off).all(1)]
    if args.print_offset_sd:
        print(f"{float(off.std(axis=0).mean()):.3f}")
        return
    print(f"{len(source)} {args.split} volumes, errors in mm\n")
    print("| Pipeline | MRE ± SD | Median | SDR 2 mm | SDR 4 mm |\n|:--|--:|--:|--:|--:|")
    for name, errs in errors.items():
        e = np.concatenate(errs)
        print(row(name, e[np.isfinite(e)]))
    sd, p95 = off.std(axis=0), np.percentile(np.abs(off), 95, axis=0)
    print(
        f"\nglobal stage error per axis: mean {np.round(off.mean(0), 2).tolist()} mm, SD {np.round(sd, 2).tolist()}"
        f" mm, 95th percentile of |error| {np.round(p95, 2).tolist()} mm"
    )


if __name__ == "__main__":
    main()

"""Compare pipelines (global only, one local stage, a coarse-to-fine cascade, repeated local passes) on the
ISBI 2015 validation images (the 10 training images held out by the dataset config; average ground truth).

    python experiments/isbi2015/validation.py GLOBAL.ckpt --local FIRST.ckpt --local COARSE.ckpt,FINE.ckpt \
        [--iterations 1 2] [--data ../shared/data/isbi2015-ceph] [--mirror] [--subset train] \
        [--test-time-mirror local whole] [--repass-mm 0.3 0.5] [--local-shifts axes] [--without-cell-pull] \
        [--perturb blur|sharpen|gamma|noise|cut]

Prints a Markdown table: MRE ± SD, median (IQR), SDR at 2 and 4 mm, per pipeline. ``--mirror`` runs on the
images mirrored left-right (references with them: a patient facing the other way). ``--repass-mm T``
adds, for every pipeline of more than one pass, the same with the later passes only for the landmarks
the pass before moved more than T mm (``local_repass_mm``), and prints the share of landmarks the second
pass re-ran (from the one-pass pipeline's shifts: give ``--iterations 1 ...``). ``--subset train``
runs on the 140 training images instead and also prints the global stage's error per axis (SD, and the
95th percentile of |error|), the spread a local stage meets (``data.local_offset_sd_mm``).
``--local-shifts`` adds each local pipeline with its last pass shift-averaged (``local_shifts``);
``--without-cell-pull`` adds each with its local decoders' stored pull toward the cell centres left in
(``cell_pull`` 0: landmark_lit/inference/cell_pull.py). ``--perturb`` runs on the images changed as another
scanner or site might deliver them (:data:`PERTURBATIONS`, the same change for every image; references
unchanged): a check of robustness to images unlike the training set, on validation images only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch

from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.settings import MirrorAverage

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2015-ceph"


PERTURBATIONS = {
    "blur": "Gaussian blur, sigma 0.4 mm (a softer detector)",
    "sharpen": "unsharp mask, sigma 1 mm, amount 1.5 (a console's edge enhancement)",
    "gamma": "intensities through t^0.6 on their range (another response curve)",
    "noise": "Gaussian noise, SD 5 % of the range (a lower dose)",
    "cut": "the posterior 20 % of the width (left) set to the minimum (a field of view that cuts the skull)",
}


def perturb(image: np.ndarray, name: str, spacing_mm: float, seed: int) -> np.ndarray:
    """One grey image (1, W, H) of ``spacing_mm`` pixels changed as :data:`PERTURBATIONS` ``[name]`` says."""
    x = image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if name in ("blur", "sharpen"):
        sigma = (0.4 if name == "blur" else 1.0) / spacing_mm
        blurred = scipy.ndimage.gaussian_filter(x[0], sigma, mode="nearest")[None]
        x = blurred if name == "blur" else x + 1.5 * (x - blurred)
    elif name == "gamma":
        x = ((x - lo) / (hi - lo)) ** 0.6 * (hi - lo) + lo
    elif name == "noise":
        x = x + np.random.default_rng(seed).normal(0.0, 0.05 * (hi - lo), x.shape).astype(np.float32)
    elif name == "cut":
        x = x.copy()
        x[:, : int(0.2 * x.shape[1])] = lo
    return x


def row(name: str, errors: np.ndarray) -> str:
    q1, med, q3 = np.percentile(errors, [25, 50, 75])
    return (
        f"| {name} | {errors.mean():.2f} ± {errors.std():.2f} | {med:.2f} ({q3 - q1:.2f}) "
        f"| {100 * np.mean(errors <= 2):.1f} % | {100 * np.mean(errors <= 4):.1f} % |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("global_checkpoint")
    parser.add_argument("--local", action="append", default=[], help="local checkpoint(s), comma-separated")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--val-count", type=int, default=10)
    parser.add_argument("--val-seed", type=int, default=0)
    parser.add_argument("--mirror", action="store_true", help="mirror images and references left-right")
    parser.add_argument(
        "--test-time-mirror",
        nargs="*",
        default=[],
        choices=["local", "whole"],
        help="also each local pipeline averaged over the mirror image: local sub-images only, or whole",
    )
    parser.add_argument("--subset", default="val", choices=["val", "train"])
    parser.add_argument(
        "--repass-mm", type=float, nargs="*", default=[], help="partial later passes: moved more than T mm"
    )
    parser.add_argument(
        "--print-offset-sd",
        action="store_true",
        help="print only the global stage's mean per-axis error SD (mm)",
    )
    parser.add_argument(
        "--top-k", type=int, nargs="*", default=[], help="also decode the global stage from its top k cells"
    )
    parser.add_argument("--global-top-k", type=int, default=None, help="global top k for every pipeline")
    parser.add_argument(
        "--local-top-k",
        type=int,
        nargs="*",
        default=[0],
        help="local decoders' top k, each a row (0: as stored)",
    )
    parser.add_argument(
        "--local-shifts", nargs="*", default=[], choices=["axes", "faces"],
        help="also each local pipeline with its last pass averaged over sub-images moved half a cell",
    )  # fmt: skip
    parser.add_argument(
        "--without-cell-pull",
        action="store_true",
        help="also each local pipeline with its decoders' stored pull toward the cell centres left in",
    )
    parser.add_argument("--perturb", choices=sorted(PERTURBATIONS), help="run on changed images")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    source = ISBI2015Cephalograms(
        args.data, split="train", subset=args.subset, val_count=args.val_count, val_seed=args.val_seed
    )
    pipelines = {"global only": LandmarkPredictor.from_checkpoints(args.global_checkpoint)}
    one_pass: dict[str, LandmarkPredictor] = {}  # label -> its one-pass pipeline
    repass: dict[str, tuple[str, float]] = {}  # partial pipeline -> (its one-pass label, threshold)
    pipelines["global only"].set_vote_top_k(args.global_top_k)
    for k in [] if args.print_offset_sd else args.top_k:
        predictor = LandmarkPredictor.from_checkpoints(args.global_checkpoint)
        predictor.set_vote_top_k(k)
        pipelines[f"global only, top {k} cells"] = predictor
    for spec in [] if args.print_offset_sd else args.local:
        paths = spec.split(",")
        for it in args.iterations:
            for local_k in args.local_top_k:
                predictor = LandmarkPredictor.from_checkpoints(
                    args.global_checkpoint, paths, local_iterations=it
                )
                predictor.set_vote_top_k(args.global_top_k, local_k or None)
                label = " -> ".join(
                    f"local {s.meta.spacing:g} mm, {'x'.join(map(str, s.meta.crop_size))}"
                    for s in predictor.local_stages
                )
                if len(args.local) > 1:  # several local specs may describe alike: name their files
                    label += f" [{spec}]"
                extra = (f" (each {it} passes)" if it > 1 else "") + (
                    f", local top {local_k}" if local_k else ""
                )
                pipelines[f"global -> {label}{extra}"] = predictor
                if it == 1:
                    one_pass[f"global -> {label}"] = predictor
                for t in args.repass_mm if it > 1 else []:
                    partial = LandmarkPredictor.from_checkpoints(
                        args.global_checkpoint, paths, local_iterations=it, local_repass_mm=t
                    )
                    partial.set_vote_top_k(args.global_top_k, local_k or None)
                    name = f"global -> {label}{extra}, later passes if moved > {t:g} mm"
                    pipelines[name] = partial
                    repass[name] = (f"global -> {label}", t)
                for scope in args.test_time_mirror:
                    mirrored = LandmarkPredictor.from_checkpoints(
                        args.global_checkpoint,
                        paths,
                        local_iterations=it,
                        mirror=MirrorAverage((0,), (), scope == "whole"),
                    )
                    mirrored.set_vote_top_k(args.global_top_k, local_k or None)
                    pipelines[f"global -> {label}{extra}, test-time mirror ({scope})"] = mirrored
    for name, predictor in list(pipelines.items()):  # variants of every local pipeline
        if not predictor.local_stages or "test-time mirror" in name or "later passes" in name:
            continue
        for shifts in args.local_shifts:
            moved = LandmarkPredictor(predictor.global_stage, predictor.local_stages, predictor.settings)
            pipelines[f"{name}, last pass shift-averaged ({shifts})"] = moved.configure(local_shifts=shifts)
        if args.without_cell_pull:
            plain = [s.with_decoder(cell_pull=0.0) for s in predictor.local_stages]
            for shifts in ["none", *args.local_shifts]:
                p = LandmarkPredictor(predictor.global_stage, plain, predictor.settings, local_shifts=shifts)
                label = "" if shifts == "none" else f", last pass shift-averaged ({shifts})"
                pipelines[f"{name}{label}, pull toward the cell centres left in"] = p
    errors: dict[str, list[np.ndarray]] = {name: [] for name in pipelines}
    first_shifts: dict[str, list[np.ndarray]] = {name: [] for name in pipelines}
    global_offsets = []
    for i in range(len(source)):
        case = source[i]
        image, reference = case.image, case.landmarks_world
        if args.mirror:  # array axis 0 is x: pixel x -> (width - 1) - x, world = 0.1 mm x pixel
            image = np.ascontiguousarray(image[:, ::-1])
            reference = reference.copy()
            reference[:, 0] = (image.shape[1] - 1) * case.affine[0, 0] - reference[:, 0]
        if args.perturb:
            image = perturb(image, args.perturb, float(case.affine[0, 0]), seed=i)
        for name, predictor in pipelines.items():
            prediction = predictor.predict(image, case.affine)
            world = prediction.world
            errors[name].append(np.linalg.norm(world - reference, axis=1))
            first_shifts[name].append(prediction.shift_mm)
            if name == "global only":
                global_offsets.append(world - reference)
    off = np.concatenate(global_offsets)
    if args.print_offset_sd:
        print(f"{float(off.std(axis=0).mean()):.3f}")
        return
    subset = "validation" if args.subset == "val" else "training"
    mirrored = ", mirrored left-right" if args.mirror else ""
    mirrored += f", perturbed: {PERTURBATIONS[args.perturb]}" if args.perturb else ""
    print(
        f"{len(source)} {subset} images{mirrored} ({', '.join(source.ids)}), average ground truth, errors in mm\n"
    )
    print("| Pipeline | MRE ± SD | Median (IQR) | SDR 2 mm | SDR 4 mm |\n|:--|--:|--:|--:|--:|")
    for name, errs in errors.items():
        print(row(name, np.concatenate(errs)))
    for name, (base, t) in repass.items():
        if base in one_pass:
            names = [n for n, p in pipelines.items() if p is one_pass[base]]
            share = np.mean(np.concatenate(first_shifts[names[0]]) > t)
            print(f"\n{name}: the second pass re-ran {100 * share:.1f} % of the landmarks")
    if args.subset == "train":
        sd = off.std(axis=0)
        p95 = np.percentile(np.abs(off), 95, axis=0)
        print(
            f"\nglobal stage error per axis (x, y): mean {np.round(off.mean(0), 2).tolist()} mm, "
            f"SD {np.round(sd, 2).tolist()} mm, 95th percentile of |error| {np.round(p95, 2).tolist()} mm"
        )


if __name__ == "__main__":
    main()

"""Calibration on changed copies of the validation images: more failures to fit on? (issue 21)

The ISBI validation images hold 2-4 errors above 4 mm, too few to place a threshold. This asks whether
copies of them, changed the way other images differ, give the calibration more to learn from:

1. ``rows``: one bundle predicts each validation image as it is, with each of
   ``experiments/isbi2015/validation.py``'s PERTURBATIONS (blur, unsharp mask, response curve, noise, a
   cut field of view), and ``--warps`` times randomly warped (rotation up to 10 degrees, each axis scaled up
   to 10 %; the references follow the warp: ``landmark_lit.data.augment.Augmentation``); cues, errors,
   landmark names, images and conditions go to one ``.npz``. ``--mirror local`` runs the bundle with its
   test-time mirror (the mirror gap becomes a cue).
2. ``compare``: calibrations fitted on the clean rows only or on the clean rows and the copies, each fitted
   on nine images' rows and scored on the tenth image's (leave one image out, pooled): the figures on the
   clean held-out rows and on all held-out rows, and the share that must be flagged to catch 80 % of the
   failures (how well the score ranks at the operating point). Nothing here sees Test1.

    python experiments/confidence/validation_copies.py rows BUNDLE.pt --out val_rows.npz [--warps 8]
    python experiments/confidence/validation_copies.py compare val_rows.npz
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "isbi2015"))
from validation import DEFAULT_DATA, PERTURBATIONS, perturb  # noqa: E402

from landmark_lit.confidence import confidence_figures, fit_calibration  # noqa: E402
from landmark_lit.data.augment import Augmentation  # noqa: E402
from landmark_lit.data.isbi2015 import ISBI2015Cephalograms  # noqa: E402
from landmark_lit.inference.predictor import LandmarkPredictor  # noqa: E402
from landmark_lit.inference.settings import MirrorAverage  # noqa: E402

TRAINING = {
    "clean": ("clean",),
    "clean + perturbed": ("clean", "perturbed"),
    "clean + warped": ("clean", "warped"),
}
TRAINING["clean + both"] = ("clean", "perturbed", "warped")


def rows(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    predictor = LandmarkPredictor.from_bundle(args.bundle)
    predictor._warned = True  # its stored calibration is not used here
    if args.mirror != "none":
        predictor.configure(mirror=MirrorAverage(axes=(0,), pairs=(), whole=args.mirror == "whole"))
    source = ISBI2015Cephalograms(args.data, split="train", subset="val", val_count=10, val_seed=0)
    warp = Augmentation(prob=1.0, rotate_deg=10.0, scale=0.1, scale_axes=None, intensity_prob=0.0)
    out: dict[str, list] = {k: [] for k in ("features", "errors", "names", "cases", "conditions")}

    def add(image: np.ndarray, affine: np.ndarray, ref: np.ndarray, case_id: str, condition: str) -> None:
        p = predictor.predict(image, affine)
        out["features"].append(p.features)
        out["errors"].append(np.linalg.norm(p.world - ref, axis=1))
        out["names"] += predictor.landmark_names
        out["cases"] += [case_id] * len(ref)
        out["conditions"] += [condition] * len(ref)

    for i in range(len(source)):
        case = source[i]
        ref = np.asarray(case.landmarks_world, np.float64)
        spacing, origin = np.diag(case.affine)[:2], case.affine[:2, 2]
        add(case.image, case.affine, ref, case.case_id, "clean")
        for j, name in enumerate(sorted(PERTURBATIONS)):
            add(
                perturb(case.image, name, float(spacing[0]), 100 * i + j),
                case.affine,
                ref,
                case.case_id,
                name,
            )
        voxels = torch.as_tensor((ref - origin) / spacing, dtype=torch.float32)
        for w in range(args.warps):
            image, moved = warp(torch.as_tensor(case.image, dtype=torch.float32), voxels)
            moved_ref = moved.double().numpy() * spacing + origin
            add(image.numpy(), case.affine, moved_ref, case.case_id, f"warp{w}")
        print(f"{case.case_id} done", flush=True)
    np.savez(
        args.out,
        **{k: np.concatenate(v) if k in ("features", "errors") else np.asarray(v) for k, v in out.items()},
    )


def kind(conditions: np.ndarray) -> np.ndarray:
    """clean / perturbed / warped per row."""
    warped = np.char.startswith(conditions.astype(str), "warp")
    return np.where(conditions == "clean", "clean", np.where(warped, "warped", "perturbed"))


def share_for_goal(err: np.ndarray, conf: np.ndarray, failure_mm: float, goal: float = 0.8) -> float:
    """The share of landmarks that must be flagged (least confident first) to catch ``goal`` of the failures."""
    caught = np.cumsum(err[np.argsort(conf)] > failure_mm) / max(int((err > failure_mm).sum()), 1)
    return float((np.searchsorted(caught, goal - 1e-9) + 1) / len(err))


def compare(args: argparse.Namespace) -> None:
    data = np.load(args.rows, allow_pickle=False)
    x, err, names, cases = data["features"], data["errors"], data["names"], data["cases"]
    kinds = kind(data["conditions"])
    failed = err > args.failure_mm
    for k in ("clean", "perturbed", "warped"):
        m = kinds == k
        print(
            f"{k}: {m.sum()} landmarks, MRE {err[m].mean():.3f} mm, {failed[m].sum()} > {args.failure_mm:g} mm"
        )
    distinct = Counter(zip(cases[failed], names[failed], strict=True))
    print(
        f"failures: {failed.sum()} rows, {len(distinct)} distinct (image, landmark): {distinct.most_common(6)}"
    )
    for label, used in TRAINING.items():
        conf, flag, radius = np.full(len(err), np.nan), np.zeros(len(err), bool), np.full(len(err), np.nan)
        for case in np.unique(cases):
            fit_rows = np.isin(kinds, used) & (cases != case)
            cal = fit_calibration(
                x[fit_rows],
                err[fit_rows],
                names[fit_rows],
                failure_mm=args.failure_mm,
                failure_model=args.model,
            )
            held = cases == case
            conf[held] = cal.confidence(x[held], names[held])
            flag[held] = conf[held] < cal.threshold
            radius[held] = cal.radius_mm(x[held], names[held])
        for on, m in (("clean", kinds == "clean"), ("all", np.ones(len(err), bool))):
            f = confidence_figures(err[m], conf[m], flag[m], radius[m], args.failure_mm)
            print(
                f"fitted on {label:18s} scored on {on:5s} AUROC>2 {f['auroc_2mm']:.3f} "
                f"AUROC>{args.failure_mm:g} {f[f'auroc_{args.failure_mm:g}mm']:.3f} "
                f"flagged {100 * f['share_flagged']:.1f} % caught {f['failures_caught']}/{f['failures']} "
                f"coverage {100 * f['radius_coverage']:.1f} % (median {f['radius_median_mm']:.2f} mm) "
                f"to catch 80 %: {100 * share_for_goal(err[m], conf[m], args.failure_mm):.1f} %",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rows")
    r.add_argument("bundle")
    r.add_argument("--out", required=True)
    r.add_argument("--data", default=str(DEFAULT_DATA))
    r.add_argument("--warps", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--mirror", choices=["none", "local", "whole"], default="none")
    c = sub.add_parser("compare")
    c.add_argument("rows")
    c.add_argument("--failure-mm", type=float, default=4.0)
    c.add_argument("--model", default="residual", choices=["residual", "logistic", "auto"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"rows": rows, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()

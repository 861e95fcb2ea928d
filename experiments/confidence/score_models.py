"""Choosing the confidence score on cross-fitted validation landmarks (issue 21).

1. ``rows``: every fold bundle of ``experiments/isbi2015/cross_fit.sh`` predicts the training images held
   out of it (``dataset.folds=K dataset.fold=k``), run as the chosen pipeline runs (two local passes, the
   second for landmarks moved > ``--repass-mm``); the cues, errors, landmark names and cases go to one
   ``.npz``.
2. ``compare``: each way of scoring (``landmark_lit.confidence.fit_calibration`` with its options) is fitted
   on all images but one group and scored on the held-out group (grouped by image, so no image is on both
   sides), and the pooled held-out figures are printed: AUROC for errors above 2 mm and the failure
   distance, share flagged, failures caught, the radius' coverage and median. Nothing here sees Test1.

    python experiments/confidence/score_models.py rows OUT/fold0.pt OUT/fold1.pt OUT/fold2.pt --out rows.npz
    python experiments/confidence/score_models.py compare rows.npz [--groups 10]
    python experiments/confidence/score_models.py compare rows.npz --seed-rows rows_seed1.npz [--average]

``--seed-rows``: rows of the same images from pipelines trained alike but for a seed (a second local stage);
the distance between the two answers (the ensemble's disagreement) becomes a cue, and with ``--average``
the errors scored are those of the two answers' mean.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from landmark_lit.confidence import FEATURES, confidence_figures, fit_calibration
from landmark_lit.config import register_resolvers
from landmark_lit.inference.calibrate import calibration_source
from landmark_lit.inference.predictor import LandmarkPredictor


def rows(args: argparse.Namespace) -> None:
    register_resolvers()
    feats, errs, names, cases, world, refs = [], [], [], [], [], []
    for k, path in enumerate(args.bundles):
        predictor = LandmarkPredictor.from_bundle(path)
        predictor.configure(local_iterations=args.iterations, local_repass_mm=args.repass_mm)
        predictor._warned = True  # uncalibrated by design
        source, _, what = calibration_source(args.dataset, None, "val", args.folds or len(args.bundles), k)
        print(f"fold {k}: {path} on {what} ({len(source)} images)", flush=True)
        for i in range(len(source)):
            case = source[i]
            p = predictor.predict(case.image, case.affine)
            ref = np.asarray(case.landmarks_world, np.float64)
            feats.append(p.features)
            errs.append(np.linalg.norm(p.world - ref, axis=1))
            world.append(p.world)
            refs.append(ref)
            names += predictor.landmark_names
            cases += [f"{k}:{i}"] * len(predictor.landmark_names)
    np.savez(
        args.out,
        features=np.concatenate(feats),
        errors=np.concatenate(errs),
        names=np.asarray(names),
        cases=np.asarray(cases),
        world=np.concatenate(world),
        references=np.concatenate(refs),
    )
    e = np.concatenate(errs)
    print(
        f"{len(e)} landmarks, MRE {np.nanmean(e):.3f} mm, {int((e > args.failure_mm).sum())} > {args.failure_mm} mm"
    )


VARIANTS = {
    "residual, expected failures": {"failure_model": "residual", "threshold_from": "expected"},
    "residual, counted failures": {"failure_model": "residual", "threshold_from": "counted"},
    "logistic, expected failures": {"failure_model": "logistic", "threshold_from": "expected"},
    "logistic, counted failures": {"failure_model": "logistic", "threshold_from": "counted"},
}


def _align(shape: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, float]:
    """``shape`` (K, 2) mapped onto ``mean`` (centred) by the best similarity, and that map's scale."""
    a = shape - shape.mean(axis=0)
    u, sv, vt = np.linalg.svd(a.T @ mean)
    rot = u @ vt
    scale = sv.sum() / (a**2).sum()
    return scale * a @ rot, scale


def shape_residuals(world: np.ndarray, refs: np.ndarray, folds: np.ndarray, k: int = 19) -> np.ndarray:
    """Per landmark, how far (mm) the answer lies from where the image's other answers put it: a linear
    model of each landmark from the other landmarks, similarity-aligned, fitted on the references of the
    images of the other groups ``folds`` (no image's own annotation is used for it)."""
    shapes, refs_, fold_of = world.reshape(-1, k, 2), refs.reshape(-1, k, 2), folds.reshape(-1, k)[:, 0]
    out = np.zeros(shapes.shape[:2])
    for f in np.unique(fold_of):
        train = refs_[fold_of != f]
        mean = train[0] - train[0].mean(axis=0)
        for _ in range(3):  # generalised Procrustes: align to the mean, renew it
            aligned = np.stack([_align(t, mean)[0] for t in train])
            mean = aligned.mean(axis=0)
        flat = aligned.reshape(len(aligned), -1)
        for i in np.flatnonzero(fold_of == f):
            shape, scale = _align(shapes[i], mean)
            for j in range(k):
                cols = [c for c in range(2 * k) if c // 2 != j]
                a = np.concatenate([flat[:, cols], np.ones((len(flat), 1))], axis=1)
                coef = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ flat[:, 2 * j : 2 * j + 2])
                guess = np.append(shape.reshape(-1)[cols], 1.0) @ coef
                out[i, j] = np.linalg.norm(guess - shape[j]) / scale
    return out.reshape(-1)


def _seed_cue(data: dict, other: dict, x: np.ndarray, average: bool) -> tuple[np.ndarray, np.ndarray]:
    """The cues with the two seeds' disagreement (mm, logged after adding 0.3) in the mirror gap's place,
    and the errors of the first rows' answers (``average``: of the two answers' mean)."""
    if not (np.array_equal(data["cases"], other["cases"]) and np.array_equal(data["names"], other["names"])):
        raise SystemExit("--seed-rows: the two row files hold different images or landmarks")
    x = x.copy()
    x[:, -1] = np.log(np.linalg.norm(data["world"] - other["world"], axis=1) + 0.3)
    if not average:
        return x, data["errors"]
    mean = (data["world"] + other["world"]) / 2
    return x, np.linalg.norm(mean - data["references"], axis=1)


def compare(args: argparse.Namespace) -> None:
    data = np.load(args.rows, allow_pickle=False)
    x, err, names, cases = data["features"], data["errors"], data["names"], data["cases"]
    if args.shape_cue:  # in the place of the mirror gap, which is constant without a test-time mirror
        unique = {c: i % 5 for i, c in enumerate(dict.fromkeys(cases))}
        folds = np.array([unique[c] for c in cases])  # the shape model of an image: the others' references
        x = x.copy()
        x[:, -1] = np.log(shape_residuals(data["world"], data["references"], folds) + 0.3)
    if args.image_cue:  # the image's mean of one cue (its difficulty), in the mirror gap's place
        col = FEATURES.index(args.image_cue)
        _, image = np.unique(cases, return_inverse=True)
        x = x.copy()
        x[:, -1] = (np.bincount(image, x[:, col]) / np.bincount(image))[image]
    if args.seed_rows:
        x, err = _seed_cue(data, np.load(args.seed_rows, allow_pickle=False), x, args.average)
    unique = np.unique(cases)
    rng = np.random.default_rng(0)
    group_of = dict(zip(unique, rng.permutation(len(unique)) % args.groups, strict=True))
    group = np.array([group_of[c] for c in cases])
    out = {}
    for label, options in VARIANTS.items():
        conf = np.full(len(err), np.nan)
        flag = np.zeros(len(err), bool)
        radius = np.full(len(err), np.nan)
        for g in range(args.groups):
            train, test = group != g, group == g
            cal = fit_calibration(x[train], err[train], names[train], failure_mm=args.failure_mm, **options)
            conf[test] = cal.confidence(x[test], names[test])
            flag[test] = conf[test] < cal.threshold
            radius[test] = cal.radius_mm(x[test], names[test])
        figures = confidence_figures(err, conf, flag, radius, args.failure_mm)
        out[label] = figures
        print(
            f"{label:40s} AUROC>2 {figures['auroc_2mm']:.3f} AUROC>{args.failure_mm:g} "
            f"{figures[f'auroc_{args.failure_mm:g}mm']:.3f} flagged {100 * figures['share_flagged']:.1f} % "
            f"caught {figures['failures_caught']}/{figures['failures']} "
            f"coverage {100 * figures['radius_coverage']:.1f} % median {figures['radius_median_mm']:.2f} mm",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rows")
    r.add_argument("bundles", nargs="+")
    r.add_argument("--dataset", default="isbi2015")
    r.add_argument("--folds", type=int, help="the bundles' number of folds (default: one bundle per fold)")
    r.add_argument("--iterations", type=int, default=2)
    r.add_argument("--repass-mm", type=float, default=0.5)
    r.add_argument("--failure-mm", type=float, default=4.0)
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("rows")
    c.add_argument("--groups", type=int, default=10)
    c.add_argument("--failure-mm", type=float, default=4.0)
    c.add_argument("--json")
    c.add_argument("--shape-cue", action="store_true", help="add the shape-model residual as a cue")
    c.add_argument("--image-cue", choices=FEATURES[:-1], help="add the image's mean of this cue as a cue")
    c.add_argument("--seed-rows", help="rows of a second seed: their disagreement as a cue")
    c.add_argument("--average", action="store_true", help="with --seed-rows: score the two answers' mean")
    args = parser.parse_args()
    {"rows": rows, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()

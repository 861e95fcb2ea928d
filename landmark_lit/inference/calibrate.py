"""Fitting a model's :class:`~landmark_lit.confidence.Calibration` on annotated validation images.

- :func:`calibrate_predictor`: a whole pipeline (what ``landmark-export`` stores in a bundle);
- :func:`calibrate_cross_fitted`: one calibration from the pipelines of K folds, each on its held-out cases;
- :func:`calibrate_local_stage`: one local stage alone, started from the reference landmarks moved by a
  normal offset (the global stage's error it was trained for), as the end of its training can;
- :func:`calibrate_checkpoint`: the end of ``landmark-train``: the best checkpoint's stage calibrated and
  the description in its checkpoint files rewritten (atomically).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from landmark_lit.confidence import (
    DEFAULT_COVERAGE,
    DEFAULT_FAILURE_MM,
    DEFAULT_GOAL,
    Calibration,
    fit_calibration,
    landmark_features,
)
from landmark_lit.data.cases import CaseSource
from landmark_lit.data.transforms import match_channels
from landmark_lit.inference.passes import StageEstimate, refine_locally
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import Stage, load_stage, torch_load
from landmark_lit.utils import atomic_path

FIT_OPTIONS = ("failure_model", "threshold_from")  # fit_calibration's choices of scoring, by name

log = logging.getLogger(__name__)


def _fit(
    rows: list[tuple[np.ndarray, np.ndarray, list[str]]], settings: dict, fitted_on: dict
) -> Calibration:
    features = np.concatenate([r[0] for r in rows])
    errors = np.concatenate([r[1] for r in rows])
    names = [n for r in rows for n in r[2]]
    return fit_calibration(features, errors, names, fitted_on=fitted_on, **settings)


def _settings(failure_mm: float, goal: float, coverage: float, options: dict[str, Any]) -> dict:
    """fit_calibration's settings; ``options``: its ``failure_model`` / ``threshold_from`` (None: default)."""
    unknown = sorted(set(options) - set(FIT_OPTIONS))
    if unknown:
        raise ValueError(f"calibration options {unknown} unknown (known: {list(FIT_OPTIONS)})")
    out = {"failure_mm": float(failure_mm), "goal": float(goal), "coverage": float(coverage)}
    return out | {k: str(v) for k, v in options.items() if v is not None}


def calibrate_predictor(
    predictor: LandmarkPredictor,
    source: CaseSource,
    failure_mm: float = DEFAULT_FAILURE_MM,
    goal: float = DEFAULT_GOAL,
    coverage: float = DEFAULT_COVERAGE,
    description: str = "",
    **options: Any,
) -> Calibration:
    """The calibration of the whole pipeline ``predictor`` on the annotated cases of ``source``
    (``options``: :data:`FIT_OPTIONS`)."""
    return calibrate_cross_fitted([(predictor, source)], failure_mm, goal, coverage, description, **options)


def calibrate_cross_fitted(
    folds: Sequence[tuple[LandmarkPredictor, CaseSource]],
    failure_mm: float = DEFAULT_FAILURE_MM,
    goal: float = DEFAULT_GOAL,
    coverage: float = DEFAULT_COVERAGE,
    description: str = "",
    **options: Any,
) -> Calibration:
    """One calibration from several pipelines, each predicting annotated cases it was not trained on.

    Cross-fitting: the training images dealt into K folds, the pipeline of fold k trained on the others
    predicts fold k, and one calibration is fitted on all of them, so every training image's landmarks
    count (K = 5 on ISBI 2015: 2850 landmarks against the 190 of the 10 validation images). The pipelines
    must run alike (the same :meth:`LandmarkPredictor.pipeline`) and name the same landmarks; a single
    (predictor, validation source) pair is :func:`calibrate_predictor`."""
    if not folds:
        raise ValueError("calibrate_cross_fitted needs at least one (predictor, source) pair")
    pipeline = folds[0][0].pipeline()
    rows, cases = [], 0
    for k, (predictor, source) in enumerate(folds):
        if predictor.pipeline() != pipeline:
            raise ValueError(f"calibration fold {k} runs as {predictor.pipeline()}, fold 0 as {pipeline}")
        rows += _pipeline_rows(predictor, source)
        cases += len(source)
    fitted_on = {"pipeline": pipeline, "cases": cases, "data": description}
    if len(folds) > 1:
        fitted_on["cross_fitted_folds"] = len(folds)
    return _fit(rows, _settings(failure_mm, goal, coverage, options), fitted_on)


def _pipeline_rows(
    predictor: LandmarkPredictor, source: CaseSource
) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(cues, errors, names) of every case of ``source`` as the whole pipeline ``predictor`` predicts it."""
    if list(source.landmark_names) != predictor.landmark_names:
        raise ValueError(
            f"calibration data landmarks {list(source.landmark_names)} differ from the model's "
            f"{predictor.landmark_names}"
        )
    rows = []
    warned, predictor._warned = predictor._warned, True  # the calibration it lacks is being made
    try:
        for i in range(len(source)):
            case = source[i]
            p = predictor.predict(case.image, case.affine)
            err = np.linalg.norm(p.world - np.asarray(case.landmarks_world, np.float64), axis=1)
            rows.append((p.features, err, predictor.landmark_names))
    finally:
        predictor._warned = warned
    return rows


def calibrate_local_stage(
    stage: Stage,
    source: CaseSource,
    offset_sd_mm: float | Sequence[float],
    iterations: int = 1,
    failure_mm: float = DEFAULT_FAILURE_MM,
    goal: float = DEFAULT_GOAL,
    coverage: float = DEFAULT_COVERAGE,
    seed: int = 0,
    description: str = "",
    **options: Any,
) -> Calibration:
    """A local stage's calibration, each pass started ``offset_sd_mm`` (normal, per axis) off the reference
    landmarks of ``source`` (fixed ``seed``): the stage as it runs after a global stage of that error."""
    rng = np.random.default_rng(seed)
    rows = []
    spacing = float(np.mean(stage.meta.spacing))
    names = list(stage.meta.landmark_names)
    for i in range(len(source)):
        case = source[i]
        ref = np.asarray(case.landmarks_world, np.float64)
        d = ref.shape[1]
        starts = ref + rng.normal(size=ref.shape) * np.broadcast_to(np.asarray(offset_sd_mm, float), (d,))
        centre = case.affine[:d, :d] @ (np.asarray(case.image.shape[1:]) / 2) + case.affine[:d, d]
        starts = np.where(np.isfinite(starts), starts, centre)  # missing references: any start
        image = match_channels(
            torch.as_tensor(case.image, dtype=torch.float32), stage.meta.net["in_channels"]
        )
        est, shift = refine_locally(stage, image, case.affine, starts, iterations)
        start = StageEstimate(starts, np.zeros(len(ref)), np.ones(len(ref)))
        features = landmark_features(
            est.spread_mm,
            est.posterior,
            shift,
            np.linalg.norm(est.world - start.world, axis=1),
            start.spread_mm,
            start.posterior,
            None,
            spacing,
        )
        rows.append((features, np.linalg.norm(est.world - ref, axis=1), names))
    pipeline = {"local_stages": 1, "local_iterations": int(iterations), "mirror": None}
    fitted_on = {
        "pipeline": pipeline,
        "cases": len(source),
        "data": description,
        "simulated_global_sd_mm": [float(v) for v in np.atleast_1d(offset_sd_mm)],
    }
    return _fit(rows, _settings(failure_mm, goal, coverage, options), fitted_on)


def store_calibration(
    checkpoint: str | os.PathLike,
    calibration: Calibration | None,
    decoder: dict[str, Any] | None = None,
    output: str | os.PathLike | None = None,
) -> None:
    """Write ``calibration`` (and a ``decoder`` description, when given) into the stage description of a
    ``landmark-train`` checkpoint, in place or as ``output`` (atomically)."""
    ckpt = torch_load(checkpoint)
    changes = {} if calibration is None else {"calibration": calibration.to_dict()}
    changes |= {} if decoder is None else {"decoder": dict(decoder)}
    ckpt["landmark_lit"] = {**ckpt["landmark_lit"], **changes}
    with atomic_path(output or checkpoint, suffix=".ckpt") as tmp:
        torch.save(ckpt, tmp)


def with_fitted_cell_pull(stage: Stage, source: CaseSource) -> Stage:
    """A local vote stage with the pull of its answers toward its cell centres fitted on ``source``
    (:func:`~landmark_lit.inference.cell_pull.fit_cell_pull`, from starts half a cell off the references
    per axis, where a last pass starts); other stages as they are."""
    from landmark_lit.inference.cell_pull import fit_cell_pull

    if stage.meta.stage != "local" or not hasattr(stage.decoder, "cell_pull"):
        return stage
    sd_mm = np.asarray(stage.meta.spacing, np.float64) * int(stage.net.stride) / 2
    amplitude = fit_cell_pull(stage, source, sd_mm)
    log.info("%s: answers pulled %.3f working voxels toward the cell centres; removed", stage.path, amplitude)
    return stage.with_decoder(cell_pull=amplitude)


def calibrate_checkpoint(
    best: str | os.PathLike,
    also: Sequence[str | os.PathLike],
    source: CaseSource,
    settings: dict[str, Any],
    offset_sd_mm: float | Sequence[float] | None = None,
    description: str = "",
) -> Calibration:
    """Calibrate the stage of checkpoint ``best`` on ``source`` (a local stage from starts ``offset_sd_mm``
    off the references, default 0.5 mm) and store the calibration in ``best`` and the files ``also``.
    With ``settings["cell_pull"]``, a local vote stage's pull toward its cell centres is fitted first
    (:func:`with_fitted_cell_pull`), stored in its decoder, and the calibration made with it removed."""
    stage = load_stage(best)
    decoder = None
    if settings.get("cell_pull"):
        stage = with_fitted_cell_pull(stage, source)
        decoder = stage.meta.decoder
    goal = {k: float(settings[k]) for k in ("failure_mm", "goal", "coverage") if settings.get(k) is not None}
    goal |= {k: settings[k] for k in FIT_OPTIONS if settings.get(k) is not None}
    if stage.meta.stage == "global":
        cal = calibrate_predictor(LandmarkPredictor(stage), source, description=description, **goal)
    else:
        sd = 0.5 if offset_sd_mm is None else offset_sd_mm
        iterations = int(settings.get("local_iterations") or 1)
        cal = calibrate_local_stage(stage, source, sd, iterations, description=description, **goal)
    for path in dict.fromkeys([str(best), *map(str, also)]):
        if path and os.path.isfile(path):
            store_calibration(path, cal, decoder)
    v = cal.validation
    log.info(
        "calibration on %d validation landmarks: threshold %.3f flags %.1f %% and catches %s of %d errors "
        "> %g mm; %g %% radius covers %.1f %% (median %.2f mm)",
        v["n_landmarks"],
        cal.threshold,
        100 * v["share_flagged"],
        v["failures_caught"],
        v["failures"],
        cal.failure_mm,
        100 * cal.coverage,
        100 * v["radius_coverage"],
        v["radius_median_mm"],
    )
    return cal


def calibration_source(
    dataset: str | None = None,
    manifest: str | os.PathLike | None = None,
    split: str = "val",
    folds: int = 0,
    fold: int = 0,
) -> tuple[CaseSource, float | None, str]:
    """The annotated cases to calibrate on: split ``split`` (``train``, ``val`` or ``test`` node) of the
    dataset config ``dataset`` (conf/dataset/<name>.yaml; with ``folds``, its ``dataset.folds`` and
    ``dataset.fold`` set: the held-out images of one cross-fitting fold), or the ``split`` rows of a
    manifest. Returns the source, the dataset's ``failure_mm`` (None if it states none) and a description."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from landmark_lit.config import CONFIG_DIR, register_resolvers

    if bool(dataset) == bool(manifest):
        raise ValueError("calibrate on either calibration_dataset=NAME or calibration_manifest=PATH")
    if manifest:
        from landmark_lit.data.manifest import ManifestCases

        return ManifestCases(manifest, split=split), None, f"{manifest} split {split}"
    path = os.path.join(CONFIG_DIR, "dataset", f"{dataset}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith(".yaml"))
        raise ValueError(f"calibration_dataset: unknown dataset {dataset!r} (one of {names})")
    register_resolvers()  # paths.data_dir: ${data_root:}
    paths = OmegaConf.load(os.path.join(CONFIG_DIR, "paths", "default.yaml"))
    cfg = OmegaConf.create({"paths": {"data_dir": paths.data_dir}, "dataset": OmegaConf.load(path)})
    if split not in cfg.dataset or cfg.dataset[split] is None:
        raise ValueError(f"calibration_split: dataset {dataset!r} has no {split!r} split")
    what = f"dataset {dataset} split {split}"
    if folds:
        if "folds" not in cfg.dataset:
            raise ValueError(f"calibration_folds: dataset {dataset!r} has no cross-fitting folds")
        cfg.dataset.folds, cfg.dataset.fold = int(folds), int(fold)
        what += f" fold {fold} of {folds}"
    failure = OmegaConf.select(cfg, "dataset.failure_mm", default=None)
    source = instantiate(cfg.dataset[split])
    return source, None if failure is None else float(failure), what

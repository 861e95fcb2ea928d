"""Each landmark's confidence, flag and uncertainty radius from the cues the pipeline already has: a
calibration's (:mod:`landmark_lit.confidence`) or, without one, :func:`landmark_confidence`."""

from __future__ import annotations

from typing import Any

import numpy as np

from landmark_lit.confidence import Calibration, landmark_features
from landmark_lit.inference.passes import StageEstimate
from landmark_lit.inference.settings import DEFAULT_CONFIDENCE_SCALE


def landmark_confidence(
    posterior: np.ndarray,
    spread_mm: np.ndarray,
    shift_mm: np.ndarray,
    spacing_mm: float,
    scale: float = DEFAULT_CONFIDENCE_SCALE,
) -> np.ndarray:
    """An uncalibrated model's confidence in [0, 1]: ``posterior * exp(-(spread_mm + shift_mm) / (scale *
    spacing_mm))``: the last stage's highest cell posterior, damped by how far its votes scatter and how far
    its last local pass still moved the landmark, on the scale of ``scale`` working voxels (``spacing_mm``).
    It ranks landmarks; it is no probability (a calibration, :mod:`landmark_lit.confidence`, makes one).
    """
    distance = np.asarray(spread_mm, np.float64) + np.asarray(shift_mm, np.float64)
    return np.clip(
        np.asarray(posterior, np.float64) * np.exp(-distance / (scale * float(spacing_mm))), 0.0, 1.0
    )


def calibration_warning(
    calibration: Calibration | None, threshold: float | None, pipeline: dict[str, Any], where: str
) -> str | None:
    """What a predictor should say once about its calibration: missing, or fitted on another pipeline
    (None: nothing to say)."""
    if calibration is None:
        flags = "nothing flagged" if threshold is None else f"flagged below {threshold:g}"
        return (
            f"{where}: model without calibration: confidences rank landmarks but are no probabilities, no "
            f"uncertainty radius, {flags}; calibrate it with landmark-export calibration_dataset=... (or "
            "calibration_manifest=...)"
        )
    fitted = calibration.fitted_on.get("pipeline")
    if fitted is not None and fitted != pipeline:
        return (
            f"{where}: calibration fitted on the pipeline {fitted}, running {pipeline}: confidence, flags and "
            "radius may not hold; export a bundle calibrated on this pipeline (landmark-export "
            "calibration_dataset=...)"
        )
    return None


def landmark_cues(
    estimate: StageEstimate, global_estimate: StageEstimate, shift_mm: np.ndarray, spacing_mm: float
) -> np.ndarray:
    """(K, F) cues of a final answer ``estimate`` (:data:`landmark_lit.confidence.FEATURES`); ``spacing_mm``:
    the last stage's working voxel size."""
    gap = estimate.mirror_gap_mm if estimate.mirror_gap_mm is not None else global_estimate.mirror_gap_mm
    return landmark_features(
        estimate.spread_mm,
        estimate.posterior,
        shift_mm,
        np.linalg.norm(estimate.world - global_estimate.world, axis=1),
        global_estimate.spread_mm,
        global_estimate.posterior,
        gap,
        spacing_mm,
    )


def score_landmarks(
    estimate: StageEstimate,
    global_estimate: StageEstimate,
    shift_mm: np.ndarray,
    spacing_mm: float,
    landmark_names: list[str],
    calibration: Calibration | None,
    threshold: float | None,
    scale: float = DEFAULT_CONFIDENCE_SCALE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Confidence (K,), flagged (K,: below ``threshold``; none for None), radius_mm (K,: NaN without
    calibration) and the cues (K, F) of a final answer; ``spacing_mm``: the last stage's working voxel size,
    ``scale``: the uncalibrated score's."""
    features = landmark_cues(estimate, global_estimate, shift_mm, spacing_mm)
    if calibration is not None:
        confidence = calibration.confidence(features, landmark_names)
        radius = calibration.radius_mm(features, landmark_names)
    else:
        confidence = landmark_confidence(estimate.posterior, estimate.spread_mm, shift_mm, spacing_mm, scale)
        radius = np.full(len(confidence), np.nan)
    flagged = np.zeros(len(confidence), bool) if threshold is None else confidence < threshold
    return confidence, flagged, radius, features

"""Calibrated confidence and uncertainty radius per landmark, fitted on a model's validation landmarks.

A :class:`Calibration` belongs to a model (a stage checkpoint or a bundle) and maps the cues the pipeline
already has (:data:`FEATURES`: each stage's vote spread and posterior, how far the last local pass still
moved the landmark, how far the local answer lies from the global one, the disagreement of the
test-time mirror where it runs) to the size of the landmark's error:

- a ridge regression of ``log(error)`` on the standardised cues and a per-landmark offset (shrunk
  towards the common intercept: some landmarks are harder than others) gives each landmark a predicted
  scale ``exp(m(x))``, both penalties chosen by leave-one-out error; the residuals ``log(error) - m(x)`` of the validation landmarks (leave-one-out, so they
  are honest) form the error distribution around it;
- ``failure_probability``: ``P(error > failure_mm | x)``, from that residual distribution (Gaussian-kernel
  smoothed); ``confidence = 1 - failure_probability``;
- ``threshold``: landmarks with a confidence below it are flagged. It is the lowest threshold whose flagged
  validation landmarks hold ``goal`` (default 80 %) of the expected failures (the sum of the failure
  probabilities), chosen on the validation landmarks;
- ``radius_mm``: normalised split-conformal prediction (Papadopoulos et al. 2008; Lei et al. 2018): the
  true landmark lies within ``exp(m(x) + q)`` of the answer with probability ``coverage`` (default 0.9),
  ``q`` the ``ceil((n + 1) coverage)``-th smallest residual; per landmark where it has at least
  ``min_per_landmark`` validation cases, pooled over landmarks otherwise.

Everything is stored as plain numbers (:meth:`Calibration.to_dict`), so files load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

import numpy as np

from landmark_lit.utils import is_finite_number

FEATURES = (
    "log_spread",
    "logit_posterior",
    "log_shift",
    "log_global_gap",
    "log_global_spread",
    "logit_global_posterior",
    "log_mirror_gap",
)
CALIBRATION_VERSION = 1
DEFAULT_FAILURE_MM = 4.0
DEFAULT_GOAL = 0.8
DEFAULT_COVERAGE = 0.9
MIN_PER_LANDMARK = 50
MIN_LANDMARKS = 10  # fewer cannot set a 90 % radius (the conformal rank ceil(11 * 0.9) = 10)
RIDGES = (0.1, 1.0, 10.0, 100.0)  # chosen by leave-one-out error
# shrinkage of the per-landmark offsets (in validation landmarks' worth; 1e6: no offsets)
LANDMARK_RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0, 1e6)
_EPS_P = 1e-4


class CalibrationError(ValueError):
    """A stored calibration that is not one this landmark_lit can use, or data it cannot be fitted on."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS_P, 1 - _EPS_P)
    return np.log(p / (1 - p))


def landmark_features(
    spread_mm: np.ndarray,
    posterior: np.ndarray,
    shift_mm: np.ndarray,
    global_gap_mm: np.ndarray,
    global_spread_mm: np.ndarray,
    global_posterior: np.ndarray,
    mirror_gap_mm: np.ndarray | None,
    spacing_mm: float,
) -> np.ndarray:
    """(K, len(FEATURES)) cues of K landmarks; distances are logged after adding the last stage's working
    spacing ``spacing_mm`` (a distance well below one voxel says no more than one of a voxel)."""
    s = float(spacing_mm)
    k = len(np.asarray(spread_mm))
    mirror = np.zeros(k) if mirror_gap_mm is None else np.asarray(mirror_gap_mm, np.float64)
    cols = [
        np.log(np.asarray(spread_mm, np.float64) + s),
        _logit(posterior),
        np.log(np.asarray(shift_mm, np.float64) + s),
        np.log(np.asarray(global_gap_mm, np.float64) + s),
        np.log(np.asarray(global_spread_mm, np.float64) + s),
        _logit(global_posterior),
        np.log(mirror + s),
    ]
    return np.stack(cols, axis=1)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) coverage)``-th smallest of n scores (+inf if that exceeds n): a new score from
    the same distribution is at most this with probability >= ``coverage``."""
    s = np.sort(np.asarray(scores, np.float64))
    rank = math.ceil((len(s) + 1) * float(coverage))
    return float(s[rank - 1]) if rank <= len(s) else math.inf


@dataclass(frozen=True)
class Calibration:
    """How a model's cues map to its errors (see the module docstring). Build with :func:`fit_calibration`
    or :meth:`from_dict` (validated)."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    ridge: float
    landmark_ridge: float
    landmark_offsets: dict[str, float]  # per landmark, added to the intercept (unknown names: 0)
    residuals: list[float]  # sorted leave-one-out residuals of log(error) on the validation landmarks
    bandwidth: float
    failure_mm: float
    goal: float
    threshold: float
    coverage: float
    radius_q: float
    radius_q_per_landmark: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # figures the settings were chosen on
    fitted_on: dict[str, Any] = field(default_factory=dict)  # the pipeline and data it was fitted on
    version: int = CALIBRATION_VERSION

    # --- using -------------------------------------------------------------------------------------

    def _select(self, features: np.ndarray) -> np.ndarray:
        idx = [FEATURES.index(f) for f in self.features]
        return np.asarray(features, np.float64)[:, idx]

    def log_error(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) predicted log error scale m(x) of landmarks ``names`` with cues ``features`` (K, F)."""
        z = (self._select(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        offsets = np.array([self.landmark_offsets.get(str(n), 0.0) for n in names], np.float64)
        return z @ np.asarray(self.coef) + self.intercept + offsets

    def failure_probability(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) P(error > failure_mm | cues)."""
        m = self.log_error(features, names)
        return _survival(np.asarray(self.residuals), self.bandwidth, math.log(self.failure_mm) - m)

    def confidence(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) 1 - P(error > failure_mm | cues), in [0, 1]."""
        return np.clip(1.0 - self.failure_probability(features, names), 0.0, 1.0)

    def radius_mm(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) radius (mm) around each answer that holds the true landmark with probability ``coverage``."""
        q = np.array([self.radius_q_per_landmark.get(n, self.radius_q) for n in names], np.float64)
        return np.exp(self.log_error(features, names) + q)

    # --- storing -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Calibration:
        if not isinstance(data, dict):
            raise CalibrationError(f"{where}: calibration must be a mapping, got {type(data).__name__}")
        version = data.get("version", CALIBRATION_VERSION)
        if version != CALIBRATION_VERSION:
            raise CalibrationError(
                f"{where}: calibration version {version!r}, this landmark_lit reads {CALIBRATION_VERSION}"
            )
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is MISSING and f.default_factory is MISSING}
        unknown = sorted(set(data) - {f.name for f in fields})
        missing = sorted(required - set(data))
        if unknown or missing:
            raise CalibrationError(f"{where}: calibration keys unknown {unknown}, missing {missing}")
        cal = cls(**data)
        cal._validate(where)
        return cal

    def _validate(self, where: str) -> None:
        f = len(self.features)
        if not self.features or any(n not in FEATURES for n in self.features):
            raise CalibrationError(f"{where}: calibration features must be among {list(FEATURES)}")
        for key in ("mean", "scale", "coef"):
            v = getattr(self, key)
            if not isinstance(v, list) or len(v) != f or not all(is_finite_number(x) for x in v):
                raise CalibrationError(f"{where}: calibration {key!r} must be {f} finite numbers")
        if any(x <= 0 for x in self.scale):
            raise CalibrationError(f"{where}: calibration 'scale' must be positive")
        if not self.residuals or not all(is_finite_number(x) for x in self.residuals):
            raise CalibrationError(f"{where}: calibration 'residuals' must be finite numbers")
        for key in ("intercept", "bandwidth", "failure_mm", "threshold", "radius_q"):
            if not is_finite_number(getattr(self, key)):
                raise CalibrationError(f"{where}: calibration {key!r} must be a finite number")
        if self.failure_mm <= 0 or self.bandwidth <= 0:
            raise CalibrationError(f"{where}: calibration failure_mm and bandwidth must be positive")
        for key in ("goal", "coverage"):
            if not 0 < getattr(self, key) < 1:
                raise CalibrationError(f"{where}: calibration {key!r} must lie in (0, 1)")
        maps = (self.radius_q_per_landmark, self.landmark_offsets)
        if not all(isinstance(m, dict) and all(is_finite_number(v) for v in m.values()) for m in maps):
            raise CalibrationError(f"{where}: calibration per-landmark values must be finite numbers")


def _survival(residuals: np.ndarray, bandwidth: float, at: np.ndarray) -> np.ndarray:
    """P(R > at) for R the Gaussian-kernel smoothed distribution of ``residuals``."""
    from scipy.special import ndtr

    at = np.asarray(at, np.float64)
    return ndtr((residuals[None, :] - at[:, None]) / bandwidth).mean(axis=1)


def _loo_ridge(
    x: np.ndarray, groups: np.ndarray, y: np.ndarray, ridge: float, group_ridge: float
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Ridge of y on standardised cues x (penalty ``ridge``) and one offset per group (one-hot columns
    ``groups``, penalty ``group_ridge``: offsets shrunk towards the common intercept, which is not
    penalised): coefficients, intercept, group offsets and the leave-one-out residuals (closed form,
    ``r_i / (1 - h_ii)``)."""
    n, f = x.shape
    g = groups.shape[1]
    a = np.concatenate([np.ones((n, 1)), x, groups], axis=1)
    pen = np.diag([0.0] + [ridge] * f + [group_ridge] * g)
    inv = np.linalg.pinv(a.T @ a + pen)
    beta = inv @ a.T @ y
    h = np.einsum("ij,jk,ik->i", a, inv, a)
    loo = (y - a @ beta) / np.clip(1 - h, 1e-6, None)
    return beta[1 : f + 1], float(beta[0]), beta[f + 1 :], loo


def fit_calibration(
    features: np.ndarray,
    errors_mm: np.ndarray,
    names: Sequence[str],
    failure_mm: float = DEFAULT_FAILURE_MM,
    goal: float = DEFAULT_GOAL,
    coverage: float = DEFAULT_COVERAGE,
    min_per_landmark: int = MIN_PER_LANDMARK,
    fitted_on: dict[str, Any] | None = None,
) -> Calibration:
    """Fit a calibration on N validation landmarks: ``features`` (N, len(FEATURES)), their errors (N,) mm
    and landmark names (N,). Landmarks without a reference (NaN error) are left out; cues constant over
    the validation landmarks (e.g. the local shift of a global-only model) are not used."""
    x, err, names = _calibration_data(features, errors_mm, names, failure_mm, goal, coverage)
    n = len(err)
    y = np.log(np.maximum(err, 1e-3))
    sd = x.std(axis=0)
    used = [i for i in range(x.shape[1]) if sd[i] > 1e-9]
    xs, mean, scale = x[:, used], x[:, used].mean(axis=0), sd[used]
    z = (xs - mean) / scale
    landmarks = list(dict.fromkeys(names))
    onehot = (names[:, None] == np.asarray(landmarks, dtype=object)[None, :]).astype(np.float64)
    ridge, group_ridge, coef, intercept, offsets, loo = _best_ridge(z, onehot, y)
    residuals = np.sort(loo)
    # Silverman's rule of thumb
    spread = min(residuals.std(), (np.quantile(residuals, 0.75) - np.quantile(residuals, 0.25)) / 1.34)
    bandwidth = max(0.9 * spread * n ** (-0.2), 1e-3)
    m = y - loo  # leave-one-out predictions of log error
    radius_q = conformal_quantile(loo, coverage)
    if not math.isfinite(radius_q):
        raise CalibrationError(f"calibration: {n} validation landmarks are too few for coverage {coverage}")
    per_landmark = {
        str(k): conformal_quantile(loo[names == k], coverage)
        for k in dict.fromkeys(names)
        if (names == k).sum() >= min_per_landmark
    }
    p_fail = _survival(residuals, bandwidth, math.log(failure_mm) - m)
    conf = 1.0 - p_fail
    threshold = _threshold_for_goal(conf, p_fail, goal)
    cal = Calibration(
        features=[FEATURES[i] for i in used],
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=coef.tolist(),
        intercept=intercept,
        ridge=float(ridge),
        landmark_ridge=float(group_ridge),
        landmark_offsets={str(k): float(o) for k, o in zip(landmarks, offsets, strict=True)},
        residuals=residuals.tolist(),
        bandwidth=float(bandwidth),
        failure_mm=float(failure_mm),
        goal=float(goal),
        threshold=float(threshold),
        coverage=float(coverage),
        radius_q=float(radius_q),
        radius_q_per_landmark=per_landmark,
        fitted_on=dict(fitted_on or {}),
    )
    radius = np.exp(m + np.array([per_landmark.get(k, radius_q) for k in names]))
    report = confidence_figures(err, conf, conf < threshold, radius, failure_mm)
    report["expected_failures_caught"] = float(p_fail[conf < threshold].sum() / max(p_fail.sum(), 1e-12))
    return dataclasses.replace(cal, validation={"n_landmarks": n, **report})


def _calibration_data(
    features: np.ndarray,
    errors_mm: np.ndarray,
    names: Sequence[str],
    failure_mm: float,
    goal: float,
    coverage: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checked (features, errors, names) of the validation landmarks with references."""
    x = np.asarray(features, np.float64)
    err = np.asarray(errors_mm, np.float64)
    names = np.asarray(list(names), dtype=object)
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(err) != len(x) or len(names) != len(x):
        raise CalibrationError(f"calibration: features {x.shape}, errors {err.shape}, names {names.shape}")
    if not (failure_mm > 0 and 0 < goal < 1 and 0 < coverage < 1):
        raise CalibrationError(
            f"calibration: failure_mm > 0, goal and coverage in (0, 1) needed; got {failure_mm}, {goal}, {coverage}"
        )
    keep = np.isfinite(err) & np.all(np.isfinite(x), axis=1)
    if keep.sum() < MIN_LANDMARKS:
        raise CalibrationError(
            f"calibration: {keep.sum()} validation landmarks with references, at least {MIN_LANDMARKS} needed"
        )
    return x[keep], err[keep], names[keep]


def _best_ridge(z: np.ndarray, onehot: np.ndarray, y: np.ndarray) -> tuple:
    """(ridge, landmark ridge, coef, intercept, offsets, leave-one-out residuals) of the penalties with the
    lowest leave-one-out squared error."""
    best = None
    for ridge in RIDGES:
        for group_ridge in LANDMARK_RIDGES:
            coef, intercept, offsets, loo = _loo_ridge(z, onehot, y, ridge, group_ridge)
            score = float(np.mean(loo**2))
            if best is None or score < best[0] - 1e-12:
                best = (score, ridge, group_ridge, coef, intercept, offsets, loo)
    return best[1:]


def _threshold_for_goal(conf: np.ndarray, p_fail: np.ndarray, goal: float) -> float:
    """The lowest confidence threshold whose flagged landmarks (confidence < threshold) hold ``goal`` of
    the expected failures ``sum(p_fail)``: midway between the last flagged and the next confidence."""
    order = np.argsort(conf)
    c, p = conf[order], p_fail[order]
    share = np.cumsum(p) / max(p.sum(), 1e-12)
    m = int(np.searchsorted(share, goal - 1e-12))  # flag landmarks 0..m
    if m + 1 >= len(c):
        return float(c[-1] + 1e-9)
    return float((c[m] + c[m + 1]) / 2) if c[m + 1] > c[m] else float(np.nextafter(c[m], 2.0))


def confidence_figures(
    errors_mm: np.ndarray,
    confidence: np.ndarray | None,
    flagged: np.ndarray | None,
    radius_mm: np.ndarray | None,
    failure_mm: float = DEFAULT_FAILURE_MM,
    also_mm: Sequence[float] = (2.0,),
) -> dict[str, Any]:
    """How well a confidence finds the failures of N landmarks (NaN errors left out): AUROC of
    ``1 - confidence`` for errors above ``failure_mm`` and each of ``also_mm``, the share flagged, the share
    of failures flagged, and the radius' coverage and median. Figures that cannot be computed are None."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    err = np.asarray(errors_mm, np.float64).reshape(-1)
    ok = np.isfinite(err)
    out: dict[str, Any] = {"failure_mm": float(failure_mm), "n": int(ok.sum())}
    thresholds = sorted({float(failure_mm), *map(float, also_mm)})
    if confidence is not None:
        c = np.asarray(confidence, np.float64).reshape(-1)[ok]
        for t in thresholds:
            failed = err[ok] > t
            key = f"auroc_{t:g}mm"
            out[key] = (
                float(binary_auroc(torch.as_tensor(-c), torch.as_tensor(failed).long()))
                if 0 < failed.sum() < len(failed)
                else None
            )
    failed = err[ok] > failure_mm
    out["failures"] = int(failed.sum())
    if flagged is not None:
        f = np.asarray(flagged, bool).reshape(-1)[ok]
        out["flagged"] = int(f.sum())
        out["share_flagged"] = float(f.mean()) if len(f) else None
        out["failures_caught"] = int((f & failed).sum())
        out["share_failures_caught"] = float((f & failed).sum() / failed.sum()) if failed.any() else None
    if radius_mm is not None:
        r = np.asarray(radius_mm, np.float64).reshape(-1)[ok]
        out["radius_coverage"] = float(np.mean(err[ok] <= r)) if len(r) else None
        out["radius_median_mm"] = float(np.median(r)) if len(r) else None
    return out

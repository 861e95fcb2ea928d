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
  smoothed; ``failure_model="residual"``) or from a logistic regression of the failures themselves on the
  same cues and landmark offsets (``"logistic"``, penalties chosen by cross-validated log-loss: it learns
  the tail directly and needs failures to learn from; ``"auto"`` takes it from ``MIN_LOGISTIC_FAILURES``
  validation failures on); ``confidence = 1 - failure_probability``;
- ``threshold``: landmarks with a confidence below it are flagged. It is the lowest threshold whose flagged
  validation landmarks hold ``goal`` (default 80 %) of the failures: the expected ones (the sum of the
  honest, held-out failure probabilities; ``threshold_from="expected"``), or those counted
  (``"counted"``);
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

from landmark_lit.metrics import DEFAULT_FAILURE_MM, confidence_figures
from landmark_lit.penalized import best_ridge, cv_logistic
from landmark_lit.utils import is_finite_number

__all__ = ["Calibration", "CalibrationError", "confidence_figures", "fit_calibration", "landmark_features"]

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
DEFAULT_GOAL = 0.8
DEFAULT_COVERAGE = 0.9
MIN_PER_LANDMARK = 50
MIN_LANDMARKS = 10  # fewer cannot set a 90 % radius (the conformal rank ceil(11 * 0.9) = 10)
RIDGES = (0.1, 1.0, 10.0, 100.0)  # chosen by leave-one-out error
# shrinkage of the per-landmark offsets (in validation landmarks' worth; 1e6: no offsets)
LANDMARK_RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0, 1e6)
_EPS_P = 1e-4
FAILURE_MODELS = ("residual", "logistic", "auto")
THRESHOLD_RULES = ("expected", "counted")
MIN_LOGISTIC_FAILURES = 20  # "auto": fewer validation failures than this keep the residual model
LOGISTIC_FOLDS = 5


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
    # "logistic": P(failure) = sigmoid(z . failure_coef + failure_intercept + failure_offsets[landmark])
    failure_model: str = "residual"
    failure_coef: list[float] = field(default_factory=list)
    failure_intercept: float = 0.0
    failure_offsets: dict[str, float] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    # --- using -------------------------------------------------------------------------------------

    def _select(self, features: np.ndarray) -> np.ndarray:
        idx = [FEATURES.index(f) for f in self.features]
        return np.asarray(features, np.float64)[:, idx]

    def _linear(self, features: np.ndarray, names: Sequence[str], coef, intercept, offsets) -> np.ndarray:
        z = (self._select(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(coef) + intercept + np.array([offsets.get(str(n), 0.0) for n in names])

    def log_error(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) predicted log error scale m(x) of landmarks ``names`` with cues ``features`` (K, F)."""
        return self._linear(features, names, self.coef, self.intercept, self.landmark_offsets)

    def failure_probability(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(K,) P(error > failure_mm | cues)."""
        if self.failure_model == "logistic":
            from scipy.special import expit

            c, b, o = self.failure_coef, self.failure_intercept, self.failure_offsets
            return expit(self._linear(features, names, c, b, o))
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
        if self.failure_model not in ("residual", "logistic"):
            raise CalibrationError(f"{where}: calibration failure_model must be residual or logistic")
        logistic = [*self.failure_coef, self.failure_intercept] if self.failure_model == "logistic" else []
        if logistic and (len(self.failure_coef) != f or not all(is_finite_number(x) for x in logistic)):
            raise CalibrationError(f"{where}: calibration 'failure_coef' must be {f} finite numbers")
        maps = (self.radius_q_per_landmark, self.landmark_offsets, self.failure_offsets)
        if not all(isinstance(m, dict) and all(is_finite_number(v) for v in m.values()) for m in maps):
            raise CalibrationError(f"{where}: calibration per-landmark values must be finite numbers")


def _survival(residuals: np.ndarray, bandwidth: float, at: np.ndarray) -> np.ndarray:
    """P(R > at) for R the Gaussian-kernel smoothed distribution of ``residuals``."""
    from scipy.special import ndtr

    at = np.asarray(at, np.float64)
    return ndtr((residuals[None, :] - at[:, None]) / bandwidth).mean(axis=1)


def fit_calibration(
    features: np.ndarray,
    errors_mm: np.ndarray,
    names: Sequence[str],
    failure_mm: float = DEFAULT_FAILURE_MM,
    goal: float = DEFAULT_GOAL,
    coverage: float = DEFAULT_COVERAGE,
    min_per_landmark: int = MIN_PER_LANDMARK,
    fitted_on: dict[str, Any] | None = None,
    failure_model: str = "auto",
    threshold_from: str = "expected",
) -> Calibration:
    """Fit a calibration on N validation landmarks: ``features`` (N, len(FEATURES)), their errors (N,) mm
    and landmark names (N,). Landmarks without a reference (NaN error) are left out; cues constant over
    the validation landmarks (e.g. the local shift of a global-only model) are not used.
    ``failure_model`` and ``threshold_from``: see the module docstring."""
    x, err, names = _calibration_data(features, errors_mm, names, failure_mm, goal, coverage)
    _check_options(failure_model, threshold_from)
    n, y = len(err), np.log(np.maximum(err, 1e-3))
    sd = x.std(axis=0)
    used = [i for i in range(x.shape[1]) if sd[i] > 1e-9]
    xs, mean, scale = x[:, used], x[:, used].mean(axis=0), sd[used]
    z = (xs - mean) / scale
    landmarks = list(dict.fromkeys(names))
    onehot = (names[:, None] == np.asarray(landmarks, dtype=object)[None, :]).astype(np.float64)
    ridge, group_ridge, coef, intercept, offsets, loo = best_ridge(z, onehot, y, RIDGES, LANDMARK_RIDGES)
    residuals = np.sort(loo)
    # Silverman's rule of thumb
    spread = min(residuals.std(), (np.quantile(residuals, 0.75) - np.quantile(residuals, 0.25)) / 1.34)
    bandwidth = max(0.9 * spread * n ** (-0.2), 1e-3)
    m = y - loo  # leave-one-out predictions of log error
    radius_q, per_landmark = _radius_quantiles(loo, names, coverage, min_per_landmark)
    failed = err > failure_mm
    if failure_model == "logistic" or (failure_model == "auto" and failed.sum() >= MIN_LOGISTIC_FAILURES):
        tail, p_fail = _fit_logistic(z, onehot, failed, landmarks)  # p_fail held out (cross-validated)
    else:
        tail, p_fail = {}, _survival(residuals, bandwidth, math.log(failure_mm) - m)
    conf = 1.0 - p_fail
    threshold = _threshold_for_goal(conf, p_fail if threshold_from == "expected" else failed, goal)
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
        **tail,
    )
    radius = np.exp(m + np.array([per_landmark.get(k, radius_q) for k in names]))
    report = confidence_figures(err, conf, conf < threshold, radius, failure_mm)
    report["expected_failures_caught"] = float(p_fail[conf < threshold].sum() / max(p_fail.sum(), 1e-12))
    report["threshold_from"] = threshold_from
    return dataclasses.replace(cal, validation={"n_landmarks": n, **report})


def _check_options(failure_model: str, threshold_from: str) -> None:
    if failure_model not in FAILURE_MODELS or threshold_from not in THRESHOLD_RULES:
        raise CalibrationError(
            f"calibration: failure_model must be one of {list(FAILURE_MODELS)} and threshold_from one of "
            f"{list(THRESHOLD_RULES)}, got {failure_model!r}, {threshold_from!r}"
        )


def _radius_quantiles(
    loo: np.ndarray, names: np.ndarray, coverage: float, min_per_landmark: int
) -> tuple[float, dict[str, float]]:
    """The conformal quantile of the leave-one-out residuals, pooled and per landmark with enough cases."""
    radius_q = conformal_quantile(loo, coverage)
    if not math.isfinite(radius_q):
        raise CalibrationError(
            f"calibration: {len(loo)} validation landmarks are too few for coverage {coverage}"
        )
    per_landmark = {
        str(k): conformal_quantile(loo[names == k], coverage)
        for k in dict.fromkeys(names)
        if (names == k).sum() >= min_per_landmark
    }
    return radius_q, per_landmark


def _fit_logistic(
    z: np.ndarray, onehot: np.ndarray, failed: np.ndarray, landmarks: list[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """The logistic failure model's Calibration fields and its held-out failure probabilities."""
    if not 0 < failed.sum() < len(failed):
        raise CalibrationError("calibration: a logistic failure model needs failures and successes")
    beta, held = cv_logistic(z, onehot, failed.astype(np.float64), RIDGES, LANDMARK_RIDGES, LOGISTIC_FOLDS)
    f = z.shape[1]
    fields = {
        "failure_model": "logistic",
        "failure_coef": beta[1 : f + 1].tolist(),
        "failure_intercept": float(beta[0]),
        "failure_offsets": {str(k): float(o) for k, o in zip(landmarks, beta[f + 1 :], strict=True)},
    }
    return fields, held


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


def _threshold_for_goal(conf: np.ndarray, p_fail: np.ndarray, goal: float) -> float:
    """The lowest confidence threshold whose flagged landmarks (confidence < threshold) hold ``goal`` of
    the failures ``sum(p_fail)`` (expected: probabilities; counted: 0 or 1): midway between the last
    flagged and the next confidence."""
    if not np.sum(p_fail) > 0:
        raise CalibrationError("calibration: no validation failure to count")
    order = np.argsort(conf)
    c, p = conf[order], np.asarray(p_fail, np.float64)[order]
    share = np.cumsum(p) / max(p.sum(), 1e-12)
    m = int(np.searchsorted(share, goal - 1e-12))  # flag landmarks 0..m
    if m + 1 >= len(c):
        return float(c[-1] + 1e-9)
    return float((c[m] + c[m + 1]) / 2) if c[m + 1] > c[m] else float(np.nextafter(c[m], 2.0))

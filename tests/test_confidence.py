"""Calibrated confidence and conformal radius (landmark_lit.confidence) on data with known noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landmark_lit.confidence import (
    FEATURES,
    Calibration,
    CalibrationError,
    confidence_figures,
    conformal_quantile,
    fit_calibration,
)


def synthetic(n: int, seed: int, landmarks: tuple[str, ...] = ("a", "b", "c")):
    """Errors of known scale: 2D Gaussian noise of SD sigma (a Rayleigh radial error), sigma log-normal and
    seen through a noisy cue (feature 0); landmark "c" twice as hard as the others whatever its cue."""
    rng = np.random.default_rng(seed)
    names = np.array([landmarks[i % len(landmarks)] for i in range(n)])
    log_sigma = rng.normal(0.0, 0.5, n)
    sigma = np.exp(log_sigma) * np.where(names == "c", 2.0, 1.0)
    errors = sigma * np.linalg.norm(rng.normal(size=(n, 2)), axis=1)
    features = np.zeros((n, len(FEATURES)))
    features[:, 0] = log_sigma + rng.normal(0.0, 0.15, n)
    features[:, 1] = rng.normal(size=n)  # an uninformative cue
    return features, errors, names


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(scores[:5], 0.9) == math.inf  # ceil(6 * 0.9) = 6 > 5


def test_radius_covers_new_landmarks_within_a_binomial_bound():
    n, m, p = 1000, 20000, 0.9
    cal = fit_calibration(*synthetic(n, seed=0), coverage=p)
    f, err, names = synthetic(m, seed=1)
    radius = cal.radius_mm(f, names)
    covered = err <= radius
    # split-conformal coverage given n calibration points has SD sqrt(p (1 - p) / n); m new points add
    # their own binomial SD: 4 SD of both
    bound = 4 * math.sqrt(p * (1 - p) * (1 / n + 1 / m))
    assert abs(covered.mean() - p) < bound
    # normalised: doubtful landmarks get wider radii, and both halves keep about the coverage
    order = np.argsort(f[:, 0])
    low, high = order[: m // 2], order[m // 2 :]
    assert np.median(radius[high]) > 1.5 * np.median(radius[low])
    for half in (low, high):
        assert abs(covered[half].mean() - p) < 0.04
    # the hard landmark learnt from its offset: its radius about twice the others'
    ratio = np.median(radius[names == "c"]) / np.median(radius[names == "a"])
    assert 1.6 < ratio < 2.5


def assert_holds_on_new_data(cal, seed: int) -> tuple[float, tuple]:
    """On 20000 new landmarks: the expected number of failures is the observed one (within 4 binomial SD
    + 5 % for the fit) and the stored threshold catches about the goal (0.8) of them; their AUROC."""
    f, err, names = synthetic(20000, seed=seed)
    p_fail = cal.failure_probability(f, names)
    failed = err > 4.0
    sd = math.sqrt(np.sum(p_fail * (1 - p_fail)))
    assert abs(p_fail.sum() - failed.sum()) < 4 * sd + 0.05 * failed.sum()
    flagged = cal.confidence(f, names) < cal.threshold
    assert 0.72 < (flagged & failed).sum() / failed.sum() < 0.9
    assert flagged.mean() < 0.5
    return confidence_figures(err, cal.confidence(f, names), flagged, None, 4.0)["auroc_4mm"], (f, err, names)


def test_failure_probability_and_threshold_hold_on_new_data():
    cal = fit_calibration(*synthetic(1000, seed=2), failure_mm=4.0, goal=0.8)
    auroc, _ = assert_holds_on_new_data(cal, seed=3)
    assert auroc > 0.8  # the score ranks: failures are found far better than by chance


@pytest.mark.parametrize("threshold_from", ["expected", "counted"])
def test_logistic_failure_model_holds_on_new_data(threshold_from):
    """The failures themselves regressed on the cues: the expected number of failures on new data is the
    observed one, the stored threshold catches about the goal, and the score ranks as the residual one."""
    train = synthetic(3000, seed=7)
    cal = fit_calibration(
        *train, failure_mm=4.0, goal=0.8, failure_model="logistic", threshold_from=threshold_from
    )
    assert cal.failure_model == "logistic" and len(cal.failure_coef) == len(cal.features)
    assert cal.failure_offsets["c"] > cal.failure_offsets["a"] + 0.5  # the hard landmark fails more often
    auroc, (f, err, names) = assert_holds_on_new_data(cal, seed=8)
    residual = fit_calibration(*train, failure_mm=4.0, failure_model="residual")
    assert auroc > 0.8
    assert auroc > confidence_figures(err, residual.confidence(f, names), None, None, 4.0)["auroc_4mm"] - 0.02
    # the radius is the residual model's either way
    np.testing.assert_allclose(cal.radius_mm(f, names), residual.radius_mm(f, names))
    again = Calibration.from_dict(cal.to_dict(), "model.pt")
    np.testing.assert_array_equal(again.confidence(f, names), cal.confidence(f, names))


def test_auto_failure_model_needs_failures_to_learn_from():
    few = synthetic(150, seed=9)  # about 10 errors > 4 mm
    assert (few[1] > 4.0).sum() < 20
    assert fit_calibration(*few, failure_model="auto").failure_model == "residual"
    assert fit_calibration(*synthetic(2000, seed=9), failure_model="auto").failure_model == "logistic"
    with pytest.raises(CalibrationError, match="failure_model must be one of"):
        fit_calibration(*few, failure_model="forest")
    f, err, names = few
    with pytest.raises(CalibrationError, match="no validation failure to count"):
        fit_calibration(f, err, names, failure_mm=40.0, threshold_from="counted")


def test_constant_cues_are_left_out_and_the_dict_round_trips():
    f, err, names = synthetic(200, seed=4)
    cal = fit_calibration(f, err, names)
    assert cal.features == ["log_spread", "logit_posterior"]  # the other cues are constant here
    again = Calibration.from_dict(cal.to_dict(), "model.ckpt")
    assert again == cal
    np.testing.assert_array_equal(again.radius_mm(f, names), cal.radius_mm(f, names))
    assert set(cal.validation) >= {"n_landmarks", "auroc_4mm", "share_flagged", "radius_coverage"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coef": [1.0]}, "'coef' must be"),
        ({"features": ["not_a_cue", "logit_posterior"]}, "features must be among"),
        ({"coverage": 1.5}, "'coverage' must lie in"),
        ({"surprise": 1}, "unknown ['surprise']"),
        ({"version": 99}, "calibration version 99"),
        ({"failure_model": "forest"}, "failure_model must be residual or logistic"),
        ({"failure_model": "logistic", "failure_coef": [1.0]}, "'failure_coef' must be"),
    ],
)
def test_bad_stored_calibration_is_one_clear_line(change, message):
    data = fit_calibration(*synthetic(100, seed=5)).to_dict() | change
    with pytest.raises(CalibrationError, match=None) as info:
        Calibration.from_dict(data, "model.ckpt")
    text = str(info.value)
    assert text.startswith("model.ckpt: ") and message in text and "\n" not in text


def test_too_few_landmarks_and_bad_goals_are_refused():
    f, err, names = synthetic(8, seed=6)
    with pytest.raises(CalibrationError, match="8 validation landmarks"):
        fit_calibration(f, err, names)
    with pytest.raises(CalibrationError, match="goal and coverage"):
        fit_calibration(*synthetic(100, seed=6), goal=1.0)


def test_figures_of_a_hand_made_case():
    errors = np.array([1.0, 3.0, 5.0, 6.0, np.nan])
    confidence = np.array([0.9, 0.4, 0.5, 0.1, 0.0])
    flagged = np.array([False, True, True, False, True])
    radius = np.array([2.0, 2.0, 2.0, 7.0, 1.0])
    out = confidence_figures(errors, confidence, flagged, radius, failure_mm=4.0)
    # > 4 mm: failures score 0.5, 0.9 against 0.1, 0.6 (1 - confidence): 3 of 4 pairs in order
    assert out["auroc_4mm"] == pytest.approx(0.75)
    # > 2 mm: failures 0.6, 0.5, 0.9 against 0.1: all in order
    assert out["auroc_2mm"] == pytest.approx(1.0)
    assert out["n"] == 4 and out["failures"] == 2 and out["flagged"] == 2
    assert out["share_flagged"] == 0.5 and out["share_failures_caught"] == 0.5
    assert out["radius_coverage"] == 0.5 and out["radius_median_mm"] == 2.0
    none = confidence_figures(np.array([1.0, 2.0]), np.array([0.5, 0.6]), None, None, 4.0)
    assert none["auroc_4mm"] is None and none["failures"] == 0

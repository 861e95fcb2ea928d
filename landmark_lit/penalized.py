"""The two penalised regressions a confidence calibration (:mod:`landmark_lit.confidence`) is made of, on
standardised cues ``z`` (N, F) and one-hot group columns (N, G) (one offset per landmark, shrunk towards
the common intercept, which is not penalised):

- :func:`best_ridge`: a ridge regression, its penalties chosen by the closed-form leave-one-out error;
- :func:`cv_logistic`: a logistic regression, its penalties chosen by cross-validated log-loss.

Coefficient vectors are ordered (intercept, cue coefficients, group offsets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def design(z: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The design matrix: a column of ones, the cues, the group columns."""
    return np.concatenate([np.ones((len(z), 1)), z, groups], axis=1)


def _penalties(z: np.ndarray, groups: np.ndarray, ridge: float, group_ridge: float) -> np.ndarray:
    return np.array([0.0] + [ridge] * z.shape[1] + [group_ridge] * groups.shape[1])


def loo_ridge(
    z: np.ndarray, groups: np.ndarray, y: np.ndarray, ridge: float, group_ridge: float
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Ridge of y on the cues (penalty ``ridge``) and the group offsets (``group_ridge``): coefficients,
    intercept, group offsets and the leave-one-out residuals (closed form, ``r_i / (1 - h_ii)``)."""
    f = z.shape[1]
    a = design(z, groups)
    inv = np.linalg.pinv(a.T @ a + np.diag(_penalties(z, groups, ridge, group_ridge)))
    beta = inv @ a.T @ y
    h = np.einsum("ij,jk,ik->i", a, inv, a)
    loo = (y - a @ beta) / np.clip(1 - h, 1e-6, None)
    return beta[1 : f + 1], float(beta[0]), beta[f + 1 :], loo


def best_ridge(
    z: np.ndarray, groups: np.ndarray, y: np.ndarray, ridges: Sequence[float], group_ridges: Sequence[float]
) -> tuple:
    """(ridge, group ridge, coef, intercept, offsets, leave-one-out residuals) of the penalties with the
    lowest leave-one-out squared error."""
    best = None
    for ridge in ridges:
        for group_ridge in group_ridges:
            coef, intercept, offsets, loo = loo_ridge(z, groups, y, ridge, group_ridge)
            score = float(np.mean(loo**2))
            if best is None or score < best[0] - 1e-12:
                best = (score, ridge, group_ridge, coef, intercept, offsets, loo)
    return best[1:]


def logistic(
    z: np.ndarray, groups: np.ndarray, y: np.ndarray, ridge: float, group_ridge: float
) -> np.ndarray:
    """Coefficients minimising the log-loss of 0/1 ``y`` + ridge / 2 |cue coefficients|^2 + group_ridge / 2
    |offsets|^2 (L-BFGS, from the base rate)."""
    from scipy.optimize import minimize

    a = design(z, groups)
    pen = _penalties(z, groups, ridge, group_ridge)

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        t = a @ beta
        value = np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * np.sum(pen * beta**2)
        return float(value), a.T @ (1.0 / (1.0 + np.exp(-t)) - y) + pen * beta

    start = np.zeros(a.shape[1])
    start[0] = math.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6))
    return minimize(loss, start, jac=True, method="L-BFGS-B").x


def cv_logistic(
    z: np.ndarray,
    groups: np.ndarray,
    y: np.ndarray,
    ridges: Sequence[float],
    group_ridges: Sequence[float],
    folds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`logistic` with the penalties of the lowest log-loss over ``folds`` contiguous folds of the rows
    (rows that come case by case keep a case's landmarks in one fold): its coefficients, refitted on every
    row, and the held-out probabilities (N,) of the chosen penalties."""
    from scipy.special import expit

    fold = np.arange(len(y)) * folds // len(y)
    best = None
    for ridge in ridges:
        for group_ridge in group_ridges:
            held = np.empty(len(y))
            for k in range(folds):
                beta = logistic(z[fold != k], groups[fold != k], y[fold != k], ridge, group_ridge)
                held[fold == k] = expit(design(z[fold == k], groups[fold == k]) @ beta)
            p = np.clip(held, 1e-6, 1 - 1e-6)
            loss = -float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, ridge, group_ridge, held)
    _, ridge, group_ridge, held = best
    return logistic(z, groups, y, ridge, group_ridge), held

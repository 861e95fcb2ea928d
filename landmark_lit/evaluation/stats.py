"""Statistics of radial errors: per-landmark and overall summaries, paired Wilcoxon tests.

Numpy in, plain floats out. The statistics themselves are defined once, in :func:`landmark_lit.metrics.
error_summary`, so that validation logs and evaluation reports use the same median, IQR and SDR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats as scipy_stats

from landmark_lit.metrics import ISBI_THRESHOLDS_MM, error_summary

# Significance markers for paired comparisons, strictest first (SPEC section 5).
MARKERS: tuple[tuple[float, str], ...] = ((0.001, "‡"), (0.01, "†"), (0.05, "*"))


def summarize_errors(
    errors: np.ndarray, thresholds: Sequence[float] = ISBI_THRESHOLDS_MM
) -> dict[str, float]:
    """Summary of errors in mm of any shape, ignoring NaN (missing landmarks).

    Returns:
        ``median_mm``, ``iqr_mm`` (q75 - q25), ``mre_mm`` (mean), ``sd_mm`` (ddof = 1), ``n`` (finite errors),
        ``n_missing`` (NaN errors) and ``sdr_{t:g}mm`` in percent per threshold; NaN where undefined.
    """
    array = np.asarray(errors, dtype=np.float64)
    summary = {key: float(value) for key, value in error_summary(torch.from_numpy(array), thresholds).items()}
    summary["n"] = int(summary["n"])
    summary["n_missing"] = int(np.isnan(array).sum())
    order = ["median_mm", "iqr_mm", "mre_mm", "sd_mm", "n", "n_missing"]
    return {key: summary[key] for key in order} | {k: v for k, v in summary.items() if k not in order}


def summarize_by_landmark(
    errors: np.ndarray, names: Sequence[str], thresholds: Sequence[float] = ISBI_THRESHOLDS_MM
) -> dict[str, dict]:
    """Per-landmark and overall summaries.

    Args:
        errors: (N, K) errors in mm for N cases and K landmarks; NaN = missing.
        names: K landmark names.
        thresholds: SDR thresholds in mm.

    Returns:
        ``{"per_landmark": {name: summary}, "overall": summary}`` with summaries as in
        :func:`summarize_errors`.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or errors.shape[1] != len(names):
        raise ValueError(f"errors must have shape (N, K={len(names)}), got {errors.shape}")
    return {
        "per_landmark": {name: summarize_errors(errors[:, k], thresholds) for k, name in enumerate(names)},
        "overall": summarize_errors(errors, thresholds),
    }


def significance_marker(p_value: float) -> str:
    """``"‡"`` for p < 0.001, ``"†"`` for p < 0.01, ``"*"`` for p < 0.05, otherwise ``""``."""
    for level, marker in MARKERS:
        if p_value < level:
            return marker
    return ""


def wilcoxon_marker(errors_a: np.ndarray, errors_b: np.ndarray) -> tuple[float, str]:
    """Paired two-sided Wilcoxon signed-rank test between two runs on the same images and landmarks.

    Args:
        errors_a: errors in mm of run A, any shape.
        errors_b: errors in mm of run B, same shape; only pairs where both are finite are used.

    Returns:
        (p value, marker) with markers as in :func:`significance_marker`; (1.0, "") when every difference
        is zero, (NaN, "") when there is no finite pair.
    """
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired errors must have the same shape, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    diff = a[both] - b[both]
    if diff.size == 0:
        return math.nan, ""
    if np.all(diff == 0):
        return 1.0, ""
    p_value = float(scipy_stats.wilcoxon(a[both], b[both]).pvalue)
    return p_value, significance_marker(p_value)

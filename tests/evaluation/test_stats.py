from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from landmark_lit.evaluation.stats import (
    significance_marker,
    summarize_by_landmark,
    summarize_errors,
    wilcoxon_marker,
)

NAN = math.nan


def test_summarize_known_list() -> None:
    out = summarize_errors(np.array([1.0, 2.0, 3.0, 4.0, 10.0, NAN]), thresholds=(2.0, 2.5, 4.0))
    assert out["n"] == 5 and out["n_missing"] == 1
    assert out["median_mm"] == pytest.approx(3.0)
    assert out["iqr_mm"] == pytest.approx(4.0 - 2.0)
    assert out["mre_mm"] == pytest.approx(4.0)
    assert out["sd_mm"] == pytest.approx(math.sqrt((9 + 4 + 1 + 0 + 36) / 4))
    assert (out["sdr_2mm"], out["sdr_2.5mm"], out["sdr_4mm"]) == pytest.approx((40.0, 40.0, 80.0))


def test_summarize_empty_is_nan() -> None:
    out = summarize_errors(np.array([NAN, NAN]))
    assert out["n"] == 0 and out["n_missing"] == 2
    assert all(math.isnan(out[k]) for k in ("median_mm", "iqr_mm", "mre_mm", "sd_mm", "sdr_2mm"))


def test_summarize_by_landmark_excludes_nan() -> None:
    errors = np.array([[1.0, NAN], [3.0, 5.0], [2.0, 7.0]])
    out = summarize_by_landmark(errors, ["A", "B"], thresholds=(2.0,))
    assert out["per_landmark"]["A"]["median_mm"] == pytest.approx(2.0)
    assert out["per_landmark"]["B"]["n"] == 2
    assert out["per_landmark"]["B"]["mre_mm"] == pytest.approx(6.0)
    assert out["overall"]["n"] == 5
    assert out["overall"]["mre_mm"] == pytest.approx(18.0 / 5)
    assert out["overall"]["sdr_2mm"] == pytest.approx(40.0)
    with pytest.raises(ValueError):
        summarize_by_landmark(errors, ["A"])


def test_significance_marker() -> None:
    assert [significance_marker(p) for p in (0.0009, 0.005, 0.03, 0.05, 0.5)] == ["‡", "†", "*", "", ""]


def test_wilcoxon_clearly_different_and_identical() -> None:
    a = np.linspace(1.0, 3.0, 20)
    p, marker = wilcoxon_marker(a, a + np.linspace(0.5, 1.5, 20))
    assert p == pytest.approx(2 / 2**20)  # exact test, every difference has the same sign
    assert marker == "‡"
    assert wilcoxon_marker(a, a.copy()) == (1.0, "")


def test_wilcoxon_uses_finite_pairs_only() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 3, 12), rng.uniform(0, 3, 12)
    expected = scipy_stats.wilcoxon(a, b).pvalue
    a_nan, b_nan = np.append(a, [NAN, 1.0]), np.append(b, [2.0, NAN])
    p, marker = wilcoxon_marker(a_nan, b_nan)
    assert p == pytest.approx(expected)
    assert marker == significance_marker(expected)
    with pytest.raises(ValueError):
        wilcoxon_marker(a, b[:3])

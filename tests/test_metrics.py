from __future__ import annotations

import math

import pytest
import torch

from landmark_lit.metrics import (
    ISBI_THRESHOLDS_MM,
    PAPER_THRESHOLDS_MM,
    RadialErrorMetric,
    error_summary,
    radial_errors,
    sdr,
    sdr_key,
)

NAN = float("nan")


def test_thresholds() -> None:
    assert ISBI_THRESHOLDS_MM == (2.0, 2.5, 3.0, 4.0)
    assert PAPER_THRESHOLDS_MM == pytest.approx([0.5 * i for i in range(1, 11)])
    assert [sdr_key(t) for t in ISBI_THRESHOLDS_MM] == ["sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm"]


def test_radial_errors_3_4_5_triangle_and_nan() -> None:
    pred = torch.tensor([[[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [NAN, NAN], [2.0, 2.0]]])
    ref = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [NAN, NAN]], [[0.0, 0.0], [5.0, 5.0], [3.0, 1.0]]])
    errors = radial_errors(pred, ref)
    assert errors.shape == (2, 3)
    assert errors[0, 0].item() == pytest.approx(5.0)
    assert errors[0, 1].item() == 0.0
    assert math.isnan(errors[0, 2].item()) and math.isnan(errors[1, 1].item())
    assert errors[1, 2].item() == pytest.approx(math.sqrt(2.0))


def test_radial_errors_3d_and_shape_check() -> None:
    assert radial_errors(torch.tensor([[1.0, 2.0, 2.0]]), torch.zeros(1, 3)).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="shape"):
        radial_errors(torch.zeros(2, 3), torch.zeros(2, 2))


def test_sdr_known_list_ignores_nan() -> None:
    errors = torch.tensor([0.5, 1.0, 2.0, 2.4, 3.5, 10.0, NAN])
    rates = sdr(errors, ISBI_THRESHOLDS_MM)  # 6 finite errors; an error equal to the threshold succeeds
    assert rates.tolist() == pytest.approx([300 / 6, 400 / 6, 400 / 6, 500 / 6])
    assert torch.isnan(sdr(torch.tensor([NAN]), [2.0])).all()


def test_error_summary_hand_computed() -> None:
    out = error_summary(torch.tensor([[1.0, 2.0], [NAN, 4.0], [3.0, NAN]]), [2.0, 3.5])
    assert out["n"].item() == 4
    assert out["mre_mm"].item() == pytest.approx(2.5)
    assert out["median_mm"].item() == pytest.approx(2.5)
    assert out["iqr_mm"].item() == pytest.approx(3.25 - 1.75)
    assert out["sd_mm"].item() == pytest.approx(math.sqrt(5 / 3))
    assert out["sdr_2mm"].item() == pytest.approx(50.0)
    assert out["sdr_3.5mm"].item() == pytest.approx(75.0)


def test_metric_accumulates_batches_and_ignores_missing() -> None:
    metric = RadialErrorMetric()
    ref = torch.zeros(2, 2, 2)
    metric.update(torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]]), ref)
    ref2 = torch.tensor([[[0.0, 0.0], [NAN, NAN]]])
    metric.update(torch.tensor([[[0.0, 3.0], [9.0, 9.0]]]), ref2)
    out = metric.compute()  # errors 5, 1, 2, 0, 3 (the NaN reference is left out)
    expected_keys = {"mre_mm", "sd_mm", "median_mm", "iqr_mm", "sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm"}
    assert set(out) == expected_keys
    assert out["mre_mm"].item() == pytest.approx(2.2)
    assert out["median_mm"].item() == pytest.approx(2.0)
    assert out["iqr_mm"].item() == pytest.approx(2.0)  # q75 = 3, q25 = 1
    assert out["sd_mm"].item() == pytest.approx(math.sqrt(14.8 / 4))
    assert out["sdr_2mm"].item() == pytest.approx(60.0)
    assert out["sdr_2.5mm"].item() == pytest.approx(60.0)
    assert out["sdr_3mm"].item() == pytest.approx(80.0)
    assert out["sdr_4mm"].item() == pytest.approx(80.0)


def test_metric_empty_gives_nan_and_custom_thresholds() -> None:
    metric = RadialErrorMetric(thresholds=(1.5, 5))
    out = metric.compute()
    assert set(out) == {"mre_mm", "sd_mm", "median_mm", "iqr_mm", "sdr_1.5mm", "sdr_5mm"}
    assert all(torch.isnan(v) for v in out.values())
    metric.update(
        torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64)
    )
    assert metric.compute()["sdr_1.5mm"].item() == pytest.approx(100.0)
    metric.reset()
    assert torch.isnan(metric.compute()["mre_mm"])


def test_per_landmark_errors_ignore_missing_landmarks():
    metric = RadialErrorMetric()
    ref = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [0.0, 3.0], [0.0, 0.0]]])
    ref[1, 2] = float("nan")  # landmark 2 missing in the second case
    metric.update(pred[:1], ref[:1])
    metric.update(pred[1:], ref[1:])
    per = metric.compute_per_landmark()
    torch.testing.assert_close(per["mre_mm"], torch.tensor([3.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(per["median_mm"], torch.tensor([3.0, 2.0, 2.0], dtype=torch.float64))
    assert metric.compute()["mre_mm"] == pytest.approx((5 + 1 + 2 + 1 + 3) / 5)

"""Landmark localization metrics: radial error, success detection rate (SDR) and their summary.

This module owns the definitions (used by validation logging and by :mod:`landmark_lit.evaluation`), so
training logs and evaluation reports agree. Errors are Euclidean distances in world millimetres; NaN marks
a missing landmark and is left out of every statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

ISBI_THRESHOLDS_MM: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
PAPER_THRESHOLDS_MM: tuple[float, ...] = tuple(0.5 * i for i in range(1, 11))  # 0.5, 1.0, ..., 5.0
DEFAULT_FAILURE_MM = 4.0  # an error above it is a failure, unless a dataset config says otherwise


def radial_errors(pred: Tensor, ref: Tensor) -> Tensor:
    """Euclidean distance between predicted and reference landmarks.

    Args:
        pred: (..., K, D) predicted coordinates, mm.
        ref: (..., K, D) reference coordinates, mm, same shape.

    Returns:
        (..., K) errors in mm; NaN where the reference or the prediction has a NaN coordinate.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != reference shape {tuple(ref.shape)}")
    return torch.linalg.vector_norm(pred - ref, dim=-1)


def sdr_key(threshold: float) -> str:
    """Name of the SDR entry for a threshold in mm: 2.0 -> ``sdr_2mm``, 2.5 -> ``sdr_2.5mm``."""
    return f"sdr_{threshold:g}mm"


def sdr(errors: Tensor, thresholds: Sequence[float]) -> Tensor:
    """Success detection rate: percentage of errors within each threshold (error <= t).

    Args:
        errors: errors in mm, any shape; NaN entries (missing landmarks) are left out.
        thresholds: T thresholds in mm.

    Returns:
        (T,) percentages in [0, 100]; NaN when there is no finite error.
    """
    finite = errors[~torch.isnan(errors)].reshape(-1)
    limits = torch.as_tensor(list(thresholds), dtype=torch.float64, device=errors.device)
    if finite.numel() == 0:
        return torch.full_like(limits, float("nan"))
    hits = finite.to(torch.float64)[None, :] <= limits[:, None]
    return hits.to(torch.float64).mean(dim=1) * 100.0


def error_summary(errors: Tensor, thresholds: Sequence[float] = ISBI_THRESHOLDS_MM) -> dict[str, Tensor]:
    """Summary statistics of radial errors, ignoring NaN.

    Args:
        errors: errors in mm, any shape.
        thresholds: SDR thresholds in mm.

    Returns:
        Scalar float64 tensors: ``mre_mm`` (mean), ``sd_mm`` (standard deviation, ddof = 1), ``median_mm``,
        ``iqr_mm`` (75th - 25th percentile, linear interpolation), ``n`` (number of finite errors) and
        ``sdr_{t:g}mm`` (percent) per threshold. Statistics without enough data are NaN.
    """
    finite = errors.detach().reshape(-1).to(torch.float64)
    finite = finite[~torch.isnan(finite)]
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=finite.device)
    n = finite.numel()
    if n:
        q25, q50, q75 = torch.quantile(
            finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=finite.device)
        )
    else:
        q25 = q50 = q75 = nan
    out = {
        "mre_mm": finite.mean() if n else nan,
        "sd_mm": finite.std(correction=1) if n > 1 else nan,
        "median_mm": q50,
        "iqr_mm": q75 - q25,
        "n": torch.tensor(float(n), dtype=torch.float64, device=finite.device),
    }
    for t, value in zip(thresholds, sdr(finite, thresholds), strict=True):
        out[sdr_key(t)] = value
    return out


class RadialErrorMetric(torchmetrics.Metric):
    """Accumulates radial errors in mm over batches (and DDP processes) and summarizes them.

    ``compute()`` returns ``mre_mm``, ``sd_mm``, ``median_mm``, ``iqr_mm`` and ``sdr_{t:g}mm`` per threshold,
    all ignoring missing (NaN) landmarks, NaN when nothing was accumulated.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, thresholds: Sequence[float] = ISBI_THRESHOLDS_MM, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, pred_mm: Tensor, ref_mm: Tensor) -> None:
        """Add a batch.

        Args:
            pred_mm: (B, K, D) predicted world coordinates, mm.
            ref_mm: (B, K, D) reference world coordinates, mm; NaN rows are missing landmarks.
        """
        pred_mm, ref_mm = pred_mm.detach(), ref_mm.detach()
        if not pred_mm.is_floating_point():
            pred_mm = pred_mm.float()
        if not ref_mm.is_floating_point():
            ref_mm = ref_mm.float()
        self.errors.append(radial_errors(pred_mm, ref_mm.to(pred_mm.dtype)))  # (B, K)

    def _all(self) -> Tensor:
        """(N, K) errors of every accumulated case."""
        if not len(self.errors):
            return torch.empty(0, 0, device=self.device)
        return dim_zero_cat(self.errors)

    def compute(self) -> dict[str, Tensor]:
        """Summary of all accumulated errors (see :func:`error_summary`), without ``n``."""
        summary = error_summary(self._all().reshape(-1), self.thresholds)
        summary.pop("n")
        return summary

    def compute_per_landmark(self) -> dict[str, Tensor]:
        """``mre_mm`` and ``median_mm`` of each landmark, (K,) each (NaN for a landmark never annotated)."""
        errors = self._all().double()
        # quantile (interpolating, as the overall median and numpy) rather than nanmedian (lower middle)
        return {"mre_mm": errors.nanmean(0), "median_mm": errors.nanquantile(0.5, dim=0)}


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

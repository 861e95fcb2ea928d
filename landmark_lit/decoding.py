"""Decoding network outputs into landmark coordinates (pure, batched torch functions).

Modes (SPEC section 2), per landmark over all cells g:
- regression + classification (R+C, Rlog+C): sum_g w_g (c_g + d_g) / sum_g w_g, w_g = posterior;
- regression only (R, Rlog): plain mean of c_g + d_g;
- classification only (C): sum_g w_g c_g / sum_g w_g.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from landmark_lit.networks import LandmarkOutput
from landmark_lit.targets import cell_centres, inverse_log_transform

REGRESSION_MODES = ("none", "linear", "log")


def check_modes(regression: str, classification: bool) -> None:
    if regression not in REGRESSION_MODES:
        raise ValueError(f"regression must be one of {REGRESSION_MODES}, got {regression!r}")
    if regression == "none" and not classification:
        raise ValueError("an ablation needs regression, classification or both")


def vote_weights(logits: Tensor) -> Tensor:
    """Posterior weights normalised over cells: (B, K, *grid) -> (B, K, N), rows sum to 1.

    Computed as softmax(log sigmoid(logits)), which equals sigmoid / sum(sigmoid) but stays finite when
    every posterior underflows to zero.
    """
    return torch.softmax(F.logsigmoid(logits.flatten(2).float()), dim=-1)


def decode(
    output: LandmarkOutput,
    stride: int,
    regression: str = "log",
    classification: bool = True,
    log_base: float = 10.0,
) -> Tensor:
    """Landmark coordinates (B, K, D) in input voxels from a network output on the cell grid."""
    check_modes(regression, classification)
    disp, logits = output
    b, k, d = disp.shape[:3]
    centres = cell_centres(disp.shape[3:], stride, disp.device, torch.float32).flatten(1)  # (D, N)
    if regression == "none":
        votes = centres.expand(b, k, d, -1)
    else:
        dv = disp.flatten(3).float()
        if regression == "log":
            dv = inverse_log_transform(dv, log_base)
        votes = centres + dv  # (B, K, D, N)
    if classification:
        w = vote_weights(logits)  # (B, K, N)
        return (votes * w.unsqueeze(2)).sum(-1)
    return votes.mean(-1)


@dataclass
class Decoder:
    """A configured :func:`decode` (built from the ablation config)."""

    regression: str = "log"
    classification: bool = True
    log_base: float = 10.0

    def __post_init__(self) -> None:
        check_modes(self.regression, self.classification)

    def __call__(self, output: LandmarkOutput, stride: int) -> Tensor:
        return decode(output, stride, self.regression, self.classification, self.log_base)

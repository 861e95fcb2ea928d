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


def check_modes(regression: str, classification: bool, top_k: int | None = None) -> None:
    if regression not in REGRESSION_MODES:
        raise ValueError(f"regression must be one of {REGRESSION_MODES}, got {regression!r}")
    if regression == "none" and not classification:
        raise ValueError("an ablation needs regression, classification or both")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_k is not None and not classification:
        raise ValueError("top_k ranks cells by their posterior: it needs classification")


def vote_weights(logits: Tensor, top_k: int | None = None) -> Tensor:
    """Posterior weights normalised over cells: (B, K, *grid) -> (B, K, N), rows sum to 1.

    Computed as softmax(log sigmoid(logits)), which equals sigmoid / sum(sigmoid) but stays finite when
    every posterior underflows to zero. With ``top_k``, only the k cells of highest posterior per
    landmark get weight (all cells when the grid has fewer).
    """
    log_post = F.logsigmoid(logits.flatten(2).float())
    if top_k is not None and top_k < log_post.shape[-1]:
        keep = torch.zeros_like(log_post, dtype=torch.bool)
        keep.scatter_(-1, log_post.topk(int(top_k), dim=-1).indices, True)  # exactly k, ties or not
        log_post = log_post.masked_fill(~keep, float("-inf"))
    return torch.softmax(log_post, dim=-1)


def cell_votes(
    output: LandmarkOutput, stride: int, regression: str = "log", log_base: float = 10.0
) -> Tensor:
    """Where every cell places every landmark: (B, K, D, N) input voxels (cell centres for "none")."""
    disp = output[0]
    b, k, d = disp.shape[:3]
    centres = cell_centres(disp.shape[3:], stride, disp.device, torch.float32).flatten(1)  # (D, N)
    if regression == "none":
        return centres.expand(b, k, d, -1)
    dv = disp.flatten(3).float()
    return centres + (inverse_log_transform(dv, log_base) if regression == "log" else dv)


def decode(
    output: LandmarkOutput,
    stride: int,
    regression: str = "log",
    classification: bool = True,
    log_base: float = 10.0,
    top_k: int | None = None,
) -> Tensor:
    """Landmark coordinates (B, K, D) in input voxels from a network output on the cell grid."""
    check_modes(regression, classification, top_k)
    votes = cell_votes(output, stride, regression, log_base)
    if classification:
        return (votes * vote_weights(output[1], top_k).unsqueeze(2)).sum(-1)
    return votes.mean(-1)


@dataclass
class Decoder:
    """A configured :func:`decode` (built from the ablation config)."""

    regression: str = "log"
    classification: bool = True
    log_base: float = 10.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        check_modes(self.regression, self.classification, self.top_k)

    def __call__(self, output: LandmarkOutput, stride: int) -> Tensor:
        return decode(output, stride, self.regression, self.classification, self.log_base, self.top_k)

    def statistics(
        self, output: LandmarkOutput, stride: int, spacing: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`vote_statistics` with this decoder's modes."""
        return vote_statistics(
            output, stride, self.regression, self.classification, self.log_base, spacing, self.top_k
        )


def vote_statistics(
    output: LandmarkOutput,
    stride: int,
    regression: str = "log",
    classification: bool = True,
    log_base: float = 10.0,
    spacing: Tensor | None = None,
    top_k: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The decoded landmarks and two per-landmark signs of how sure the network is.

    Returns:
        coords: (B, K, D) landmarks in input voxels, as :func:`decode` gives them.
        spread: (B, K) spread of the votes around the landmark, sqrt(sum_g w_g |v_g - coords|^2), with the
            decoder's vote weights (posterior, or uniform without classification); in mm when ``spacing``
            (D,) mm per voxel is given, else in voxels. Votes that agree give a small spread.
        posterior: (B, K) the highest posterior sigmoid(logit) over the cells: near 1 when some cell is
            sure it holds the landmark (1 everywhere for regression-only decoders, which have none).
    """
    check_modes(regression, classification, top_k)
    logits = output[1]
    votes = cell_votes(output, stride, regression, log_base)
    b, k, d = votes.shape[:3]
    if classification:
        w = vote_weights(logits, top_k)
        posterior = torch.sigmoid(logits.flatten(2).float()).amax(-1)
    else:
        w = torch.full((b, k, votes.shape[-1]), 1.0 / votes.shape[-1], device=votes.device)
        posterior = torch.ones(b, k, device=votes.device)
    coords = (votes * w.unsqueeze(2)).sum(-1)
    diff = votes - coords.unsqueeze(-1)
    if spacing is not None:
        diff = diff * spacing.to(diff).view(1, 1, d, 1)
    spread = ((diff**2).sum(2) * w).sum(-1).sqrt()
    return coords, spread, posterior

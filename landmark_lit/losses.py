"""Training loss: masked MAE on (log-)displacements + alpha * BCE-with-logits on presence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark_lit.decoding import check_modes
from landmark_lit.networks import LandmarkOutput
from landmark_lit.targets import displacement_targets, log_transform, presence_targets, valid_mask


class LandmarkLoss(nn.Module):
    """Loss of one batch; each part switchable by the ablation.

    Args:
        regression: "none", "linear" (R) or "log" (Rlog: MAE between log-transformed displacements).
        classification: add ``alpha * BCE`` between presence logits and presence targets.
        alpha: weight of the BCE term.
        presence_radius: cells within this radius (in cells) of the landmark's cell count as positive.
        pos_weight: BCE weight of positive cells (1 = plain BCE).
        foreground_weight: weight the displacement error of the cells that count as positive by
            ``1 + foreground_weight`` (a weighted mean; 0 = every cell alike, the paper). On a fine grid
            almost all cells are far from a landmark, and their votes barely count at decoding; this puts
            the regression where the weighted votes come from.
    Missing landmarks (NaN) are masked out of both terms.
    """

    def __init__(
        self,
        regression: str = "log",
        classification: bool = True,
        alpha: float = 1.0,
        log_base: float = 10.0,
        presence_radius: float = 0.0,
        pos_weight: float = 1.0,
        foreground_weight: float = 0.0,
    ) -> None:
        super().__init__()
        check_modes(regression, classification)
        if foreground_weight < 0:
            raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
        self.regression, self.classification = regression, classification
        self.alpha, self.log_base = alpha, log_base
        self.presence_radius, self.pos_weight = presence_radius, pos_weight
        self.foreground_weight = foreground_weight

    def forward(
        self, output: LandmarkOutput, landmarks: Tensor, stride: int, input_shape: Sequence[int]
    ) -> dict[str, Tensor]:
        """Args: output on the grid; landmarks (B, K, D) input voxels (NaN = missing); the input's spatial
        shape (before padding). Returns ``loss`` and, for enabled parts, ``loss_reg`` and ``loss_cls``."""
        disp, logits = output
        grid = disp.shape[3:]
        d = len(grid)
        mask = valid_mask(landmarks)  # (B, K)
        n_valid = mask.sum()
        parts: dict[str, Tensor] = {}
        total = disp.new_zeros(())
        if n_valid == 0:  # nothing annotated: a zero loss that keeps the graph connected
            return {"loss": (disp.sum() + logits.sum()) * 0.0}
        presence = None
        if self.classification or self.foreground_weight > 0:
            presence = presence_targets(landmarks, grid, stride, input_shape, self.presence_radius)
        if self.regression != "none":
            target = displacement_targets(landmarks, grid, stride)
            pred = disp
            if self.regression == "log":
                target = log_transform(target, self.log_base)
            err = (pred - target.nan_to_num(0.0)).abs()  # (B, K, D, *grid)
            m = mask.view(*mask.shape, *([1] * (d + 1)))
            if self.foreground_weight > 0:
                w = (1.0 + self.foreground_weight * presence).unsqueeze(2) * m  # (B, K, 1, *grid)
                parts["loss_reg"] = (err * w).sum() / (w.sum() * d)
            else:
                parts["loss_reg"] = (err * m).sum() / (n_valid * d * grid.numel())
            total = total + parts["loss_reg"]
        if self.classification:
            target = presence
            pw = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
            m = mask.view(*mask.shape, *([1] * d))
            parts["loss_cls"] = (bce * m).sum() / (n_valid * grid.numel())
            total = total + self.alpha * parts["loss_cls"]
        parts["loss"] = total
        return parts

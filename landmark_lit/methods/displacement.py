"""The proposed method (Noothout et al. 2020): per cell of the network's output grid, a displacement to
every landmark and the presence of each landmark in the cell; trained with a masked MAE on (log-)
displacements plus alpha x BCE on presence, decoded by averaging the cells' votes weighted by their
posteriors. Targets, loss, vote decoding and the vote field, all pure batched torch functions.

Conventions (SPEC section 2): voxel centres at integer indices; with output stride ``s``, cell ``g`` covers
input voxels ``g*s .. (g+1)*s - 1``, i.e. the continuous interval ``[g*s - 0.5, (g+1)*s - 0.5)`` per axis,
and its centre is ``c_g = g*s + (s - 1) / 2``. Landmarks are (B, K, D) in voxel coordinates of the network
input, in array axis order; NaN marks a missing landmark.

Decoding modes, per landmark over all cells g (the paper's ablation, ``conf/ablation/``):
- regression + classification (R+C, Rlog+C): sum_g w_g (c_g + d_g) / sum_g w_g, w_g = posterior;
- regression only (R, Rlog): plain mean of c_g + d_g;
- classification only (C): sum_g w_g c_g / sum_g w_g.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark_lit.methods.base import Method, register, valid_mask
from landmark_lit.networks import DisplacementOutput, GlobalNet, LocalNet

REGRESSION_MODES = ("none", "linear", "log")
# the base b of the log transform t(d) = sign(d) log_b(1 + |d|) (the paper's 10; `ablation.log_base` in configs)
DEFAULT_LOG_BASE = 10.0

# --- targets ---------------------------------------------------------------------------------------


def cell_centres(grid_shape: Sequence[int], stride: int, device=None, dtype=torch.float32) -> Tensor:
    """Centres of all cells: (D, *grid) in input voxel coordinates."""
    axes = [torch.arange(n, device=device, dtype=dtype) * stride + (stride - 1) / 2 for n in grid_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def displacement_targets(landmarks: Tensor, grid_shape: Sequence[int], stride: int) -> Tensor:
    """Displacement from every cell centre to every landmark, d = p - c_g.

    Args:
        landmarks: (B, K, D) input voxel coordinates (may lie outside the input; NaN = missing).
    Returns:
        (B, K, D, *grid); NaN for missing landmarks.
    """
    d = len(grid_shape)
    centres = cell_centres(grid_shape, stride, landmarks.device, landmarks.dtype)
    return landmarks.view(*landmarks.shape, *([1] * d)) - centres


def presence_targets(
    landmarks: Tensor, grid_shape: Sequence[int], stride: int, input_shape: Sequence[int], radius: float = 0.0
) -> Tensor:
    """Presence of each landmark in each cell: (B, K, *grid) float in {0, 1}.

    A cell is positive if it contains the landmark (``radius = 0``) or lies within ``radius`` cells
    (Euclidean distance between cell indices) of the cell that contains it. A landmark outside the input
    (outside ``[-0.5, n - 0.5)`` on any axis) or missing gives all zeros.
    """
    d = len(grid_shape)
    size = torch.tensor(list(input_shape), device=landmarks.device, dtype=landmarks.dtype)
    inside = ((landmarks >= -0.5) & (landmarks < size - 0.5)).all(-1) & valid_mask(landmarks)  # (B, K)
    # floor((p + 0.5) / s): the cell whose voxels contain p; equals floor(p / s) for integer p.
    own_cell = torch.floor((landmarks.nan_to_num(0.0) + 0.5) / stride)  # (B, K, D)
    idx = cell_centres(
        grid_shape, 1, landmarks.device, landmarks.dtype
    )  # (D, *grid): stride 1 gives g itself
    diff = idx - own_cell.view(*own_cell.shape, *([1] * d))  # (B, K, D, *grid)
    if radius > 0:
        hit = (diff**2).sum(2) <= radius**2 + 1e-6
    else:
        hit = (diff == 0).all(2)
    return (hit & inside.view(*inside.shape, *([1] * d))).to(landmarks.dtype)


def log_transform(d: Tensor, base: float = 10.0) -> Tensor:
    """t(d) = sign(d) * log_base(1 + |d|), per component."""
    return torch.sign(d) * torch.log1p(d.abs()) / math.log(base)


def inverse_log_transform(y: Tensor, base: float = 10.0) -> Tensor:
    """Inverse of :func:`log_transform`: sign(y) * (base^|y| - 1)."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log(base))


# --- decoding --------------------------------------------------------------------------------------


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
    output: DisplacementOutput, stride: int, regression: str = "log", log_base: float = DEFAULT_LOG_BASE
) -> Tensor:
    """Where every cell places every landmark: (B, K, D, N) input voxels (cell centres for "none")."""
    disp = output[0]
    b, k, d = disp.shape[:3]
    centres = cell_centres(disp.shape[3:], stride, disp.device, torch.float32).flatten(1)  # (D, N)
    if regression == "none":
        return centres.expand(b, k, d, -1)
    dv = disp.flatten(3).float()
    return centres + (inverse_log_transform(dv, log_base) if regression == "log" else dv)


def cell_pull_shape(phase: Tensor, stride: int) -> Tensor:
    """The shape of a pull toward the centres of the network's cells at ``phase`` (input voxels, any real:
    taken modulo the stride): sin(2 pi (c - phase) / stride), c = (stride - 1) / 2 the centre of a cell;
    positive below the centre, negative above, zero at the centre and half a cell from it."""
    return torch.sin(2 * math.pi * ((stride - 1) / 2 - phase) / stride)


def remove_cell_pull(coords: Tensor, stride: int, pull: float, steps: int = 6) -> Tensor:
    """Decoded ``coords`` (input voxels) without a pull of amplitude ``pull`` (input voxels) toward the cell
    centres: the t with coords = t + pull * cell_pull_shape(t), by Newton steps (t + pull * shape(t) rises
    monotonically while |pull| < stride / (2 pi), checked)."""
    if pull == 0.0:
        return coords
    w = 2 * math.pi / stride
    if not abs(pull) * w < 1:
        raise ValueError(f"cell_pull {pull} too large for stride {stride} (|pull| < {1 / w:.3f})")
    t = coords
    for _ in range(steps):
        slope = 1 - pull * w * torch.cos(w * ((stride - 1) / 2 - t))
        t = t - (t + pull * cell_pull_shape(t, stride) - coords) / slope
    return t


def decode(
    output: DisplacementOutput,
    stride: int,
    regression: str = "log",
    classification: bool = True,
    log_base: float = DEFAULT_LOG_BASE,
    top_k: int | None = None,
    cell_pull: float = 0.0,
) -> Tensor:
    """Landmark coordinates (B, K, D) in input voxels from a network output on the cell grid (without a
    pull of amplitude ``cell_pull`` toward the cell centres: :func:`remove_cell_pull`)."""
    check_modes(regression, classification, top_k)
    votes = cell_votes(output, stride, regression, log_base)
    if classification:
        coords = (votes * vote_weights(output[1], top_k).unsqueeze(2)).sum(-1)
    else:
        coords = votes.mean(-1)
    return remove_cell_pull(coords, stride, cell_pull)


@dataclass
class VoteDecoder:
    """A configured :func:`decode` (built from the ablation config)."""

    regression: str = "log"
    classification: bool = True
    log_base: float = DEFAULT_LOG_BASE
    top_k: int | None = None
    # amplitude (input voxels) of the answers' pull toward the cell centres, removed after the vote
    # (fitted on validation sub-images: landmark_lit.inference.cell_pull); 0: none
    cell_pull: float = 0.0

    def __post_init__(self) -> None:
        check_modes(self.regression, self.classification, self.top_k)
        pull = self.cell_pull
        if isinstance(pull, bool) or not (isinstance(pull, int | float) and math.isfinite(pull)):
            raise ValueError(f"cell_pull must be a finite number, got {self.cell_pull!r}")

    def __call__(self, output: DisplacementOutput, stride: int) -> Tensor:
        return decode(
            output, stride, self.regression, self.classification, self.log_base, self.top_k, self.cell_pull
        )

    def statistics(
        self, output: DisplacementOutput, stride: int, spacing: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`vote_statistics` with this decoder's modes; the coordinates without the cell pull (the
        spread is measured around the vote's own mean)."""
        coords, spread, posterior = vote_statistics(
            output, stride, self.regression, self.classification, self.log_base, spacing, self.top_k
        )
        return remove_cell_pull(coords, stride, self.cell_pull), spread, posterior


def vote_statistics(
    output: DisplacementOutput,
    stride: int,
    regression: str = "log",
    classification: bool = True,
    log_base: float = DEFAULT_LOG_BASE,
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


# --- loss ------------------------------------------------------------------------------------------


class DisplacementLoss(nn.Module):
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
        log_base: float = DEFAULT_LOG_BASE,
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
        self, output: DisplacementOutput, landmarks: Tensor, stride: int, input_shape: Sequence[int]
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


# --- the method ------------------------------------------------------------------------------------


class DisplacementMethod(Method):
    """The proposed method: :class:`GlobalNet` on whole images, :class:`LocalNet` per landmark on sub-images.

    Decoder descriptions: ``regression`` (one of :data:`REGRESSION_MODES`), ``classification`` (bool),
    ``log_base`` (number) and, only when set, ``top_k`` (a positive integer; needs classification) and
    ``cell_pull`` (a number, input voxels).
    """

    name = "displacement"
    networks = {"global": GlobalNet, "local": LocalNet}
    loss_class = DisplacementLoss
    decoder_class = VoteDecoder
    has_votes = True
    exportable = True

    def describe_decoder(self, decoder: VoteDecoder) -> dict[str, Any]:
        description: dict[str, Any] = {
            "regression": str(decoder.regression),
            "classification": bool(decoder.classification),
            "log_base": float(decoder.log_base),
        }
        if decoder.top_k is not None:  # written only when set: older descriptions stay as they were
            description["top_k"] = int(decoder.top_k)
        if decoder.cell_pull != 0.0:
            description["cell_pull"] = float(decoder.cell_pull)
        return description

    def decoder_from_description(self, description: Any) -> VoteDecoder:
        keys = {"regression", "classification", "log_base", "top_k", "cell_pull"}
        if not isinstance(description, dict) or set(description) - keys:
            raise ValueError(f"invalid decoder {description!r}")
        log_base = description.get("log_base", DEFAULT_LOG_BASE)
        classification = description.get("classification", True)
        if (
            not isinstance(log_base, int | float)
            or isinstance(log_base, bool)
            or not math.isfinite(log_base)
            or not isinstance(classification, bool)
        ):
            raise ValueError(f"invalid decoder {description!r}")
        try:
            return VoteDecoder(**description)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid decoder {description!r} ({exc})") from None

    def vote_field(
        self, output: DisplacementOutput, decoder: VoteDecoder, landmark: int
    ) -> tuple[np.ndarray, np.ndarray]:
        disp = output.displacement[0, landmark].detach().float()
        if decoder.regression == "log":
            disp = inverse_log_transform(disp, decoder.log_base)
        logits = output.logits[0, landmark].detach().float()
        # without classification every cell's vote counts the same
        posterior = torch.sigmoid(logits) if decoder.classification else torch.ones_like(logits)
        return disp.cpu().numpy(), posterior.cpu().numpy()


DISPLACEMENT = register(DisplacementMethod())

"""Encoding landmarks into per-cell training targets (pure, batched torch functions).

Conventions (SPEC section 2): voxel centres at integer indices; with output stride ``s``, cell ``g`` covers
input voxels ``g*s .. (g+1)*s - 1``, i.e. the continuous interval ``[g*s - 0.5, (g+1)*s - 0.5)`` per axis,
and its centre is ``c_g = g*s + (s - 1) / 2``. Landmarks are (B, K, D) in voxel coordinates of the network
input, in array axis order; NaN marks a missing landmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def cell_centres(grid_shape: Sequence[int], stride: int, device=None, dtype=torch.float32) -> Tensor:
    """Centres of all cells: (D, *grid) in input voxel coordinates."""
    axes = [torch.arange(n, device=device, dtype=dtype) * stride + (stride - 1) / 2 for n in grid_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def valid_mask(landmarks: Tensor) -> Tensor:
    """(B, K) bool: True where the landmark is annotated (all coordinates finite)."""
    return torch.isfinite(landmarks).all(dim=-1)


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

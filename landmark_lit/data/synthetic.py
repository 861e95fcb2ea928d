"""Seeded synthetic 2D/3D images with landmarks that need context to be found.

Each case is a randomly posed (rotated, anisotropically scaled, shifted) "phantom" built from soft
ellipsoids of different intensities, plus bright distractor blobs, a smooth bias field and noise. The
landmarks are fixed points of the phantom's own frame: boundary points, the centre of a dark inclusion,
a point in empty space between two parts, and the centre of a bright nodule that has look-alike
distractors. None is simply the brightest voxel; all move exactly with the pose. Cases are generated on
the fly from ``seed + index`` and are identical on every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from landmark_lit.data.cases import Case

# (centre, radii, intensity) in the phantom frame [-1, 1]^3; 2D uses the first two axes.
_PARTS: list[tuple[tuple[float, float, float], tuple[float, float, float], float]] = [
    ((0.0, 0.0, 0.0), (0.55, 0.42, 0.48), 0.45),  # body
    ((0.05, 0.55, 0.0), (0.24, 0.2, 0.24), 0.75),  # head
    ((0.15, -0.1, 0.1), (0.14, 0.12, 0.14), -0.35),  # dark inclusion inside the body
    ((-0.28, 0.12, -0.18), (0.07, 0.07, 0.07), 0.45),  # nodule: with the body as bright as a distractor
    ((0.55, -0.42, 0.0), (0.11, 0.28, 0.11), 0.6),  # limb
]
LANDMARKS: dict[str, tuple[float, float, float]] = {
    "head_top": (0.05, 0.75, 0.0),
    "inclusion_centre": (0.15, -0.1, 0.1),
    "nodule": (-0.28, 0.12, -0.18),
    "limb_tip": (0.55, -0.7, 0.0),
    "body_left": (-0.55, 0.0, 0.0),
    "empty_space": (0.2, -0.55, 0.0),  # between the body and the limb, touching neither
}


def _soft_inside(r: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (r < 1), 0 outside, with a smooth edge of width ``edge``."""
    return 0.5 * (1.0 - np.tanh((r - 1.0) / (2.0 * edge)))


def _rotation(rng: np.random.Generator, d: int, max_deg: float) -> np.ndarray:
    if d == 2:
        a = math.radians(rng.uniform(-max_deg, max_deg))
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):
        a = math.radians(rng.uniform(-max_deg, max_deg) / math.sqrt(3))
        g = np.eye(3)
        i, j = axes
        g[i, i] = g[j, j] = math.cos(a)
        g[i, j], g[j, i] = -math.sin(a), math.sin(a)
        r = g @ r
    return r


class SyntheticLandmarks:
    """A :class:`~landmark_lit.data.cases.CaseSource` of synthetic phantoms.

    Args:
        spatial_dims: 2 or 3.
        num_cases: number of cases.
        seed: case i is generated from ``seed * 100003 + i``; use different seeds per split.
        size: voxels per axis.
        spacing: voxel spacing in mm (a number or one per axis).
        noise: standard deviation of the additive Gaussian noise.
        distractors: number of bright look-alike blobs.
        max_rotation_deg, scale_range, max_shift: pose randomness (shift in units of the half field of view).
        landmarks: subset of :data:`LANDMARKS` names (default: all six).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        num_cases: int = 32,
        seed: int = 0,
        size: int | Sequence[int] = 48,
        spacing: float | Sequence[float] = 2.0,
        noise: float = 0.08,
        distractors: int = 3,
        max_rotation_deg: float = 25.0,
        scale_range: tuple[float, float] = (0.85, 1.15),
        max_shift: float = 0.15,
        landmarks: Sequence[str] | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims, self.num_cases, self.seed = spatial_dims, num_cases, seed
        self.size = np.broadcast_to(np.asarray(size, dtype=int), (spatial_dims,)).copy()
        self.spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (spatial_dims,)).copy()
        self.noise, self.distractors = noise, distractors
        self.max_rotation_deg, self.scale_range, self.max_shift = max_rotation_deg, scale_range, max_shift
        self.landmark_names = list(landmarks) if landmarks is not None else list(LANDMARKS)
        unknown = set(self.landmark_names) - set(LANDMARKS)
        if unknown:
            raise ValueError(f"unknown synthetic landmarks {sorted(unknown)}; known: {list(LANDMARKS)}")

    def __len__(self) -> int:
        return self.num_cases

    def __getitem__(self, index: int) -> Case:
        if not 0 <= index < self.num_cases:
            raise IndexError(index)
        d = self.spatial_dims
        rng = np.random.default_rng(self.seed * 100003 + index)
        rot = _rotation(rng, d, self.max_rotation_deg)
        lin = rot @ np.diag(rng.uniform(*self.scale_range, size=d))  # phantom frame -> normalised image
        shift = rng.uniform(-self.max_shift, self.max_shift, size=d)
        half = self.size * self.spacing / 2.0  # half field of view in mm
        # world mm = voxel * spacing - half (world origin at the image centre); normalised = world / half
        affine = np.eye(d + 1)
        affine[:d, :d] = np.diag(self.spacing)
        affine[:d, d] = -half + self.spacing / 2.0
        axes = [np.arange(n) * s - h + s / 2.0 for n, s, h in zip(self.size, self.spacing, half, strict=True)]
        world = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (*S, D)
        frame = (world / half - shift) @ np.linalg.inv(lin).T  # phantom-frame coordinates of every voxel
        img = np.zeros(tuple(self.size), dtype=np.float64)
        edge = 0.03
        for centre, radii, value in _PARTS:
            r = np.linalg.norm((frame - np.array(centre[:d])) / np.array(radii[:d]), axis=-1)
            img += value * _soft_inside(r, edge)
        for _ in range(self.distractors):  # look-alikes of the nodule, anywhere in the field of view
            c = rng.uniform(-0.85, 0.85, size=d)
            r = np.linalg.norm((world / half - c) / 0.07, axis=-1)
            img += 0.9 * _soft_inside(r, edge)
        bias = 1.0 + 0.2 * np.sin(world / half @ rng.normal(size=d) * 1.5 + rng.uniform(0, 2 * np.pi))
        img = img * bias + rng.normal(scale=self.noise, size=img.shape)
        pts = np.array([LANDMARKS[n][:d] for n in self.landmark_names])
        landmarks_world = ((pts @ lin.T) + shift) * half
        return Case(
            case_id=f"synthetic{d}d_s{self.seed}_{index:04d}",
            image=img[None].astype(np.float32),
            affine=affine,
            landmarks_world=landmarks_world,
        )

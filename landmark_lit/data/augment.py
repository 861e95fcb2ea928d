"""Training augmentation, one sample or a whole stack of sub-images at once; landmarks follow the image.

The spatial transform is a small random affine per image, applied to the whole stack in one call of
MONAI's batched ``AffineTransform`` (pull convention of ``scipy.ndimage.affine_transform``: output voxel
``o`` samples input ``theta @ o``, bilinear, zeros outside). A landmark moves by the inverse,
``inv(theta) @ p``, so image and landmarks cannot drift apart. The intensity changes are those of MONAI's
``RandAdjustContrast``, ``RandScaleIntensity``, ``RandShiftIntensity`` and ``RandGaussianNoise``, each drawn
per image and computed for the stack at once. The local stage's 19 sub-images of a case are augmented
in one call instead of 19 (``experiments/bench/RESULTS.md``, issue 23).

All randomness comes from torch's generator, so Lightning's per-worker seeding decides it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from monai.networks.layers import AffineTransform
from torch import Tensor

from landmark_lit.data.appearance import Appearance
from landmark_lit.data.transforms import mirror_permutation

_WARP = AffineTransform(
    normalized=False, mode="bilinear", padding_mode="zeros", align_corners=True, reverse_indexing=True
)


@dataclass
class Augmentation:
    """Random small affine and intensity changes of training images (C, *spatial) or stacks (N, C, *spatial).

    Attributes:
        prob: probability of the spatial transform per image.
        rotate_deg: maximum rotation (per plane in 3D), degrees.
        scale: maximum relative scaling per axis (0.1 = +-10 %), each axis drawn on its own.
        scale_axes: the spatial axes that are scaled (None: every axis). The default ``(0,)``, the first
            axis only, is what MONAI's ``RandAffine`` does with a single ``scale_range`` value, with which
            the chosen ISBI 2015 models were trained.
        translate: maximum shift in voxels per axis.
        intensity_prob: probability of each intensity transform (contrast gamma, scale, shift, noise).
        contrast_gamma: range of the contrast gamma (intensities rescaled to [0, 1], raised to gamma,
            rescaled back).
        intensity_scale: intensities multiplied by ``1 + u``, ``u`` uniform in +-this.
        intensity_shift: intensities shifted by ``u``, ``u`` uniform in +-this.
        noise_std: additive Gaussian noise, its standard deviation drawn uniformly from [0, this].
        keep_inside: for sub-images that must keep their landmark (local stage): retry a spatial draw
            that would move a landmark closer than this many voxels to the border, else leave the
            image unchanged. None: no check (global stage).
        retries: spatial draws tried per image before leaving it unchanged (with ``keep_inside``).
        appearance: intensity curves, blur / sharpening and border cuts after the rest
            (:class:`~landmark_lit.data.appearance.Appearance`, or its arguments as a mapping); None: none.

    The defaults are those of ``conf/augmentation/default.yaml``, which lists every one of them.
    """

    prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    scale_axes: tuple[int, ...] | None = (0,)
    translate: float = 0.0
    intensity_prob: float = 0.5
    contrast_gamma: tuple[float, float] = (0.7, 1.5)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    keep_inside: float | None = None
    retries: int = 3
    appearance: Appearance | None = None

    def __post_init__(self) -> None:
        if isinstance(self.appearance, Mapping):
            self.appearance = Appearance(**self.appearance)
        gamma = self.contrast_gamma
        self.contrast_gamma = (float(gamma[0]), float(gamma[1]))  # a YAML list -> a plain tuple
        if self.scale_axes is not None:
            self.scale_axes = tuple(int(a) for a in self.scale_axes)

    def __call__(self, image: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
        """Augment one image (C, *spatial) with (K, D) voxel landmarks, or a stack (N, C, *spatial) with
        (N, K, D), each image drawn on its own (NaN = missing, left NaN)."""
        single = landmarks.ndim == 2
        images, points = (image[None], landmarks[None]) if single else (image, landmarks)
        if images.ndim != points.shape[-1] + 2 or images.shape[0] != points.shape[0]:
            raise ValueError(
                f"augmentation needs (N, C, *spatial) images with (N, K, D) landmarks, got "
                f"{tuple(image.shape)} and {tuple(landmarks.shape)}"
            )
        images, points = self._spatial(images.float(), points)
        if self.intensity_prob > 0:
            images = self._intensity(images)
        if self.appearance is not None:
            images = self.appearance(images)
        images = images.contiguous()
        return (images[0], points[0]) if single else (images, points)

    def _spatial(self, images: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        n, d = images.shape[0], points.shape[-1]
        if self.prob <= 0:
            return images, points
        apply = torch.rand(n) < self.prob
        if not bool(apply.any()):
            return images, points
        tries = max(1, self.retries) if self.keep_inside is not None else 1
        size = torch.tensor(images.shape[2:], dtype=torch.float64)
        theta = self._draw(tries * n, d, size).view(tries, n, d + 1, d + 1)
        moved = _apply(torch.linalg.inv(theta), points.double()[None].expand(tries, -1, -1, -1))
        ok = torch.ones(tries, n, dtype=torch.bool)
        if self.keep_inside is not None:
            m = float(self.keep_inside)
            inside = (moved >= m) & (moved <= size - 1 - m) | ~torch.isfinite(moved)
            ok = inside.all(-1).all(-1)
        first = torch.argmax(ok.to(torch.int8), dim=0)  # the first good draw of each image
        chosen = apply & ok.any(0)
        idx = torch.nonzero(chosen).flatten()
        if idx.numel() == 0:
            return images, points
        pick = theta[first[idx], idx]
        images, points = images.clone(), points.clone()
        images[idx] = _WARP(images[idx], pick.float())
        points[idx] = moved[first[idx], idx].to(points.dtype)
        return images, points

    def _draw(self, n: int, d: int, size: Tensor) -> Tensor:
        """(n, D + 1, D + 1) pull matrices in voxel coordinates, about the image centre: rotation,
        scaling and shift composed as MONAI's ``RandAffine`` does (in = R (S out + t) about the centre)."""
        rot = math.radians(self.rotate_deg)
        angles = (torch.rand(n, 1 if d == 2 else 3, dtype=torch.float64) * 2 - 1) * rot
        scale = 1 + (torch.rand(n, d, dtype=torch.float64) * 2 - 1) * self.scale
        if self.scale_axes is not None:
            bad = [a for a in self.scale_axes if not 0 <= a < d]
            if bad:
                raise ValueError(f"augmentation scale_axes {bad} out of range for a {d}D image")
            keep = torch.zeros(d, dtype=torch.bool)
            keep[list(self.scale_axes)] = True
            scale = torch.where(keep, scale, torch.ones_like(scale))
        shift = (torch.rand(n, d, dtype=torch.float64) * 2 - 1) * self.translate
        r = _rotation(angles, d)
        linear = r @ torch.diag_embed(scale)
        centre = (size - 1) / 2
        theta = torch.eye(d + 1, dtype=torch.float64).repeat(n, 1, 1)
        theta[:, :d, :d] = linear
        theta[:, :d, d] = centre - (linear @ centre) + (r @ shift[..., None])[..., 0]
        return theta

    def _intensity(self, x: Tensor) -> Tensor:
        """MONAI's four intensity changes, each with ``intensity_prob`` per image, on the whole stack."""
        n = x.shape[0]
        shape = (n,) + (1,) * (x.ndim - 1)

        def on() -> Tensor:
            return (torch.rand(n) < self.intensity_prob).view(shape)

        def uniform(lo: float, hi: float) -> Tensor:
            return (lo + (hi - lo) * torch.rand(n)).view(shape)

        flat = x.reshape(n, -1)
        lo = flat.min(1).values.view(shape)
        span = flat.max(1).values.view(shape) - lo
        gamma = uniform(*self.contrast_gamma)
        x = torch.where(on(), ((x - lo) / (span + 1e-7)) ** gamma * span + lo, x)  # RandAdjustContrast
        s, o = self.intensity_scale, self.intensity_shift
        x = x * torch.where(on(), 1 + uniform(-s, s), 1.0)  # RandScaleIntensity
        x = x + torch.where(on(), uniform(-o, o), 0.0)  # RandShiftIntensity
        std = torch.where(on(), uniform(0.0, self.noise_std), 0.0)  # RandGaussianNoise, its std drawn
        return x + torch.randn_like(x) * std


def _rotation(angles: Tensor, d: int) -> Tensor:
    """(n, D, D) rotations: one angle in 2D; in 3D one per plane (1, 2), (0, 2), (0, 1), composed."""

    def plane(a: Tensor, i: int, j: int) -> Tensor:
        r = torch.eye(d, dtype=torch.float64).repeat(a.shape[0], 1, 1)
        c, s = torch.cos(a), torch.sin(a)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        return r

    if d == 2:
        return plane(angles[:, 0], 0, 1)
    return plane(angles[:, 0], 1, 2) @ plane(angles[:, 1], 0, 2) @ plane(angles[:, 2], 0, 1)


def _apply(matrix: Tensor, points: Tensor) -> Tensor:
    """(..., D + 1, D + 1) homogeneous matrices applied to (..., K, D) points."""
    d = points.shape[-1]
    return points @ matrix[..., :d, :d].transpose(-1, -2) + matrix[..., None, :d, d]


@dataclass
class RandomFlip:
    """Mirror a whole working image along array axes, each with probability ``prob``; landmarks follow.

    A flip of axis ``a`` maps voxel coordinate ``p_a`` to ``n_a - 1 - p_a``. A flip that mirrors left and
    right anatomy must also swap the names of paired landmarks (SPEC section 3): ``pairs`` lists the
    landmark index pairs ``[i, j]`` whose coordinates trade places when an odd number of the axes is
    flipped. In a lateral projection (a cephalogram) every landmark lies on or is projected onto the
    mid-sagittal plane, so ``pairs`` is empty and a flipped image is a patient facing the other way.

    It runs on the whole working image before cropping (global and local training), so the sub-image of
    a landmark is cut around the landmark's flipped position and a swapped pair keeps each network's
    landmark.

    Attributes:
        axes: spatial array axes (0 = first spatial axis) that may be flipped.
        pairs: landmark pairs swapped by a flip, as indices or as names (:meth:`for_landmarks` turns
            names into indices).
        prob: probability of flipping each axis.
    """

    axes: tuple[int, ...] = (0,)
    pairs: tuple[tuple[int | str, int | str], ...] = ()
    prob: float = 0.5

    def __post_init__(self) -> None:
        self.axes = tuple(int(a) for a in self.axes)
        self.pairs = tuple(tuple(pair) for pair in self.pairs)  # type: ignore[misc]
        if any(len(pair) != 2 for pair in self.pairs):
            raise ValueError(f"flip pairs must be pairs, got {[list(p) for p in self.pairs]}")
        flat = [i for pair in self.pairs for i in pair]
        if len(set(flat)) != len(flat):
            raise ValueError(f"flip pairs must not share landmarks, got {list(self.pairs)}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"flip prob must be in [0, 1], got {self.prob}")

    def for_landmarks(self, names: list[str]) -> RandomFlip:
        """This flip with its pairs as indices into ``names`` (the landmarks of a run). A pair of which
        only one landmark is in the run is refused: a mirror would give that landmark its partner's place."""
        index = {n: i for i, n in enumerate(names)}
        pairs = []
        for pair in self.pairs:
            present = [(p if isinstance(p, int) else index.get(p)) for p in pair]
            named = [str(p) for p in pair]
            if all(i is None for i in present):
                continue
            if any(i is None for i in present):
                raise ValueError(
                    f"flip pair {named}: only one of them is among the landmarks {names}; a left-right "
                    "flip would put it at its partner's place (drop data.flip or select both)"
                )
            pairs.append((int(present[0]), int(present[1])))  # type: ignore[arg-type]
        return RandomFlip(axes=self.axes, pairs=tuple(pairs), prob=self.prob)

    def permutation(self, num_landmarks: int) -> list[int]:
        """Landmark order after a left-right flip: row k of the flipped landmarks is row perm[k]
        (:func:`~landmark_lit.data.transforms.mirror_permutation`)."""
        return mirror_permutation(self.pairs, num_landmarks)

    def __call__(self, image: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
        """(C, *spatial) image and (K, D) voxel landmarks (NaN = missing) -> both, possibly mirrored."""
        d = image.ndim - 1
        bad = [a for a in self.axes if not 0 <= a < d]
        if bad:
            raise ValueError(f"flip axes {bad} out of range for a {d}D image")
        flipped = [a for a in self.axes if self.prob > 0 and bool(torch.rand(()) < self.prob)]
        if not flipped:
            return image, landmarks
        image = torch.flip(image, [a + 1 for a in flipped])
        landmarks = landmarks.clone()
        for a in flipped:
            landmarks[:, a] = (image.shape[a + 1] - 1) - landmarks[:, a]
        if len(flipped) % 2 == 1 and self.pairs:
            landmarks = landmarks[self.permutation(landmarks.shape[0])]
        return image.contiguous(), landmarks

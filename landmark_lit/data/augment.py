"""Training augmentation with MONAI transforms; landmarks follow the image through its affine.

MONAI's ``RandAffine`` on a ``MetaTensor`` resamples the image and updates the tensor's affine so that
every structure keeps its world position. A landmark's voxel coordinates after the transform are
therefore ``inv(A_after) @ A_before @ p``, the same rule as for resampling; no separate point
transform can drift from the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
)
from torch import Tensor

from landmark_lit.data.transforms import mirror_permutation, world_to_voxel


@dataclass
class Augmentation:
    """Random small affine and intensity changes of a training sample (C, *spatial).

    Attributes:
        prob: probability of the spatial transform per sample.
        rotate_deg: maximum rotation (per plane in 3D), degrees.
        scale: maximum relative scaling per axis (0.1 = +-10 %).
        translate: maximum shift in voxels per axis.
        intensity_prob: probability of each intensity transform (contrast gamma, scale, shift, noise).
        contrast_gamma: range of the contrast gamma (intensities rescaled to [0, 1], raised to gamma,
            rescaled back).
        intensity_scale: intensities multiplied by ``1 + u``, ``u`` uniform in +-this.
        intensity_shift: intensities shifted by ``u``, ``u`` uniform in +-this.
        noise_std: additive Gaussian noise, its standard deviation drawn uniformly from [0, this].
        keep_inside: for sub-images that must keep their landmark (local stage): retry a spatial draw
            that would move a landmark closer than this many voxels to the border, else leave the
            sample unchanged. None: no check (global stage).
        retries: spatial draws tried per sample before leaving it unchanged (with ``keep_inside``).

    The defaults are those of ``conf/augmentation/default.yaml``, which lists every one of them.
    """

    prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.0
    intensity_prob: float = 0.5
    contrast_gamma: tuple[float, float] = (0.7, 1.5)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    keep_inside: float | None = None
    retries: int = 3

    def __post_init__(self) -> None:
        gamma = self.contrast_gamma
        self.contrast_gamma = (float(gamma[0]), float(gamma[1]))  # a YAML list -> a plain tuple
        self._intensity = Compose(
            [
                RandAdjustContrast(prob=self.intensity_prob, gamma=self.contrast_gamma),
                RandScaleIntensity(factors=self.intensity_scale, prob=self.intensity_prob),
                RandShiftIntensity(offsets=self.intensity_shift, prob=self.intensity_prob),
                RandGaussianNoise(prob=self.intensity_prob, std=self.noise_std),
            ]
        )

    def _spatial(self, d: int) -> RandAffine:
        rot = math.radians(self.rotate_deg)
        rotate_range = rot if d == 2 else (rot, rot, rot)
        t = RandAffine(
            prob=1.0,
            rotate_range=rotate_range,
            scale_range=self.scale,
            translate_range=self.translate,
            padding_mode="zeros",
            mode="bilinear",
        )
        t.set_random_state(_torch_seed())
        return t

    def __call__(self, image: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
        """Augment one sample; ``landmarks`` (K, D) voxel coordinates of ``image`` (NaN = missing)."""
        d = image.ndim - 1
        if self.prob > 0 and torch.rand(()) < self.prob:
            size = np.array(image.shape[1:], dtype=np.float64)
            for _ in range(max(1, self.retries)):
                out = self._spatial(d)(MetaTensor(image, affine=torch.eye(d + 1, dtype=torch.float64)))
                moved = world_to_voxel(landmarks.double().numpy(), out.affine.numpy())
                if self.keep_inside is None or _inside(moved, size, self.keep_inside):
                    image = out.as_tensor().float()
                    landmarks = torch.as_tensor(moved, dtype=landmarks.dtype)
                    break
        if self.intensity_prob > 0:
            self._intensity.set_random_state(_torch_seed())
            out = self._intensity(image)
            image = out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)
        return image.contiguous(), landmarks


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


def _torch_seed() -> int:
    """A seed drawn from torch's generator, so MONAI's numpy-based randomness follows torch seeding
    (Lightning seeds every DataLoader worker differently)."""
    return int(torch.randint(0, 2**31 - 1, ()))


def _inside(points: np.ndarray, size: np.ndarray, margin: float) -> bool:
    finite = np.isfinite(points).all(-1)
    p = points[finite]
    return bool(np.all((p >= margin) & (p <= size - 1 - margin)))

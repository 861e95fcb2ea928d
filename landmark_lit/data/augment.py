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

from landmark_lit.data.transforms import world_to_voxel


@dataclass
class Augmentation:
    """Random small affine and intensity changes of a training sample (C, *spatial).

    Attributes:
        prob: probability of the spatial transform per sample.
        rotate_deg: maximum rotation (per plane in 3D), degrees.
        scale: maximum relative scaling per axis (0.1 = +-10 %).
        translate: maximum shift in voxels per axis.
        intensity_prob: probability of each intensity transform (contrast gamma, scale, shift, noise).
        keep_inside: for sub-images that must keep their landmark (local stage): retry a spatial draw
            that would move a landmark closer than this many voxels to the border, else leave the
            sample unchanged. None: no check (global stage).
    """

    prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.0
    intensity_prob: float = 0.5
    keep_inside: float | None = None
    retries: int = 3

    def __post_init__(self) -> None:
        self._intensity = Compose(
            [
                RandAdjustContrast(prob=self.intensity_prob, gamma=(0.7, 1.5)),
                RandScaleIntensity(factors=0.1, prob=self.intensity_prob),
                RandShiftIntensity(offsets=0.1, prob=self.intensity_prob),
                RandGaussianNoise(prob=self.intensity_prob, std=0.05),
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


def _torch_seed() -> int:
    """A seed drawn from torch's generator, so MONAI's numpy-based randomness follows torch seeding
    (Lightning seeds every DataLoader worker differently)."""
    return int(torch.randint(0, 2**31 - 1, ()))


def _inside(points: np.ndarray, size: np.ndarray, margin: float) -> bool:
    finite = np.isfinite(points).all(-1)
    p = points[finite]
    return bool(np.all((p >= margin) & (p <= size - 1 - margin)))

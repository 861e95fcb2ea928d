"""A whole image's intensity normalisation, applied to parts of it: the local stage needs 19 (or 32)
small sub-images of its working image, not the whole normalised image.

:func:`intensity_map` measures what :func:`~landmark_lit.data.transforms.normalize_intensity` would
measure on the whole image (its mean and standard deviation per channel; for "histeq" first the range
and cumulative histogram, the statistics then of the equalised values), and the returned
:class:`IntensityMap` normalises any part of that image to the same numbers as normalising the whole
image and then cutting the part out (to float rounding, tested). For "zscore" (the volumes) the local
stage's preprocessing then costs one pass of statistics over its working image instead of a normalised
copy of it, and the resampled image is not copied into C order either (experiments/bench/RESULTS.md,
issue 23); for "histeq" the histogram needs the equalised values, and it saves little.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landmark_lit.data.transforms import (
    INTENSITY_METHODS,
    Preprocessing,
    apply_histogram_cdf,
    histogram_cdf,
    match_channels,
    normalize_intensity,
    resample_to_spacing,
    spatial_memory_order,
)


@dataclass(frozen=True)
class IntensityMap:
    """Per-image normalisation measured on a whole (C, *spatial) image; call it on any (C, *part) of it.

    ``histogram``: (lo, hi, normalised cumulative histogram) of the equalisation, None for "zscore" and
    "none"; ``mean`` / ``std`` (C,): the z-score's statistics (of the equalised image for "histeq"),
    None for "none"."""

    method: str
    mean: Tensor | None = None
    std: Tensor | None = None
    histogram: tuple[float, float, Tensor] | None = None

    def __call__(self, part: Tensor) -> Tensor:
        if self.method == "none":
            return part
        x = part.to(torch.float32)
        if self.histogram is not None:
            x = apply_histogram_cdf(x, *self.histogram)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def intensity_map(image: Tensor, method: str) -> IntensityMap | None:
    """The normalisation ``method`` of ``image`` (C, *spatial) as an :class:`IntensityMap`; None for a
    constant image under "histeq" (MONAI's path, which the caller runs on the whole image)."""
    if method not in INTENSITY_METHODS:
        raise ValueError(f"unknown intensity normalisation {method!r} (expected one of {INTENSITY_METHODS})")
    if method == "none":
        return IntensityMap("none")
    # statistics over memory in order (a Fortran-ordered volume is reduced far slower otherwise)
    x = image.permute(0, *(a + 1 for a in spatial_memory_order(image))).reshape(image.shape[0], -1)
    x = x.to(torch.float32)
    histogram = None
    if method == "histeq":
        histogram = histogram_cdf(x)
        if histogram is None:
            return None
        x = apply_histogram_cdf(x, *histogram)
    # two passes in float32 (the mean, then the centred squares): within 1e-7 of float64 statistics here,
    # and twenty times faster than torch.std_mean's one-pass update on a cephalogram's 0.5 M pixels
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    std = centred.square_().mean(dim=1).sqrt_()
    return IntensityMap(method, mean[:, 0], _nonzero(std), histogram)


def _nonzero(std: Tensor) -> Tensor:
    """A zero standard deviation divides by 1, as MONAI's NormalizeIntensity does."""
    return torch.where(std == 0, torch.ones_like(std), std)


def working_image_for_parts(
    prep: Preprocessing,
    image: np.ndarray | Tensor,
    affine: np.ndarray,
    resampled: tuple[Tensor, np.ndarray] | None = None,
) -> tuple[Tensor, np.ndarray, Callable[[Tensor], Tensor] | None]:
    """What ``prep(image, affine)`` computes, for cutting sub-images from: the resampled image before
    normalisation and padding (in the input's memory order, not copied), its affine, and the
    normalisation to apply to each part (``transform`` of :func:`~landmark_lit.data.crops.stack_local_crops`;
    padding outside the image stays 0, as ``prep``'s far-end padding is). The parts equal those cut from
    ``prep(image, affine)`` to float rounding. None as the transform: the image came normalised (a
    constant image under "histeq"). ``resampled``: that resampling done already ((C, *spatial) and its
    affine; a streamed volume's, :mod:`landmark_lit.data.streamed`), used instead of ``image``."""
    x, aff = resampled or resample_to_spacing(
        match_channels(image, prep.channels), affine, prep.spacing, antialias=prep.antialias, contiguous=False
    )
    norm = intensity_map(x, prep.intensity)
    if norm is None:
        return normalize_intensity(x, prep.intensity), aff, None
    return x, aff, norm

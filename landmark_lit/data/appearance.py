"""Appearance augmentation for scanner and patient variation: intensity curves, blur and sharpening, and
cuts of the field of view; each drawn per image, computed for a whole stack at once.

What a model meets on another scanner or site: another intensity response (a random monotone curve, as
MONAI's ``RandHistogramShift``), another resolution or edge enhancement (a Gaussian blur, or an unsharp
mask as X-ray consoles apply), and a field of view that cuts the anatomy (a band along one border set to
the image's background). The geometry is untouched: landmarks keep their coordinates, also inside a cut
band, where the votes of the patches still visible have to find them.

It runs after :class:`~landmark_lit.data.augment.Augmentation`'s affine and intensity changes (its
``appearance`` attribute; ``conf/augmentation/robust.yaml``). All randomness comes from torch's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Appearance:
    """Random intensity curves, blur / sharpening and border cuts of images or stacks (N, C, *spatial).

    Attributes:
        curve_prob: probability of a random monotone intensity curve per image.
        curve_points: control points of the curve, the two ends fixed (MONAI's ``RandHistogramShift``).
        curve_strength: how far the curve departs from the identity (0: none, 1: control points drawn
            anywhere between their neighbours' limits).
        blur_prob: probability of a Gaussian blur per image.
        sharpen_prob: probability of an unsharp mask per image (not with a blur: one of the two at most).
        sigma: range of the Gaussian's standard deviation (voxels of the working image), for both.
        sharpen_amount: range of the unsharp mask's amount ``a``: ``x + a (x - blur(x))``.
        cut_prob: probability of a cut per image: a band along one border (axis and side drawn) set to
            the image's minimum.
        cut_max: largest width of the band, as a share of the image's extent along its axis.
    """

    curve_prob: float = 0.0
    curve_points: int = 8
    curve_strength: float = 0.5
    blur_prob: float = 0.0
    sharpen_prob: float = 0.0
    sigma: tuple[float, float] = (0.5, 1.5)
    sharpen_amount: tuple[float, float] = (0.5, 2.0)
    cut_prob: float = 0.0
    cut_max: float = 0.25

    def __post_init__(self) -> None:
        self.sigma = (float(self.sigma[0]), float(self.sigma[1]))
        self.sharpen_amount = (float(self.sharpen_amount[0]), float(self.sharpen_amount[1]))
        if self.blur_prob + self.sharpen_prob > 1.0:
            raise ValueError(
                f"blur_prob + sharpen_prob must be at most 1, got {self.blur_prob + self.sharpen_prob}"
            )
        if self.curve_points < 2 or not 0.0 <= self.cut_max < 1.0 or not 0.0 < self.sigma[0] <= self.sigma[1]:
            raise ValueError(
                f"appearance: curve_points >= 2, 0 <= cut_max < 1 and 0 < sigma[0] <= sigma[1] needed, got "
                f"{self.curve_points}, {self.cut_max}, {list(self.sigma)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        """(N, C, *spatial) float images -> the same, each image changed on its own draws."""
        n = x.shape[0]
        if self.curve_prob > 0:
            x = random_curve(x, torch.rand(n) < self.curve_prob, self.curve_points, self.curve_strength)
        if self.blur_prob > 0 or self.sharpen_prob > 0:
            u = torch.rand(n)
            blur, sharpen = (
                u < self.blur_prob,
                (u >= self.blur_prob) & (u < self.blur_prob + self.sharpen_prob),
            )
            chosen = torch.nonzero(blur | sharpen).flatten()
            if chosen.numel():
                sigma = _uniform(chosen.numel(), *self.sigma)
                amount = torch.where(sharpen[chosen], _uniform(chosen.numel(), *self.sharpen_amount), -1.0)
                x = x.clone()
                x[chosen] = _blur_or_sharpen(x[chosen], sigma, amount)
        if self.cut_prob > 0:
            x = border_cut(x, torch.rand(n) < self.cut_prob, self.cut_max)
        return x


def _uniform(n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n)


def _shape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def random_curve(x: Tensor, on: Tensor, points: int, strength: float) -> Tensor:
    """Images with ``on`` (N,) through a random monotone piecewise-linear curve of their own range: the
    range split at ``points`` equally spaced control points, the inner ones moved toward a sorted uniform
    draw by ``strength``; the ends (the image's minimum and maximum) stay where they are."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    lo = flat.min(1, keepdim=True).values
    span = (flat.max(1, keepdim=True).values - lo).clamp_min(1e-7)
    ref = torch.linspace(0.0, 1.0, points)
    drawn = torch.sort(torch.rand(n, points - 2), dim=1).values
    inner = (1 - strength) * ref[1:-1] + strength * drawn
    y = torch.cat([torch.zeros(n, 1), inner, torch.ones(n, 1)], 1)  # (N, points), increasing
    t = ((flat - lo) / span).clamp(0.0, 1.0) * (points - 1)
    i = t.floor().clamp(max=points - 2).long()
    frac = t - i
    mapped = torch.gather(y, 1, i) * (1 - frac) + torch.gather(y, 1, i + 1) * frac
    out = (mapped * span + lo).reshape(x.shape)
    return torch.where(on.view(_shape(x)), out, x)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """(N, C, *spatial) images, each blurred by a sampled Gaussian of its own ``sigma`` (N,) voxels along
    every spatial axis, truncated at 4 of the largest sigma, borders replicated (scipy's
    ``gaussian_filter`` with ``mode="nearest"``); one grouped convolution per axis for the whole stack."""
    n, c, d = x.shape[0], x.shape[1], x.ndim - 2
    radius = max(1, math.ceil(4.0 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma.double()[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(x.dtype).repeat_interleave(c, 0)  # (N C, 2r+1)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = x.reshape(1, n * c, *x.shape[2:])
    for axis in range(d):
        shape = [n * c, 1] + [1] * d
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        y = conv(F.pad(y, pad, mode="replicate"), kernels.view(shape), groups=n * c)
    return y.reshape(x.shape)


def _blur_or_sharpen(x: Tensor, sigma: Tensor, amount: Tensor) -> Tensor:
    """A blur where ``amount`` < 0, else the unsharp mask ``x + amount (x - blur(x))``."""
    blurred = gaussian_blur(x, sigma)
    a = amount.view(_shape(x)).to(x.dtype)
    return torch.where(a < 0, blurred, x + a * (x - blurred))


def border_cut(x: Tensor, on: Tensor, cut_max: float) -> Tensor:
    """Images with ``on`` (N,): a band along one border, its axis, side and width (up to ``cut_max`` of
    the extent) drawn per image, set to the image's minimum, as a field of view that cuts the anatomy."""
    n, d = x.shape[0], x.ndim - 2
    axis = torch.randint(d, (n,))
    far_side = torch.rand(n) < 0.5
    extent = torch.tensor(x.shape[2:], dtype=torch.float64)[axis]
    width = (torch.rand(n, dtype=torch.float64) * cut_max * extent).floor()
    cut = torch.zeros(x.shape[:1] + x.shape[2:], dtype=torch.bool)
    for a in range(d):
        size = x.shape[2 + a]
        coord = torch.arange(size).view([1] + [size if b == a else 1 for b in range(d)])
        w = width.view([n] + [1] * d)
        band = torch.where(far_side.view([n] + [1] * d), coord >= size - w, coord < w)
        cut |= band & (axis == a).view([n] + [1] * d) & on.view([n] + [1] * d)
    background = x.reshape(n, -1).min(1).values.view(_shape(x))
    return torch.where(cut[:, None], background, x)

"""Sub-images: a part of an image cut out with zeros outside it (:func:`crop_or_pad`), and one per landmark
for the local stage (:func:`local_crop_starts`, :func:`stack_local_crops`), normalised as parts of the
whole image when given its normalisation (:mod:`landmark_lit.data.intensity`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_or_pad(
    image: Tensor,
    start: Sequence[int],
    size: Sequence[int],
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Sub-image (C, *size) whose voxel 0 is voxel ``start`` of ``image`` (C, *spatial); zeros outside.

    A landmark at voxel p of ``image`` is at ``p - start`` in the crop. ``transform`` maps the part inside
    the image (e.g. an :class:`~landmark_lit.data.intensity.IntensityMap`) before the zeros are added.
    """
    d = image.ndim - 1
    src, pads = [], []
    for n, s0, sz in zip(image.shape[1:], start, size, strict=True):
        a, b = max(int(s0), 0), min(int(s0) + int(sz), n)
        src.append(slice(a, max(a, b)))
        pads.append((a - int(s0), int(s0) + int(sz) - max(a, b)))
    out = image[(slice(None), *src)]
    out = out if transform is None else transform(out)
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    if any(flat):
        out = F.pad(out, flat)
    assert out.shape[1:] == tuple(int(s) for s in size) and out.ndim == d + 1
    return out


def local_crop_starts(centres: Tensor, crop_size: Sequence[int]) -> Tensor:
    """Start voxels (K, D) of sub-images of ``crop_size`` centred on ``centres`` (K, D) working voxels.

    The landmark lands at the centre of the crop grid, ``(size - 1) / 2``, up to rounding.
    """
    size = torch.tensor([float(c) for c in crop_size])
    return torch.round(centres - (size - 1) / 2)


def stack_local_crops(
    image: Tensor,
    starts: Tensor,
    crop_size: Sequence[int],
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(C, *spatial) image + (K, D) integer starts -> (K, C, *crop_size) sub-images (``transform``: see
    :func:`crop_or_pad`; it runs once on all K sub-images, channel first, and the parts outside the image
    are zeroed after it: the numbers of transforming each sub-image's inside alone, in one call instead of
    K, experiments/bench/RESULTS.md)."""
    parts = torch.stack([crop_or_pad(image, s.long().tolist(), crop_size) for s in starts])
    if transform is None or len(parts) == 0:
        return parts
    out = transform(parts.movedim(1, 0)).movedim(0, 1)
    n = torch.tensor(image.shape[1:])
    inside = None
    for a, size in enumerate(crop_size):  # (K, size) per axis, broadcast over the other axes
        at = starts[:, a : a + 1].long() + torch.arange(int(size))
        axis = ((at >= 0) & (at < n[a])).view(
            len(starts), *[int(size) if b == a else 1 for b in range(len(crop_size))]
        )
        inside = axis if inside is None else inside & axis
    return torch.where(inside[:, None], out, out.new_zeros(()))

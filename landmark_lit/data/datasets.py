"""Torch datasets that turn cases into network inputs for the global and the local stage.

Every item is a dict of tensors:
- ``image``: global (C, *shape) / local (K, C, *crop) network input at the stage's working spacing;
- ``landmarks``: (K, D) landmark voxel coordinates in that input (local: landmark k in sub-image k);
- ``origin``: (K, D) voxel of the working image at which each input starts (global: the crop start);
- ``affine``: (D + 1, D + 1) working voxel -> world mm;
- ``landmarks_world``: (K, D) reference landmarks in world mm (NaN = missing);
- ``case``: the case id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from landmark_lit.data.cases import Case, CaseSource
from landmark_lit.data.crops import crop_or_pad, local_crop_starts, stack_local_crops
from landmark_lit.data.transforms import (
    Preprocessing,
    voxel_to_world,
    world_to_voxel,
)


class SelectLandmarks:
    """A view of a :class:`CaseSource` restricted to some landmark indices (single-landmark runs)."""

    def __init__(self, source: CaseSource, indices: Sequence[int]) -> None:
        n = len(source.landmark_names)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"landmark indices {bad} out of range for {n} landmarks")
        self.source, self.indices = source, list(indices)
        self.landmark_names = [source.landmark_names[i] for i in self.indices]
        self.spatial_dims = source.spatial_dims

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Case:
        case = self.source[index]
        case.landmarks_world = case.landmarks_world[self.indices]
        return case


class PreparedCases:
    """Cases of a source preprocessed to one working spacing, cached in memory after first use."""

    def __init__(self, source: CaseSource, preprocessing: Preprocessing, cache: bool = True) -> None:
        self.source, self.preprocessing, self.cache = source, preprocessing, cache
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if index in self._cache:
            return self._cache[index]
        case = self.source[index]
        image, affine = self.preprocessing(case.image, case.affine)
        item = {
            "case": case.case_id,
            "image": image,
            "affine": torch.as_tensor(affine, dtype=torch.float64),
            "landmarks_world": torch.as_tensor(case.landmarks_world, dtype=torch.float64),
            "voxels": torch.as_tensor(world_to_voxel(case.landmarks_world, affine), dtype=torch.float32),
        }
        if self.cache:
            self._cache[index] = item
        return item


def _finalise(prep: dict, image: Tensor, landmarks: Tensor, origin: Tensor) -> dict:
    return {
        "case": prep["case"],
        "image": image,
        "landmarks": landmarks,
        "origin": origin,
        "affine": prep["affine"],
        "landmarks_world": prep["landmarks_world"],
    }


class GlobalTrainDataset(Dataset):
    """Random crops of ``crop_size`` anywhere in the working image (zero-padded where it is smaller).

    The epoch length is ``samples_per_epoch``; item i uses case ``i % num_cases``. An optional
    ``flip(image, landmarks)`` (:class:`~landmark_lit.data.augment.RandomFlip`) runs on the whole working
    image before cropping, an optional ``augment(image, landmarks)`` (e.g.
    :class:`~landmark_lit.data.augment.Augmentation`) on each crop.
    """

    def __init__(
        self,
        cases: PreparedCases,
        crop_size: Sequence[int],
        samples_per_epoch: int,
        augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        flip: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.cases, self.crop_size, self.samples = cases, [int(c) for c in crop_size], samples_per_epoch
        self.augment, self.flip = augment, flip

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        prep = _flipped(self.cases[index % len(self.cases)], self.flip)
        shape = prep["image"].shape[1:]
        start = [
            int(torch.randint(min(0, n - c), max(0, n - c) + 1, ()))
            for n, c in zip(shape, self.crop_size, strict=True)
        ]
        origin = torch.tensor(start, dtype=torch.float32)
        image = crop_or_pad(prep["image"], start, self.crop_size)
        landmarks = prep["voxels"] - origin
        if self.augment is not None:
            image, landmarks = self.augment(image, landmarks)
        return _finalise(prep, image, landmarks, origin.expand(landmarks.shape[0], -1).clone())


def _flipped(prep: dict, flip: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None) -> dict:
    """A prepared case mirrored by ``flip``: image, voxel landmarks and their world positions under the
    same affine (the cached original is untouched)."""
    if flip is None:
        return prep
    image, voxels = flip(prep["image"], prep["voxels"])
    if image is prep["image"]:
        return prep
    world = torch.as_tensor(voxel_to_world(voxels.double().numpy(), prep["affine"].numpy()))
    return {**prep, "image": image, "voxels": voxels, "landmarks_world": world}


class WholeImageDataset(Dataset):
    """Whole working images (validation and test of the global stage; batch size 1 for varying sizes)."""

    def __init__(self, cases: PreparedCases) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        prep = self.cases[index]
        k, d = prep["voxels"].shape
        return _finalise(prep, prep["image"], prep["voxels"], torch.zeros(k, d))


class LocalTrainDataset(Dataset):
    """For every landmark, a random sub-image that contains it at least ``margin`` voxels from its border.

    Where the landmark sits in its sub-image: uniformly anywhere (``offset_sd=None``, the paper), or at the
    sub-image's centre moved by a normal offset of ``offset_sd`` voxels per axis (the previous stage's
    error, as measured on the training images), redrawn until it is ``margin`` voxels inside.
    Missing landmarks get a random sub-image and NaN coordinates (masked out of the loss). An optional
    ``flip`` runs on the whole working image first; an optional ``augment(images, landmarks)`` runs on the
    stack of sub-images (K, C, *crop) with their (K, 1, D) landmarks, each drawn on its own, and must keep
    each landmark inside (see
    :attr:`~landmark_lit.data.augment.Augmentation.keep_inside`).
    """

    def __init__(
        self,
        cases: PreparedCases,
        crop_size: Sequence[int],
        samples_per_epoch: int,
        margin: float = 1.0,
        augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        flip: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        offset_sd: float | Sequence[float] | None = None,
    ) -> None:
        self.cases, self.crop_size, self.samples = cases, [int(c) for c in crop_size], samples_per_epoch
        self.margin, self.augment, self.flip = margin, augment, flip
        self.offset_sd = offset_sd

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict:
        prep = _flipped(self.cases[index % len(self.cases)], self.flip)
        vox = prep["voxels"]
        size = torch.tensor(self.crop_size, dtype=torch.float32)
        # start in [p - size + 1 + margin, p - margin] keeps p at least `margin` voxels inside the crop
        lo = torch.floor(vox - size + 1 + self.margin)
        hi = torch.ceil(vox - self.margin)
        if self.offset_sd is None:
            u = torch.rand(vox.shape)
            starts = torch.floor(lo + u * (hi - lo + 1)).clamp(max=hi)
        else:
            starts = _normal_starts(vox, size, torch.as_tensor(self.offset_sd, dtype=torch.float32), lo, hi)
        missing = ~torch.isfinite(vox).all(-1)
        if missing.any():
            shape = torch.tensor(prep["image"].shape[1:], dtype=torch.float32)
            starts[missing] = torch.floor(
                torch.rand(int(missing.sum()), vox.shape[1]) * (shape - size).clamp(min=1)
            )
        image = stack_local_crops(prep["image"], starts, self.crop_size)
        landmarks = vox - starts
        if self.augment is not None:
            # the stack (K, C, *crop) at once, each sub-image drawn on its own with its one landmark
            image, moved = self.augment(image, landmarks[:, None])
            landmarks = moved[:, 0]
        return _finalise(prep, image, landmarks, starts)


def _normal_starts(vox: Tensor, size: Tensor, sd: Tensor, lo: Tensor, hi: Tensor, tries: int = 8) -> Tensor:
    """Sub-image starts whose centre lies a normal offset (``sd`` voxels per axis) from the landmark,
    redrawn where that puts the landmark outside ``[lo, hi]``; the last misses are clamped into it."""
    centre_start = vox - (size - 1) / 2
    starts = torch.full_like(vox, float("nan"))
    for _ in range(tries):
        draw = torch.round(centre_start + torch.randn(vox.shape) * sd)
        ok = torch.isnan(starts) & (draw >= lo) & (draw <= hi)
        starts = torch.where(ok, draw, starts)
        if not torch.isnan(starts).any():
            break
    return torch.where(torch.isnan(starts), torch.round(centre_start).clamp(lo, hi), starts)


class LocalEvalDataset(Dataset):
    """Sub-images centred on each reference landmark moved by a fixed, seeded offset of up to ``jitter``
    voxels per axis (standing in for the global stage's error), for validating a local stage alone."""

    def __init__(
        self, cases: PreparedCases, crop_size: Sequence[int], jitter: float = 2.0, seed: int = 0
    ) -> None:
        self.cases, self.crop_size, self.jitter, self.seed = cases, [int(c) for c in crop_size], jitter, seed

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        prep = self.cases[index]
        vox = prep["voxels"]
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        offset = (torch.rand(vox.shape, generator=g) * 2 - 1) * self.jitter
        centres = torch.where(torch.isfinite(vox), vox + offset, torch.zeros_like(vox))
        starts = local_crop_starts(centres, self.crop_size)
        image = stack_local_crops(prep["image"], starts, self.crop_size)
        return _finalise(prep, image, vox - starts, starts)

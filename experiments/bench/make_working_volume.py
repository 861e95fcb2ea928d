"""An N^3 working volume for timing a 3D pipeline: a volume already at the local stage's spacing (e.g. an
MNI-AFIDs test volume, 1.5 mm) centred in an N^3 grid, zero background, axes cropped about their centre
where longer than N; written as NIfTI (``.nii.gz`` or ``.nii``) with the affine that keeps every voxel's
world position.

    python experiments/bench/make_working_volume.py OUT/images/test_000.nii.gz vol128.nii.gz [--size 128]
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume")
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    image = nib.load(args.volume)
    data = np.asarray(image.dataobj, np.float32)
    if data.ndim != 3:
        raise SystemExit(f"{args.volume}: expected a 3D volume, got shape {data.shape}")
    n = args.size
    grid = np.zeros((n, n, n), np.float32)
    src = [max((s - n) // 2, 0) for s in data.shape]  # first voxel taken along each axis
    dst = [max((n - s) // 2, 0) for s in data.shape]  # where it goes in the grid
    size = [min(s, n) for s in data.shape]
    grid[tuple(slice(d, d + k) for d, k in zip(dst, size, strict=True))] = data[
        tuple(slice(s, s + k) for s, k in zip(src, size, strict=True))
    ]
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ (
        np.asarray(src) - np.asarray(dst)
    )  # grid voxel v = volume voxel v + src - dst
    nib.save(nib.Nifti1Image(grid, affine), args.out)
    print(f"{args.out}: {grid.shape}, spacing {image.header.get_zooms()[:3]}")


if __name__ == "__main__":
    main()

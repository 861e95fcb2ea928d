"""A CT-sized test volume for the reading and prediction benchmarks: int16 Hounsfield units in a gzip
NIfTI, 512 x 512 x 400 voxels of 0.7 x 0.7 x 1.0 mm by default (a head-and-neck scan's grid), seeded.

Air at -1000 HU around an elliptic body of soft tissue (40 HU) with a bone shell (700-1200 HU) and a
softer core, plus Gaussian noise of 15 HU: noise keeps gzip from compressing it better than a real scan
would (about half the raw size, as clinical CT).

    python experiments/bench/make_ct_volume.py OUT.nii.gz [--shape 512 512 400] [--spacing 0.7 0.7 1.0]
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np


def ct_phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """(X, Y, Z) int16 HU: an elliptic body with a bone shell, built slice by slice (memory ~ one volume)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    out = np.empty(shape, dtype=np.int16)
    half_z = (nz - 1) / 2 * spacing[2]
    for k in range(nz):
        z = (k - (nz - 1) / 2) * spacing[2]
        shrink = np.sqrt(max(1.0 - (z / (1.2 * half_z)) ** 2, 0.05))
        r = np.sqrt(
            (xx / (0.40 * nx * spacing[0] * shrink)) ** 2 + (yy / (0.33 * ny * spacing[1] * shrink)) ** 2
        )
        hu = np.where(r < 1.0, 40.0, -1000.0)
        hu = np.where((r > 0.86) & (r < 0.93), 700.0 + 500.0 * np.cos(4 * np.arctan2(yy, xx)) ** 2, hu)
        hu = np.where(r < 0.3, 20.0, hu)
        hu += rng.normal(0.0, 15.0, hu.shape)
        out[:, :, k] = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = ct_phantom(tuple(args.shape), tuple(args.spacing), args.seed)
    affine = np.diag([*args.spacing, 1.0])
    affine[:3, 3] = -(np.asarray(args.shape) - 1) / 2 * np.asarray(args.spacing)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, args.out)
    print(f"{args.out}: {data.shape} int16, spacing {args.spacing} mm")


if __name__ == "__main__":
    main()

"""Reading and writing images with their voxel-to-world affine.

An image is a float32 array of shape (C, *spatial) and an affine of shape (D + 1, D + 1) that maps voxel
indices (voxel centres at integer indices, in array axis order) to world millimetres.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from monai.transforms import LoadImage


class ImageReadError(ValueError):
    """An image file could not be read or does not hold a usable image."""


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an image with MONAI.

    Returns:
        image: float32 array (C, *spatial), channel first.
        affine: float64 array (D + 1, D + 1), voxel index -> world mm.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as exc:  # MONAI raises many types for unreadable files
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    array = np.asarray(img.array if isinstance(img, MetaTensor) else img, dtype=np.float32)
    spatial = array.ndim - 1
    affine = np.asarray(img.affine, dtype=np.float64) if isinstance(img, MetaTensor) else np.eye(spatial + 1)
    if affine.shape[0] > spatial + 1:  # MONAI gives 2D images a 4 x 4 affine: keep the in-plane part
        keep = [*range(spatial), affine.shape[0] - 1]
        affine = affine[np.ix_(keep, keep)]
    elif affine.shape[0] < spatial + 1:
        affine = np.eye(spatial + 1)
    if spatial not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2D or 3D image, got spatial shape {array.shape[1:]}")
    if not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{path}: affine contains NaN or infinite values")
    if not np.all(np.isfinite(array)):
        raise ImageReadError(f"{path}: image contains NaN or infinite values")
    return array, affine


def save_nifti(path: str | os.PathLike, image: np.ndarray, affine: np.ndarray) -> None:
    """Write a single-channel 3D image (1, X, Y, Z) or (X, Y, Z) as NIfTI, atomically."""
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 4:
        data = data[0]
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape == (3, 3):  # 2D affine -> embed in 3D
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
        aff = full
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(data, aff), tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or kill while writing leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix or path.suffix, prefix=f".{path.name}.tmp_")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)

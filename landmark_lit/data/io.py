"""Reading and writing images with their voxel-to-world affine.

An image is a float32 array of shape (C, *spatial) and an affine of shape (D + 1, D + 1) that maps voxel
indices (voxel centres at integer indices, in array axis order) to world millimetres.

World coordinates are RAS (x towards the patient's right, y anterior, z superior; nibabel's convention):
NIfTI affines are RAS already; MONAI converts the LPS geometry of NRRD and DICOM to RAS, and so does
:class:`SimpleITKReader` for MHA/MHD. Readers by format:

- NIfTI-1/2 (``.nii``, ``.nii.gz``, ``.hdr``/``.img`` pairs), ANALYZE 7.5 (``.hdr``/``.img``), MGH/MGZ
  (``.mgh``, ``.mgz``) and MINC (``.mnc``): nibabel directly, with nibabel's affine rules (the sform when
  its code is set, else the qform, else the voxel sizes); trailing singleton axes beyond the third are
  dropped (a 4D file with one volume is a 3D image) and a fourth axis of several volumes becomes channels;
  a ``.nii.gz`` is inflated by python-isal (ISA-L) when it is installed, three times faster;
- NRRD (``.nrrd``, ``.nhdr``): MONAI's ``NrrdReader`` (pynrrd);
- DICOM series (a folder of slices): MONAI's ``PydicomReader`` (pydicom); array axes are (column, row,
  slice), as ITK orders them;
- a single DICOM file (``.dcm``, or any file with the DICOM preamble ``DICM`` at byte 128): SimpleITK
  (GDCM), the same axes; a single-frame file is a 2D image (the in-plane part of its geometry);
- MHA / MHD (``.mha``, ``.mhd``): :class:`SimpleITKReader` (SimpleITK, a MONAI ``ImageReader``);
- PNG / JPEG / BMP: Pillow directly, arranged as MONAI's ``PILReader`` arranges them (array axes (x, y),
  i.e. (column, row), identity affine), without its float copies of every channel; an RGB(A) file whose
  three colour channels are equal is a grey image and comes back with one channel (alpha dropped);
- TIFF and the rest: MONAI's default choice.

pynrrd, pydicom and SimpleITK are the optional extra ``landmark_lit[io]``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import ImageReader, MetaTensor, NrrdReader, PydicomReader
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.transforms import LoadImage
from monai.utils import ensure_tuple

from landmark_lit.utils import atomic_path, first_line


class ImageReadError(ValueError):
    """An image file could not be read or does not hold a usable image."""


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for any single file SimpleITK reads (meant for MHA / MHD).

    Arrays come in ITK index order (i, j, k), like MONAI's ``ITKReader``; the affine is built from
    SimpleITK's origin, spacing and direction (LPS) and converted to RAS when ``affine_lps_to_ras``.
    Multi-component pixels become channels (channel last in the returned array, as MONAI expects).

    Args:
        affine_lps_to_ras: convert ITK's LPS geometry to RAS (consistent with NIfTI / nibabel).
        suffixes: file suffixes reported as supported by :meth:`verify_suffix`.
    """

    def __init__(self, affine_lps_to_ras: bool = True, suffixes: Sequence[str] = ("mha", "mhd")) -> None:
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras
        self.suffixes = tuple(suffixes)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return importlib.util.find_spec("SimpleITK") is not None and is_supported_format(
            filename, self.suffixes
        )

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        import SimpleITK as sitk

        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError(f"SimpleITKReader reads one file at a time, got {len(names)}")
        return sitk.ReadImage(str(names[0]), **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk

        d = img.GetDimension()
        array = sitk.GetArrayFromImage(img)  # (k, j, i[, c]): reversed index order
        multi = img.GetNumberOfComponentsPerPixel() > 1
        array = np.moveaxis(array.T, 0, -1) if multi else array.T  # (i, j, k[, c])
        affine = np.eye(d + 1)
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(d, d)
        affine[:d, :d] = direction @ np.diag(img.GetSpacing())
        affine[:d, d] = img.GetOrigin()
        if d == 2:  # MONAI keeps 4 x 4 affines; embed the 2D geometry like its other readers do
            full = np.eye(4)
            full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
            affine = full
        if self.affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(array.shape[:d]),
            "original_channel_dim": -1 if multi else float("nan"),
            "space": "RAS" if self.affine_lps_to_ras else "LPS",
            "spacing": np.asarray(img.GetSpacing()),
        }
        return array, meta


# NRRD "space" values with the signs that turn their x and y into RAS (MONAI converts LPS itself)
_NRRD_SPACES = {"RAS": (1, 1), "right-anterior-superior": (1, 1), "left-anterior-superior": (-1, 1)}
# format -> (suffixes, reader factory, package it needs)
_READERS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "NRRD": ((".nrrd", ".nhdr"), NrrdReader, "pynrrd"),
    "MHA/MHD": ((".mha", ".mhd"), SimpleITKReader, "SimpleITK"),
    "DICOM": ((".dcm",), PydicomReader, "pydicom"),
}
_MODULES = {"pynrrd": "nrrd", "SimpleITK": "SimpleITK", "pydicom": "pydicom"}


def _format_of(path: Path) -> str | None:
    """The format whose reader this project picks for ``path`` (None: MONAI's default choice)."""
    name = path.name.lower()
    kind = "DICOM" if path.is_dir() else next((k for k, v in _READERS.items() if name.endswith(v[0])), None)
    if kind is not None and importlib.util.find_spec(_MODULES[_READERS[kind][2]]) is None:
        raise ImageReadError(
            f"{path}: reading {kind} needs the {_READERS[kind][2]} package (pip install 'landmark_lit[io]')"
        )
    return kind


@functools.cache
def _loader(kind: str | None) -> LoadImage:
    """One ``LoadImage`` per format, built once: building one instantiates every MONAI reader, and with
    pydicom installed the GPU DICOM reader warns each time that nvImageCodec is absent (irrelevant here)."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            reader = _READERS[kind][1]() if kind is not None else None
            return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
    finally:
        plugin_log.setLevel(level)


# files nibabel reads (its own affine rules), by suffix
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz", ".mgh", ".mgz", ".mnc")


def _load_nibabel(path: Path) -> Any:
    """``nib.load``, except that a gzip NIfTI is inflated with python-isal's igzip (ISA-L) when it is
    installed and parsed from memory: the same image (tested), read about three times faster than through
    nibabel's own gzip reader (experiments/bench/RESULTS.md, issue 23). Anything else, or a file that is
    not a plain NIfTI inside, goes to nibabel."""
    if path.name.lower().endswith(".nii.gz") and importlib.util.find_spec("isal") is not None:
        from isal import igzip

        data = igzip.decompress(path.read_bytes())
        size = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
        size = size if size in (348, 540) else int.from_bytes(data[:4], "big")
        kind = {348: nib.Nifti1Image, 540: nib.Nifti2Image}.get(size)
        if kind is not None:
            return kind.from_bytes(data)
    return nib.load(str(path))


# integer types kept as stored by ``load_image(..., integers=True)`` (torch holds them; float32 holds their
# values up to 2^24 exactly, as the conversion would)
KEPT_INTEGERS = (np.int8, np.uint8, np.int16, np.int32)


def _read_nibabel(path: Path, integers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(C, *spatial) float32 array (with ``integers``, the stored integers of an unscaled integer file)
    and (D + 1, D + 1) RAS affine of a file nibabel reads."""
    try:
        img = _load_nibabel(path)
        if not hasattr(img, "dataobj") or not hasattr(img, "affine"):
            raise ImageReadError(f"{path}: not an image nibabel can read as an array ({type(img).__name__})")
        array = _stored_integers(img.dataobj) if integers else None
        array = np.asarray(img.dataobj, dtype=np.float32) if array is None else array
        affine = np.asarray(img.affine, dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {first_line(exc)})") from exc
    while array.ndim > 3 and array.shape[-1] == 1:  # (x, y, z, 1[, 1]): one volume
        array = array[..., 0]
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vectors: (x, y, z, 1, c)
        array = array[:, :, :, 0]
    if array.ndim == 4:  # volumes become channels
        return np.moveaxis(array, -1, 0), affine
    if array.ndim == 2:  # a 2D file: the in-plane part of its 4 x 4 affine
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    return array[None], affine


def _stored_integers(dataobj: Any) -> np.ndarray | None:
    """The array as stored when it is one of :data:`KEPT_INTEGERS` without scaling, else None."""
    slope, inter = getattr(dataobj, "slope", None), getattr(dataobj, "inter", None)
    dtype = getattr(dataobj, "dtype", None)
    if slope != 1.0 or inter != 0.0 or dtype is None or np.dtype(dtype).type not in KEPT_INTEGERS:
        return None
    array = np.asanyarray(dataobj.get_unscaled())
    return array if array.dtype.type in KEPT_INTEGERS else None


def _has_dicom_preamble(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(C, *spatial) float32 array and RAS affine of one DICOM file, read by SimpleITK (GDCM)."""
    if importlib.util.find_spec("SimpleITK") is None:
        raise ImageReadError(
            f"{path}: reading a DICOM file needs the SimpleITK package (pip install 'landmark_lit[io]')"
        )
    reader = SimpleITKReader(suffixes=("dcm",))
    try:
        array, meta = reader.get_data(reader.read(str(path)))
    except Exception as exc:  # SimpleITK raises RuntimeError with GDCM's reason
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {first_line(exc)})") from exc
    affine = np.asarray(meta["affine"], dtype=np.float64)
    d = int(len(meta["spatial_shape"]))
    array = np.asarray(array, dtype=np.float32)
    array = np.moveaxis(array, -1, 0) if array.ndim == d + 1 else array[None]  # channels first
    if d == 3 and array.shape[3] == 1:  # a single frame: a 2D image
        array, affine = array[..., 0], affine[np.ix_([0, 1, 3], [0, 1, 3])]
    elif d == 2:
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    return array, affine


def load_image(
    path: str | os.PathLike, jpeg_reduce: int = 1, integers: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file, or a DICOM series folder (see the module docstring for the readers).

    ``jpeg_reduce`` (1, 2, 4 or 8): a JPEG is decoded at 1 / ``jpeg_reduce`` of its size in the DCT domain
    (Pillow's draft mode, far cheaper than decoding every pixel); its affine then maps the reduced pixels to
    the full-size pixel grid (pixel j of the reduced image covers full-size pixels j*r .. j*r + r - 1: size
    r, centre j*r + (r - 1) / 2), so positions keep their meaning. Other formats ignore it.

    ``integers``: a NIfTI / ANALYZE / MGH file of 8, 16 or 32-bit integers without scaling comes back as
    stored (a CT's int16: half the memory of float32, and no conversion pass: prediction's resampling
    converts it plane by plane).

    Returns:
        image: float32 array (C, *spatial), channel first.
        affine: float64 array (D + 1, D + 1), voxel index -> world mm (RAS).

    Raises:
        ImageReadError: one line naming the path (missing, unreadable, missing reader package, unsupported
            NRRD space, non-finite values).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_file() and path.name.lower().endswith(_PIL_SUFFIXES):
        array, reduced, finite = _read_pil(path, jpeg_reduce)
        if array is not None:
            return _checked(path, array, reduced_affine(reduced), finite)
    if path.is_file() and path.name.lower().endswith(NIBABEL_SUFFIXES):
        return _checked(path, *_read_nibabel(path, integers))
    if path.is_file() and (path.name.lower().endswith(".dcm") or _has_dicom_preamble(path)):
        return _checked(path, *_read_dicom_file(path))
    if path.is_file() and _format_of(path) is None and not path.name.lower().endswith(_PIL_SUFFIXES):
        raise ImageReadError(
            f"{path}: unknown image format {''.join(path.suffixes) or '(no suffix)'} (landmark_lit reads NIfTI, "
            "ANALYZE, MGH/MGZ, MINC, NRRD, MHA/MHD, DICOM, PNG, JPEG, BMP and TIFF)"
        )
    kind = _format_of(path)
    try:
        with warnings.catch_warnings():
            # MONAI falls back to an identity affine (a warning) when DICOM geometry tags are missing or
            # invalid: without the geometry, world coordinates would be wrong, so refuse the image
            warnings.filterwarnings("error", message=".*ImageOrientationPatient.*")
            img = _loader(kind)(str(path))
    except Exception as exc:  # MONAI raises many types for unreadable files
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {first_line(exc)})") from exc
    array = np.asarray(img.array if isinstance(img, MetaTensor) else img, dtype=np.float32)
    spatial = array.ndim - 1
    affine = np.asarray(img.affine, dtype=np.float64) if isinstance(img, MetaTensor) else np.eye(spatial + 1)
    if kind == "NRRD":
        affine = _nrrd_to_ras(path, affine, img.meta.get("space", "RAS"))
    if affine.shape[0] > spatial + 1:  # MONAI gives 2D images a 4 x 4 affine: keep the in-plane part
        keep = [*range(spatial), affine.shape[0] - 1]
        affine = affine[np.ix_(keep, keep)]
    elif affine.shape[0] < spatial + 1:
        affine = np.eye(spatial + 1)
    return _checked(path, array, affine)


def _checked(
    path: Path, array: np.ndarray, affine: np.ndarray, finite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``array`` and ``affine`` if they make an image; ``finite``: the values came from integers."""
    spatial = array.ndim - 1
    if spatial not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2D or 3D image, got spatial shape {array.shape[1:]}")
    if not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{path}: affine contains NaN or infinite values")
    # integers are finite; a float sum in float64 is finite exactly when every value is (no overflow from
    # float32 values; NaN and +-inf propagate), one pass without a boolean copy
    if array.dtype.kind == "f" and not finite and not np.isfinite(np.sum(array, dtype=np.float64)):
        raise ImageReadError(f"{path}: image contains NaN or infinite values")
    return array, affine


# formats without geometry (1 mm pixels; prediction takes their spacing from its ``spacing`` option), read
# with Pillow (multi-page TIFF stacks are left to MONAI)
NO_GEOMETRY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# the image files of a folder, the suffixes case ids drop (a NIfTI / ANALYZE pair counts once, by its .hdr)
IMAGE_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".hdr",
    ".mgh",
    ".mgz",
    ".mnc",
    ".nhdr",
    ".nrrd",
    ".mha",
    ".mhd",
    *NO_GEOMETRY_SUFFIXES,
)
_PIL_SUFFIXES = NO_GEOMETRY_SUFFIXES
_PIL_MODES = ("L", "RGB", "RGBA", "I", "I;16", "F")


def reduced_affine(reduce: int, spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """The (3, 3) affine of a 2D image decoded at 1 / ``reduce`` of a grid of ``spacing`` mm pixels: pixel j
    covers the full-size pixels j*r .. j*r + r - 1 (size r x spacing, centre (j*r + (r - 1) / 2) x spacing)."""
    scale = float(reduce) * np.asarray(spacing, np.float64)
    affine = np.diag([*scale, 1.0])
    affine[:2, 2] = (reduce - 1) / 2 * np.asarray(spacing, np.float64)
    return affine


def _read_pil(path: Path, jpeg_reduce: int = 1) -> tuple[np.ndarray | None, int, bool]:
    """(C, x, y) float32 array of a PNG / JPEG / BMP file (None for modes left to MONAI, e.g. palette),
    the factor a JPEG was reduced by in decoding (see :func:`load_image`; 1 for everything else) and
    whether its values came from integers (finite without a check)."""
    from PIL import Image, UnidentifiedImageError

    if jpeg_reduce not in (1, 2, 4, 8):
        raise ImageReadError(f"{path}: jpeg_reduce must be 1, 2, 4 or 8, got {jpeg_reduce!r}")
    reduced = 1
    try:
        with Image.open(path) as img:
            if img.mode not in _PIL_MODES or getattr(img, "n_frames", 1) > 1:
                return None, 1, False
            if jpeg_reduce > 1 and img.format == "JPEG":
                w, h = img.size
                drafted = img.draft(img.mode, (max(w // jpeg_reduce, 1), max(h // jpeg_reduce, 1)))
                if drafted is not None:
                    reduced = int(round(w / drafted[1][2]))
            data = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {first_line(exc)})") from exc
    if data.ndim == 3 and data.shape[2] in (3, 4):
        rgb = data[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            data = rgb[..., 0]  # grey stored as colour
    if data.ndim == 2:  # (row, column) -> (1, column, row), as MONAI's PILReader and channel-first give;
        # one copy, kept in the file's memory order (the resampling reads any order)
        return data.T.astype(np.float32)[None], reduced, data.dtype.kind in "iub"
    channels = np.ascontiguousarray(np.moveaxis(data, (0, 1, 2), (2, 1, 0))).astype(np.float32)
    return channels, reduced, data.dtype.kind in "iub"


def _nrrd_to_ras(path: Path, affine: np.ndarray, space: str) -> np.ndarray:
    """MONAI turns LPS NRRD geometry into RAS and leaves other spaces as they are: finish the job."""
    if space not in _NRRD_SPACES:
        raise ImageReadError(
            f"{path}: unsupported NRRD space {space!r} (expected left-posterior-superior, "
            "right-anterior-superior or left-anterior-superior)"
        )
    flip = np.diag([*_NRRD_SPACES[space], *([1] * (affine.shape[0] - 2))]).astype(np.float64)
    return flip @ affine


def save_nifti(path: str | os.PathLike, image: np.ndarray, affine: np.ndarray) -> None:
    """Write a single-channel 2D or 3D image, (1, *spatial) or (*spatial), with its (D + 1, D + 1) affine as
    NIfTI, atomically (a 2D image as a 2D NIfTI, its affine embedded in 4 x 4)."""
    data = np.asarray(image, dtype=np.float32)
    aff = np.asarray(affine, dtype=np.float64)
    if data.ndim == aff.shape[0]:  # channel first: (1, *spatial)
        if data.shape[0] != 1:
            raise ValueError(f"save_nifti writes one channel, got {data.shape[0]}")
        data = data[0]
    if aff.shape == (3, 3):  # 2D affine -> embed in 3D
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = aff[:2, :2], aff[:2, 2]
        aff = full
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(data, aff), tmp)

"""Image readers: each 3D format returns a known voxel at a known world position (RAS)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import landmark_lit.data.io as io_module
from landmark_lit.data.io import ImageReadError, load_image, save_nifti
from landmark_lit.data.transforms import voxel_to_world


def _reader(package: str) -> pytest.MarkDecorator:
    """Skip only the tests of a format whose optional reader package (``landmark_lit[io]``) is absent."""
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"{package} not installed")


needs_nrrd, needs_sitk, needs_pydicom = _reader("nrrd"), _reader("SimpleITK"), _reader("pydicom")

VOXEL = (1, 2, 3)  # (i, j, k) of the bright voxel in a (4, 5, 6) volume
SHAPE = (4, 5, 6)


def rotation_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def volume() -> np.ndarray:
    data = np.zeros(SHAPE, np.int16)
    data[VOXEL] = 700
    return data


def check(path: Path, world_ras: np.ndarray, expected_affine: np.ndarray | None = None) -> None:
    image, affine = load_image(path)
    assert image.dtype == np.float32 and image.shape == (1, *SHAPE)
    assert tuple(np.argwhere(image[0] == 700)[0]) == VOXEL and image.sum() == 700
    np.testing.assert_allclose(voxel_to_world(np.array(VOXEL, float), affine), world_ras, atol=1e-4)
    if expected_affine is not None:
        np.testing.assert_allclose(affine, expected_affine, atol=1e-5)


def test_nifti_oblique_affine_is_returned_as_stored(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation_z(25.0) @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = (-30.0, 12.0, 5.0)
    nib.save(nib.Nifti1Image(volume().astype(np.float32), affine), tmp_path / "a.nii.gz")
    check(tmp_path / "a.nii.gz", affine[:3, :3] @ VOXEL + affine[:3, 3], affine)


@pytest.mark.parametrize(
    "space,flip",
    [
        ("left-posterior-superior", (-1, -1, 1)),
        ("right-anterior-superior", (1, 1, 1)),
        ("left-anterior-superior", (-1, 1, 1)),
    ],
)
@needs_nrrd
def test_nrrd_geometry_becomes_ras(tmp_path, space, flip):
    import nrrd

    directions = (rotation_z(-15.0) @ np.diag([0.5, 0.7, 2.0])).T  # NRRD: one row per axis
    origin = np.array([10.0, -20.0, 30.0])
    nrrd.write(
        str(tmp_path / "a.nrrd"),
        volume(),
        {"space": space, "space directions": directions, "space origin": origin},
    )
    stated = origin + directions.T @ VOXEL
    check(tmp_path / "a.nrrd", stated * flip)


@needs_nrrd
def test_nrrd_unknown_space_is_refused(tmp_path):
    import nrrd

    header = {"space": "right-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "a.nrrd"), volume(), header)
    with pytest.raises(ImageReadError, match=r"a\.nrrd: unsupported NRRD space 'right-posterior-superior'"):
        load_image(tmp_path / "a.nrrd")


@pytest.mark.parametrize("suffix", ["mha", "mhd"])
@needs_sitk
def test_mha_mhd_through_simpleitk_lps_to_ras(tmp_path, suffix):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume().T.copy())  # SimpleITK arrays are (k, j, i)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    img.SetDirection(rotation_z(20.0).ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / f"a.{suffix}"))
    lps = np.array(img.TransformIndexToPhysicalPoint(VOXEL))
    check(tmp_path / f"a.{suffix}", lps * (-1, -1, 1))


def write_dicom_series(folder: Path, vol: np.ndarray, origin, row_dir, col_dir, pixel_spacing, step) -> None:
    """vol (rows, columns, slices); slice k at origin + k * step (LPS); IOP = row direction, column direction."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = ds.SeriesInstanceUID = series
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImagePositionPatient = [round(float(v), 6) for v in np.asarray(origin) + k * np.asarray(step)]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]  # row spacing, column spacing
        ds.Rows, ds.Columns = vol.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(vol[:, :, k]).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)


@needs_pydicom
def test_dicom_series_folder_through_pydicom(tmp_path):
    rows_cols_slices = np.zeros((SHAPE[1], SHAPE[0], SHAPE[2]), np.int16)
    rows_cols_slices[VOXEL[1], VOXEL[0], VOXEL[2]] = 700  # array axes come back as (column, row, slice)
    r = rotation_z(30.0)
    origin, spacing, step = np.array([10.0, -20.0, 5.0]), (0.8, 0.6), np.array([0.0, 0.0, 2.5])
    write_dicom_series(tmp_path / "series", rows_cols_slices, origin, r[:, 0], r[:, 1], spacing, step)
    i, j, k = VOXEL
    lps = origin + i * spacing[1] * r[:, 0] + j * spacing[0] * r[:, 1] + k * step
    check(tmp_path / "series", lps * (-1, -1, 1))


@needs_pydicom
def test_dicom_without_usable_geometry_is_refused(tmp_path):
    import pydicom

    vol = np.zeros((5, 4, 2), np.int16)
    write_dicom_series(tmp_path / "s", vol, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1.0, 1.0), (0, 0, 1))
    for f in (tmp_path / "s").iterdir():  # drop the orientation: MONAI would fall back to an identity affine
        ds = pydicom.dcmread(f)
        del ds.ImageOrientationPatient
        ds.save_as(f)
    with pytest.raises(ImageReadError, match=r"s: cannot read image .*ImageOrientationPatient"):
        load_image(tmp_path / "s")


def test_missing_reader_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    import landmark_lit.data.io as io_module

    (tmp_path / "a.nrrd").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(io_module.importlib.util, "find_spec", lambda n: None if n == "nrrd" else real(n))
    with pytest.raises(
        ImageReadError, match=r"a\.nrrd: reading NRRD needs the pynrrd package .*landmark_lit\[io\]"
    ):
        load_image(tmp_path / "a.nrrd")


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    save_nifti(tmp_path / "a.nii.gz", volume().astype(np.float32), np.eye(4))
    assert (tmp_path / "a.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    "suffix, mode, grey",
    [
        (".png", "L", True),
        (".png", "I;16", True),
        (".png", "RGB", False),
        (".png", "RGBA", False),
        (".bmp", "RGB", True),  # grey stored as colour
        (".jpg", "RGB", True),
    ],
)
def test_pillow_images_read_as_monai_reads_them(tmp_path, suffix, mode, grey):
    from monai.transforms import LoadImage
    from PIL import Image

    rng = np.random.default_rng(1)
    h, w = 23, 31  # rows, columns
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 60000, (h, w)).astype(np.uint16))
    elif grey and mode == "RGB":
        plane = rng.integers(0, 256, (h, w), dtype=np.uint8)
        img = Image.fromarray(np.stack([plane] * 3, -1), "RGB")
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        img = Image.fromarray(data[..., 0] if channels == 1 else data, mode)
    path = tmp_path / f"image{suffix}"
    img.save(path, quality=100) if suffix == ".jpg" else img.save(path)
    array, affine = load_image(path)
    ref = np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(str(path)), dtype=np.float32)
    np.testing.assert_array_equal(affine, np.eye(3))
    if grey and mode == "RGB":
        # JPEG may not keep colour channels exactly equal: compare with whatever MONAI reads
        same = np.allclose(ref[0], ref[1]) and np.allclose(ref[0], ref[2])
        assert array.shape == ((1, w, h) if same else (3, w, h))
        np.testing.assert_array_equal(array, ref[:1] if same else ref)
    else:
        assert array.shape == ref.shape and array.shape[1:] == (w, h)
        np.testing.assert_array_equal(array, ref)


def test_corrupt_image_file_is_one_line_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageReadError, match=r"broken\.png: cannot read image") as err:
        load_image(path)
    assert "\n" not in str(err.value)


def test_a_qform_only_nifti_loads_with_its_qform(tmp_path):
    """As a common pipeline writes it: dim [4, x, y, z, 1], pixdim[0] = -1, an LAS qform (code 1) and an
    all-zero sform with code 0. nibabel reads it with the qform as its affine, and so does load_image."""
    data = np.zeros((6, 7, 5, 1), np.float32)
    data[1, 2, 3, 0] = 5.0
    qform = np.diag([-1.0, 1.0, 1.0, 1.0])
    qform[:3, 3] = [90.0, -126.0, -72.0]
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_qform(qform, code=1)
    header.set_sform(np.zeros((4, 4)), code=0)
    header["pixdim"][0] = -1
    nib.save(nib.Nifti1Image(data, None, header), tmp_path / "las.nii.gz")
    image, affine = load_image(tmp_path / "las.nii.gz")
    assert image.shape == (1, 6, 7, 5)  # the trailing singleton axis dropped
    np.testing.assert_allclose(affine, nib.load(tmp_path / "las.nii.gz").affine)
    np.testing.assert_allclose(
        voxel_to_world(np.argwhere(image[0] == 5.0).astype(float), affine), [[89.0, -124.0, -69.0]]
    )


def test_every_image_nibabel_ships_loads_as_nibabel_reads_it():
    """nibabel's own test images of the formats it reads for us: each that nibabel opens as a spatial
    image with finite voxels loads with nibabel's affine and voxel values (a 4D file with one volume as
    3D, several volumes as channels); every other one gives a one-line error naming the file with the
    real reason (never a DICOM error). nibabel 5.4.2, 2026-12-02: 11 of 22 load; refused: 5 MINC2 files
    (nibabel needs h5py), 3 header-only .hdr files (their .img is not shipped), one image with NaN voxels,
    one CIFTI-2 matrix (not a spatial image)."""
    folder = Path(nib.__file__).parent / "tests" / "data"
    files = sorted(f for f in folder.iterdir() if f.name.lower().endswith(io_module.NIBABEL_SUFFIXES))
    loaded, expected = [], []
    for f in files:
        try:
            ref = nib.load(f)
            ref_data = np.asarray(ref.dataobj, dtype=np.float32)
            if isinstance(ref, nib.spatialimages.SpatialImage) and np.isfinite(ref_data).all():
                expected.append(f.name)
        except Exception:
            pass
        try:
            image, affine = load_image(f)
        except ImageReadError as exc:
            message = str(exc)
            assert "\n" not in message and str(f) in message and "DICOM" not in message, message
            continue
        loaded.append(f.name)
        squeezed = ref_data.reshape([n for i, n in enumerate(ref_data.shape) if i < 3 or n != 1])
        want = squeezed[None] if squeezed.ndim < 4 else np.moveaxis(squeezed, -1, 0)
        np.testing.assert_array_equal(image, want, err_msg=f.name)
        keep = [*range(image.ndim - 1), 3]
        np.testing.assert_allclose(
            affine, np.asarray(ref.affine)[np.ix_(keep, keep)], atol=1e-4, err_msg=f.name
        )
    assert loaded == expected and len(loaded) >= 10, (loaded, expected)


@needs_sitk
@needs_pydicom
def test_every_dicom_file_pydicom_ships_loads_as_simpleitk_reads_it():
    """pydicom's own test files: each one SimpleITK reads as an image loads with SimpleITK's voxel values
    and geometry (LPS -> RAS; a single frame as a 2D image); every other file gives a one-line error with
    the reader's reason. pydicom 3.0.2, SimpleITK 2.5.7, 2026-12-02: 57 of the 85 files load (SimpleITK
    reads 57)."""
    import pydicom
    import SimpleITK as sitk

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    loaded, expected = [], []
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ref = sitk.ReadImage(str(f))
            expected.append(f.name)
        except RuntimeError:
            ref = None
        try:
            image, affine = load_image(f)
        except ImageReadError as exc:
            assert "\n" not in str(exc) and str(f) in str(exc), str(exc)
            continue
        loaded.append(f.name)
        data = sitk.GetArrayFromImage(ref).T  # (i, j, k) or (c, i, j, k)
        multi = ref.GetNumberOfComponentsPerPixel() > 1
        data = data if multi else data[None]
        d = ref.GetDimension()
        if d == 3 and ref.GetSize()[2] == 1:
            data = data[..., 0]
        np.testing.assert_array_equal(image, data.astype(np.float32), err_msg=f.name)
        n = image.ndim - 1
        direction = np.asarray(ref.GetDirection()).reshape(d, d)[:n, :n]
        lps = np.eye(n + 1)
        lps[:n, :n] = direction @ np.diag(ref.GetSpacing()[:n])
        lps[:n, n] = ref.GetOrigin()[:n]
        flip = np.diag([-1.0, -1.0, *([1.0] * (n - 1))])  # LPS -> RAS
        np.testing.assert_allclose(affine, flip @ lps, atol=1e-4, err_msg=f.name)
    assert loaded == expected and len(loaded) >= 50, (len(loaded), len(expected))


@pytest.mark.parametrize("reduce", [2, 4, 8])
def test_reduced_jpeg_decoding_keeps_the_geometry(tmp_path, reduce):
    """A JPEG decoded at 1 / reduce (Pillow's draft mode): ceil(size / reduce) pixels whose affine maps them
    onto the full-size pixel grid, so a blob's centroid in mm stays where the full decoding puts it."""
    from PIL import Image

    from landmark_lit.data.io import reduced_affine

    w, h, centre = 333, 250, np.array([101.3, 157.8])  # (x, y) in full-size pixels
    x, y = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
    blob = 20 + 200 * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * 12.0**2))
    path = tmp_path / "blob.jpg"
    Image.fromarray(blob.astype(np.uint8)).save(path, quality=98)

    def centroid_mm(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        weights = np.clip(image[0] - 20, 0, None)
        idx = np.stack(np.meshgrid(*map(np.arange, weights.shape), indexing="ij"), -1).reshape(-1, 2)
        vox = (idx * weights.reshape(-1, 1)).sum(0) / weights.sum()
        return affine[:2, :2] @ vox + affine[:2, 2]

    full, full_affine = load_image(path)
    small, small_affine = load_image(path, jpeg_reduce=reduce)
    assert full.shape == (1, w, h) and small.shape == (1, -(-w // reduce), -(-h // reduce))
    np.testing.assert_allclose(small_affine, reduced_affine(reduce))
    np.testing.assert_allclose(small_affine[:2, 2], [(reduce - 1) / 2] * 2)
    np.testing.assert_allclose(centroid_mm(full, full_affine), centre, atol=0.05)
    np.testing.assert_allclose(centroid_mm(small, small_affine), centre, atol=0.1)
    # a PNG is not reduced: the same pixels and the identity affine
    Image.fromarray(blob.astype(np.uint8)).save(tmp_path / "blob.png")
    png, png_affine = load_image(tmp_path / "blob.png", jpeg_reduce=reduce)
    assert png.shape == (1, w, h) and np.array_equal(png_affine, np.eye(3))
    with pytest.raises(ImageReadError, match="jpeg_reduce must be 1, 2, 4 or 8, got 3"):
        load_image(path, jpeg_reduce=3)


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
def test_gzip_nifti_inflated_by_isal_is_the_image_nibabel_reads(tmp_path, kind, monkeypatch):
    """The ISA-L path (python-isal) gives the very array and affine of nibabel's own reader: scaled int16
    data, an oblique sform, NIfTI-1 and -2, big-endian headers; without isal nibabel reads it."""
    pytest.importorskip("isal")
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 3000, size=(17, 12, 9), dtype=np.int16)
    affine = np.array([[0.7, 0.1, 0, -80], [0, 0.7, 0.05, 30], [0, 0, 1.2, 5], [0, 0, 0, 1]])
    img = kind(data, affine)
    img.header.set_slope_inter(0.5, -1024)
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    big = tmp_path / "big.nii.gz"
    nib.save(kind(data.astype(">i2"), affine, header=img.header.as_byteswapped(">")), big)
    for p in (path, big):
        array, aff = load_image(p)
        np.testing.assert_array_equal(array[0], np.asarray(nib.load(p).dataobj, dtype=np.float32))
        np.testing.assert_allclose(aff, nib.load(p).affine)
    assert nib.load(big).header.endianness == ">"
    want = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    assert float(want.min()) >= -1524 and not np.all(want == np.round(want))  # the scaling was applied
    calls = []
    real = io_module.nib.load
    monkeypatch.setattr(io_module.nib, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    load_image(path)
    assert calls == []  # isal read it, not nib.load
    monkeypatch.setattr(io_module.importlib.util, "find_spec", lambda name: None)
    np.testing.assert_array_equal(load_image(path)[0][0], want)
    assert len(calls) == 1


def test_a_corrupt_gzip_nifti_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(ImageReadError, match=r"broken\.nii\.gz: cannot read image"):
        load_image(path)

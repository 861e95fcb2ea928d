"""A gzip NIfTI resampled while it is inflated: the same working images, landmarks and errors as reading
the file whole (landmark_lit/data/streamed.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import stage_description, write_checkpoint

from landmark_lit.data import streamed
from landmark_lit.data.io import ImageReadError, load_image
from landmark_lit.data.streamed import StreamedVolume, open_streamed
from landmark_lit.data.transforms import resample_to_spacing, split_over_threads
from landmark_lit.inference.predict_files import predict_file
from landmark_lit.inference.predictor import InputError, LandmarkPredictor

SHAPE = (37, 41, 29)
OBLIQUE = np.array([[0.0, -0.8, 0.1, 10.0], [0.9, 0.0, 0.0, -4.0], [0.0, 0.05, 1.3, 2.5], [0, 0, 0, 1.0]])


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few hundred bytes per read: every volume here arrives in many pieces, planes split across them."""
    monkeypatch.setattr(streamed, "CHUNK", 517)


def _volume(path: Path, dtype=np.int16, affine=None, slope=None, inter=None, big_endian=False) -> Path:
    rng = np.random.default_rng(3)
    data = (rng.normal(size=SHAPE) * 300).astype(dtype)
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 1.0, 1.0]) if affine is None else affine, header)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


@pytest.mark.parametrize(
    "kind", ["int16", "float32 scaled", "uint8 big-endian", "oblique"], ids=lambda k: k.replace(" ", "-")
)
def test_every_spacing_equals_resampling_the_whole_volume(tmp_path, kind):
    path = tmp_path / "v.nii.gz"
    if kind == "int16":
        _volume(path)
    elif kind == "float32 scaled":
        _volume(path, np.float32, slope=2.5, inter=-7.0)
    elif kind == "uint8 big-endian":
        _volume(path, np.uint8, big_endian=True)
    else:
        _volume(path, affine=OBLIQUE)
    image, affine = load_image(path, integers=True)
    volume = open_streamed(path)
    assert isinstance(volume, StreamedVolume) and np.allclose(volume.affine, affine)
    # the global stage's and a local stage's spacing, a spacing that keeps two axes, one without antialias
    wanted = [(3.0, True), (1.5, True), ((0.7 if kind != "oblique" else 0.9, 0.8, 2.0), True), (1.1, False)]
    made, (lo, hi) = volume.resample(wanted)
    assert (lo, hi) == (float(image.min()), float(image.max()))
    for (spacing, antialias), (x, aff) in zip(wanted, made, strict=True):
        ref, ref_aff = resample_to_spacing(image, affine, spacing, antialias=antialias, contiguous=False)
        assert x.shape == ref.shape and x.dtype == torch.float32
        assert np.allclose(aff, ref_aff)
        assert torch.allclose(x, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), spacing
    # the volume itself, as the whole-file reader returns it (stored integers when unscaled)
    assert volume.array.dtype == image.dtype and volume.array.shape == image.shape
    assert np.array_equal(volume.array, image)


def test_a_file_of_several_gzip_members_streams_whole(tmp_path):
    raw = tmp_path / "v.nii"
    _volume(raw)
    data = raw.read_bytes()
    cut = len(data) // 3
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))
    image, affine = load_image(raw, integers=True)
    volume = open_streamed(path)
    made, _ = volume.resample([(2.0, True)])
    assert torch.allclose(made[0][0], resample_to_spacing(image, affine, 2.0, contiguous=False)[0], atol=1e-3)
    assert np.array_equal(volume.array, image)


def test_a_truncated_or_corrupt_file_is_a_one_line_error_naming_it(tmp_path):
    good = _volume(tmp_path / "good.nii.gz").read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(good[: len(good) // 2])
    volume = open_streamed(short)
    with pytest.raises(ImageReadError, match="truncated") as err:
        volume.resample([(2.0, True)])
    assert str(err.value).startswith(str(short)) and "\n" not in str(err.value)
    broken = bytearray(good)
    broken[len(good) // 2 : len(good) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(bytes(broken))
    with pytest.raises(ImageReadError, match=str(corrupt)):
        open_streamed(corrupt).resample([(2.0, True)])
    with pytest.raises(ImageReadError, match=str(corrupt)):
        load_image(corrupt)  # the whole-file reader agrees that it is broken


def test_what_is_not_one_gzip_volume_is_left_to_the_whole_file_reader(tmp_path):
    _volume(tmp_path / "plain.nii")
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.float32), np.eye(4)), tmp_path / "four_d.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    img = nib.Nifti1Image(np.ones((5, 6, 7), np.float32), None)
    img.header["pixdim"][1] = np.nan  # no qform / sform: the affine comes from the voxel sizes
    nib.save(img, tmp_path / "nan.nii.gz")
    (tmp_path / "not_gzip.nii.gz").write_bytes(b"plain bytes, not gzip")
    for name in ("plain.nii", "four_d.nii.gz", "flat.nii.gz", "nan.nii.gz", "not_gzip.nii.gz", "none.nii.gz"):
        assert open_streamed(tmp_path / name) is None, name
    single = tmp_path / "single.nii.gz"  # (x, y, z, 1): one volume
    nib.save(nib.Nifti1Image(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7, 1), np.eye(4)), single)
    assert open_streamed(single).array.shape == (1, 5, 6, 7)


def test_prediction_from_the_stream_equals_prediction_from_the_whole_file(tmp_path):
    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 3, 2.0, 16))
    loc = write_checkpoint(tmp_path / "l.ckpt", stage_description("local", 3, 1.0, 8))
    predictor = LandmarkPredictor.from_checkpoints(g, loc)
    path = _volume(tmp_path / "v.nii.gz", affine=OBLIQUE)
    torch.set_num_threads(2)  # the planes on one thread beside the inflater
    whole, image, affine = predict_file(predictor, path, streamed=False)
    stream, image2, affine2 = predict_file(predictor, path)
    assert np.allclose(stream.world, whole.world, atol=1e-4)
    assert np.allclose(stream.confidence, whole.confidence, atol=1e-5)
    assert np.array_equal(image, image2) and np.array_equal(affine, affine2)
    # a user's spacing replaces the file's geometry on the streamed path too
    s1, *_ = predict_file(predictor, path, spacing=1.2, streamed=False)
    s2, *_ = predict_file(predictor, path, spacing=1.2)
    assert np.allclose(s1.world, s2.world, atol=1e-4)


def test_a_constant_streamed_volume_is_refused_as_a_read_one_is(tmp_path):
    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 3, 2.0, 16))
    predictor = LandmarkPredictor.from_checkpoints(g)
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 24, 18), 3, np.int16), np.eye(4)), path)
    for stream in (True, False):
        with pytest.raises(InputError, match=rf"{path}: the image is constant \(every voxel is 3\)"):
            predict_file(predictor, path, streamed=stream)


@pytest.mark.parametrize("interleaved", [False, True])
def test_split_over_threads_visits_every_index_once(interleaved):
    seen: list[tuple[int, ...]] = []
    split_over_threads(lambda rows: seen.append(tuple(rows)), 100, threads=3, interleaved=interleaved)
    assert sorted(i for rows in seen for i in rows) == list(range(100)) and len(seen) == 3
    # interleaved: each thread takes every third index (it follows the reader); else one contiguous block
    steps = {rows[1] - rows[0] for rows in seen}
    assert steps == ({3} if interleaved else {1})

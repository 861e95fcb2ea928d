"""The local stage's sub-images from the resampled image and an IntensityMap: the same numbers as those cut
from the fully preprocessed image (landmark_lit.data.intensity), and integer volumes resampled as floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_lit.data.crops import local_crop_starts, stack_local_crops
from landmark_lit.data.intensity import intensity_map, working_image_for_parts
from landmark_lit.data.transforms import (
    Preprocessing,
    normalize_intensity,
    resample_to_spacing,
)


def _image(shape, rng):
    # a smooth picture with an outlier-free range and a bright blob, as a radiograph or a T1 volume
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    x = 100 * np.exp(-4 * r2) + 20 * grids[0] + rng.normal(0, 3, shape)
    return x[None].astype(np.float32)


@pytest.mark.parametrize("intensity", ["histeq", "zscore", "none"])
@pytest.mark.parametrize(
    "shape, spacing, crop, min_size",
    [
        ((181, 143), 0.3, (24, 24), None),
        ((40, 36, 30), 1.5, (10, 10, 10), None),
        ((40, 36, 12), 1.5, (10, 10, 10), [8, 8, 16]),  # far-end padding on the last axis
    ],
)
def test_sub_images_normalised_alone_equal_those_of_the_whole_image(
    intensity, shape, spacing, crop, min_size
):
    rng = np.random.default_rng(0)
    image = _image(shape, rng)
    affine = np.diag([0.7] * len(shape) + [1.0])
    prep = Preprocessing(spacing=spacing, intensity=intensity, channels=1, min_size=min_size)
    whole, aff = prep(image, affine)
    x, aff_parts, normalise = working_image_for_parts(prep, image, affine)
    np.testing.assert_allclose(aff_parts, aff)
    n = np.asarray(whole.shape[1:])
    # centres inside, at the border (sub-images half outside) and beyond the image and its padding
    centres = torch.tensor(
        np.stack([n / 2, np.zeros(len(n)), n - 1, n + 3, rng.uniform(0, n)]), dtype=torch.float32
    )
    starts = local_crop_starts(centres, crop)
    expected = stack_local_crops(whole, starts, crop)
    got = stack_local_crops(x, starts, crop, normalise)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-5), float((got - expected).abs().max())
    if intensity != "none":  # the padding and the outside stay 0 while the image's values are normalised
        assert float(got.abs().max()) > 0.5


def test_intensity_map_statistics_are_those_of_the_normalised_image():
    x = torch.from_numpy(_image((64, 80), np.random.default_rng(1)))
    for method in ("zscore", "histeq"):
        norm = intensity_map(x, method)
        ref = normalize_intensity(x, method)
        assert torch.allclose(norm(x), ref, atol=2e-5)
        assert abs(float(norm(x).mean())) < 1e-5 and abs(float(norm(x).std(correction=0)) - 1) < 1e-4


def test_constant_image_under_histeq_is_normalised_whole():
    prep = Preprocessing(spacing=1.0, intensity="histeq", channels=1)
    image = np.full((1, 20, 20), 7.0, np.float32)
    x, _, normalise = working_image_for_parts(prep, image, np.eye(3))
    assert normalise is None
    assert torch.equal(x, prep(image, np.eye(3))[0])


@pytest.mark.parametrize("order", ["C", "F"])
def test_integer_volume_resamples_as_its_float_values(order):
    rng = np.random.default_rng(2)
    ints = rng.integers(-1024, 3000, size=(1, 37, 41, 29)).astype(np.int16)
    ints = np.asfortranarray(ints[0])[None] if order == "F" else ints
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    a, aff_a = resample_to_spacing(ints, affine, 1.5)
    b, aff_b = resample_to_spacing(ints.astype(np.float32), affine, 1.5)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    np.testing.assert_array_equal(aff_a, aff_b)


def test_resampling_split_over_threads_equals_one_thread():
    x = torch.from_numpy(np.random.default_rng(3).random((1, 64, 40, 33)).astype(np.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = resample_to_spacing(x, np.diag([0.7, 0.7, 1.0, 1.0]), 1.5)
        torch.set_num_threads(2)
        two, _ = resample_to_spacing(x, np.diag([0.7, 0.7, 1.0, 1.0]), 1.5)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("intensity", ["zscore", "histeq"])
def test_preprocessing_leaves_its_input_alone(channels, intensity):
    # at the image's own spacing nothing is resampled: the normalisation must still not write into the
    # caller's image (the predictor passes the same image to every stage)
    image = np.random.default_rng(4).random((channels, 20, 24)).astype(np.float32)
    before = image.copy()
    out, _ = Preprocessing(spacing=1.0, intensity=intensity)(image, np.eye(3))
    np.testing.assert_array_equal(image, before)
    tensor = torch.from_numpy(before.copy())
    Preprocessing(spacing=1.0, intensity=intensity)(tensor, np.eye(3))
    assert torch.equal(tensor, torch.from_numpy(before))
    assert abs(float(out[0].mean())) < 1e-5


def test_resampling_over_threads_inside_inference_mode():
    # the predictor resamples under torch.inference_mode, which worker threads do not inherit
    x = torch.from_numpy(np.random.default_rng(5).random((1, 64, 40, 33)).astype(np.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            out, _ = resample_to_spacing(x, np.diag([0.7, 0.7, 1.0, 1.0]), 1.5)
    finally:
        torch.set_num_threads(before)
    assert out.shape == (1, 30, 19, 22) and torch.isfinite(out).all()


def test_equalisation_of_views_in_any_layout_is_np_interp_of_the_cumulative_histogram():
    from landmark_lit.data.transforms import apply_histogram_cdf, histogram_cdf

    rng = np.random.default_rng(3)
    x = torch.from_numpy((rng.gamma(2.0, 40.0, (2, 37, 53))).astype(np.float32))
    lo, hi, cum = histogram_cdf(x.reshape(2, -1)[:1])
    centres = (np.arange(len(cum)) + 0.5) * (hi - lo) / len(cum) + lo
    for view in (x, x.permute(0, 2, 1), x[:, 3:30, 5:40], x.permute(2, 1, 0)[::2]):
        got = apply_histogram_cdf(view, lo, hi, cum)
        expected = np.interp(view.numpy(), centres, cum.numpy())
        assert got.shape == view.shape
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-6)
    assert float(apply_histogram_cdf(x, lo, hi, cum).max()) == 1.0

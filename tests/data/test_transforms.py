from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_lit.data.cases import Case
from landmark_lit.data.crops import crop_or_pad
from landmark_lit.data.datasets import (
    GlobalTrainDataset,
    LocalEvalDataset,
    LocalTrainDataset,
    PreparedCases,
    SelectLandmarks,
    WholeImageDataset,
)
from landmark_lit.data.synthetic import SyntheticLandmarks
from landmark_lit.data.transforms import (
    Preprocessing,
    resample_to_spacing,
    resample_to_spacing_monai,
    spacing_of,
    value_range,
    voxel_to_world,
    world_to_voxel,
)


def bright_voxel_case(shape, voxel, affine) -> Case:
    img = np.zeros((1, *shape), np.float32)
    img[(0, *voxel)] = 1000.0
    return Case("bright", img, np.asarray(affine, float), voxel_to_world(np.array([voxel], float), affine))


class OneCase:
    """A case source of one case."""

    def __init__(self, case: Case, names: list[str], d: int) -> None:
        self.case, self.landmark_names, self.spatial_dims = case, names, d

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Case:
        return self.case


def argmax_voxel(image: torch.Tensor) -> np.ndarray:
    return np.array(np.unravel_index(int(image[0].argmax()), image.shape[1:]), float)


def oblique_affine(spacing, angle_deg=20.0, origin=(-30.0, 12.0, 5.0)) -> np.ndarray:
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "isotropic": np.diag([1.0, 1.0, 1.0, 1.0]),
    "anisotropic": np.diag([0.8, 1.1, 2.5, 1.0]),
    "oblique_lps": np.diag([-1, -1, 1, 1]) @ oblique_affine((0.9, 0.9, 1.7)),
}


@pytest.mark.parametrize("name", AFFINES)
@pytest.mark.parametrize("spacing", [1.5, 3.0, 0.7])
def test_bright_voxel_stays_on_its_landmark_through_resampling(name, spacing):
    case = bright_voxel_case((40, 36, 20), (17, 21, 9), AFFINES[name])
    img, aff = resample_to_spacing(case.image, case.affine, spacing)
    np.testing.assert_allclose(spacing_of(aff), spacing, rtol=1e-6)
    q = world_to_voxel(case.landmarks_world[0], aff)
    assert np.all(np.abs(argmax_voxel(img) - q) <= 0.5 + 1e-6), (argmax_voxel(img), q)


def test_world_to_voxel_inverts_a_permuted_affine():
    affine = np.array([[0.0, 2.0, 0.0, 5.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 0.5, 1.0], [0, 0, 0, 1]])
    voxel = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 7.0]])
    world = voxel @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(world_to_voxel(world, affine), voxel)


def test_world_voxel_round_trip():
    aff = AFFINES["oblique_lps"]
    pts = np.array([[1.5, -2.0, 30.25], [np.nan, np.nan, np.nan]])
    back = voxel_to_world(world_to_voxel(pts, aff), aff)
    np.testing.assert_allclose(back[0], pts[0], atol=1e-9)
    assert np.isnan(back[1]).all()


def test_crop_or_pad_keeps_voxels_and_zero_fills():
    img = torch.arange(60.0).view(1, 6, 10)
    crop = crop_or_pad(img, (-2, 7), (5, 5))
    assert crop.shape == (1, 5, 5)
    assert crop[0, 2, 0] == img[0, 0, 7] and crop[0, 4, 2] == img[0, 2, 9]
    assert crop[0, :2].abs().sum() == 0 and crop[0, :, 3:].abs().sum() == 0


def test_synthetic_cases_are_seeded_and_landmarks_need_context():
    src = SyntheticLandmarks(3, 4, seed=5, size=32, spacing=3.0)
    a, b = src[1], src[1]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks_world, b.landmarks_world)
    assert not np.array_equal(src[0].landmarks_world, src[1].landmarks_world)
    other = SyntheticLandmarks(3, 4, seed=6, size=32, spacing=3.0)[1]
    assert not np.array_equal(other.image, a.image)
    # no landmark sits on the brightest voxel
    brightest = argmax_voxel(torch.from_numpy(a.image))
    vox = world_to_voxel(a.landmarks_world, a.affine)
    assert np.linalg.norm(vox - brightest, axis=1).min() > 1.0
    assert a.image.shape == (1, 32, 32, 32) and a.landmarks_world.shape == (6, 3)


@pytest.mark.parametrize("d", [2, 3])
def test_training_crops_carry_their_landmarks(d):
    size = (30, 26, 22)[:d]
    voxel = (11, 19, 7)[:d]
    case = bright_voxel_case(size, voxel, np.diag([*([1.0] * d), 1.0]))
    cases = PreparedCases(OneCase(case, ["p"], d), Preprocessing(spacing=1.0, intensity="none"))
    for ds in (GlobalTrainDataset(cases, (16,) * d, 8), LocalTrainDataset(cases, (8,) * d, 8, margin=1.0)):
        for i in range(8):
            item = ds[i]
            image = item["image"] if item["image"].ndim == d + 1 else item["image"][0]
            lm = item["landmarks"][0].numpy()
            inside = np.all((lm >= 0) & (lm <= np.array(image.shape[1:]) - 1))
            if inside:
                np.testing.assert_allclose(argmax_voxel(image), lm, atol=1e-6)
            else:
                assert isinstance(ds, GlobalTrainDataset) and image.max() == 0
            if isinstance(ds, LocalTrainDataset):
                assert inside and np.all(lm >= 1.0) and np.all(lm <= 8 - 1 - 1.0)
            np.testing.assert_allclose(item["origin"][0].numpy() + lm, voxel)
    whole = WholeImageDataset(cases)[0]
    np.testing.assert_allclose(whole["landmarks"][0].numpy(), voxel)
    ev = LocalEvalDataset(cases, (8,) * d, jitter=2.0)[0]
    lm = ev["landmarks"][0].numpy()
    assert np.all(np.abs(lm - 3.5) <= 2.5 + 1e-6)
    np.testing.assert_allclose(argmax_voxel(ev["image"][0]), lm, atol=1e-6)


def test_select_landmarks_restricts_names_and_coordinates():
    src = SyntheticLandmarks(2, 2, size=32)
    sel = SelectLandmarks(src, [3, 1])
    assert sel.landmark_names == [src.landmark_names[3], src.landmark_names[1]]
    np.testing.assert_array_equal(sel[0].landmarks_world, src[0].landmarks_world[[3, 1]])
    with pytest.raises(ValueError, match="out of range"):
        SelectLandmarks(src, [6])


def test_missing_landmarks_stay_missing_through_preprocessing():
    case = bright_voxel_case((20, 20), (5, 6), np.eye(3))
    case.landmarks_world = np.array([[np.nan, np.nan]])

    class One:
        landmark_names, spatial_dims = ["p"], 2

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return case

    item = LocalTrainDataset(PreparedCases(One(), Preprocessing(2.0)), (8, 8), 2)[0]
    assert torch.isnan(item["landmarks"]).all() and item["image"].shape == (1, 1, 8, 8)


def _oblique_flipped_affine() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    aff = np.eye(4)
    aff[:3, :3] = Rotation.from_euler("xyz", [20, -30, 45], degrees=True).as_matrix() @ np.diag(
        [-1.0, 0.9, 1.3]
    )
    aff[:3, 3] = [10.0, -5.0, 3.0]
    return aff


@pytest.mark.parametrize(
    "shape, affine, spacing",
    [
        ((1, 50, 61), np.diag([0.1, 0.1, 1.0]), 0.8),  # 60 / 8 + 1 = 8.5 rounds to 8, as MONAI rounds
        ((3, 50, 61), np.diag([0.1, 0.13, 1.0]), 0.3),  # several channels, anisotropic input
        ((1, 64, 64), np.diag([0.5, 0.5, 1.0]), 0.25),  # up-sampling: no smoothing
        ((1, 101, 99), np.diag([0.1, 0.1, 1.0]), 0.37),  # non-integer factor
        ((2, 40, 33, 27), np.diag([1.0, 1.2, 2.5, 1.0]), 1.5),  # 3D, up on one axis, down on two
        ((1, 30, 20, 25), _oblique_flipped_affine(), [2.0, 0.7, 1.1]),  # oblique, flipped axis
    ],
)
def test_sparse_resampling_equals_monai_smoothing_and_spacing(shape, affine, spacing):
    x = torch.from_numpy(np.random.default_rng(0).random(shape).astype(np.float32))
    fast, fast_affine = resample_to_spacing(x, affine, spacing)
    ref, ref_affine = resample_to_spacing_monai(x, affine, spacing)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-5)
    np.testing.assert_allclose(fast_affine, ref_affine, atol=1e-9)


@pytest.mark.parametrize("layout", ["fortran", "transposed 2d", "channels last"])
def test_resampling_does_not_depend_on_memory_layout(layout):
    # nibabel returns NIfTI data in Fortran order; the resampling works in memory order and must give
    # the C-ordered result (and MONAI's), and the value range must be the same
    rng = np.random.default_rng(1)
    if layout == "fortran":
        c_order = rng.random((1, 40, 33, 27)).astype(np.float32)
        other = torch.from_numpy(np.asfortranarray(c_order[0])[None])
        affine, spacing = np.diag([0.7, 0.7, 1.0, 1.0]), [3.0, 1.5, 2.0]
    elif layout == "transposed 2d":
        c_order = rng.random((1, 50, 61)).astype(np.float32)
        other = torch.from_numpy(np.ascontiguousarray(c_order[0].T)).T[None]
        affine, spacing = np.diag([0.1, 0.13, 1.0]), 0.8
    else:
        c_order = rng.random((3, 30, 20)).astype(np.float32)
        other = torch.from_numpy(np.ascontiguousarray(c_order.transpose(1, 2, 0))).permute(2, 0, 1)
        affine, spacing = np.diag([0.5, 0.4, 1.0]), 1.1
    assert not other.is_contiguous() and np.array_equal(other.numpy(), c_order)
    fast, fast_affine = resample_to_spacing(other, affine, spacing)
    same, _ = resample_to_spacing(torch.from_numpy(c_order), affine, spacing)
    ref, ref_affine = resample_to_spacing_monai(torch.from_numpy(c_order), affine, spacing)
    assert fast.is_contiguous() and fast.shape == ref.shape
    assert torch.allclose(fast, same, atol=1e-6)
    assert torch.allclose(fast, ref, atol=1e-5)
    np.testing.assert_allclose(fast_affine, ref_affine, atol=1e-9)
    assert value_range(other) == value_range(c_order) == (float(c_order.min()), float(c_order.max()))


@pytest.mark.parametrize("d", [2, 3])
def test_flipped_training_crops_carry_their_landmarks(d):
    """With a flip on every draw, global crops and local sub-images hold the bright voxel at the
    mirrored landmark, and the pair's sub-images trade places (landmark k's network sees landmark k)."""
    from landmark_lit.data.augment import RandomFlip

    size = (30, 26, 22)[:d]
    a, b = (6, 19, 7)[:d], (21, 9, 12)[:d]
    image = np.zeros((1, *size), dtype=np.float32)
    image[(0, *a)], image[(0, *b)] = 1000.0, 500.0
    affine = np.diag([*([0.5] * d), 1.0])
    case = Case("c", image, affine, np.array([a, b], dtype=float) * 0.5)
    cases = PreparedCases(OneCase(case, ["left", "right"], d), Preprocessing(spacing=0.5, intensity="none"))
    flip = RandomFlip(axes=(0,), pairs=((0, 1),), prob=1.0)
    mirrored = {0: np.array([size[0] - 1 - b[0], *b[1:]]), 1: np.array([size[0] - 1 - a[0], *a[1:]])}
    value = {0: 500.0, 1: 1000.0}  # landmark 0 now sits where landmark 1's (fainter) voxel was mirrored
    for item in [GlobalTrainDataset(cases, (32,) * d, 4, flip=flip)[i] for i in range(4)]:
        for k in (0, 1):
            lm = item["landmarks"][k].numpy()
            np.testing.assert_allclose(item["origin"][k].numpy() + lm, mirrored[k])
            assert item["image"][(0, *np.round(lm).astype(int))] == value[k]
            np.testing.assert_allclose(item["landmarks_world"][k].numpy(), mirrored[k] * 0.5)
    for item in [LocalTrainDataset(cases, (8,) * d, 4, flip=flip)[i] for i in range(4)]:
        for k in (0, 1):
            lm = item["landmarks"][k].numpy()
            np.testing.assert_allclose(item["origin"][k].numpy() + lm, mirrored[k])
            assert item["image"][k][(0, *np.round(lm).astype(int))] == value[k]


def test_local_offsets_follow_the_configured_normal_spread():
    d, size = 2, (200, 200)
    case = bright_voxel_case(size, (100, 90), np.diag([1.0, 1.0, 1.0]))
    cases = PreparedCases(OneCase(case, ["p"], d), Preprocessing(spacing=1.0, intensity="none"))
    torch.manual_seed(0)
    crop = (40, 40)
    normal = LocalTrainDataset(cases, crop, 1, margin=1.0, offset_sd=3.0)
    off = np.array([normal[0]["landmarks"][0].numpy() - 19.5 for _ in range(600)])
    assert np.all(np.abs(off) <= 19.5 - 1.0 + 1e-6)  # always inside, margin kept
    assert 2.6 < off.std() < 3.4 and abs(off.mean()) < 0.5  # rounding to whole voxels adds ~0.3
    uniform = LocalTrainDataset(cases, crop, 1, margin=1.0)
    off_u = np.array([uniform[0]["landmarks"][0].numpy() - 19.5 for _ in range(600)])
    assert off_u.std() > 9.0  # the paper's draw: anywhere in the sub-image (sd of U(-18.5, 18.5) ~ 10.7)
    # a spread far larger than the sub-image still keeps the landmark inside
    wide = LocalTrainDataset(cases, crop, 1, margin=2.0, offset_sd=100.0)
    lm = np.array([wide[0]["landmarks"][0].numpy() for _ in range(100)])
    assert np.all((lm >= 2.0) & (lm <= 40 - 1 - 2.0))


def test_one_mirror_rule_for_training_and_prediction():
    import subprocess
    import sys

    from landmark_lit.data.augment import RandomFlip
    from landmark_lit.data.transforms import mirror_permutation
    from landmark_lit.inference.settings import MirrorAverage

    pairs = ((0, 3), (1, 4))
    perm = mirror_permutation(pairs, 6)
    assert perm == [3, 4, 2, 0, 1, 5] and [perm[p] for p in perm] == list(range(6))  # an involution
    assert (
        RandomFlip(axes=(0,), pairs=pairs).permutation(6) == perm == MirrorAverage(pairs=pairs).permutation(6)
    )
    with pytest.raises(ValueError, match="out of range for 4 landmarks"):
        mirror_permutation(pairs, 4)
    # prediction builds no training augmentation
    code = (
        "import sys, landmark_lit.inference.predict_files; print('landmark_lit.data.augment' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "image",
    [
        # seeded where made (at collection): an unseeded draw now and then puts a pixel on a bin's edge,
        # where float32 and MONAI's float64 scaling pick neighbouring bins
        torch.rand(1, 64, 48, generator=torch.Generator().manual_seed(0)) * 900 + 20,  # 2D, arbitrary range
        torch.randn(2, 12, 10, 9, generator=torch.Generator().manual_seed(1)),  # 3D, two channels, negative
        torch.tensor([[[0.0, 0.0, 1.0, 1.0, 1.0, 7.0]]]),  # ties and the maximum in the last bin
        torch.full((1, 5, 5), 3.0),  # constant
    ],
)
def test_histogram_equalisation_is_monais(image):
    from monai.transforms import HistogramNormalize

    from landmark_lit.data.transforms import equalize_histogram

    torch.manual_seed(0)
    want = torch.as_tensor(HistogramNormalize(num_bins=256, min=0, max=1)(image), dtype=torch.float32)
    got = equalize_histogram(image)
    assert got.shape == image.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)

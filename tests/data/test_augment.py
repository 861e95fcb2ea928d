from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_lit.data.augment import Augmentation


def bright(shape, voxel) -> torch.Tensor:
    img = torch.zeros(1, *shape)
    img[(0, *voxel)] = 1000.0
    return img


@pytest.mark.parametrize("d", [2, 3])
def test_bright_voxel_follows_its_landmark_through_random_affines(d):
    shape, voxel = (40, 36, 30)[:d], (13, 21, 17)[:d]
    aug = Augmentation(prob=1.0, rotate_deg=15, scale=0.15, translate=3, intensity_prob=0.0)
    torch.manual_seed(1)
    moved_any = False
    for _ in range(6):
        img, lm = aug(bright(shape, voxel), torch.tensor([voxel], dtype=torch.float32))
        got = np.array(np.unravel_index(int(img[0].argmax()), img.shape[1:]))
        assert np.all(np.abs(got - lm[0].numpy()) <= 0.5 + 1e-4), (got, lm)
        moved_any |= bool(np.abs(lm[0].numpy() - np.array(voxel)).max() > 0.5)
    assert moved_any


def test_keep_inside_never_pushes_a_landmark_out_of_its_sub_image():
    aug = Augmentation(prob=1.0, rotate_deg=30, scale=0.3, translate=4, intensity_prob=0.0, keep_inside=1.0)
    torch.manual_seed(0)
    for _ in range(20):
        _, lm = aug(bright((16, 16), (1, 14)), torch.tensor([[1.0, 14.0]]))
        assert torch.all(lm >= 1.0) and torch.all(lm <= 14.0)


def test_intensity_only_leaves_geometry_and_nan_landmarks_alone():
    aug = Augmentation(prob=0.0, intensity_prob=1.0)
    lm = torch.tensor([[3.0, 4.0], [float("nan"), float("nan")]])
    img, out = aug(torch.randn(1, 12, 12), lm)
    assert img.shape == (1, 12, 12) and torch.equal(out[0], lm[0]) and torch.isnan(out[1]).all()


def test_same_torch_seed_same_augmentation():
    aug = Augmentation(prob=1.0, intensity_prob=1.0)
    x, lm = torch.randn(1, 20, 20), torch.tensor([[5.0, 6.0]])
    torch.manual_seed(7)
    a = aug(x, lm)
    torch.manual_seed(7)
    b = aug(x, lm)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("d", [2, 3])
def test_a_flip_moves_each_bright_voxel_with_its_landmark_and_swaps_pairs(d):
    from landmark_lit.data.augment import RandomFlip

    shape = (21, 16, 13)[:d]
    left, right, mid = (3, 5, 2)[:d], (17, 5, 2)[:d], (10, 12, 9)[:d]
    img = bright(shape, left) + 2 * bright(shape, right) + 3 * bright(shape, mid)
    lm = torch.tensor([left, right, mid], dtype=torch.float32)
    lm = torch.cat([lm, torch.full((1, d), float("nan"))])  # a missing landmark stays missing
    flip = RandomFlip(axes=(0,), pairs=((0, 1),), prob=1.0)
    out, moved = flip(img, lm)
    # the pair traded places: landmark 0 now sits on the mirrored voxel of landmark 1 (value 2000)
    for k, value in ((0, 2000.0), (1, 1000.0), (2, 3000.0)):
        np.testing.assert_allclose(np.argwhere(out[0].numpy() == value)[0], moved[k].numpy())
    assert moved[0, 0] == shape[0] - 1 - right[0] == 3 and moved[1, 0] == shape[0] - 1 - left[0] == 17
    np.testing.assert_allclose(moved[2].numpy(), [shape[0] - 1 - mid[0], *mid[1:]])
    assert torch.isnan(moved[3]).all()
    # a cephalogram: no pairs, names kept
    out, kept = RandomFlip(axes=(0,), prob=1.0)(img, lm)
    assert kept[0, 0] == shape[0] - 1 - left[0] and out[(0, *kept[0].long().tolist())] == 1000.0
    # prob 0: untouched
    same, lm2 = RandomFlip(prob=0.0)(img, lm)
    assert same is img and torch.equal(lm2[:3], lm[:3])


def test_flip_pairs_by_name_and_their_checks():
    from landmark_lit.data.augment import RandomFlip

    flip = RandomFlip(axes=(0,), pairs=(("R eye", "L eye"),))
    assert flip.for_landmarks(["nose", "L eye", "R eye"]).pairs == ((2, 1),)
    assert flip.for_landmarks(["nose"]).pairs == ()  # neither selected: nothing to swap
    with pytest.raises(ValueError, match="only one of them"):
        flip.for_landmarks(["nose", "R eye"])
    with pytest.raises(ValueError, match="must not share"):
        RandomFlip(pairs=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="resolve it"):
        flip(torch.zeros(1, 4, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="out of range"):
        RandomFlip(axes=(2,), prob=1.0)(torch.zeros(1, 4, 4), torch.zeros(1, 2))


def test_flip_is_drawn_about_half_the_time():
    from landmark_lit.data.augment import RandomFlip

    torch.manual_seed(0)
    flip = RandomFlip(axes=(0,), prob=0.5)
    lm = torch.tensor([[1.0, 2.0]])
    n = sum(bool(flip(torch.zeros(1, 10, 5), lm)[1][0, 0] == 8.0) for _ in range(400))
    assert 160 < n < 240


@pytest.mark.parametrize("d", [2, 3])
def test_the_warp_is_scipy_affine_transform_of_the_drawn_matrix(d):
    """The batched warp is the pull of scipy.ndimage.affine_transform (linear, zeros outside) with the very
    matrix whose inverse moved the landmark."""
    from scipy import ndimage

    from landmark_lit.data.augment import _WARP

    shape = (24, 20, 18)[:d]
    aug = Augmentation(prob=1.0, rotate_deg=20, scale=0.2, translate=2, intensity_prob=0.0)
    torch.manual_seed(3)
    theta = aug._draw(3, d, torch.tensor(shape, dtype=torch.float64))
    x = torch.rand(3, 1, *shape)
    out = _WARP(x, theta.float())
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, d)
    for i in range(3):
        want = ndimage.affine_transform(x[i, 0].double().numpy(), theta[i].numpy(), order=1, mode="constant")
        # compare where the sampled point lies in the image (outside, scipy gives 0 at once and
        # grid_sample fades to the zero padding over the outer half voxel)
        pulled = grid @ theta[i, :d, :d].numpy().T + theta[i, :d, d].numpy()
        inside = np.all((pulled >= 0) & (pulled <= np.array(shape) - 1), -1)
        assert inside.mean() > 0.6
        np.testing.assert_allclose(out[i, 0].numpy().reshape(-1)[inside], want.reshape(-1)[inside], atol=1e-5)


@pytest.mark.parametrize("d", [2, 3])
def test_a_stack_draws_each_image_on_its_own_and_each_landmark_follows_its_image(d):
    shape = (30, 28, 26)[:d]
    voxels = [(9, 19, 12), (20, 8, 15), (15, 15, 9), (11, 10, 17)]
    stack = torch.cat([bright(shape, v[:d])[None] for v in voxels])
    lm = torch.tensor([v[:d] for v in voxels], dtype=torch.float32)[:, None]
    aug = Augmentation(prob=1.0, rotate_deg=15, scale=0.15, intensity_prob=0.0)
    torch.manual_seed(2)
    img, moved = aug(stack, lm)
    assert img.shape == stack.shape and moved.shape == lm.shape
    for i in range(len(voxels)):
        got = np.array(np.unravel_index(int(img[i, 0].argmax()), shape))
        assert np.all(np.abs(got - moved[i, 0].numpy()) <= 0.5 + 1e-4), (i, got, moved[i])
    shifts = (moved - lm)[:, 0].numpy()
    assert len({tuple(np.round(s, 3)) for s in shifts}) == len(voxels)  # four different draws


def test_scaling_is_drawn_for_the_chosen_axes():
    """scale_axes=None: a point on each axis away from the centre is scaled by its own factor in
    [0.8, 1.2] (rotation off), drawn independently; the default (0,) scales the first axis only, as MONAI's
    RandAffine does with a single scale_range value (the chosen ISBI 2015 models' training)."""
    from monai.transforms import RandAffineGrid

    centre = 10.0  # (21 - 1) / 2
    lm = torch.tensor([[[20.0, centre], [centre, 20.0]]]).expand(200, -1, -1)
    for axes in (None, (0,)):
        aug = Augmentation(prob=1.0, rotate_deg=0.0, scale=0.2, scale_axes=axes, intensity_prob=0.0)
        torch.manual_seed(0)
        _, moved = aug(torch.zeros(200, 1, 21, 21), lm)
        # out = c + (p - c) / s per axis
        s0 = (20.0 - centre) / (moved[:, 0, 0] - centre)
        s1 = (20.0 - centre) / (moved[:, 1, 1] - centre)
        assert 0.8 - 1e-4 <= float(s0.min()) and float(s0.max()) <= 1.2 + 1e-4 and float(s0.std()) > 0.08
        torch.testing.assert_close(moved[:, 0, 1], torch.full((200,), centre))  # axis 1 of point 0 untouched
        if axes is None:
            assert 0.8 - 1e-4 <= float(s1.min()) and float(s1.max()) <= 1.2 + 1e-4 and float(s1.std()) > 0.08
            assert abs(float(torch.corrcoef(torch.stack([s0, s1]))[0, 1])) < 0.2  # drawn independently
        else:
            torch.testing.assert_close(s1, torch.ones(200, dtype=s1.dtype))
    grid = RandAffineGrid(scale_range=0.2)
    grid.set_random_state(0)
    grid.randomize()
    assert len(grid.scale_params) == 1  # MONAI: one factor, for the first axis
    with pytest.raises(ValueError, match=r"scale_axes \[2\] out of range for a 2D image"):
        Augmentation(prob=1.0, scale_axes=(2,))(torch.zeros(1, 8, 8), torch.zeros(1, 2))


def test_intensity_changes_are_drawn_per_image_with_their_probability():
    shift = Augmentation(
        prob=0.0,
        intensity_prob=0.5,
        contrast_gamma=(1.0, 1.0),
        intensity_scale=0.0,
        intensity_shift=0.1,
        noise_std=0.0,
    )
    torch.manual_seed(0)
    x = torch.rand(400, 1, 6, 6)
    out, _ = shift(x, torch.zeros(400, 1, 2))
    delta = (out - x).reshape(400, -1)
    assert float((delta.max(1).values - delta.min(1).values).max()) < 1e-5  # one offset per image
    changed = delta[:, 0].abs() > 1e-7
    assert 160 < int(changed.sum()) < 240 and float(delta.abs().max()) <= 0.1 + 1e-6
    gamma = Augmentation(
        prob=0.0,
        intensity_prob=1.0,
        contrast_gamma=(2.0, 2.0),
        intensity_scale=0.0,
        intensity_shift=0.0,
        noise_std=0.0,
    )
    img = torch.tensor([[[0.0, 1.0, 2.0, 4.0]]])
    out, _ = gamma(img, torch.zeros(1, 2))  # MONAI's AdjustContrast: ((x - min) / range) ** g * range + min
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25, 1.0, 4.0]]]), atol=1e-5, rtol=0)
    noise = Augmentation(
        prob=0.0,
        intensity_prob=1.0,
        contrast_gamma=(1.0, 1.0),
        intensity_scale=0.0,
        intensity_shift=0.0,
        noise_std=0.05,
    )
    out, _ = noise(torch.zeros(300, 1, 32, 32), torch.zeros(300, 1, 2))
    sd = out.reshape(300, -1).std(1)
    assert float(sd.max()) < 0.053 and 0.02 < float(sd.mean()) < 0.03  # sd uniform in [0, 0.05]


def test_keep_inside_holds_for_every_sub_image_of_a_stack():
    aug = Augmentation(prob=1.0, rotate_deg=30, scale=0.3, translate=4, intensity_prob=0.0, keep_inside=1.0)
    torch.manual_seed(0)
    lm = torch.tensor([[[1.0, 14.0]], [[8.0, 8.0]], [[14.0, 1.0]]]).repeat(20, 1, 1)
    _, moved = aug(torch.zeros(60, 1, 16, 16), lm)
    assert torch.all(moved >= 1.0) and torch.all(moved <= 14.0)
    assert (moved - lm).abs().amax((1, 2)).gt(0.5).sum() > 30  # most were still moved


def test_a_wrong_shape_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\) images with \(N, K, D\) landmarks"):
        Augmentation()(torch.zeros(3, 1, 8, 8), torch.zeros(2, 1, 2))

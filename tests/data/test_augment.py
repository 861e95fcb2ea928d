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

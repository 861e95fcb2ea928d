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

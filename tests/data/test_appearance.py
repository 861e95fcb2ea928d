from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from landmark_lit.data.appearance import Appearance, border_cut, gaussian_blur, random_curve
from landmark_lit.data.augment import Augmentation


@pytest.mark.parametrize("d", [2, 3])
def test_each_image_is_blurred_as_scipy_with_its_own_sigma(d):
    torch.manual_seed(0)
    x = torch.rand(3, 2, *(14, 11, 9)[:d])
    sigma = torch.tensor([0.5, 1.0, 1.7])
    radius = int(np.ceil(4 * 1.7))
    out = gaussian_blur(x, sigma)
    for i in range(3):
        for c in range(2):
            want = scipy.ndimage.gaussian_filter(
                x[i, c].double().numpy(), float(sigma[i]), mode="nearest", truncate=radius / float(sigma[i])
            )
            np.testing.assert_allclose(out[i, c].numpy(), want, atol=1e-5)


def test_blur_and_sharpen_are_drawn_apart_and_sharpening_is_the_unsharp_mask():
    torch.manual_seed(1)
    x = torch.zeros(600, 1, 12, 12)
    x[..., 6:] = 1.0  # a step edge
    app = Appearance(blur_prob=0.3, sharpen_prob=0.3, sigma=(1.0, 1.0), sharpen_amount=(1.0, 1.0))
    out = app(x)
    blurred = gaussian_blur(x[:1], torch.tensor([1.0]))
    is_blur = torch.isclose(out, blurred.expand_as(out), atol=1e-6).flatten(1).all(1)
    is_sharp = torch.isclose(out, (2 * x - blurred).expand_as(out), atol=1e-6).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert not bool((is_blur & is_sharp).any()) and not bool((kept & (is_blur | is_sharp)).any())
    assert bool((is_blur | is_sharp | kept).all())
    for share, p in ((is_blur, 0.3), (is_sharp, 0.3), (kept, 0.4)):
        assert abs(int(share.sum()) - p * 600) < 3 * (600 * p * (1 - p)) ** 0.5  # binomial, 3 SD
    assert bool((out[is_sharp][:, 0, 0, 6] > 1.1).all())  # the edge overshoots
    with pytest.raises(ValueError, match="blur_prob \\+ sharpen_prob must be at most 1"):
        Appearance(blur_prob=0.6, sharpen_prob=0.6)


def test_a_curve_keeps_order_and_range_and_leaves_unchosen_images_alone():
    torch.manual_seed(2)
    x = torch.linspace(-3.0, 5.0, 200).view(1, 1, 200).repeat(4, 1, 1)
    on = torch.tensor([True, True, False, True])
    out = random_curve(x, on, points=8, strength=1.0)
    assert torch.equal(out[2], x[2])
    assert bool((out[on].diff(dim=-1) >= -1e-6).all())  # monotone
    torch.testing.assert_close(out[on][..., [0, -1]], x[on][..., [0, -1]])  # the range kept
    assert float((out[on] - x[on]).abs().max()) > 0.1  # and it did change
    torch.testing.assert_close(random_curve(x, torch.ones(4, dtype=torch.bool), 8, 0.0), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("d", [2, 3])
def test_a_cut_is_one_border_band_at_the_background(d):
    torch.manual_seed(3)
    shape = (20, 16, 12)[:d]
    x = torch.rand(300, 1, *shape) + 1.0
    x[(slice(None), 0, *(n // 2 for n in shape))] = 0.5  # each image's minimum, never in a band
    out = border_cut(x, torch.ones(300, dtype=torch.bool), cut_max=0.25)
    changed = out != x
    sides = set()
    for i in range(300):
        where = torch.nonzero(changed[i, 0])
        if where.numel() == 0:
            continue
        assert bool((out[i][changed[i]] == 0.5).all())
        axes = [a for a in range(d) if where[:, a].min() > 0 or where[:, a].max() < shape[a] - 1]
        assert len(axes) == 1  # a band across the whole image along the other axes
        a = axes[0]
        low = int(where[:, a].min()) == 0
        width = int(where[:, a].max()) + 1 if low else shape[a] - int(where[:, a].min())
        assert width <= 0.25 * shape[a]
        sides.add((a, low))
    assert len(sides) == 2 * d  # every axis and side drawn
    untouched = border_cut(x, torch.zeros(300, dtype=torch.bool), 0.25)
    assert torch.equal(untouched, x)


def test_the_augmentation_runs_appearance_last_and_leaves_landmarks_alone():
    aug = Augmentation(prob=0.0, intensity_prob=0.0, appearance={"cut_prob": 1.0, "cut_max": 0.5})
    assert isinstance(aug.appearance, Appearance)
    torch.manual_seed(4)
    lm = torch.tensor([[[2.0, 3.0]]]).repeat(50, 1, 1)
    out, moved = aug(torch.rand(50, 1, 16, 16) + 1.0, lm)
    assert torch.equal(moved, lm)
    assert int((out.flatten(1).min(1).values < 1.0).sum()) == 0  # set to each image's own minimum
    assert int(((out == out.flatten(1).min(1).values.view(50, 1, 1, 1)).flatten(1).sum(1) > 1).sum()) > 35

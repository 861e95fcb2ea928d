"""The displacement method: targets, vote decoding and its modes, the displacement + presence loss."""

from __future__ import annotations

import math

import pytest
import torch

from landmark_lit.methods.displacement import (
    DisplacementLoss,
    VoteDecoder,
    cell_centres,
    decode,
    displacement_targets,
    inverse_log_transform,
    log_transform,
    presence_targets,
    valid_mask,
    vote_weights,
)
from landmark_lit.networks import DisplacementOutput

MODES = [("linear", False), ("log", False), ("none", True), ("linear", True), ("log", True)]


def perfect_output(landmarks: torch.Tensor, input_shape, stride: int, regression: str) -> DisplacementOutput:
    grid = [math.ceil(n / stride) for n in input_shape]
    disp = displacement_targets(landmarks, grid, stride)
    if regression == "log":
        disp = log_transform(disp)
    presence = presence_targets(landmarks, grid, stride, input_shape)
    logits = (presence * 2 - 1) * 40.0  # posterior ~1 in the landmark's cell, ~0 elsewhere
    return DisplacementOutput(disp, logits)


def test_cell_centres_follow_the_spec():
    c = cell_centres((3, 2), 8)
    assert c.shape == (2, 3, 2)
    assert c[:, 0, 0].tolist() == [3.5, 3.5]
    assert c[:, 2, 1].tolist() == [2 * 8 + 3.5, 8 + 3.5]


def test_displacement_targets_point_from_cell_centres_to_landmarks():
    lm = torch.tensor([[[10.0, -3.0]]])
    d = displacement_targets(lm, (2, 2), 4)
    assert d.shape == (1, 1, 2, 2, 2)
    assert d[0, 0, :, 1, 0].tolist() == [10.0 - 5.5, -3.0 - 1.5]


def test_presence_marks_the_containing_cell_only():
    # 7.7 lies in voxel 8 (extent [7.5, 8.5)), which belongs to cell 2 (voxels 8..11) although floor(7.7 / 4) = 1
    lm = torch.tensor([[[9.2, 3.0], [7.7, 0.0]]])
    y = presence_targets(lm, (3, 3), 4, (12, 12))
    assert y.shape == (1, 2, 3, 3)
    assert y[0, 0].sum() == 1 and y[0, 0, 2, 0] == 1
    assert y[0, 1].sum() == 1 and y[0, 1, 2, 0] == 1


def test_presence_radius_widens_the_positive_area():
    lm = torch.tensor([[[20.0, 20.0]]])
    y = presence_targets(lm, (10, 10), 4, (40, 40), radius=1.0)
    assert y.sum() == 5  # the cell and its 4 face neighbours (Euclidean radius 1)
    y2 = presence_targets(lm, (10, 10), 4, (40, 40), radius=1.5)
    assert y2.sum() == 9


def test_outside_or_missing_landmarks_have_no_presence():
    lm = torch.tensor([[[-3.0, 5.0], [5.0, 12.0], [float("nan"), float("nan")]]])
    y = presence_targets(lm, (3, 3), 4, (12, 12))
    assert y.sum() == 0
    assert valid_mask(lm).tolist() == [[True, True, False]]
    assert torch.isnan(displacement_targets(lm, (3, 3), 4)[0, 2]).all()


def test_log_transform_round_trip_and_values():
    d = torch.tensor([-999.0, -9.0, -0.5, 0.0, 0.5, 9.0, 99.0])
    t = log_transform(d)
    torch.testing.assert_close(t[[1, 5, 6]], torch.tensor([-1.0, 1.0, 2.0]))
    torch.testing.assert_close(inverse_log_transform(t), d, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(
        inverse_log_transform(log_transform(d, math.e), math.e), d, atol=1e-4, rtol=1e-6
    )


@pytest.mark.parametrize("regression,classification", MODES)
@pytest.mark.parametrize("d", [2, 3])
def test_encode_then_decode_recovers_landmarks(d, regression, classification):
    stride = 4
    shape = (24, 20, 17)[:d]
    g = torch.Generator().manual_seed(d)
    inside = torch.rand(2, 5, d, generator=g) * (torch.tensor(shape[:d]) - 1)
    outside = torch.tensor([[-6.3, 30.1, 40.0][:d], [25.7, -2.2, 8.0][:d]]).expand(2, 2, d)
    lm = torch.cat([inside, outside], dim=1).double()
    out = perfect_output(lm, shape, stride, regression)
    got = decode(out, stride, regression, classification)
    if regression != "none":
        # votes are exact wherever they come from, inside or outside the crop
        torch.testing.assert_close(got, lm.float(), atol=1e-4, rtol=0)
    else:
        # classification alone can only give the centre of the landmark's cell
        centre = torch.floor((lm[:, :5] + 0.5) / stride) * stride + (stride - 1) / 2
        torch.testing.assert_close(got[:, :5], centre.float(), atol=1e-4, rtol=0)


def test_decoding_matches_a_hand_computed_weighted_average():
    # 1D-like 2D example: grid (2, 1), stride 2 -> centres (0.5, 0.5) and (2.5, 0.5)
    disp = torch.tensor([[1.0, 2.0], [0.0, -1.0]]).view(1, 1, 2, 2, 1)  # (B, K, D, 2, 1)
    logits = torch.logit(torch.tensor([0.2, 0.6])).view(1, 1, 2, 1)
    out = DisplacementOutput(disp, logits)
    votes = torch.tensor([[0.5 + 1.0, 0.5 + 0.0], [2.5 + 2.0, 0.5 - 1.0]])
    weighted = (0.2 * votes[0] + 0.6 * votes[1]) / 0.8
    torch.testing.assert_close(decode(out, 2, "linear", True)[0, 0], weighted)
    torch.testing.assert_close(decode(out, 2, "linear", False)[0, 0], votes.mean(0))
    centres = torch.tensor([[0.5, 0.5], [2.5, 0.5]])
    torch.testing.assert_close(
        decode(out, 2, "none", True)[0, 0], (0.2 * centres[0] + 0.6 * centres[1]) / 0.8
    )
    log_votes = centres + inverse_log_transform(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
    torch.testing.assert_close(decode(out, 2, "log", False)[0, 0], log_votes.mean(0))


def test_weights_stay_finite_when_all_posteriors_underflow():
    w = vote_weights(torch.full((1, 1, 3, 3), -200.0))
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 1))
    assert torch.isfinite(w).all()


def test_decoder_rejects_unknown_modes():
    with pytest.raises(ValueError, match="regression must be one of"):
        VoteDecoder(regression="squared")
    with pytest.raises(ValueError, match="needs regression, classification or both"):
        VoteDecoder(regression="none", classification=False)


def test_top_k_decoding_averages_only_the_most_confident_cells():
    # 100 cells: one sure cell voting for 10, 99 unsure cells (posterior 0.02 each) voting for 50
    disp = torch.zeros(1, 1, 2, 100, 1)
    centres = cell_centres((100, 1), 1)[0, :, 0]  # cell centres along axis 0: 0 .. 99
    disp[0, 0, 0, :, 0] = 50.0 - centres
    disp[0, 0, 0, 7, 0] = 10.0 - centres[7]
    logits = torch.full((1, 1, 100, 1), math.log(0.02 / 0.98))
    logits[0, 0, 7, 0] = math.log(0.9 / 0.1)
    out = DisplacementOutput(disp, logits)
    plain = decode(out, 1, "linear", True)[0, 0, 0]
    torch.testing.assert_close(plain, torch.tensor((0.9 * 10 + 99 * 0.02 * 50) / (0.9 + 99 * 0.02)))
    assert plain > 30  # the many unsure cells outweigh the sure one
    torch.testing.assert_close(decode(out, 1, "linear", True, top_k=1)[0, 0, 0], torch.tensor(10.0))
    two = VoteDecoder("linear", True, top_k=2)(out, 1)[0, 0, 0]  # the sure cell and one tied unsure cell
    torch.testing.assert_close(two, torch.tensor((0.9 * 10 + 0.02 * 50) / 0.92), rtol=1e-4, atol=1e-4)
    # k at least the number of cells: the plain average
    torch.testing.assert_close(decode(out, 1, "linear", True, top_k=500)[0, 0, 0], plain)
    coords, spread, post = VoteDecoder("linear", True, top_k=1).statistics(out, 1)
    assert coords[0, 0, 0] == pytest.approx(10.0) and spread[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert post[0, 0] == pytest.approx(0.9, abs=1e-5)


def test_top_k_needs_classification_and_a_positive_count():
    with pytest.raises(ValueError, match="needs classification"):
        VoteDecoder("log", False, top_k=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            VoteDecoder("log", True, top_k=bad)


SHAPE, STRIDE, GRID = (16, 12), 4, (4, 3)


def target_output(lm: torch.Tensor, regression: str) -> DisplacementOutput:
    disp = displacement_targets(lm, GRID, STRIDE).nan_to_num(0.0)
    if regression == "log":
        disp = log_transform(disp)
    logits = (presence_targets(lm, GRID, STRIDE, SHAPE) * 2 - 1) * 50.0
    return DisplacementOutput(disp.clone().requires_grad_(True), logits.clone().requires_grad_(True))


@pytest.mark.parametrize(
    "regression,classification",
    [("linear", False), ("log", False), ("none", True), ("linear", True), ("log", True)],
)
def test_loss_is_zero_at_the_target(regression, classification):
    lm = torch.tensor([[[5.0, 7.0], [14.2, 1.0]]])
    out = target_output(lm, regression)
    parts = DisplacementLoss(regression, classification, alpha=3.0)(out, lm, STRIDE, SHAPE)
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_loss_value_by_hand():
    lm = torch.tensor([[[5.0, 7.0]]])
    out = target_output(lm, "linear")
    disp = out.displacement.detach() + 0.5  # every component off by 0.5
    logits = torch.zeros_like(out.logits)  # posterior 0.5 everywhere: BCE = log 2
    parts = DisplacementLoss("linear", True, alpha=2.0)(DisplacementOutput(disp, logits), lm, STRIDE, SHAPE)
    assert parts["loss_reg"].item() == pytest.approx(0.5)
    assert parts["loss_cls"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert parts["loss"].item() == pytest.approx(0.5 + 2.0 * 0.6931471805599453, rel=1e-6)


def test_gradients_flow_only_through_enabled_parts():
    lm = torch.tensor([[[5.0, 7.0]]])
    for regression, classification, disp_grad, logit_grad in [
        ("log", False, True, False),
        ("none", True, False, True),
        ("log", True, True, True),
    ]:
        out = target_output(lm, "linear")
        out = DisplacementOutput(out.displacement + 0.1, out.logits * 0.0)
        out.displacement.retain_grad()
        out.logits.retain_grad()
        DisplacementLoss(regression, classification)(out, lm, STRIDE, SHAPE)["loss"].backward()
        assert (out.displacement.grad is not None and out.displacement.grad.abs().sum() > 0) == disp_grad
        assert (out.logits.grad is not None and out.logits.grad.abs().sum() > 0) == logit_grad


def test_missing_landmarks_are_masked_not_zeroed():
    lm = torch.tensor([[[5.0, 7.0], [float("nan"), float("nan")]]])
    out = target_output(lm, "log")
    # the missing landmark's outputs are garbage: the loss must not see them
    disp = out.displacement.detach().clone()
    disp[0, 1] = 123.0
    logits = out.logits.detach().clone()
    logits[0, 1] = 9.0
    parts = DisplacementLoss("log", True)(DisplacementOutput(disp, logits), lm, STRIDE, SHAPE)
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-12)
    all_missing = torch.full_like(lm, float("nan"))
    parts = DisplacementLoss("log", True)(
        DisplacementOutput(disp.requires_grad_(True), logits), all_missing, STRIDE, SHAPE
    )
    assert parts["loss"].item() == 0.0
    parts["loss"].backward()  # still a graph


def test_foreground_weight_puts_the_regression_on_the_positive_cells():
    """12 cells, 1 positive (the landmark's): an error of 1 there and 0 elsewhere costs 1/12 per axis
    plainly, (1 + w) / (12 + w) with foreground weight w; a missing landmark stays out of both."""
    lm = torch.tensor([[[5.0, 7.0], [float("nan"), float("nan")]]])
    out = target_output(lm, "linear")
    disp = out.displacement.detach().clone()
    cell = presence_targets(lm, GRID, STRIDE, SHAPE)[0, 0].bool()
    disp[0, 0, :, cell] += 1.0
    disp[0, 1] = 50.0  # the missing landmark's outputs: ignored
    out = DisplacementOutput(disp, out.logits.detach())
    plain = DisplacementLoss("linear", False)(out, lm, STRIDE, SHAPE)["loss_reg"].item()
    weighted = DisplacementLoss("linear", False, foreground_weight=9.0)(out, lm, STRIDE, SHAPE)[
        "loss_reg"
    ].item()
    assert plain == pytest.approx(1 / 12)
    assert weighted == pytest.approx(10 / 21)
    # an error on a background cell weighs less than plainly
    disp2 = target_output(lm, "linear").displacement.detach().clone()
    disp2[0, 0, :, ~cell] += 1.0
    out2 = DisplacementOutput(disp2, out.logits)
    assert DisplacementLoss("linear", False, foreground_weight=9.0)(out2, lm, STRIDE, SHAPE)[
        "loss_reg"
    ].item() == pytest.approx(11 / 21)
    with pytest.raises(ValueError, match="foreground_weight"):
        DisplacementLoss(foreground_weight=-1.0)

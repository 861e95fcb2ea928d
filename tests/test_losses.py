from __future__ import annotations

import pytest
import torch

from landmark_lit.losses import LandmarkLoss
from landmark_lit.networks import LandmarkOutput
from landmark_lit.targets import displacement_targets, log_transform, presence_targets

SHAPE, STRIDE, GRID = (16, 12), 4, (4, 3)


def target_output(lm: torch.Tensor, regression: str) -> LandmarkOutput:
    disp = displacement_targets(lm, GRID, STRIDE).nan_to_num(0.0)
    if regression == "log":
        disp = log_transform(disp)
    logits = (presence_targets(lm, GRID, STRIDE, SHAPE) * 2 - 1) * 50.0
    return LandmarkOutput(disp.clone().requires_grad_(True), logits.clone().requires_grad_(True))


@pytest.mark.parametrize(
    "regression,classification",
    [("linear", False), ("log", False), ("none", True), ("linear", True), ("log", True)],
)
def test_loss_is_zero_at_the_target(regression, classification):
    lm = torch.tensor([[[5.0, 7.0], [14.2, 1.0]]])
    out = target_output(lm, regression)
    parts = LandmarkLoss(regression, classification, alpha=3.0)(out, lm, STRIDE, SHAPE)
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_loss_value_by_hand():
    lm = torch.tensor([[[5.0, 7.0]]])
    out = target_output(lm, "linear")
    disp = out.displacement.detach() + 0.5  # every component off by 0.5
    logits = torch.zeros_like(out.logits)  # posterior 0.5 everywhere: BCE = log 2
    parts = LandmarkLoss("linear", True, alpha=2.0)(LandmarkOutput(disp, logits), lm, STRIDE, SHAPE)
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
        out = LandmarkOutput(out.displacement + 0.1, out.logits * 0.0)
        out.displacement.retain_grad()
        out.logits.retain_grad()
        LandmarkLoss(regression, classification)(out, lm, STRIDE, SHAPE)["loss"].backward()
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
    parts = LandmarkLoss("log", True)(LandmarkOutput(disp, logits), lm, STRIDE, SHAPE)
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-12)
    all_missing = torch.full_like(lm, float("nan"))
    parts = LandmarkLoss("log", True)(
        LandmarkOutput(disp.requires_grad_(True), logits), all_missing, STRIDE, SHAPE
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
    out = LandmarkOutput(disp, out.logits.detach())
    plain = LandmarkLoss("linear", False)(out, lm, STRIDE, SHAPE)["loss_reg"].item()
    weighted = LandmarkLoss("linear", False, foreground_weight=9.0)(out, lm, STRIDE, SHAPE)["loss_reg"].item()
    assert plain == pytest.approx(1 / 12)
    assert weighted == pytest.approx(10 / 21)
    # an error on a background cell weighs less than plainly
    disp2 = target_output(lm, "linear").displacement.detach().clone()
    disp2[0, 0, :, ~cell] += 1.0
    out2 = LandmarkOutput(disp2, out.logits)
    assert LandmarkLoss("linear", False, foreground_weight=9.0)(out2, lm, STRIDE, SHAPE)[
        "loss_reg"
    ].item() == pytest.approx(11 / 21)
    with pytest.raises(ValueError, match="foreground_weight"):
        LandmarkLoss(foreground_weight=-1.0)

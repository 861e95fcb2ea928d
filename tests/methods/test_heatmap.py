"""Heatmap-regression baseline (method=heatmap): targets, loss, decoder, network, checkpoints, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HEATMAP_NET, compose_train, heatmap_meta
from helpers import tiny_overrides as integration_overrides
from hydra.utils import instantiate
from monai.transforms import GenerateHeatmap

from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import Stage, StageMeta, load_stage, save_bundle
from landmark_lit.methods.heatmap import HEATMAP, HeatmapDecoder, HeatmapLoss, heatmap_targets
from landmark_lit.networks import HeatmapUNet, LocalNet
from landmark_lit.training import train

NAN = float("nan")


def tiny_overrides(out: Path) -> list[str]:
    """synthetic2d with tiny images, few cases, the small networks and a few CI steps."""
    return integration_overrides("synthetic2d", out)


def random_inside(b: int, k: int, shape: tuple[int, ...], margin: float = 4.0) -> torch.Tensor:
    """Sub-voxel landmarks at least ``margin`` voxels from the borders."""
    n = torch.tensor(shape, dtype=torch.float32)
    return margin + torch.rand(b, k, len(shape)) * (n - 1 - 2 * margin)


@pytest.mark.parametrize("shape", [(32, 40), (20, 21, 22)])
@pytest.mark.parametrize("sigma", [2.0, 1.3])
def test_targets_equal_monai_generate_heatmap_at_integer_positions(shape, sigma):
    d = len(shape)
    points = random_inside(2, 5, shape).round()
    points[0, 0, 0] = 0.0  # on the border: the Gaussian is cut, the peak stays 1
    ours = heatmap_targets(points, shape, sigma)
    monai = torch.stack([GenerateHeatmap(sigma=sigma, spatial_shape=shape)(p) for p in points])
    torch.testing.assert_close(ours, monai, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.flatten(2).amax(-1), torch.ones(2, 5))
    # and the option that runs MONAI's transform itself
    torch.testing.assert_close(heatmap_targets(points, shape, sigma, subvoxel=False), monai)
    assert ours.shape == (2, 5, *shape) and d in (2, 3)


def test_per_axis_sigma_and_monai_rounds_where_ours_does_not():
    points = torch.tensor([[[10.0, 12.0], [7.3, 20.6]]])
    ours = heatmap_targets(points, (24, 30), [2.0, 1.0])
    monai = GenerateHeatmap(sigma=[2.0, 1.0], spatial_shape=(24, 30))(points[0])
    torch.testing.assert_close(ours[0, 0], monai[0], atol=1e-6, rtol=0)
    # MONAI (1.6) puts the second Gaussian at the nearest voxel (7, 21); ours stays at (7.3, 20.6)
    torch.testing.assert_close(monai[1], heatmap_targets(points.round(), (24, 30), [2.0, 1.0])[0, 1])
    assert not torch.allclose(ours[0, 1], monai[1], atol=1e-3)


def test_missing_and_outside_landmarks_give_zero_channels():
    points = torch.tensor([[[NAN, NAN], [-0.6, 5.0], [5.0, 31.5], [-0.4, 31.4], [3.0, 4.0]]])
    maps = heatmap_targets(points, (16, 32), 2.0)
    peaks = maps.flatten(2).amax(-1)[0]
    # missing, left of voxel 0's extent, beyond the last voxel's: zero; within the extents: peak 1
    torch.testing.assert_close(peaks, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("shape", [(40, 50), (20, 24, 22)])
def test_argmax_parabola_round_trip_within_005_voxel(shape):
    points = random_inside(3, 7, shape)
    maps = 100.0 * heatmap_targets(points, shape, 2.0)
    # the parabola through three samples of the Gaussian is biased by at most 0.012 voxel at sigma 2
    coords = HeatmapDecoder("argmax")(maps)
    assert (coords - points).abs().max() < 0.05
    # through their logs it is exact for a Gaussian (the erf kernel is nearly one)
    coords = HeatmapDecoder("argmax", refine="log_parabola")(maps)
    assert (coords - points).abs().max() < 1e-3
    # MONAI's own transform at integer positions decodes back to them
    ints = points.round()
    monai = torch.stack([GenerateHeatmap(sigma=2.0, spatial_shape=shape)(p) for p in ints])
    assert (HeatmapDecoder("argmax")(100.0 * monai) - ints).abs().max() < 0.05


@pytest.mark.parametrize("shape", [(40, 50), (20, 24, 22)])
def test_soft_argmax_round_trip(shape):
    points = random_inside(3, 7, shape)
    maps = 100.0 * heatmap_targets(points, shape, 2.0)
    # softmax(beta * g) of a Gaussian g (sigma 2, peak 1) is nearly a Gaussian of sigma 2 / sqrt(beta) =
    # 0.63 voxel, symmetric about the landmark: the window (radius 3 = 4.7 of those sigmas) cuts off
    # ~1e-5 of the weight and sampling on the voxel grid biases the mean by ~exp(-2 pi^2 0.63^2) ~ 4e-4
    # times the weights' width; measured < 0.005 voxel. 0.02 leaves room for other seeds.
    coords = HeatmapDecoder("soft_argmax", beta=10.0, window=3)(maps)
    assert (coords - points).abs().max() < 0.02


def test_decoder_is_border_safe_and_statistics_have_vote_meanings():
    maps = torch.zeros(1, 3, 10, 12)
    maps[0, 0, 0, 5] = 80.0  # peak on the first row: no refinement along axis 0
    maps[0, 0, 1, 5] = 40.0
    maps[0, 1, 9, 11] = 250.0  # last voxel, above the amplitude
    maps[0, 2] = -1.0  # no positive mass at all
    for mode in ("argmax", "soft_argmax"):
        dec = HeatmapDecoder(mode, amplitude=100.0)
        coords, spread, posterior = dec.statistics(maps, 1, torch.tensor([0.5, 2.0]))
        assert torch.isfinite(coords).all() and torch.isfinite(spread).all()
        torch.testing.assert_close(posterior, torch.tensor([[0.8, 1.0, 0.0]]))
        assert spread[0, 2] == 0.0 and spread[0, 1] == 0.0  # a single positive voxel: no spread
        assert 0.0 <= coords[0, 0, 0] < 0.5 and abs(float(coords[0, 0, 1]) - 5.0) < 1e-5
        torch.testing.assert_close(coords[0, 1], torch.tensor([9.0, 11.0]))
    # spread: RMS distance of the positive mass around the peak, in mm with the spacing
    points = torch.tensor([[[10.0, 10.0]]])
    maps = 100.0 * heatmap_targets(points, (21, 21), 1.0)
    _, s_vox, _ = HeatmapDecoder(window=5).statistics(maps)
    _, s_mm, _ = HeatmapDecoder(window=5).statistics(maps, 1, torch.tensor([2.0, 2.0]))
    # a 2D Gaussian of sigma 1 (erf kernel: variance 1 + 1/12 per axis): RMS radius sqrt(2 * 1.083)
    assert abs(float(s_vox) - math.sqrt(2 * (1 + 1 / 12))) < 0.02
    torch.testing.assert_close(s_mm, 2.0 * s_vox)


def test_decoder_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        HeatmapDecoder("median")
    with pytest.raises(ValueError, match="refine"):
        HeatmapDecoder(refine="cubic")


def test_loss_is_zero_at_the_target_and_positive_elsewhere():
    points = random_inside(2, 3, (24, 28))
    loss_fn = HeatmapLoss(sigma=2.0, amplitude=100.0)
    target = loss_fn.targets(points, (24, 28))
    at_target = loss_fn(target, points)
    assert set(at_target) == {"loss", "loss_heatmap"} and float(at_target["loss"]) < 1e-8
    shifted = loss_fn(loss_fn.targets(points + 1.5, (24, 28)), points)["loss"]
    zero = loss_fn(torch.zeros_like(target), points)["loss"]
    assert float(shifted) > 0 and float(zero) > float(shifted)
    # foreground weighting only adds weight
    weighted = HeatmapLoss(sigma=2.0, amplitude=100.0, foreground_weight=10.0)(
        torch.zeros_like(target), points
    )
    assert float(weighted["loss"]) > float(zero)


def test_missing_landmarks_are_masked_out_of_the_loss():
    points = random_inside(2, 3, (24, 28))
    loss_fn = HeatmapLoss(sigma=2.0, amplitude=100.0)
    pred = torch.randn(2, 3, 24, 28, requires_grad=True)
    missing = points.clone()
    missing[0, 1] = NAN
    loss = loss_fn(pred, missing)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and pred.grad[0, 1].abs().max() == 0 and pred.grad[0, 0].abs().max() > 0
    # the same as the loss of the annotated channels alone (the mean runs over annotated channels)
    keep = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]
    err = torch.stack([((pred[b, k] - loss_fn.targets(points[b : b + 1, k : k + 1], (24, 28))[0, 0]) ** 2).mean()
                       for b, k in keep])  # fmt: skip
    torch.testing.assert_close(loss, err.mean())
    # nothing annotated: zero, still differentiable
    none = loss_fn(pred, torch.full_like(points, NAN))["loss"]
    assert float(none) == 0.0 and none.requires_grad
    # a landmark outside the crop is supervised as an all-zero channel
    outside = points.clone()
    outside[0, 1] = torch.tensor([-20.0, 5.0])
    pred_zero = loss_fn.targets(outside, (24, 28))
    assert float(loss_fn(pred_zero, outside)["loss"]) < 1e-8 and pred_zero[0, 1].abs().max() == 0


@pytest.mark.parametrize("shape", [(37, 23), (16, 16), (5, 9), (9, 10, 11)])
def test_heatmap_unet_keeps_the_input_shape(shape):
    net = HeatmapUNet(len(shape), 2, 3, channels=(4, 8, 8), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(2, 2, *shape)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *shape)
    assert net.stride == 1 and net.spatial_dims == len(shape) and net.num_landmarks == 3
    assert net.size_multiple == 4  # inputs are padded to a multiple of prod(strides) inside forward


def test_heatmap_unet_validates_arguments():
    with pytest.raises(ValueError, match="strides"):
        HeatmapUNet(2, 1, 2, channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match="norm"):
        HeatmapUNet(2, 1, 2, norm="layer")


def heatmap_stage() -> Stage:
    return Stage(HeatmapUNet(**HEATMAP_NET).eval(), StageMeta.from_dict(heatmap_meta(), "hm.ckpt"), "hm.ckpt")


def test_a_heatmap_global_stage_runs_in_front_of_local_stages():
    torch.manual_seed(0)
    g = heatmap_stage()
    assert isinstance(g.decoder, HeatmapDecoder) and g.method is HEATMAP
    cfg = dict(spatial_dims=2, in_channels=1, num_landmarks=2, channels=[4, 4], head_channels=4)
    local_meta = {
        "net": {"_target_": "landmark_lit.networks.LocalNet", **cfg},
        "landmark_names": ["a", "b"], "spatial_dims": 2, "spacing": 0.5, "crop_size": [8, 8],
        "intensity": "zscore", "decoder": {"regression": "log", "classification": True, "log_base": 10.0},
        "stage": "local",
    }  # fmt: skip
    local = Stage(LocalNet(**cfg).eval(), StageMeta.from_dict(local_meta, "l.ckpt"), "l.ckpt")
    image = np.random.default_rng(0).normal(size=(1, 23, 31)).astype(np.float32)
    out = LandmarkPredictor(g, [local]).predict(image, np.eye(3))
    assert out.world.shape == (2, 2) and np.isfinite(out.world).all()
    alone = LandmarkPredictor(g).predict(image, np.eye(3))
    np.testing.assert_allclose(out.global_estimate.world, alone.world)
    assert ((alone.confidence >= 0) & (alone.confidence <= 1)).all()


def test_train_heatmap_then_predict_and_bundle(tmp_path):
    """A tiny `landmark-train method=heatmap dataset=synthetic2d net=small trainer=ci` run through train()."""
    out = tmp_path / "run"
    cfg = compose_train([*tiny_overrides(out), "method=heatmap", "trainer.max_steps=2"])
    assert cfg.method_name == cfg.method.name == "heatmap" and "ablation" not in cfg
    res = train(cfg)
    metrics = res["metrics"]
    assert np.isfinite(metrics["val/mre_mm"]) and "test/mre_mm" in metrics and "train/loss" in metrics
    # pictures: SDR curve and overlay (no vote field for heatmaps)
    step = res["trainer"].global_step
    assert (out / "pictures" / f"step_{step:06d}_sdr.png").is_file()
    assert (out / "pictures" / f"step_{step:06d}_overlay.png").is_file()
    ckpt = torch.load(res["best_checkpoint"], weights_only=True)
    meta = ckpt["landmark_lit"]
    assert meta["method"] == "heatmap" and meta["stage"] == "global" and meta["ablation"] is None
    assert meta["net"]["_target_"] == "landmark_lit.networks.HeatmapUNet"
    assert meta["decoder"] == {
        "mode": "argmax",
        "beta": 10.0,
        "window": 3,
        "amplitude": 100.0,
        "refine": "parabola",
    }
    assert isinstance(load_stage(res["best_checkpoint"]).decoder, HeatmapDecoder)

    predictor = LandmarkPredictor.from_checkpoints(res["best_checkpoint"])
    # calibrated at the end of training on the validation images, as every model is
    cal = predictor.calibration
    assert cal is not None and cal.fitted_on["pipeline"]["local_stages"] == 0
    assert predictor.confidence_threshold == cal.threshold
    assert cal.validation["n_landmarks"] == 2 * len(meta["landmark_names"])
    case = instantiate(cfg.dataset.test)[0]
    pred = predictor.predict(case.image, case.affine)
    assert pred.world.shape == case.landmarks_world.shape and np.isfinite(pred.world).all()
    assert np.isfinite(pred.confidence).all() and np.isfinite(pred.spread_mm).all()

    summary = save_bundle(tmp_path / "model.pt", res["best_checkpoint"])
    assert summary["landmark_names"] == meta["landmark_names"]
    assert summary["confidence_threshold"] is None and summary["calibration"] is None  # the stage's is used
    assert LandmarkPredictor.from_bundle(tmp_path / "model.pt").calibration == cal
    again = LandmarkPredictor.from_bundle(tmp_path / "model.pt").predict(case.image, case.affine)
    for key in ("world", "confidence", "radius_mm", "spread_mm", "posterior"):
        np.testing.assert_allclose(getattr(again, key), getattr(pred, key), rtol=1e-6, atol=1e-6)


def test_heatmap_configs_compose(tmp_path):
    default = compose_train([f"paths.output_dir={tmp_path}"])
    assert default.loss._target_ == "landmark_lit.methods.displacement.DisplacementLoss"
    assert default.decoder._target_ == "landmark_lit.methods.displacement.VoteDecoder"
    assert default.method_name == default.ablation.name == "Rlog+C"
    for experiment, dims in [("isbi2015_heatmap", 2), ("mni_afids_heatmap", 3)]:
        cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
        net = instantiate(cfg.stage.net)
        assert isinstance(net, HeatmapUNet) and net.spatial_dims == dims
        assert isinstance(instantiate(cfg.loss), HeatmapLoss)
        assert isinstance(instantiate(cfg.decoder), HeatmapDecoder)
        assert cfg.method.name == "heatmap" and "ablation" not in cfg
        assert cfg.trainer.max_steps > 0 and cfg.scheduler.T_max == cfg.trainer.max_steps


def test_heatmap_has_no_local_stage(tmp_path):
    cfg = compose_train([*tiny_overrides(tmp_path), "method=heatmap", "stage=local"])
    with pytest.raises(ValueError, match="no 'local' stage"):
        train(cfg)
    assert not Path(tmp_path / "checkpoints").exists()

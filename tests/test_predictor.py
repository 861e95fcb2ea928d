from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from landmark_lit.data.transforms import match_channels
from landmark_lit.networks import GlobalNet, LocalNet
from landmark_lit.predict_files import case_id_of, find_images, predict_file, predict_files
from landmark_lit.predictor import LandmarkPredictor, Prediction, refine_locally
from landmark_lit.stages import CheckpointError, Stage, StageMeta

NAMES = ["a", "b"]


def stage(kind: str, spacing: float, crop=(8, 8)) -> Stage:
    if kind == "global":
        cfg = dict(spatial_dims=2, in_channels=1, num_landmarks=2, stem_channels=4, stage_channels=[4, 4, 4, 4],
                   stage_blocks=[1, 1, 1, 1], head_channels=4)  # fmt: skip
        net = GlobalNet(**cfg)
        target = "landmark_lit.networks.GlobalNet"
    else:
        cfg = dict(spatial_dims=2, in_channels=1, num_landmarks=2, channels=[4, 4], head_channels=4)
        net = LocalNet(**cfg)
        target = "landmark_lit.networks.LocalNet"
    meta = {
        "net": {"_target_": target, **cfg},
        "landmark_names": NAMES,
        "spatial_dims": 2,
        "spacing": spacing,
        "crop_size": list(crop),
        "intensity": "zscore",
        "decoder": {"regression": "log", "classification": True, "log_base": 10.0},
        "stage": kind,
    }
    return Stage(net.eval(), StageMeta.from_dict(meta, f"{kind}.ckpt"), f"{kind}.ckpt")


@pytest.fixture
def predictor() -> LandmarkPredictor:
    torch.manual_seed(0)
    return LandmarkPredictor(stage("global", 1.0), stage("local", 0.5))


def test_txt_lists_resolve_names_without_suffix(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("151.jpg", "152.png", "notes.txt"):
        (images / name).write_bytes(b"x")
    listing = tmp_path / "test.txt"
    listing.write_text("151\n\n152.png\n")
    assert find_images(listing, root=images) == [images / "151.jpg", images / "152.png"]
    listing.write_text("999\n")
    with pytest.raises(FileNotFoundError, match="no image for entry '999'"):
        find_images(listing, root=images)
    assert case_id_of("x/case.nii.gz") == "case" and case_id_of("151.jpg") == "151"


def test_rgb_images_become_grey_for_one_channel_models():
    rgb = np.stack([np.full((4, 4), v, np.float32) for v in (3.0, 6.0, 9.0)])
    np.testing.assert_allclose(match_channels(rgb, 1), np.full((1, 4, 4), 6.0))
    with pytest.raises(ValueError, match="expects 2 channel"):
        match_channels(rgb, 2)


def test_spacing_option_sets_the_geometry_of_bitmaps(predictor, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    result, _, _ = predict_file(predictor, tmp_path / "img.png", spacing=0.5)
    # world = 0.5 * voxel for a bitmap given 0.5 mm pixels
    np.testing.assert_allclose(result.world, 0.5 * result.voxel, atol=1e-6)
    assert result.world.shape == (2, 2) and result.seconds >= result.seconds_without_io > 0


def test_predict_files_keeps_going_after_a_bad_file(predictor, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    result = predict_files(predictor, tmp_path, tmp_path / "out", spacing=1.0)
    assert result["done"] == 1 and list(result["failed"]) == [str(tmp_path / "bad.png")]
    assert "bad.png" in next(iter(result["failed"])) and (tmp_path / "out" / "predictions.csv").is_file()
    assert result["median_seconds"] > 0 and 50 < result["peak_memory_mb"] < 24 * 1024


def test_model_of_another_dimensionality_is_refused(predictor):
    with pytest.raises(ValueError, match="the model is 2D"):
        predictor.predict(np.zeros((1, 8, 8, 8), np.float32), np.eye(4))


def test_dicom_series_folders_count_as_one_image_each(tmp_path):
    for series in ("a", "b"):
        (tmp_path / series).mkdir()
        for n in range(3):
            (tmp_path / series / f"{n:03d}.dcm").write_bytes(b"x")
    (tmp_path / "c.nii.gz").write_bytes(b"x")
    assert find_images(tmp_path / "a") == [tmp_path / "a"]
    assert find_images(tmp_path) == [tmp_path / "c.nii.gz", tmp_path / "a", tmp_path / "b"]


def _image(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(1, 40, 36)).astype(np.float32)


def test_a_local_stage_twice_equals_two_iterations_of_it():
    torch.manual_seed(0)
    g, loc = stage("global", 1.0), stage("local", 0.5)
    image, affine = _image(), np.eye(3)
    twice = LandmarkPredictor(g, [loc, loc]).predict(image, affine).world
    iterated = LandmarkPredictor(g, loc, local_iterations=2).predict(image, affine).world
    once = LandmarkPredictor(g, loc).predict(image, affine).world
    np.testing.assert_allclose(twice, iterated)
    assert not np.allclose(twice, once)  # the second pass moved the landmarks
    with pytest.raises(ValueError, match="local_iterations must be at least 1"):
        LandmarkPredictor(g, loc, local_iterations=0)


def test_each_local_stage_is_centred_on_the_previous_answer():
    torch.manual_seed(1)
    g, coarse, fine = (
        stage("global", 1.0),
        stage("local", 1.0, crop=(16, 16)),
        stage("local", 0.25, crop=(8, 8)),
    )
    image, affine = _image(), np.eye(3)
    after_coarse = LandmarkPredictor(g, [coarse]).predict(image, affine)
    cascade = LandmarkPredictor(g, [coarse, fine]).predict(image, affine)
    np.testing.assert_allclose(cascade.global_estimate.world, after_coarse.global_estimate.world)
    # the fine 8 x 8 window at 0.25 mm spans 2 mm: its answer stays within that window around the coarse answer
    moved = np.abs(cascade.world - after_coarse.world)
    assert moved.max() <= 0.25 * 8 / 2 + 0.25 and moved.max() > 0


def test_local_checkpoints_load_as_a_cascade_in_the_given_order(tmp_path):
    torch.manual_seed(2)
    paths = {}
    for name, st in {
        "global": stage("global", 1.0),
        "coarse": stage("local", 1.0),
        "fine": stage("local", 0.5),
    }.items():
        state = {f"net.{k}": v for k, v in st.net.state_dict().items()}
        paths[name] = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": state, "landmark_lit": st.meta.to_dict()}, paths[name])
    p = LandmarkPredictor.from_checkpoints(paths["global"], [paths["coarse"], paths["fine"]])
    assert [s.meta.spacing for s in p.local_stages] == [1.0, 0.5] and p.local_stage.meta.spacing == 0.5
    assert LandmarkPredictor.from_checkpoints(paths["global"]).local_stages == []
    with pytest.raises(CheckpointError, match="'global' stage, expected 'local'"):
        LandmarkPredictor.from_checkpoints(paths["global"], [paths["coarse"], paths["global"]])


def test_the_local_refinement_is_a_function_of_the_stage_the_image_and_the_start():
    torch.manual_seed(4)
    g, loc = stage("global", 2.0), stage("local", 1.0)
    image, affine = _image(), np.diag([0.9, 1.1, 1.0])
    full = LandmarkPredictor(g, loc, local_iterations=2).predict(image, affine)
    estimate, shift = refine_locally(loc, torch.as_tensor(image), affine, full.global_estimate.world, 2)
    np.testing.assert_array_equal(estimate.world, full.world)
    np.testing.assert_array_equal(shift, full.shift_mm)
    np.testing.assert_array_equal(estimate.spread_mm, full.spread_mm)
    assert isinstance(full, Prediction) and full.seconds is None  # timing belongs to predict_file
    assert full.flagged.dtype == bool and full.confidence.shape == (len(NAMES),)

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from landmark_lit.data.transforms import match_channels
from landmark_lit.inference.passes import refine_locally
from landmark_lit.inference.predict_files import case_id_of, find_inputs, predict_file, predict_files
from landmark_lit.inference.predictor import LandmarkPredictor, Prediction
from landmark_lit.inference.settings import MirrorAverage
from landmark_lit.inference.stages import CheckpointError, Stage, StageMeta
from landmark_lit.networks import GlobalNet, LocalNet

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
    assert [f for _, f in find_inputs(listing, root=images)] == [images / "151.jpg", images / "152.png"]
    listing.write_text("999\n")
    with pytest.raises(FileNotFoundError, match="no image for entry '999'"):
        [f for _, f in find_inputs(listing, root=images)]
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
    assert [f for _, f in find_inputs(tmp_path / "a")] == [tmp_path / "a"]
    assert [f for _, f in find_inputs(tmp_path)] == [tmp_path / "c.nii.gz", tmp_path / "a", tmp_path / "b"]


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


def _mirrored(image: np.ndarray, affine: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same image in world space, stored mirrored along ``axis``: the networks see a mirror image."""
    n = image.shape[1 + axis]
    flip = np.eye(affine.shape[0])
    flip[axis, axis], flip[axis, -1] = -1.0, n - 1
    return np.ascontiguousarray(np.flip(image, 1 + axis)), affine @ flip


def test_test_time_mirror_averages_the_answer_on_the_mirror_image_with_pairs_swapped():
    torch.manual_seed(5)
    g = stage("global", 1.0)
    image, affine = _image(), np.eye(3)
    flipped, flipped_affine = _mirrored(image, affine)
    plain = LandmarkPredictor(g).predict(image, affine)
    seen_mirrored = LandmarkPredictor(g).predict(flipped, flipped_affine)
    np.testing.assert_allclose(
        LandmarkPredictor(g).predict(flipped, flipped_affine).world, seen_mirrored.world
    )
    assert not np.allclose(plain.world, seen_mirrored.world, atol=1e-3)  # the network is not symmetric
    mirror = MirrorAverage(axes=(0,), pairs=((0, 1),), whole=True)
    both = LandmarkPredictor(g, mirror=mirror).predict(image, affine)
    # network "b" on the mirror image answers for landmark "a" (a left / right pair)
    np.testing.assert_allclose(both.world, (plain.world + seen_mirrored.world[[1, 0]]) / 2, atol=1e-4)
    np.testing.assert_allclose(both.global_estimate.world, both.world)
    unpaired = LandmarkPredictor(g, mirror=MirrorAverage((0,), (), True)).predict(image, affine)
    np.testing.assert_allclose(unpaired.world, (plain.world + seen_mirrored.world) / 2, atol=1e-4)


def test_test_time_mirror_of_local_sub_images_only():
    torch.manual_seed(6)
    loc = stage("local", 1.0)
    image, affine = _image(), np.eye(3)
    start = np.array([[12.5, 20.5], [25.5, 9.5]])  # crop starts need no rounding in either frame
    flipped, flipped_affine = _mirrored(image, affine)
    x, xf = torch.as_tensor(image), torch.as_tensor(flipped)
    plain, _ = refine_locally(loc, x, affine, start)
    seen_mirrored, _ = refine_locally(loc, xf, flipped_affine, start[[1, 0]])  # network k gets partner's view
    mirror = MirrorAverage(axes=(0,), pairs=((0, 1),))
    both, _ = refine_locally(loc, x, affine, start, mirror=mirror)
    np.testing.assert_allclose(both.world, (plain.world + seen_mirrored.world[[1, 0]]) / 2, atol=1e-4)
    assert not np.allclose(both.world, plain.world, atol=1e-3)
    # whole=False leaves the global stage alone
    g = stage("global", 1.0)
    local_only = LandmarkPredictor(g, loc, mirror=mirror).predict(image, affine)
    np.testing.assert_allclose(
        local_only.global_estimate.world, LandmarkPredictor(g).predict(image, affine).world
    )


def test_test_time_mirror_checks_its_axes_and_pairs():
    with pytest.raises(ValueError, match="disjoint index pairs"):
        MirrorAverage(axes=(0,), pairs=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="distinct spatial axes"):
        MirrorAverage(axes=())
    with pytest.raises(ValueError, match="out of range for 2 landmarks"):
        LandmarkPredictor(stage("global", 1.0), mirror=MirrorAverage(pairs=((0, 5),)))
    with pytest.raises(ValueError, match="out of range"):
        LandmarkPredictor(stage("global", 1.0), mirror=MirrorAverage(axes=(2,)))
    m = MirrorAverage((0,), ((0, 1),), True)
    assert MirrorAverage.from_dict(m.to_dict()) == m and MirrorAverage.from_dict(None) is None


def test_prediction_imports_no_training_code():
    import subprocess
    import sys

    code = (
        "import sys, landmark_lit.inference.predict_files, landmark_lit.cli.predict, landmark_lit.cli.export\n"
        "bad = ['landmark_lit.training', 'landmark_lit.lit', 'landmark_lit.data.datasets',\n"
        "       'landmark_lit.data.datamodule', 'landmark_lit.data.augment']\n"
        "print([m for m in bad if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _local_stage_of(k: int, specialised: bool = True, levels: int = 2) -> Stage:
    cfg = dict(spatial_dims=2, in_channels=1, num_landmarks=k, channels=[4] * levels, head_channels=4,
               specialised=specialised)  # fmt: skip
    meta = {
        "net": {"_target_": "landmark_lit.networks.LocalNet", **cfg},
        "landmark_names": [f"l{i}" for i in range(k)],
        "spatial_dims": 2,
        "spacing": 0.5,
        "crop_size": [8, 8],
        "intensity": "zscore",
        "decoder": {"regression": "log", "classification": True, "log_base": 10.0},
        "stage": "local",
    }
    return Stage(LocalNet(**cfg).eval(), StageMeta.from_dict(meta, "local.ckpt"), "local.ckpt")


class _Exported(torch.nn.Module):
    """A network that cannot be cut into landmarks (as a TorchScript or ONNX network)."""

    def __init__(self, net: LocalNet) -> None:
        super().__init__()
        self.inner, self.stride = net, net.stride

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("specialised", [True, False])
@pytest.mark.parametrize("mirror", [None, MirrorAverage(axes=(0,), pairs=((0, 3),))])
@pytest.mark.parametrize("exported", [False, True])
def test_a_partial_second_pass_equals_the_full_one_where_it_runs(specialised, mirror, exported):
    torch.manual_seed(7)
    loc = _local_stage_of(6, specialised)
    if exported:
        loc = Stage(_Exported(loc.net), loc.meta, loc.path)
    image = torch.as_tensor(_image(8))
    affine = np.eye(3)
    start = np.random.default_rng(1).uniform(6, 28, size=(6, 2))
    once, shift1 = refine_locally(loc, image, affine, start, 1, mirror)
    full, shift2 = refine_locally(loc, image, affine, start, 2, mirror)
    t = float(np.median(shift1))
    part, shift = refine_locally(loc, image, affine, start, 2, mirror, repass_mm=t)
    rerun = shift1 > t
    if mirror is not None:  # a landmark of a pair runs with its partner
        rerun[[0, 3]] = rerun[[0, 3]].any()
    assert 0 < rerun.sum() < len(rerun)
    for got, a, b in [
        (part.world, full.world, once.world),
        (part.spread_mm, full.spread_mm, once.spread_mm),
        (part.posterior, full.posterior, once.posterior),
        (shift, shift2, shift1),
    ] + ([(part.mirror_gap_mm, full.mirror_gap_mm, once.mirror_gap_mm)] if mirror else []):
        np.testing.assert_allclose(got[rerun], a[rerun], atol=1e-4)
        np.testing.assert_array_equal(got[~rerun], b[~rerun])
    # a threshold of 0 is every landmark, every pass; one above every shift is a single pass
    zero, _ = refine_locally(loc, image, affine, start, 2, mirror, repass_mm=0.0)
    np.testing.assert_array_equal(zero.world, full.world)
    high, _ = refine_locally(loc, image, affine, start, 2, mirror, repass_mm=float(shift1.max()) + 1)
    np.testing.assert_array_equal(high.world, once.world)


def test_the_partial_second_pass_is_a_run_setting(tmp_path):
    from landmark_lit.inference.settings import RunSettings

    torch.manual_seed(0)
    g, loc = stage("global", 1.0), stage("local", 0.5)
    p = LandmarkPredictor(g, loc, local_iterations=2, local_repass_mm=0.3)
    assert p.local_repass_mm == 0.3 and p.pipeline()["local_repass_mm"] == 0.3
    assert "local_repass_mm" not in LandmarkPredictor(g, loc, local_iterations=2).pipeline()
    s = RunSettings(local_iterations=2, local_repass_mm=0.3)
    assert RunSettings.from_dict(s.to_dict()) == s
    assert RunSettings.from_dict({"local_iterations": 2}).local_repass_mm == 0.0  # bundles before it
    assert s.overridden({"local_repass_mm": 0.5}, NAMES).local_repass_mm == 0.5
    assert s.overridden({"local_repass_mm": None}, NAMES).local_repass_mm == 0.3
    for bad in (-0.1, float("nan"), "x"):
        with pytest.raises(ValueError, match="local_repass_mm must be a number of mm, 0 or more"):
            RunSettings(local_repass_mm=bad)


@pytest.mark.parametrize("shifts", ["axes", "faces"])
@pytest.mark.parametrize("mirror", [None, MirrorAverage(axes=(0,), pairs=((0, 3),))])
@pytest.mark.parametrize("levels", [2, 3])
def test_a_shift_averaged_last_pass_is_the_mean_of_the_moved_sub_images_answers(shifts, mirror, levels):
    """Each landmark's answer and statistics: the mean over its sub-image and the copies moved half a cell
    (stride 2: one voxel, stride 4: two), the answers of one-pass runs started that far off, whose
    sub-images are those moved ones; earlier passes are unchanged."""
    from landmark_lit.inference.passes import local_shift_offsets

    assert local_shift_offsets("none", 2).tolist() == [[0, 0]]
    assert local_shift_offsets("axes", 2).tolist() == [[0, 0], [1, 0], [0, 1]]
    assert local_shift_offsets("faces", 3).shape == (7, 3)
    assert local_shift_offsets("faces", 3).abs().sum().item() == 6
    torch.manual_seed(3)
    loc = _local_stage_of(6, levels=levels)
    step = {2: 1, 3: 2}[levels]  # voxels: half of the stride 2 or 4
    assert loc.net.stride == 2 * step
    image = torch.as_tensor(_image(8))
    affine = np.diag([0.5, 0.5, 1.0])  # working voxels of 0.5 mm: the image's own grid
    start = np.random.default_rng(2).uniform(4, 14, size=(6, 2))
    first, _ = refine_locally(loc, image, affine, start, 1, mirror)
    got, moved = refine_locally(loc, image, affine, start, 2, mirror, shifts=shifts)
    parts = [
        refine_locally(loc, image, affine, first.world + 0.5 * step * m.numpy(), 1, mirror)[0]
        for m in local_shift_offsets(shifts, 2)
    ]
    assert len(parts) == {"axes": 3, "faces": 5}[shifts]
    np.testing.assert_allclose(got.world, np.mean([p.world for p in parts], 0), atol=1e-4)
    np.testing.assert_allclose(got.spread_mm, np.mean([p.spread_mm for p in parts], 0), atol=1e-4)
    np.testing.assert_allclose(got.posterior, np.mean([p.posterior for p in parts], 0), atol=1e-5)
    np.testing.assert_allclose(moved, np.linalg.norm(got.world - first.world, axis=1), atol=1e-4)
    if mirror is not None:
        np.testing.assert_allclose(got.mirror_gap_mm, np.mean([p.mirror_gap_mm for p in parts], 0), atol=1e-4)
    # it moves the answer (the networks are not translation invariant at their stride), "none" leaves it alone
    plain, _ = refine_locally(loc, image, affine, start, 2, mirror)
    assert np.abs(got.world - plain.world).max() > 1e-3
    none, _ = refine_locally(loc, image, affine, start, 2, mirror, shifts="none")
    np.testing.assert_array_equal(none.world, plain.world)
    with pytest.raises(ValueError, match="local shifts must be one of"):
        local_shift_offsets("corners", 2)


def test_the_shift_averaged_last_pass_is_a_run_setting():
    from landmark_lit.inference.settings import RunSettings

    torch.manual_seed(0)
    g, loc = stage("global", 1.0), stage("local", 0.5)
    p = LandmarkPredictor(g, loc, local_iterations=2, local_shifts="axes")
    assert p.local_shifts == "axes" and p.pipeline()["local_shifts"] == "axes"
    plain = LandmarkPredictor(g, loc, local_iterations=2)
    assert "local_shifts" not in plain.pipeline()  # calibrations written before it still match
    image = _image()
    a, b = p.predict(image, np.eye(3)), plain.predict(image, np.eye(3))
    np.testing.assert_allclose(a.global_estimate.world, b.global_estimate.world)
    assert np.abs(a.world - b.world).max() > 1e-4
    assert "local_shifts" not in LandmarkPredictor(g, None, local_shifts="faces").pipeline()
    s = RunSettings(local_iterations=2, local_shifts="faces")
    assert RunSettings.from_dict(s.to_dict()) == s
    assert RunSettings.from_dict({"local_iterations": 2}).local_shifts == "none"  # bundles before it
    assert s.overridden({"local_shifts": "axes"}, NAMES).local_shifts == "axes"
    assert s.overridden({"local_shifts": None}, NAMES).local_shifts == "faces"
    for bad in ("corners", None, 1):
        with pytest.raises(ValueError, match="local_shifts must be one of"):
            RunSettings(local_shifts=bad)

"""landmark-predict as a product: model bundles, per-image outputs (CSV, JSON, Slicer), confidence, pictures,
bad input, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import NAMES, stage_description, write_checkpoint
from hydra import compose, initialize_config_dir
from PIL import Image

from landmark_lit.cli.predict import predict as predict_cli
from landmark_lit.config import CONFIG_DIR
from landmark_lit.data.landmark_tables import read_landmark_table
from landmark_lit.data.point_files import read_point_list
from landmark_lit.inference.predict_files import find_inputs, predict_file, predict_files
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.scoring import landmark_confidence
from landmark_lit.inference.settings import RunSettings
from landmark_lit.inference.stages import StageMeta, save_bundle
from landmark_lit.methods.displacement import vote_statistics
from landmark_lit.networks import DisplacementOutput


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def checkpoints(request, tmp_path) -> tuple[int, Path, Path]:
    torch.manual_seed(0)
    d = request.param
    g = write_checkpoint(tmp_path / f"global{d}.ckpt", stage_description("global", d, 2.0, 16))
    loc = write_checkpoint(tmp_path / f"local{d}.ckpt", stage_description("local", d, 1.0, 8))
    return d, g, loc


def _png(path: Path, shape=(40, 50), seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def _nifti(path: Path, shape=(20, 24, 18), seed: int = 0, affine=None) -> Path:
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine), path)
    return path


def test_bundle_predicts_exactly_as_the_checkpoints(checkpoints, tmp_path):
    d, g, loc = checkpoints
    summary = save_bundle(
        tmp_path / "model.pt", g, [loc], RunSettings(local_iterations=2, confidence_threshold=0.2)
    )
    assert (
        summary["landmark_names"] == NAMES
        and summary["spatial_dims"] == d
        and summary["local_iterations"] == 2
    )
    bundled = LandmarkPredictor.from_bundle(tmp_path / "model.pt")
    direct = LandmarkPredictor.from_checkpoints(g, loc, local_iterations=2)
    assert bundled.local_iterations == 2 and bundled.confidence_threshold == 0.2
    # without a threshold or calibration: no method-wide constant, nothing flagged
    assert direct.confidence_threshold is None and direct.calibration is None
    assert save_bundle(tmp_path / "default.pt", g, [loc])["confidence_threshold"] is None
    assert LandmarkPredictor.from_bundle(tmp_path / "default.pt").confidence_threshold is None
    image = np.random.default_rng(1).normal(size=(1, *[24] * d)).astype(np.float32)
    affine = np.diag([1.2] * d + [1.0])
    a, b = bundled.predict(image, affine), direct.predict(image, affine)
    np.testing.assert_array_equal(a.world, b.world)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_bundle_stores_the_test_time_mirror_and_the_command_line_overrides_it(checkpoints, tmp_path):
    from landmark_lit.cli.predict import config_from_args, load_predictor
    from landmark_lit.inference.settings import MirrorAverage
    from landmark_lit.inference.stages import CheckpointError

    d, g, loc = checkpoints
    mirror = MirrorAverage(axes=(d - 1,), pairs=((0, 1),), whole=False)
    assert (
        save_bundle(tmp_path / "model.pt", g, [loc], RunSettings(mirror=mirror))["mirror"] == mirror.to_dict()
    )
    bundled = LandmarkPredictor.from_bundle(tmp_path / "model.pt")
    assert bundled.mirror == mirror
    image = np.random.default_rng(2).normal(size=(1, *[24] * d)).astype(np.float32)
    affine = np.diag([1.2] * d + [1.0])
    direct = LandmarkPredictor.from_checkpoints(g, loc, mirror=mirror)
    np.testing.assert_array_equal(bundled.predict(image, affine).world, direct.predict(image, affine).world)
    plain = LandmarkPredictor.from_checkpoints(g, loc).predict(image, affine).world
    assert not np.allclose(bundled.predict(image, affine).world, plain)

    def loaded(*overrides: str) -> LandmarkPredictor:
        return load_predictor(config_from_args(["-i", "x", "-m", str(tmp_path / "model.pt"), *overrides]))

    assert loaded().mirror == mirror
    assert loaded().local_shifts == "none"
    assert loaded("--local-shifts", "faces").local_shifts == "faces"
    assert loaded("local_shifts=axes").local_shifts == "axes"
    with pytest.raises(ValueError, match="local_shifts must be one of"):
        loaded("local_shifts=corners")
    assert loaded("--mirror", "none").mirror is None
    assert loaded("--mirror", "whole").mirror == MirrorAverage((d - 1,), ((0, 1),), True)
    named = loaded(f"mirror={{axes: [0], pairs: [[{NAMES[1]}, {NAMES[0]}]]}}").mirror
    assert named == MirrorAverage((0,), ((1, 0),), False)
    with pytest.raises(ValueError, match="out of range"):
        loaded("mirror={axes: [3]}")
    with pytest.raises(ValueError, match="not a landmark index or name"):
        loaded("mirror={pairs: [[nose, 1]]}")
    with pytest.raises(CheckpointError, match="out of range for 2 landmarks"):
        save_bundle(tmp_path / "bad.pt", g, [loc], RunSettings(mirror=MirrorAverage(pairs=((0, 4),))))
    assert not (tmp_path / "bad.pt").exists()


def test_cli_runs_a_bundle_without_training_config(checkpoints, tmp_path):
    d, g, loc = checkpoints
    save_bundle(tmp_path / "model.pt", g, [loc])
    (tmp_path / "in").mkdir()
    image = _png(tmp_path / "in" / "x.png") if d == 2 else _nifti(tmp_path / "in" / "x.nii.gz")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("predict", overrides=[f"model={tmp_path / 'model.pt'}", f"input={image.parent}",
                                            f"output_dir={tmp_path / 'out'}", "spacing=0.5", "local_iterations=3"])  # fmt: skip
    result = predict_cli(cfg)
    assert result["done"] == 1 and not result["failed"]
    table = read_landmark_table(tmp_path / "out" / "x.csv")
    assert table.names == NAMES and table.coords["x"].shape == (2, d)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        both = compose(
            "predict", overrides=[f"model={tmp_path / 'model.pt'}", f"global_checkpoint={g}", "input=x"]
        )
    with pytest.raises(ValueError, match="either model=BUNDLE or global_checkpoint"):
        predict_cli(both)


def test_the_nnunet_style_command_line(checkpoints, tmp_path):
    """landmark-predict -i -o -m with flags (values with spaces and glob characters need no quoting), the
    same result as key=value, no Hydra folder in the output, --help describing every option."""
    from landmark_lit.cli.predict import config_from_args, parser

    d, g, loc = checkpoints
    save_bundle(tmp_path / "model.pt", g, [loc])
    folder = tmp_path / "my scans"
    folder.mkdir()
    image = _png(folder / "x.png") if d == 2 else _nifti(folder / "x.nii.gz")
    out = tmp_path / "out flags"
    cmd = [sys.executable, "-m", "landmark_lit.cli.predict", "-i", str(folder / "x.*"), "-o", str(out),
           "-m", str(tmp_path / "model.pt"), "--spacing", "0.5", "--threads", "1", "--device", "cpu",
           "local_iterations=2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 images done, 0 failed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.csv",
        "predictions.json",
        "x.csv",
        "x.json",
        "x.mrk.json",
    ]
    cfg = config_from_args(["model=" + str(tmp_path / "model.pt"), f"input={image}", f"output_dir={tmp_path / 'kv'}",
                            "spacing=0.5", "local_iterations=2", "threads=1"])  # fmt: skip
    predict_cli(cfg)
    np.testing.assert_array_equal(
        read_landmark_table(out / "x.csv").coords["x"],
        read_landmark_table(tmp_path / "kv" / "x.csv").coords["x"],
    )
    helptext = parser().format_help()
    for flag in ("-i", "-o", "-m", "--spacing", "--pictures", "--threads", "--device", "--global-checkpoint",
                 "--local-checkpoint", "--confidence-threshold", "key=value"):  # fmt: skip
        assert flag in helptext
    assert all(a.help for a in parser()._actions)  # every option is described
    bad = subprocess.run(
        [*cmd[:3], "-i", str(image), "-o", str(out), "-m", str(image)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a model file" in bad.stderr and "Traceback" not in bad.stderr


def test_each_image_gets_csv_json_and_slicer_markups(checkpoints, tmp_path):
    d, g, loc = checkpoints
    predictor = LandmarkPredictor.from_checkpoints(g, loc)
    src = tmp_path / "in"
    src.mkdir()
    if d == 2:
        image = _png(src / "ceph.png")
        result = predict_files(predictor, src, tmp_path / "out", spacing=0.25)
    else:
        affine = np.array([[0, 0, 1.5, -20], [-1.2, 0, 0, 30], [0, 1.3, 0, 5], [0, 0, 0, 1.0]])
        image = _nifti(src / "ceph.nii.gz", affine=affine)
        result = predict_files(predictor, src, tmp_path / "out")
    out = tmp_path / "out"
    world = result["table"].coords["ceph"]
    case = json.loads((out / "ceph.json").read_text())["cases"]["ceph"]
    np.testing.assert_allclose(case["world_mm"], world)
    assert set(case) >= {"voxel", "confidence", "flagged", "radius_mm", "spread_mm", "posterior", "image"}
    assert all(0.0 <= c <= 1.0 for c in case["confidence"])
    assert case["radius_mm"] == [None, None]  # an uncalibrated model states no radius
    header = (out / "ceph.csv").read_text().splitlines()[0].split(",")
    assert header[-5:] == ["confidence", "flagged", "radius_mm", "spread_mm", "posterior"]
    markups = json.loads((out / "ceph.mrk.json").read_text())["markups"][0]
    assert [p["label"] for p in markups["controlPoints"]] == NAMES
    positions = np.array([p["position"] for p in markups["controlPoints"]])
    voxel = np.array(case["voxel"])
    if d == 2:
        # Slicer shows a PNG with 1 mm pixels at LPS (column, row): the markups hold pixel indices
        assert markups["coordinateSystem"] == "LPS"
        np.testing.assert_allclose(positions, np.c_[voxel, np.zeros(2)], atol=1e-9)
        np.testing.assert_allclose(world, 0.25 * voxel, atol=1e-9)  # CSV/JSON: mm at the given spacing
    else:
        assert markups["coordinateSystem"] == "RAS"
        points = read_point_list(out / "ceph.mrk.json")
        np.testing.assert_allclose(points.world(), world, atol=1e-9)
        np.testing.assert_allclose(world, nib.affines.apply_affine(nib.load(image).affine, voxel), atol=1e-6)


def test_manifest_input_uses_its_case_ids_and_split(tmp_path, checkpoints):
    d, g, _ = checkpoints
    if d == 3:
        pytest.skip("one dimensionality is enough")
    for n in range(3):
        _png(tmp_path / f"img{n}.png", seed=n)
    (tmp_path / "m.csv").write_text(
        "case,image,split\np0,img0.png,test\np1,img1.png,train\np2,img2.png,test\n"
    )
    assert [c for c, _ in find_inputs(tmp_path / "m.csv", split="test")] == ["p0", "p2"]
    result = predict_files(LandmarkPredictor.from_checkpoints(g), tmp_path / "m.csv", tmp_path / "o", spacing=1,
                           split="test")  # fmt: skip
    assert sorted(result["table"].coords) == ["p0", "p2"] and (tmp_path / "o" / "p2.mrk.json").is_file()


def test_pictures_on_request(checkpoints, tmp_path):
    d, g, loc = checkpoints
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png") if d == 2 else _nifti(src / "x.nii.gz")
    predictor = LandmarkPredictor.from_checkpoints(g, loc)
    predict_files(predictor, src, tmp_path / "out", spacing=0.5 if d == 2 else None, pictures=True,
                  vector_field="b")  # fmt: skip
    pics = tmp_path / "out" / "pictures"
    expected = [pics / "x.png"] if d == 2 else [pics / "x" / "a.png", pics / "x" / "b.png"]
    for path in [*expected, pics / "x_votes_b.png"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with pytest.raises(ValueError, match="unknown landmark 'c'"):
        predict_files(predictor, src, tmp_path / "out2", vector_field="c")


def test_vote_statistics_spread_and_posterior():
    # 1D-free check in 2D: two cells of a 2 x 1 grid, stride 4 (centres 1.5 and 5.5 on axis 0)
    disp = torch.zeros(1, 1, 2, 2, 1)
    disp[0, 0, 0, :, 0] = torch.tensor([2.0, -2.0])  # both cells vote for 3.5 on axis 0
    logits = torch.tensor([[[[0.0], [2.0]]]])
    coords, spread, post = vote_statistics(DisplacementOutput(disp, logits), 4, regression="linear")
    np.testing.assert_allclose(coords[0, 0].numpy(), [3.5, 1.5], atol=1e-6)
    assert spread.item() == pytest.approx(0.0, abs=1e-6)
    assert post.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-6)
    disp[0, 0, 0, :, 0] = torch.tensor([0.0, 0.0])  # votes at 1.5 and 5.5, weights 0.5 / sigmoid(2)
    coords, spread, _ = vote_statistics(DisplacementOutput(disp, logits), 4, regression="linear",
                                        spacing=torch.tensor([0.5, 0.5]))  # fmt: skip
    w = torch.sigmoid(torch.tensor([0.0, 2.0]))
    w = (w / w.sum()).numpy()
    mean = w @ np.array([1.5, 5.5])
    expected = 0.5 * np.sqrt(w @ (np.array([1.5, 5.5]) - mean) ** 2)
    assert spread.item() == pytest.approx(expected, rel=1e-5)


def test_confidence_falls_with_spread_shift_and_low_posterior():
    c = landmark_confidence(np.array([0.9, 0.9, 0.9, 0.3]), np.array([0.3, 3.0, 0.3, 0.3]),
                            np.array([0.0, 0.0, 3.0, 0.0]), 0.5)  # fmt: skip
    assert c[0] == pytest.approx(0.9 * np.exp(-0.3 / 1.5))
    assert c[0] > c[1] and c[0] > c[2] and c[0] > c[3] and np.all((c >= 0) & (c <= 1))


def test_flags_follow_the_threshold(checkpoints):
    d, g, loc = checkpoints
    image = np.random.default_rng(2).normal(size=(1, *[24] * d)).astype(np.float32)
    affine = np.eye(d + 1)
    low = LandmarkPredictor.from_checkpoints(g, loc, confidence_threshold=0.0).predict(image, affine)
    high = LandmarkPredictor.from_checkpoints(g, loc, confidence_threshold=1.01).predict(image, affine)
    assert not low.flagged.any() and high.flagged.all()


def _bad_inputs(folder: Path, d: int) -> dict[str, str]:
    """file name -> the reason its error must state."""
    folder.mkdir()
    bad = {}
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    bad["corrupt.png"] = "cannot read image"
    (folder / "zero_bytes.nii.gz").write_bytes(b"")
    bad["zero_bytes.nii.gz"] = "cannot read image"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(folder / "constant.png")
    if d == 2:
        bad["constant.png"] = "image is constant"
        _png(folder / "tiny.png", shape=(3, 3))
        bad["tiny.png"] = "smaller than one"
        _nifti(folder / "volume.nii.gz")
        bad["volume.nii.gz"] = "the model is 2D but the image is 3D"
    else:
        bad["constant.png"] = "the model is 3D but the image is 2D"
        nib.save(nib.Nifti1Image(np.full((20, 20, 20), 3.0, np.float32), np.eye(4)), folder / "flat.nii.gz")
        bad["flat.nii.gz"] = "image is constant"
        _nifti(folder / "tiny.nii.gz", shape=(2, 3, 2))
        bad["tiny.nii.gz"] = "smaller than one"
        _nifti(folder / "four_d.nii.gz", shape=(20, 20, 20, 3))
        bad["four_d.nii.gz"] = "expects 1 channel"
        img = nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), None)
        img.header["pixdim"][1] = np.nan  # no qform / sform: the affine comes from the voxel sizes
        nib.save(img, folder / "nan_spacing.nii.gz")
        bad["nan_spacing.nii.gz"] = "NaN"
    return bad


def test_bad_inputs_fail_one_by_one_with_the_reason(checkpoints, tmp_path):
    d, g, loc = checkpoints
    folder = tmp_path / "in"
    bad = _bad_inputs(folder, d)
    good = _png(folder / "good.png") if d == 2 else _nifti(folder / "good.nii.gz")
    # an RGB image is a grey image to a one-channel model, not an error
    if d == 2:
        Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(
            folder / "rgb.png"
        )
    result = predict_files(LandmarkPredictor.from_checkpoints(g, loc), folder, tmp_path / "out",
                           spacing=0.5 if d == 2 else None)  # fmt: skip
    assert sorted(Path(p).name for p in result["failed"]) == sorted(bad)
    for path, reason in result["failed"].items():
        name = Path(path).name
        assert "\n" not in reason and reason.startswith(str(folder / name)), reason
        assert bad[name] in reason, (name, reason)
    done = {"good"} | ({"rgb"} if d == 2 else set())
    assert set(result["table"].coords) == done
    assert (tmp_path / "out" / f"{good.name.split('.')[0]}.mrk.json").is_file()
    assert set(read_landmark_table(tmp_path / "out" / "predictions.csv").coords) == done


def test_nan_spacing_option_is_an_error_per_file(checkpoints, tmp_path):
    d, g, _ = checkpoints
    if d == 3:
        pytest.skip("the spacing option is for 2D bitmaps")
    _png(tmp_path / "a.png")
    result = predict_files(LandmarkPredictor.from_checkpoints(g), tmp_path / "a.png", tmp_path / "out",
                           spacing=float("nan"))  # fmt: skip
    assert result["done"] == 0 and "spacing must be positive numbers" in next(iter(result["failed"].values()))


def test_cli_exit_status_says_some_failed(tmp_path):
    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png")
    cmd = [sys.executable, "-m", "landmark_lit.cli.predict", f"global_checkpoint={g}", f"input={folder}",
           f"output_dir={tmp_path / 'out'}", "spacing=0.5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "1 images done, 1 failed" in proc.stdout
    assert f"{folder / 'bad.png'}: cannot read image" in proc.stdout + proc.stderr
    proc = subprocess.run(
        [*cmd[:-3], f"input={tmp_path / 'nothing_here'}"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "no image files found" in proc.stderr


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    predictor = LandmarkPredictor.from_checkpoints(g)
    _png(tmp_path / "x.png")
    out = tmp_path / "out"
    predict_files(predictor, tmp_path / "x.png", out, spacing=0.5)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    import landmark_lit.data.io as io_module

    def killed(*args, **kwargs):  # the process dies while the first new file is being put in place
        raise KeyboardInterrupt

    monkeypatch.setattr(io_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, tmp_path / "x.png", out, spacing=0.25)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # every file is the old one, whole; no temporary file is left behind


def test_export_cli_writes_a_bundle_and_torchscript_networks(tmp_path):
    from landmark_lit.cli.export import export
    from landmark_lit.inference.export import load_exported
    from landmark_lit.inference.stages import Stage

    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    loc = write_checkpoint(tmp_path / "l.ckpt", stage_description("local", 2, 1.0, 8))
    overrides = [f"global_checkpoint={g}", f"local_checkpoint={loc}", "local_iterations=2",
                 "local_repass_mm=0.2", "local_shifts=axes", f"output={tmp_path / 'm.pt'}",
                 "formats=[bundle,torchscript]"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        written = export(compose("export", overrides=overrides))
    assert set(written) == {"bundle", "torchscript/global", "torchscript/local0"}
    bundle = LandmarkPredictor.from_bundle(written["bundle"])
    assert bundle.local_iterations == 2 and bundle.local_repass_mm == 0.2 and bundle.local_shifts == "axes"
    nets = {k: load_exported(written[f"torchscript/{k}"]) for k in ("global", "local0")}
    scripted = LandmarkPredictor(
        Stage(nets["global"], StageMeta.from_dict(nets["global"].meta, "g"), "g"),
        [Stage(nets["local0"], StageMeta.from_dict(nets["local0"].meta, "l"), "l")],
        local_iterations=2,
        local_repass_mm=0.2,  # exported networks cannot be cut: the moved landmarks' rows of a full pass
        local_shifts="axes",  # the moved sub-images as a batch of 3
    )
    image = np.random.default_rng(3).normal(size=(1, 30, 34)).astype(np.float32)
    np.testing.assert_allclose(
        scripted.predict(image, np.eye(3)).world,
        bundle.predict(image, np.eye(3)).world,
        atol=1e-4,
    )
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        bad = compose("export", overrides=[f"global_checkpoint={g}", "formats=[pickle]"])
    with pytest.raises(ValueError, match="unknown \\['pickle'\\]"):
        export(bad)
    mirrored = [
        *overrides[:3],
        f"output={tmp_path / 'mirrored.pt'}",
        f"mirror={{pairs: [[{NAMES[0]}, {NAMES[1]}]]}}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        written = export(compose("export", overrides=mirrored))
    stored = LandmarkPredictor.from_bundle(written["bundle"]).mirror
    assert stored is not None and stored.pairs == ((0, 1),) and stored.axes == (0,) and not stored.whole


def test_export_stores_the_vote_top_k_it_was_given(tmp_path):
    """landmark-export global_top_k=K local_top_k=K: the bundle decodes as the predictor the export
    calibrated (its stages' stored decoders say so), not as the checkpoints stored them."""
    from landmark_lit.cli.export import export

    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    loc = write_checkpoint(tmp_path / "l.ckpt", stage_description("local", 2, 1.0, 8))
    overrides = [f"global_checkpoint={g}", f"local_checkpoint={loc}", f"output={tmp_path / 'k.pt'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        written = export(compose("export", overrides=[*overrides, "global_top_k=3", "local_top_k=2"]))
    bundle = LandmarkPredictor.from_bundle(written["bundle"])
    assert bundle.global_stage.meta.decoder["top_k"] == 3
    assert [s.meta.decoder["top_k"] for s in bundle.local_stages] == [2]
    expected = LandmarkPredictor.from_checkpoints(g, [loc])
    plain_run = LandmarkPredictor.from_checkpoints(g, [loc])
    expected.set_vote_top_k(3, 2)
    image = np.random.default_rng(4).normal(size=(1, 30, 34)).astype(np.float32)
    found = bundle.predict(image, np.eye(3)).world
    np.testing.assert_allclose(found, expected.predict(image, np.eye(3)).world, atol=1e-6)
    assert np.abs(found - plain_run.predict(image, np.eye(3)).world).max() > 1e-3  # top_k changed them
    before = written["bundle"].read_bytes()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        bad = compose("export", overrides=[*overrides, "local_top_k=0"])
    with pytest.raises(ValueError, match="top_k"):
        export(bad)
    assert written["bundle"].read_bytes() == before  # the bundle already written is kept whole


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("local_iterations=0", "local_iterations must be at least 1, got 0"),
        ("confidence_scale=0", "confidence_scale must be positive, got 0"),
        ("confidence_scale=-1.5", "confidence_scale must be positive, got -1.5"),
    ],
)
def test_bundle_settings_are_checked_as_the_checkpoints_are(tmp_path, override, message):
    """With a bundle, a bad local_iterations or confidence_scale is one clear error before any image is
    read (not a NaN confidence or a failure on every image); landmark-export refuses local_iterations=0
    instead of turning it into 1."""
    from landmark_lit.cli.export import export

    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    loc = write_checkpoint(tmp_path / "l.ckpt", stage_description("local", 2, 1.0, 8))
    save_bundle(tmp_path / "model.pt", g, [loc])
    image = _png(tmp_path / "x.png")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("predict", overrides=[f"model={tmp_path / 'model.pt'}", f"input={image}",
                                            f"output_dir={tmp_path / 'out'}", "spacing=0.5", override])  # fmt: skip
        with pytest.raises(ValueError, match=message):
            predict_cli(cfg)
        assert not (tmp_path / "out").exists()
        if override.startswith("local_iterations"):
            bad = compose("export", overrides=[f"global_checkpoint={g}", f"local_checkpoint={loc}", override,
                                               f"output={tmp_path / 'm.pt'}"])  # fmt: skip
            with pytest.raises(ValueError, match=message):
                export(bad)
            assert not (tmp_path / "m.pt").exists()


def test_reduced_jpeg_decoding_keeps_voxels_of_the_file_and_mm(tmp_path):
    """reduced_jpeg: the coarsest reduction still as fine as every stage (stages at 2.0 and 1.0 mm, pixels
    of 0.25 mm: 1/4); the JSON's voxel indices are the full-size file's, the world mm at the given spacing,
    and the markups sit on the full-size image."""
    from landmark_lit.inference.predict_files import jpeg_reduction

    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    loc = write_checkpoint(tmp_path / "l.ckpt", stage_description("local", 2, 1.0, 8))
    predictor = LandmarkPredictor.from_checkpoints(g, loc)
    assert [jpeg_reduction(predictor, mm) for mm in (0.1, 0.25, 0.3, 0.6, 1.5)] == [8, 4, 2, 1, 1]
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 240), dtype=np.uint8)).save(src / "x.jpg")
    result = predict_files(predictor, src, tmp_path / "out", spacing=0.25, reduced_jpeg=True)
    world = result["table"].coords["x"]
    case = json.loads((tmp_path / "out" / "x.json").read_text())["cases"]["x"]
    np.testing.assert_allclose(world, 0.25 * np.array(case["voxel"]), atol=1e-9)  # full-size pixels
    markups = json.loads((tmp_path / "out" / "x.mrk.json").read_text())["markups"][0]
    positions = np.array([p["position"] for p in markups["controlPoints"]])
    np.testing.assert_allclose(positions[:, :2], np.array(case["voxel"]), atol=1e-9)
    prediction, image, affine = predict_file(predictor, src / "x.jpg", 0.25, reduced_jpeg=True)
    assert image.shape == (1, 60, 50) and np.allclose(np.diag(affine), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(affine[:2, 2], [0.375, 0.375])  # pixel 0 covers full-size pixels 0..3
    np.testing.assert_allclose(prediction.world, world)


def test_a_loaded_2d_global_network_runs_channels_last_with_the_checkpoints_outputs(checkpoints):
    from landmark_lit.inference.stages import load_stage

    d, g, loc = checkpoints
    stage, local = load_stage(g), load_stage(loc)

    def kernels(net):  # convolution weights with kernels larger than 1 (a 1^D kernel's layout is both)
        return [
            m.weight
            for m in net.modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d) and m.weight[0, 0].numel() > 1
        ]

    # a 2D global network in channels-last memory; 3D and local networks as they were
    assert kernels(stage.net) and kernels(local.net)
    assert all(w.is_contiguous(memory_format=torch.channels_last) == (d == 2) for w in kernels(stage.net))
    assert all(w.is_contiguous() for w in kernels(local.net))
    # the same numbers as the stored network built plainly (eval mode, no folding, default memory)
    stored = torch.load(g, weights_only=True)["state_dict"]
    plain = stage.meta.build_network()
    plain.load_state_dict({k[len("net.") :]: v for k, v in stored.items()})
    x = torch.randn(1, 1, *[40] * d)
    with torch.no_grad():
        for a, b in zip(plain.eval()(x), stage.net(x), strict=True):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)

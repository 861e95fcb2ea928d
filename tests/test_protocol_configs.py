"""The paper's 3D protocols (ccta, olfactory_mr) and the manifest / MNI-AFIDs dataset configs: their values,
and an end-to-end smoke run on tiny synthetic stand-in volumes with the same geometry and landmark names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from landmark_lit.cli import CONFIG_DIR
from landmark_lit.data.io import save_nifti
from landmark_lit.data.landmark_files import write_slicer_markups
from landmark_lit.data.transforms import voxel_to_world, world_to_voxel
from landmark_lit.inference import LandmarkPredictor
from landmark_lit.training import train

CCTA = ["NCRC", "NCLC", "LRC", "LH", "NCH", "RH", "RO", "LO"]
OLFACTORY = ["right_olfactory_bulb", "left_olfactory_bulb"]
LPS = np.array([-1.0, -1.0, 1.0])


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize(
    "dataset,names,spacing,crop,local_crop,min_size",
    [
        ("ccta", CCTA, 1.5, [72, 72, 72], [16, 16, 16], None),
        ("olfactory_mr", OLFACTORY, 0.47, [72, 72, 72], [16, 16, 16], 72),
    ],
)
def test_protocol_values(dataset, names, spacing, crop, local_crop, min_size, tmp_path):
    cfg = compose_train(
        [f"dataset={dataset}", "dataset.manifest=/data/m.json", f"paths.output_dir={tmp_path}"]
    )
    d = cfg.dataset
    assert list(d.landmark_names) == names and d.num_landmarks == len(names)
    assert d.global_spacing == d.local_spacing == spacing
    assert list(d.global_crop_size) == crop and list(d.local_crop_size) == local_crop
    assert cfg.data.min_size == min_size and cfg.data.spacing == spacing
    assert (
        d.train.manifest == "/data/m.json" and d.train._target_ == "landmark_lit.data.manifest.ManifestCases"
    )
    assert (d.train.split, d.val.split, d.test.split) == ("train", "val", "test")
    local = compose_train(
        [f"dataset={dataset}", "stage=local", "dataset.manifest=m", f"paths.output_dir={tmp_path}"]
    )
    assert list(local.data.crop_size) == local_crop and local.data.min_size is None


def test_manifest_and_mni_configs_compose(tmp_path):
    cfg = compose_train(["dataset=mni_afids", f"paths.output_dir={tmp_path}"])
    assert len(cfg.dataset.landmark_names) == 32 and cfg.dataset.landmark_names[:2] == ["AC", "PC"]
    assert cfg.dataset.manifest.endswith("outputs/mni_afids/manifest.json")
    cfg = compose_train(["dataset=manifest", f"paths.output_dir={tmp_path}"])
    assert cfg.dataset.landmark_names is None and cfg.dataset.coordinate_system == "RAS"


def stand_in_study(
    folder: Path, names: list[str], spacing, shape, orientation, inline: bool, seed: int = 0
) -> Path:
    """Five cases (3 train, 1 val, 1 test): smooth noise plus a blob of its own intensity per landmark."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*(np.asarray(orientation) * spacing), 1.0])
    affine[:3, 3] = rng.uniform(-50, 50, size=3)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1) * spacing
    entries = []
    for i, split in enumerate(["train", "train", "train", "val", "test"]):
        voxels = rng.uniform(0.25, 0.75, size=(len(names), 3)) * (np.array(shape) - 1)
        image = 0.1 * rng.standard_normal(shape)
        for k, v in enumerate(voxels):
            image += (1.0 + k / len(names)) * np.exp(-np.sum((grid - v * spacing) ** 2, -1) / (2 * 2.0**2))
        save_nifti(folder / f"case{i}.nii.gz", image.astype(np.float32), affine)
        world = voxel_to_world(voxels, affine)
        entry = {"case": f"case{i}", "image": f"case{i}.nii.gz", "split": split}
        if inline:
            entry["landmarks"] = (world * LPS).tolist()  # stated in LPS, as ITK-based tools would
        else:
            write_slicer_markups(folder / f"case{i}.mrk.json", names, world)
            entry["landmarks"] = f"case{i}.mrk.json"
        entries.append(entry)
    manifest = {"coordinate_system": "LPS", "landmarks": names, "cases": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def smoke(dataset: str, manifest: Path, out: Path, extra: list[str]) -> tuple[dict, LandmarkPredictor]:
    results = {}
    for stage in ("global", "local"):
        cfg = compose_train(
            [
                f"dataset={dataset}",
                f"stage={stage}",
                f"dataset.manifest={manifest}",
                "model=small",
                "trainer=ci",
                "stage.samples_per_epoch=8",
                "stage.batch_size=2",
                "dataset.local_crop_size=[8,8,8]",
                f"paths.output_dir={out / stage}",
                *extra,
            ]
        )
        results[stage] = train(cfg)
        assert (
            np.isfinite(results[stage]["metrics"]["val/mre_mm"])
            and "test/mre_mm" in results[stage]["metrics"]
        )
    predictor = LandmarkPredictor.from_checkpoints(
        results["global"]["best_checkpoint"], results["local"]["best_checkpoint"]
    )
    return results, predictor


def check_prediction(predictor: LandmarkPredictor, image_path: Path, names: list[str]) -> None:
    from landmark_lit.data.io import load_image

    image, affine = load_image(image_path)
    result = predictor.predict(image_path)
    assert predictor.landmark_names == names and result["world"].shape == (len(names), 3)
    assert np.isfinite(result["world"]).all()
    # predictions are in the original image's world space: its affine maps them onto the voxel output
    np.testing.assert_allclose(result["voxel"], world_to_voxel(result["world"], affine), atol=1e-6)
    lo, hi = -8.0, np.array(image.shape[1:]) + 7.0  # within the volume, give or take a few voxels
    assert np.all((result["voxel"] > lo) & (result["voxel"] < hi)), result["voxel"]


@pytest.mark.slow
def test_ccta_end_to_end_on_stand_in_volumes(tmp_path):
    # CCTA-like: 0.4 mm in plane, 0.45 mm slices, LPS-ordered axes, landmarks in Slicer markups files
    manifest = stand_in_study(
        tmp_path / "data", CCTA, np.array([0.4, 0.4, 0.45]), (56, 56, 52), (-1, -1, 1), False
    )
    results, predictor = smoke("ccta", manifest, tmp_path / "runs", ["dataset.global_crop_size=[16,16,16]"])
    meta = torch.load(results["global"]["best_checkpoint"], weights_only=True)["landmark_lit"]
    assert meta["spacing"] == 1.5 and meta["landmark_names"] == CCTA and meta["net"]["num_landmarks"] == 8
    check_prediction(predictor, tmp_path / "data" / "case4.nii.gz", CCTA)


@pytest.mark.slow
def test_olfactory_mr_end_to_end_with_padded_thin_axis(tmp_path):
    # olfactory-MR-like: 0.47 mm in plane, ten 1 mm coronal slices (y), inline LPS landmarks
    manifest = stand_in_study(
        tmp_path / "data", OLFACTORY, np.array([0.47, 1.0, 0.47]), (40, 10, 40), (1, 1, 1), True
    )
    extra = ["dataset.global_crop_size=[24,24,24]", "dataset.global_min_size=32"]
    results, predictor = smoke("olfactory_mr", manifest, tmp_path / "runs", extra)
    working = results["global"]["datamodule"]._cases("val")[0]["image"]
    assert working.shape[1:] == (40, 32, 40)  # 10 mm / 0.47 mm = 22 slices, zero-padded to 32
    assert torch.all(working[:, :, 22:] == 0)
    meta = torch.load(results["global"]["best_checkpoint"], weights_only=True)["landmark_lit"]
    assert (
        meta["min_size"] == 32
        and meta["spacing"] == 0.47
        and predictor.global_stage.preprocessing.min_size == 32
    )
    check_prediction(predictor, tmp_path / "data" / "case4.nii.gz", OLFACTORY)


def test_mni_afids_flip_swaps_every_left_right_pair_and_nothing_else(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["dataset=mni_afids", f"paths.output_dir={tmp_path}"])
    names = list(cfg.dataset.landmark_names)
    flip = instantiate(cfg.dataset.flip).for_landmarks(names)
    perm = flip.permutation(len(names))
    for k, j in enumerate(perm):
        side = names[k].split(" ", 1)
        if side[0] in ("R", "L") and len(side) == 2:  # "R MB" <-> "L MB"
            assert names[j] == {"R": "L", "L": "R"}[side[0]] + " " + side[1]
        else:  # midline fiducials (AC, PC, ...) keep their place
            assert j == k
    img = torch.zeros(1, 9, 5, 4)
    lm = torch.arange(len(names) * 3, dtype=torch.float32).view(-1, 3) % 4
    flip.prob = 1.0
    _, moved = flip(img, lm)
    np.testing.assert_allclose(moved[:, 0].numpy(), 8 - lm[perm, 0].numpy())


def test_isbi2015_flip_keeps_the_landmark_names(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=isbi2015_global", f"paths.output_dir={tmp_path}"])
    flip = instantiate(cfg.data.flip).for_landmarks([f"L{k}" for k in range(cfg.dataset.num_landmarks)])
    assert flip.axes == (0,) and flip.permutation(19) == list(range(19))

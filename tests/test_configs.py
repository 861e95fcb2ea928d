"""The composed configs: the paper's 3D protocols (ccta, olfactory_mr), the manifest / MNI-AFIDs datasets, the
experiments with their scheduler and augmentation groups, and the optimised metric; and an end-to-end smoke
run on tiny synthetic stand-in volumes with the protocols' geometry and landmark names."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from landmark_lit.config import CONFIG_DIR
from landmark_lit.data.appearance import Appearance
from landmark_lit.data.augment import Augmentation
from landmark_lit.data.io import save_nifti
from landmark_lit.data.point_files import world_to_points, write_slicer_markups
from landmark_lit.data.transforms import voxel_to_world, world_to_voxel
from landmark_lit.inference.predict_files import predict_file
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.training import train

CCTA = ["NCRC", "NCLC", "LRC", "LH", "NCH", "RH", "RO", "LO"]
OLFACTORY = ["right_olfactory_bulb", "left_olfactory_bulb"]
LPS = np.array([-1.0, -1.0, 1.0])
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("dataset,names", [("ccta", CCTA), ("olfactory_mr", OLFACTORY)])
def test_protocol_data_follows_the_stage_and_the_manifest(dataset, names, tmp_path):
    """data.* take the chosen stage's spacing, crop and padding from the dataset; one manifest feeds all splits
    (the names are those the stand-in studies below are written with)."""
    for stage in ("global", "local"):
        cfg = compose_train(
            [
                f"dataset={dataset}",
                f"stage={stage}",
                "dataset.manifest=/data/m.json",
                f"paths.output_dir={tmp_path}",
            ]
        )
        d = cfg.dataset
        assert list(d.landmark_names) == names and d.num_landmarks == len(names)
        assert cfg.data.spacing == d[f"{stage}_spacing"]
        assert list(cfg.data.crop_size) == list(d[f"{stage}_crop_size"])
        assert cfg.data.min_size == d.get(f"{stage}_min_size")
        for split in ("train", "val", "test"):
            assert cfg.data[split].manifest == "/data/m.json" and cfg.data[split].split == split
            assert cfg.data[split]._target_ == "landmark_lit.data.manifest.ManifestCases"


def test_mni_manifest_lives_below_the_log_dir_and_names_every_fiducial(tmp_path):
    cfg = compose_train(["dataset=mni_afids", f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    assert cfg.data.train.manifest == cfg.data.test.manifest == f"{tmp_path}/mni_afids/manifest.json"
    assert len(cfg.dataset.landmark_names) == cfg.dataset.num_landmarks
    # the manifest dataset takes its names (and their order) from the manifest itself
    cfg = compose_train(["dataset=manifest", "dataset.manifest=m.json", f"paths.output_dir={tmp_path}"])
    assert cfg.dataset.landmark_names is None and cfg.data.val.manifest == "m.json"


class _Step(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_scheduler_and_augmentation(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", "trainer.max_steps=40", f"paths.output_dir={tmp_path}"])
    assert instantiate(cfg.stage.net).spatial_dims == cfg.dataset.spatial_dims
    opt = instantiate(cfg.optimizer)(_Step().parameters())
    if cfg.scheduler is not None:
        sched = instantiate(cfg.scheduler)(opt)
        assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 40
    if cfg.data.augment is not None:
        assert isinstance(instantiate(cfg.data.augment), Augmentation)


ABLATIONS = sorted(p.stem for p in (Path(CONFIG_DIR) / "ablation").glob("*.yaml"))


@pytest.mark.parametrize("experiment", ["isbi2015_global", "mni_afids_global_pyramid"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_variant_of_a_top_k_stage_builds_its_decoder(experiment, ablation, tmp_path):
    # the stage decodes from its 9 most confident cells; ranking needs the classification, so the variants
    # without it (the sweep=ablation grid's R and Rlog) decode from all cells instead of failing, and
    # train every cell's displacement alike
    cfg = compose_train([f"experiment={experiment}", f"ablation={ablation}", f"paths.output_dir={tmp_path}"])
    assert cfg.stage.vote_top_k == 9
    decoder = instantiate(cfg.decoder)
    assert decoder.classification == cfg.ablation.classification
    assert decoder.top_k == (9 if cfg.ablation.classification else None)
    # the same for the positive cells' displacement weight: every cell votes without classification
    loss = instantiate(cfg.loss)
    assert cfg.stage.foreground_weight == 1000.0
    assert loss.foreground_weight == (1000.0 if cfg.ablation.classification else 0.0)


def test_isbi2015_global_anneals_over_the_overridden_max_steps(tmp_path):
    cfg = compose_train(
        ["experiment=isbi2015_global", "trainer.max_steps=10", f"paths.output_dir={tmp_path}"]
    )
    opt = instantiate(cfg.optimizer)(_Step().parameters())
    sched = instantiate(cfg.scheduler)(opt)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # from optimizer.lr down to eta_min after exactly trainer.max_steps steps
    assert lrs[0] == pytest.approx(cfg.optimizer.lr) and all(
        a > b for a, b in zip(lrs, lrs[1:], strict=False)
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.scheduler.eta_min)
    assert compose_train([f"paths.output_dir={tmp_path}"]).scheduler is None
    plain = compose_train(["experiment=isbi2015_global", "scheduler=none", f"paths.output_dir={tmp_path}"])
    assert plain.scheduler is None


def test_augmentation_group_selects_and_overrides_the_training_augmentation(tmp_path):
    assert compose_train([f"paths.output_dir={tmp_path}"]).data.augment is None
    cfg = compose_train(["experiment=isbi2015_global", "augmentation=none", f"paths.output_dir={tmp_path}"])
    assert cfg.data.augment is None and cfg.data.flip is not None  # the flips are not the group's
    cfg = compose_train(
        ["augmentation=default", "data.augment.rotate_deg=15", f"paths.output_dir={tmp_path}"]
    )
    aug = instantiate(cfg.data.augment)
    assert isinstance(aug, Augmentation) and aug.rotate_deg == 15
    cfg = compose_train(
        [
            "experiment=isbi2015_global",
            "augmentation=robust",
            "data.augment.appearance.cut_prob=0",
            f"paths.output_dir={tmp_path}",
        ]
    )
    robust = instantiate(cfg.data.augment)  # the default's changes, then the appearance ones
    assert dataclasses.replace(robust, appearance=None) == Augmentation()
    assert isinstance(robust.appearance, Appearance) and robust.appearance.cut_prob == 0
    assert robust.appearance.blur_prob > 0 and robust.appearance.curve_prob > 0


def test_augmentation_group_lists_every_argument_with_the_python_defaults():
    """conf/augmentation/default.yaml and the class's defaults are the same augmentation, argument for argument."""
    listed = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "augmentation" / "default.yaml"))
    listed = listed["data"]["augment"]
    assert listed.pop("_target_") == "landmark_lit.data.augment.Augmentation"
    fields = [f.name for f in dataclasses.fields(Augmentation)]
    assert list(listed) == fields
    assert instantiate({"_target_": "landmark_lit.data.augment.Augmentation", **listed}) == Augmentation()


def test_the_local_stage_keeps_landmarks_inside_its_augmented_sub_images(tmp_path):
    overrides = ["dataset=synthetic2d", "augmentation=default", "dataset.train.num_cases=2",
                 "dataset.val.num_cases=1", "dataset.test.num_cases=1", f"paths.output_dir={tmp_path}"]  # fmt: skip
    cfg = compose_train([*overrides, "stage=local", "data.local_margin=1.5"])
    local = instantiate(cfg.data)
    assert isinstance(local.augment, Augmentation) and local.augment.keep_inside == 1.5
    assert instantiate(compose_train(overrides).data).augment.keep_inside is None


def test_local_eval_seed_moves_the_validation_sub_images(tmp_path):
    def starts(*extra):
        cfg = compose_train(
            ["dataset=synthetic2d", "stage=local", "dataset.train.num_cases=1", "dataset.val.num_cases=2",
             "dataset.test.num_cases=1", "dataset.val.size=40", f"paths.output_dir={tmp_path}", *extra]
        )  # fmt: skip
        dm = instantiate(cfg.data)
        ds = dm.val_dataloader().dataset
        return ds.seed, torch.stack([ds[i]["origin"] for i in range(len(ds))])

    seed, default = starts()
    assert seed == 0 and torch.equal(default, starts()[1])  # fixed: every validation sees the same sub-images
    seed, other = starts("data.local_eval_seed=5")
    assert seed == 5 and not torch.equal(default, other)


def test_optimized_metric_is_monitored_and_returned(tmp_path, monkeypatch):
    import landmark_lit.cli.train as cli_train

    cfg = compose_train(["optimized_metric=val/median_mm", f"paths.output_dir={tmp_path}"])
    assert instantiate(cfg.callbacks.model_checkpoint).monitor == "val/median_mm"
    default = compose_train([f"paths.output_dir={tmp_path}"])
    assert instantiate(default.callbacks.model_checkpoint).monitor == default.optimized_metric == "val/mre_mm"
    metrics = {"best_val/median_mm": 1.5, "val/median_mm": 2.0, "best_val/mre_mm": 9.0, "val/mre_mm": 9.5}
    monkeypatch.setattr(cli_train, "train", lambda c: {"metrics": dict(metrics)})
    assert cli_train.run.__wrapped__(cfg) == 1.5  # the best checkpoint's value
    del metrics["best_val/median_mm"]
    assert cli_train.run.__wrapped__(cfg) == 2.0  # no checkpoint monitored it: the last validation's
    assert cli_train.run.__wrapped__(default) == 9.0


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
            write_slicer_markups(folder / f"case{i}.mrk.json", names, world_to_points(world, "LPS"))
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
                "net=small",
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
    result, _, _ = predict_file(predictor, image_path)
    assert predictor.landmark_names == names and result.world.shape == (len(names), 3)
    assert np.isfinite(result.world).all()
    # predictions are in the original image's world space: its affine maps them onto the voxel output
    np.testing.assert_allclose(result.voxel, world_to_voxel(result.world, affine), atol=1e-6)
    lo, hi = -8.0, np.array(image.shape[1:]) + 7.0  # within the volume, give or take a few voxels
    assert np.all((result.voxel > lo) & (result.voxel < hi)), result.voxel


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


def test_importing_the_commands_registers_no_resolvers():
    """The configs' resolvers are registered where configs are composed (each command's main, compose_config),
    not as a side effect of an import."""
    code = (
        "from omegaconf import OmegaConf\n"
        "import landmark_lit.cli.train, landmark_lit.cli.predict, landmark_lit.cli.export\n"
        "assert not any(OmegaConf.has_resolver(n) for n in ('cwd', 'data_root', 'sweep_id'))\n"
        "from landmark_lit.config import compose_config\n"
        "cfg = compose_config('train', ['paths.output_dir=/tmp/x'])\n"
        "assert all(OmegaConf.has_resolver(n) for n in ('cwd', 'data_root', 'sweep_id'))\n"
        "print(cfg.paths.data_dir)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("data")

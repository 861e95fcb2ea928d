"""Compose the real configs, train each stage for a few steps through ``train(cfg)``, predict from the
saved checkpoints, and run the CLI entry points."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    ABLATIONS,
    DATASETS,
    DIMS,
    STAGES,
    TINY,
    compose_train,
    read_wandb_offline_run,
    tiny_overrides,
)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from landmark_lit.config import CONFIG_DIR
from landmark_lit.data.io import save_nifti
from landmark_lit.inference.predict_files import predict_files
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import CheckpointError, load_stage
from landmark_lit.training import train


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dataset", list(DIMS))
def test_every_combination_composes_and_builds(dataset, stage, ablation, tmp_path):
    cfg = compose_train(
        [f"dataset={dataset}", f"stage={stage}", f"ablation={ablation}", f"paths.output_dir={tmp_path}"]
    )
    assert cfg.stage.name == stage and cfg.ablation.name == ablation
    net = instantiate(cfg.stage.net)
    loss = instantiate(cfg.loss)
    decoder = instantiate(cfg.decoder)
    assert net.spatial_dims == cfg.dataset.spatial_dims == DIMS[dataset]
    assert (
        loss.regression
        == decoder.regression
        == {"R": "linear", "Rlog": "log", "C": "none"}.get(ablation.split("+")[0], "none")
    )
    assert decoder.classification == ("C" in ablation)
    assert net.stride == (8 if stage == "global" else 2)


def test_unknown_config_key_is_rejected(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_train([f"paths.output_dir={tmp_path}", "trainer.no_such_key=1"])


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_train_both_stages_then_predict_from_checkpoints(dataset, tmp_path):
    results = {}
    for stage in STAGES:
        cfg = compose_train([*tiny_overrides(dataset, tmp_path / stage), f"stage={stage}"])
        res = train(cfg)
        assert Path(res["best_checkpoint"]).is_file() and Path(res["last_checkpoint"]).is_file()
        assert np.isfinite(res["metrics"]["val/mre_mm"]) and res["metrics"]["val/mre_mm"] > 0
        assert "test/mre_mm" in res["metrics"] and "train/loss" in res["metrics"]
        metrics_csv = next((tmp_path / stage / "csv").rglob("metrics.csv")).read_text()
        assert "val/sdr_2mm" in metrics_csv and "train/loss_reg" in metrics_csv
        # pictures of every validation: SDR curve, overlay and vote field of landmark 0
        step = res["trainer"].global_step
        for kind in ("sdr", "overlay", "votes"):
            assert (tmp_path / stage / "pictures" / f"step_{step:06d}_{kind}.png").stat().st_size > 1000
        results[stage] = res
    # the checkpoint carries what prediction needs and loads with weights_only
    ckpt = torch.load(results["global"]["best_checkpoint"], weights_only=True)
    meta = ckpt["landmark_lit"]
    assert (
        meta["stage"] == "global"
        and len(meta["landmark_names"]) == 6
        and meta["decoder"]["regression"] == "log"
    )
    # and the training time spent to reach it (TrainingClock): CPU seconds of the process, wall-clock, step
    last = torch.load(results["global"]["last_checkpoint"], weights_only=True)
    clock = last["training_clock"]
    assert clock["step"] == last["global_step"] and 0 < clock["cpu_s"] and 0 < clock["wall_s"] < 600

    predictor = LandmarkPredictor.from_checkpoints(
        results["global"]["best_checkpoint"], results["local"]["best_checkpoint"]
    )
    source = instantiate(cfg.dataset.test)
    case = source[0]
    out = predictor.predict(case.image, case.affine)
    assert out.world.shape == out.voxel.shape == case.landmarks_world.shape
    assert np.isfinite(out.world).all()
    # from files, 3D only (NIfTI): a folder with one good and one corrupt file
    if dataset == "synthetic3d":
        images = tmp_path / "images"
        save_nifti(images / "good.nii.gz", case.image, case.affine)
        (images / "broken.nii.gz").write_bytes(b"not a nifti file")
        result = predict_files(predictor, images, tmp_path / "pred")
        assert result["done"] == 1 and list(result["failed"]) == [str(images / "broken.nii.gz")]
        table = json.loads((tmp_path / "pred" / "predictions.json").read_text())
        np.testing.assert_allclose(table["cases"]["good"]["world_mm"], out.world, atol=1e-3)


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_the_step_count(tmp_path):
    cfg = compose_train([*tiny_overrides("synthetic2d", tmp_path / "a"), "run_test=false"])
    first = train(cfg)
    assert first["trainer"].global_step == 4
    cfg2 = compose_train(
        [
            *tiny_overrides("synthetic2d", tmp_path / "b"),
            "run_test=false",
            "trainer.max_steps=6",
            f"ckpt_path={first['last_checkpoint']}",
        ]
    )
    second = train(cfg2)
    assert second["trainer"].global_step == 6
    # the training clock continues from the checkpoint it resumed from
    before = torch.load(first["last_checkpoint"], weights_only=True)["training_clock"]
    last = torch.load(second["last_checkpoint"], weights_only=True)
    after = last["training_clock"]
    assert after["step"] == last["global_step"] > before["step"]
    assert after["cpu_s"] > before["cpu_s"] and after["wall_s"] > before["wall_s"]


def test_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.ckpt"
    with pytest.raises(CheckpointError, match="none.ckpt: model file not found"):
        load_stage(missing)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.ckpt: not a landmark_lit checkpoint"):
        load_stage(foreign)
    wrong = tmp_path / "wrong.ckpt"
    meta = {"stage": "global", "net": {"_target_": "os.system", "command": "echo hi"}, "landmark_names": ["a"],
            "spatial_dims": 2, "spacing": 1.0, "intensity": "zscore", "decoder": {}}  # fmt: skip
    torch.save({"state_dict": {}, "landmark_lit": meta}, wrong)
    with pytest.raises(CheckpointError, match="unknown network 'os.system'"):
        load_stage(wrong)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a model file"):
        load_stage(garbage)


def run_train_cli(tmp_path: Path, *args: str, steps: int = 2, val_cases: int = 1, **env: str) -> None:
    """``python -m landmark_lit.cli.train ARGS`` on tiny synthetic 2D data in ``tmp_path`` (outputs below
    it), with ``env`` added to the environment; fails the test with the end of stderr if it fails."""
    cmd = [
        sys.executable, "-m", "landmark_lit.cli.train", *args, "dataset=synthetic2d", "net=small",
        "trainer=ci", f"trainer.max_steps={steps}", "run_test=false", "dataset.train.num_cases=2",
        f"dataset.val.num_cases={val_cases}", "stage.samples_per_epoch=4", *TINY["synthetic2d"],
    ]  # fmt: skip
    environment = {**os.environ, "LANDMARK_LIT_ROOT": str(tmp_path), **env}
    proc = subprocess.run(cmd, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_cli_multirun_sweeps_the_ablations(tmp_path):
    run_train_cli(tmp_path, "-m", "ablation=R,C,Rlog+C")
    runs = sorted(p.parent.parent.name for p in (tmp_path / "outputs").rglob("checkpoints/last.ckpt"))
    assert runs == ["0-synthetic2d-global-R", "1-synthetic2d-global-C", "2-synthetic2d-global-Rlog+C"]


def test_sweep_config_sets_the_ablation_grid(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=["sweep=ablation", f"paths.output_dir={tmp_path}"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.params.ablation == "R,Rlog,C,R+C,Rlog+C"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.slow
def test_stages_sweep_trains_both_stages(tmp_path):
    """`landmark-train -m sweep=stages`: two jobs, a global and a local stage, each with its checkpoint."""
    run_train_cli(tmp_path, "sweep=stages")
    stages = sorted(
        torch.load(p, weights_only=True)["landmark_lit"]["stage"]
        for p in (tmp_path / "outputs").rglob("checkpoints/last.ckpt")
    )
    assert stages == ["global", "local"]


def test_a_short_training_run_learns(tmp_path):
    """200 steps x 4 crops of the global stage on small synthetic 2D phantoms end clearly below the error of
    predicting every landmark at its mean training position (as `make demo` checks): a flipped loss sign or
    a broken target or decoder does not (measured: 2.25 mm against 4.62; with the loss negated 16.2 mm)."""
    cfg = compose_train([
        *tiny_overrides("synthetic2d", tmp_path), "trainer.max_steps=200", "trainer.val_check_interval=200",
        "dataset.train.num_cases=32", "dataset.val.num_cases=8", "dataset.train.size=48", "dataset.val.size=48",
        "dataset.test.size=48", "dataset.global_crop_size=[24,24]", "stage.batch_size=4",
        "stage.samples_per_epoch=64", "scheduler=cosine", "optimizer.lr=3e-3", "stage.foreground_weight=10",
        "stage.vote_top_k=4", "run_test=false", "~callbacks.pictures",
    ])  # fmt: skip
    res = train(cfg)
    train_cases, val_cases = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    mean = np.nanmean(np.stack([train_cases[i].landmarks_world for i in range(len(train_cases))]), axis=0)
    predictor = LandmarkPredictor.from_checkpoints(res["last_checkpoint"])
    errors, baseline = [], []
    for case in (val_cases[i] for i in range(len(val_cases))):
        errors.append(
            np.linalg.norm(predictor.predict(case.image, case.affine).world - case.landmarks_world, axis=1)
        )
        baseline.append(np.linalg.norm(mean - case.landmarks_world, axis=1))
    mre, base = float(np.nanmean(errors)), float(np.nanmean(baseline))
    assert mre < 0.6 * base, (
        f"MRE {mre:.2f} mm after 200 steps is not clearly below the baseline's {base:.2f} mm"
    )
    assert res["metrics"]["val/mre_mm"] == pytest.approx(mre, rel=1e-4)  # validation measures the same


def test_single_landmark_sweep_selects_one_landmark_per_run(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=mni_afids_global_crop40",
                "sweep=single_landmark",
                f"paths.output_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    value = cfg.hydra.sweeper.params["data.landmark_indices"]
    (override,) = OverridesParser.create().parse_overrides([f"data.landmark_indices={value}"])
    runs = list(override.sweep_iterator())
    assert runs == [[0], [1], [13], [18]] and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    names = list(cfg.dataset.landmark_names)
    assert [names[i[0]] for i in runs] == ["AC", "PC", "pineal gland", "Genu of CC"]


@pytest.mark.slow
def test_single_landmark_run_with_the_wandb_logger_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(
        [
            *tiny_overrides("synthetic2d", tmp_path),
            "logger=wandb",
            "data.landmark_indices=[2]",
            "run_test=false",
        ]
    )
    res = train(cfg)
    stage = load_stage(res["best_checkpoint"], "global")
    assert stage.meta.landmark_names == ["nodule"] and stage.net.num_landmarks == 1
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "no offline wandb run written"
    logged = {p.name.split("_")[0] for p in runs[0].rglob("media/images/val/*.png")}
    assert {"sdr", "overlay", "votes"} <= logged, logged


@pytest.mark.slow
def test_parallel_launcher_jobs_get_their_own_wandb_runs(tmp_path):
    """hydra/launcher=parallel (joblib, one process per job): two jobs, two runs, each in its job's folder."""
    run_train_cli(tmp_path, "-m", "ablation=R,C", "logger=wandb", "hydra/launcher=parallel",
                  WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")  # fmt: skip
    jobs = sorted((tmp_path / "outputs").rglob("*-synthetic2d-global-*"), key=lambda p: p.name)
    runs = [read_wandb_offline_run(next(j.glob("wandb/offline-run-*/run-*.wandb"))) for j in jobs]
    assert [r["config"]["ablation"]["name"] for r in runs] == ["R", "C"]
    assert len({r["id"] for r in runs}) == 2 and all(r["exit_code"] == 0 for r in runs)


@pytest.mark.slow
def test_a_multirun_gets_one_wandb_run_per_job(tmp_path):
    """Three ablations in one Hydra multirun (basic launcher: one process): three offline wandb runs, one
    in each job's folder, each with its own id, its job's config, its own metrics history (per landmark
    too) and the best checkpoint's validation figures in its summary; the CSV logger has the per-landmark
    columns as well."""
    run_train_cli(tmp_path, "-m", "ablation=R,C,Rlog+C", "logger=wandb", steps=4, val_cases=2,
                  WANDB_MODE="offline", WANDB_SILENT="true")  # fmt: skip
    jobs = sorted((tmp_path / "outputs").rglob("*-synthetic2d-global-*"), key=lambda p: p.name)
    assert [j.name.split("-")[-1] for j in jobs] == ["R", "C", "Rlog+C"]
    runs = []
    for job in jobs:
        (file,) = job.glob("wandb/offline-run-*/run-*.wandb")  # the job's own run, in its own folder
        run = read_wandb_offline_run(file)
        runs.append(run)
        assert run["config"]["ablation"]["name"] == job.name.split("-")[-1]
        val = [h for h in run["history"] if "val/mre_mm" in h]
        assert [h["trainer/global_step"] for h in val] == [1, 3]
        assert all(
            f"val/mre_mm/{n}" in h and f"val/median_mm/{n}" in h for h in val for n in ("nodule", "limb_tip")
        )
        best = min(h["val/mre_mm"] for h in val)
        assert run["summary"]["best/val/mre_mm"] == pytest.approx(best)
        assert run["summary"]["best/step"] in (2, 4)  # optimiser steps done at that validation
        assert run["summary"]["best/val/mre_mm/nodule"] == pytest.approx(
            next(h["val/mre_mm/nodule"] for h in val if h["val/mre_mm"] == best)
        )
        header = next(job.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
        assert "val/mre_mm/nodule" in header and "val/median_mm/limb_tip" in header
    assert len({r["id"] for r in runs}) == 3
    assert (
        len({r["group"] for r in runs}) == 1 and runs[0]["group"] == f"train-{jobs[0].parent.name}"
    )  # the sweep
    assert len({r["config"]["paths"]["output_dir"] for r in runs}) == 3


def test_a_failing_job_finishes_its_wandb_run(tmp_path, monkeypatch):
    """A job that fails during training still ends its run (exit code 1), so the next job of a sweep gets a
    run of its own."""
    import wandb

    from landmark_lit.lit.modules import LandmarkModule

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def broken(self, batch, batch_idx):
        raise RuntimeError("broken step")

    monkeypatch.setattr(LandmarkModule, "training_step", broken)
    cfg = compose_train([*tiny_overrides("synthetic2d", tmp_path), "logger=wandb", "run_test=false"])
    with pytest.raises(RuntimeError, match="broken step"):
        train(cfg)
    assert wandb.run is None
    wandb.teardown()  # the wandb service writes the run file in the background: let it finish, as at exit
    (file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert read_wandb_offline_run(file)["exit_code"] == 1


@pytest.mark.slow
def test_local_stage_trains_with_augmentation(tmp_path):
    aug = "data.augment={_target_:landmark_lit.data.augment.Augmentation,prob:1.0,rotate_deg:10,scale:0.1}"
    cfg = compose_train([*tiny_overrides("synthetic2d", tmp_path), "stage=local", "run_test=false", aug])
    res = train(cfg)
    assert res["datamodule"].augment.keep_inside == cfg.data.local_margin
    assert np.isfinite(res["metrics"]["train/loss"])


@pytest.mark.parametrize(
    "experiment,stride,spacing",
    [
        ("demo3d", 8, 3.0),
        ("isbi2015_global", 4, 0.8),
        ("isbi2015_global_light", 4, 0.8),
        ("isbi2015_global_fast", 4, 1.2),
        ("isbi2015_global_stride32", 32, 0.8),
        ("isbi2015_local_coarse", 2, 0.6),
        ("isbi2015_local", 4, 0.3),
        ("isbi2015_local_fast", 4, 0.3),
        ("isbi2015_local_2level", 2, 0.3),
        ("isbi2015_local_uniform", 2, 0.3),
        ("isbi2015_local_fine", 2, 0.25),
        ("mni_afids_global", 8, 3.0),
        ("mni_afids_global_pyramid", 2, 3.0),
        ("mni_afids_global_crop40", 8, 3.0),
        ("mni_afids_local", 2, 1.5),
        ("mni_afids_local_uniform", 2, 1.5),
        ("mni_afids_local_noaug", 2, 1.5),
    ],
)
def test_experiment_configs_compose(experiment, stride, spacing, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert instantiate(cfg.stage.net).stride == stride
    assert cfg.stage.spacing == spacing
    assert instantiate(cfg.loss).regression == "log"


def test_the_mni_local_stage_is_augmented_and_its_predecessor_is_not(tmp_path):
    """mni_afids_local: the default augmentation with every axis scaled; _noaug: the same stage without it."""
    chosen = compose_train(["experiment=mni_afids_local", f"paths.output_dir={tmp_path}"])
    augment = instantiate(chosen.data.augment)
    assert augment.scale_axes is None and augment.rotate_deg == 10.0 and augment.scale == 0.1
    older = compose_train(["experiment=mni_afids_local_noaug", f"paths.output_dir={tmp_path}"])
    assert older.data.augment is None
    for key in ("trainer", "stage", "optimizer"):
        assert older[key] == chosen[key]
    assert older.data.local_offset_sd_mm == chosen.data.local_offset_sd_mm == 2.7


def test_wandb_runs_of_one_sweep_share_a_group(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from landmark_lit.config import sweep_id

    overrides = ["logger=wandb", "sweep=ablation", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert sweep_id() == "single" and cfg.logger.wandb.group == "train-single"
    HydraConfig.instance().set_config(cfg)
    try:
        sweep_dir = str(cfg.hydra.sweep.dir)
        assert (
            sweep_id() == Path(sweep_dir).name and cfg.logger.wandb.group == f"train-{Path(sweep_dir).name}"
        )
        assert list(cfg.logger.wandb.tags) == ["synthetic3d", "global", "Rlog+C"]
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    "trainer,expected",
    [
        ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
        ("ddp", {"accelerator": "auto", "devices": "auto", "num_nodes": 1, "sync_batchnorm": False}),
        ("multinode", {"accelerator": "gpu", "devices": 8, "num_nodes": 2, "sync_batchnorm": True}),
    ],
)
def test_scale_out_trainer_configs(trainer, expected, tmp_path):
    cfg = compose_train([f"trainer={trainer}", f"paths.output_dir={tmp_path}"])
    assert {k: cfg.trainer[k] for k in expected} == expected
    assert cfg.trainer.max_steps == 20000 and cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    # a GPU gets loader workers and pinned memory; CPU processes (ddp with gloo) keep the loader in-process
    gpu = trainer != "ddp"
    assert (cfg.data.num_workers, cfg.data.pin_memory) == ((4, True) if gpu else (0, False))
    # an experiment that picks trainer=cpu still gives way to trainer=gpu, and its loader follows
    cfg = compose_train(["experiment=isbi2015_local", f"trainer={trainer}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.max_steps == 2000 and cfg.data.num_workers == (4 if gpu else 0)


def test_the_loader_settings_reach_the_dataloaders(tmp_path):
    cfg = compose_train(["data.num_workers=1", "data.pin_memory=true", f"paths.output_dir={tmp_path}"])
    from landmark_lit.training import build

    datamodule, _ = build(cfg)
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 1 and loader.pin_memory and loader.persistent_workers


def test_slurm_launcher_config_renders_an_sbatch_script(tmp_path):
    from hydra.utils import instantiate as hydra_instantiate
    from submitit.slurm.slurm import _make_sbatch_string

    overrides = [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.nodes=2",
        "hydra.launcher.setup=[source .venv/bin/activate]",
        f"hydra.sweep.dir={tmp_path}",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher") and launcher.tasks_per_node == 4
    # render the job the way the launcher does: its parameters on a submitit SLURM executor
    params = {k: v for k, v in hydra_instantiate(launcher, _convert_="all").params.items()}
    assert params["partition"] == "gpu" and params["nodes"] == 2 and params["gpus_per_node"] == 4
    script = _make_sbatch_string(
        "python -m landmark_lit.cli.train",
        tmp_path / "submitit",
        **{k: params[k] for k in ("partition", "nodes", "gpus_per_node", "cpus_per_task", "setup")},
        ntasks_per_node=params["tasks_per_node"],
        time=params["timeout_min"],
        mem=f"{params['mem_gb']}GB",
    )
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --time=720", "#SBATCH --mem=32GB"):  # fmt: skip
        assert line in script, line
    assert "source .venv/bin/activate" in script


def test_parallel_launcher_config_composes(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=parallel", "hydra.launcher.n_jobs=4", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    assert (
        cfg.hydra.launcher._target_.endswith("joblib_launcher.JoblibLauncher")
        and cfg.hydra.launcher.n_jobs == 4
    )


DDP_VALIDATE = """
import sys
from hydra.utils import instantiate
from lightning import Trainer
from landmark_lit.config import compose_config
from landmark_lit.lit.modules import LandmarkModule
from landmark_lit.inference.stages import StageMeta, checkpoint_parts

devices, ckpt, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
cfg = compose_config("train", overrides)
module = LandmarkModule.load_from_checkpoint(
    ckpt, net=instantiate(cfg.stage.net, num_landmarks=6), loss=instantiate(cfg.loss),
    decoder=instantiate(cfg.decoder), optimizer=instantiate(cfg.optimizer), scheduler=None,
    meta=StageMeta.from_dict(checkpoint_parts(ckpt)[0], ckpt), weights_only=True,
)
strategy = "ddp_spawn" if devices > 1 else "auto"
trainer = Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False)
(metrics,) = trainer.validate(module, datamodule=instantiate(cfg.data), verbose=False)
if trainer.is_global_zero:
    print("VAL_MRE", repr(metrics["val/mre_mm"]))
"""


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_and_syncs_the_validation_metrics(tmp_path):
    """Two gloo processes train a few steps (trainer=ddp); then the same checkpoint validated by two
    processes (each sees half of the validation images, the torchmetrics state is synced) gives exactly
    the MRE of one process on all images."""
    env = {**os.environ, "LANDMARK_LIT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    data = ["dataset=synthetic2d", "net=small", "dataset.train.num_cases=2", "dataset.val.num_cases=4",
            "stage.samples_per_epoch=8", "stage.batch_size=2", *TINY["synthetic2d"]]  # fmt: skip
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "landmark_lit.cli.train", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "run_test=false", f"paths.output_dir={out}", *data,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in csv.DictReader(next(out.rglob("metrics.csv")).open()) if r.get("val/mre_mm")]
    assert [int(r["step"]) for r in rows] == [1, 3] and all(float(r["val/mre_mm"]) > 0 for r in rows)

    values = {}
    for devices in (1, 2):
        cmd = [sys.executable, "-c", DDP_VALIDATE, str(devices), str(out / "checkpoints" / "last.ckpt"),
               f"paths.output_dir={tmp_path / 'val'}", *data]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("VAL_MRE")]
        values[devices] = float(line.split()[1])
    assert values[2] == pytest.approx(values[1], rel=1e-6) and values[1] > 0


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_reports_the_best(tmp_path):
    import yaml

    run_train_cli(tmp_path, "sweep=optuna", "hydra.sweeper.n_trials=2")
    (result_file,) = (tmp_path / "outputs").rglob("optimization_results.yaml")
    result = yaml.safe_load(result_file.read_text())
    assert result["name"] == "optuna" and np.isfinite(result["best_value"]) and result["best_value"] > 0
    params = result["best_params"]
    assert 1e-4 <= params["optimizer.lr"] <= 3e-3 and 0.3 <= params["stage.alpha"] <= 30.0
    assert params["stage.presence_radius"] in (0.0, 1.0, 2.0)
    trials = list((tmp_path / "outputs").rglob("checkpoints/last.ckpt"))
    assert len(trials) == 2


def test_pyramid_global_stage_with_flips_trains_and_predicts_with_its_decoder(tmp_path):
    """net=pyramid (stride-4 cells), random flips, foreground-weighted regression and top-k votes: the
    checkpoint describes all of it and the predictor decodes with the stored top k."""
    cfg = compose_train(
        [
            *tiny_overrides("synthetic2d", tmp_path),
            "net=pyramid",
            "net.global_net.pool_before=[true,true,true,true]",
            "stage.foreground_weight=10",
            "stage.presence_radius=2.5",
            "stage.vote_top_k=9",
            "data.flip={_target_: landmark_lit.data.augment.RandomFlip, axes: [0], pairs: [[0, 1]]}",
            "run_test=false",
        ]
    )
    datamodule = instantiate(cfg.data)
    assert datamodule.flip.pairs == ((0, 1),) and instantiate(cfg.loss).foreground_weight == 10
    res = train(cfg)
    meta = torch.load(res["best_checkpoint"], weights_only=True)["landmark_lit"]
    assert meta["net"]["pyramid_stride"] == 4 and meta["decoder"]["top_k"] == 9
    predictor = LandmarkPredictor.from_checkpoints(res["best_checkpoint"])
    assert predictor.global_stage.net.stride == 4 and predictor.global_stage.decoder.top_k == 9
    case = instantiate(cfg.dataset.val)[0]
    out = predictor.predict(case.image, case.affine)
    assert np.isfinite(out.world).all() and out.world.shape == case.landmarks_world.shape
    predictor.set_vote_top_k(1)
    assert predictor.global_stage.decoder.top_k == 1
    with pytest.raises(ValueError, match="top_k"):
        predictor.set_vote_top_k(0)


def test_training_and_prediction_preprocess_alike_with_a_non_default_antialias(tmp_path):
    """data.antialias=false: the datamodule prepares its images with the stage description's preprocessing,
    and the predictor rebuilt from the checkpoint uses the same (no silent difference between the two)."""
    cfg = compose_train([*tiny_overrides("synthetic2d", tmp_path), "data.antialias=false", "run_test=false"])
    res = train(cfg)
    meta = torch.load(res["best_checkpoint"], weights_only=True)["landmark_lit"]
    assert meta["antialias"] is False
    trained = res["datamodule"].preprocessing
    predictor = LandmarkPredictor.from_checkpoints(res["best_checkpoint"])
    assert predictor.global_stage.preprocessing == trained and trained.antialias is False
    case = instantiate(cfg.dataset.val)[0]
    x_train, _ = trained(case.image, case.affine)
    x_pred, _ = predictor.global_stage.preprocessing(case.image, case.affine)
    smoothed, _ = dataclasses.replace(trained, antialias=True)(case.image, case.affine)
    assert torch.equal(x_train, x_pred) and not torch.allclose(x_train, smoothed, atol=1e-3)

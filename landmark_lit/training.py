"""``train(cfg)``: one stage (global or local) of a method (``method=displacement``, the proposed method, or
``method=heatmap``, the baseline in place of the global stage), as a plain function of a Hydra config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from landmark_lit.data.datamodule import LandmarkDataModule
from landmark_lit.inference.stage_meta import StageMeta
from landmark_lit.lit.modules import LandmarkModule
from landmark_lit.methods import get_method

log = logging.getLogger(__name__)


def _summarise_best(loggers: list, history: dict[int, dict[str, float]], monitor: str, score: float) -> None:
    """The validation figures of the best checkpoint (the validation whose ``monitor`` is ``score``) into
    the summary of every wandb run, as ``best/<metric>`` and ``best/step``."""
    step = next((s for s, values in history.items() if values.get(monitor) == score), None)
    if step is None:
        return
    summary = {f"best/{k}": v for k, v in history[step].items()} | {"best/step": step}
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(summary)


def _finish_runs(loggers: list, ok: bool) -> None:
    """Finish the wandb run of every wandb logger (exit code 1 when the job failed)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish(exit_code=0 if ok else 1)


def build(cfg: DictConfig) -> tuple[LandmarkDataModule, LandmarkModule]:
    """The datamodule and the Lightning module of the stage ``cfg`` trains, checked against each other: the
    network's K follows the data, the loss and decoder must be the method's, and the images are prepared
    with the stage description's preprocessing (the one prediction uses)."""
    datamodule = instantiate(cfg.data)
    if datamodule.spatial_dims != cfg.dataset.spatial_dims:
        raise ValueError(
            f"dataset.spatial_dims={cfg.dataset.spatial_dims} but the data is {datamodule.spatial_dims}D"
        )
    method = get_method(str(cfg.method.name))
    method.network_class(str(cfg.stage.name))  # a clear error for a stage the method does not have
    # objects are passed directly, not through instantiate(), which would turn dataclasses into configs
    loss, decoder = instantiate(cfg.loss), instantiate(cfg.decoder)
    if not isinstance(loss, method.loss_class):
        raise ValueError(
            f"the {method.name} method trains with {method.loss_class.__name__}, loss builds {type(loss).__name__}"
        )
    meta = StageMeta.from_config(cfg, datamodule.landmark_names, decoder)
    # one source of preprocessing: the images are prepared as the stored description says prediction will
    datamodule.use_preprocessing(meta.preprocessing)
    module = LandmarkModule(
        # K follows the data (a manifest's landmarks, a landmark_indices selection), not dataset.num_landmarks
        net=instantiate(cfg.stage.net, num_landmarks=len(datamodule.landmark_names)),
        loss=loss,
        decoder=decoder,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        meta=meta,
    )
    return datamodule, module


def _calibrate(cfg: DictConfig, best: str, last: str, datamodule: LandmarkDataModule) -> dict[str, float]:
    """Calibrate the best checkpoint on the validation images (stored in ``best`` and ``last``); its
    validation figures as metrics, none when calibration is off or impossible (a warning)."""
    from landmark_lit.confidence import CalibrationError
    from landmark_lit.inference.calibrate import calibrate_checkpoint

    try:
        cal = calibrate_checkpoint(
            best,
            [last],
            datamodule.sources["val"],
            OmegaConf.to_container(cfg.calibration, resolve=True),
            offset_sd_mm=OmegaConf.select(cfg, "data.local_offset_sd_mm", default=None),
            description=f"{cfg.dataset.name} validation",
        )
    except CalibrationError as exc:  # e.g. too few validation landmarks: the model stays usable
        log.warning("%s: not calibrated: %s", best, exc)
        return {}
    return {f"calibration/{k}": float(v) for k, v in cal.validation.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; calibrate and test the best checkpoint (as configured).

    Returns a dict with ``metrics`` (floats from the trainer), ``best_checkpoint``, ``last_checkpoint``,
    ``output_dir`` and the ``trainer``, ``module`` and ``datamodule`` objects.
    """
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule, module = build(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log.info("training %s stage on %s (%s), output in %s", cfg.stage.name, cfg.dataset.name, cfg.method_name,
             output_dir)  # fmt: skip
    ok = False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        best = ckpt_cb.best_model_path if ckpt_cb else ""
        if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
            metrics[f"best_{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
            _summarise_best(loggers, module.val_history, ckpt_cb.monitor, float(ckpt_cb.best_model_score))
        last = ckpt_cb.last_model_path if ckpt_cb else ""
        if best and (cfg.get("calibration") or {}).get("enabled", False) and trainer.is_global_zero:
            metrics.update(_calibrate(cfg, best, last, datamodule))
        if cfg.get("run_test") and cfg.data.get("test") is not None:
            test_metrics = trainer.test(
                module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
            )
            metrics.update({k: float(v) for k, v in (test_metrics[0] if test_metrics else {}).items()})
        ok = True
    finally:
        # one tracker run per job: a Hydra multirun runs its jobs in one process (basic launcher), and a
        # run left open would take the next job's metrics
        _finish_runs(loggers, ok)
    return {
        "metrics": metrics,
        "best_checkpoint": best,
        "last_checkpoint": last,
        "output_dir": str(output_dir),
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
    }

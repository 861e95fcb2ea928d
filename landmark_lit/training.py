"""``train(cfg)``: one stage (global or local) of the method, or the heatmap baseline in place of the global
stage (``method=heatmap``), as a plain function of a Hydra config."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from landmark_lit.lit.modules import HeatmapModule, LandmarkModule

log = logging.getLogger(__name__)

DISPLACEMENT_TARGETS = {"landmark_lit.networks.GlobalNet", "landmark_lit.networks.LocalNet"}
HEATMAP_TARGETS = {"landmark_lit.networks.HeatmapUNet"}
NETWORK_TARGETS = DISPLACEMENT_TARGETS | HEATMAP_TARGETS


def heatmap_decoder_meta(decoder_cfg: DictConfig) -> dict[str, Any]:
    """The plain-data description of a configured :class:`~landmark_lit.heatmaps.HeatmapDecoder`."""
    from landmark_lit.heatmaps import HeatmapDecoder

    kwargs = {k: v for k, v in OmegaConf.to_container(decoder_cfg, resolve=True).items() if k != "_target_"}
    dec = dataclasses.asdict(HeatmapDecoder(**kwargs))  # validates, fills the defaults
    return {
        "mode": str(dec["mode"]),
        "beta": float(dec["beta"]),
        "window": int(dec["window"]),
        "amplitude": float(dec["amplitude"]),
        "refine": str(dec["refine"]),
    }


def checkpoint_meta(cfg: DictConfig, landmark_names: list[str]) -> dict[str, Any]:
    """What prediction needs besides the weights; plain types only, so checkpoints load with weights_only."""
    net_cfg = OmegaConf.to_container(cfg.stage.net, resolve=True)
    if net_cfg.get("_target_") not in NETWORK_TARGETS:
        raise ValueError(
            f"stage.net._target_ must be one of {sorted(NETWORK_TARGETS)}, got {net_cfg.get('_target_')}"
        )
    net_cfg["num_landmarks"] = len(landmark_names)  # the data decides K (see train)
    heatmap = net_cfg["_target_"] in HEATMAP_TARGETS
    if heatmap and cfg.stage.name != "global":
        raise ValueError(f"method=heatmap replaces the global stage; it has no {cfg.stage.name!r} stage")
    min_size = cfg.data.get("min_size")
    meta = {
        "format_version": 1,
        "net": net_cfg,
        "landmark_names": list(landmark_names),
        "spatial_dims": int(cfg.dataset.spatial_dims),
        "spacing": OmegaConf.to_container(cfg.stage.spacing, resolve=True)
        if OmegaConf.is_config(cfg.stage.spacing)
        else float(cfg.stage.spacing),
        "crop_size": [int(c) for c in cfg.stage.crop_size],
        "min_size": OmegaConf.to_container(min_size, resolve=True)
        if OmegaConf.is_config(min_size)
        else (None if min_size is None else int(min_size)),
        "intensity": str(cfg.dataset.intensity),
        "decoder": {
            "regression": str(cfg.ablation.regression),
            "classification": bool(cfg.ablation.classification),
            "log_base": float(cfg.ablation.log_base),
        },
        "dataset": str(cfg.dataset.name),
        "ablation": str(cfg.ablation.name),
    }
    top_k = OmegaConf.select(cfg, "decoder.top_k", default=None)
    if top_k is not None and not heatmap:  # written only when set: older descriptions stay as they were
        meta["decoder"]["top_k"] = int(top_k)
    if heatmap:  # displacement descriptions have no "method" key (and stay as they were)
        meta["method"] = "heatmap"
        meta["decoder"] = heatmap_decoder_meta(cfg.decoder)
        del meta["ablation"]
    return meta


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; test the best checkpoint if a test split exists.

    Returns a dict with ``metrics`` (floats from the trainer), ``best_checkpoint``, ``last_checkpoint``,
    ``output_dir`` and the ``trainer``, ``module`` and ``datamodule`` objects.
    """
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    num_landmarks = len(datamodule.landmark_names)
    # K follows the data (a manifest's landmarks, a landmark_indices selection), not dataset.num_landmarks
    net_overrides = {"num_landmarks": num_landmarks}
    if datamodule.spatial_dims != cfg.dataset.spatial_dims:
        raise ValueError(
            f"dataset.spatial_dims={cfg.dataset.spatial_dims} but the data is {datamodule.spatial_dims}D"
        )
    meta = checkpoint_meta(cfg, datamodule.landmark_names)
    module_cls = get_class(cfg.stage.module)
    if not issubclass(module_cls, LandmarkModule):
        raise ValueError(f"stage.module must name a LandmarkModule subclass, got {cfg.stage.module}")
    if issubclass(module_cls, HeatmapModule) != (meta.get("method") == "heatmap"):
        raise ValueError(
            f"stage.module {cfg.stage.module} does not fit the network {cfg.stage.net._target_} "
            "(method=heatmap sets both)"
        )
    # objects are passed directly, not through instantiate(), which would turn dataclasses into configs
    module = module_cls(
        net=instantiate(cfg.stage.net, **net_overrides),
        loss=instantiate(cfg.loss),
        decoder=instantiate(cfg.decoder),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        meta=meta,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    log.info(
        "training %s stage on %s (%s), output in %s",
        cfg.stage.name,
        cfg.dataset.name,
        cfg.get("method_name") or cfg.ablation.name,
        output_dir,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        metrics[f"best_{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    last = ckpt_cb.last_model_path if ckpt_cb else ""
    if cfg.get("run_test") and cfg.data.get("test") is not None:
        test_metrics = trainer.test(
            module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
        )
        metrics.update({k: float(v) for k, v in (test_metrics[0] if test_metrics else {}).items()})
    return {
        "metrics": metrics,
        "best_checkpoint": best,
        "last_checkpoint": last,
        "output_dir": str(output_dir),
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
    }

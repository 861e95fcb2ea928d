"""Lightning callbacks: pictures of each validation, written to the run folder and sent to wandb."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from landmark_lit.data.transforms import world_to_voxel
from landmark_lit.evaluation.plots import plot_overlay, plot_sdr_curve, plot_vector_field
from landmark_lit.lit.modules import LandmarkModule

log = logging.getLogger(__name__)


class ValidationPictures(L.Callback):
    """After every validation: the SDR curve of all validation landmarks, an overlay of one landmark's
    prediction on the first validation image, and that landmark's vote field (the paper's Fig. 5 form:
    displacement vectors on the cell grid, cells with posterior > 0.5 marked; for 3D images the slice
    of cells through the reference landmark; no vote field for heatmap networks).

    PNGs go to ``<dirpath>/step_<N>_{sdr,overlay,votes}.png``; with a :class:`WandbLogger` they are also
    logged as images ``val/sdr_curve``, ``val/overlay`` and ``val/votes``.

    Args:
        dirpath: output folder (Hydra configs: ``${paths.output_dir}/pictures``).
        landmark: index of the landmark drawn in the overlay and vote field.
    """

    def __init__(self, dirpath: str, landmark: int = 0) -> None:
        self.dirpath, self.landmark = Path(dirpath), int(landmark)
        self._errors: list[np.ndarray] = []
        self._first: dict[str, Any] | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._errors, self._first = [], None

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            not isinstance(pl_module, LandmarkModule)
            or trainer.sanity_checking
            or not isinstance(outputs, dict)
        ):
            return
        out, world = outputs["output"], outputs["world"]
        ref = batch["landmarks_world"].to(world.dtype)
        self._errors.append(torch.linalg.vector_norm(world - ref, dim=-1).cpu().numpy())
        if self._first is None:
            k = min(self.landmark, world.shape[1] - 1)
            local = batch["image"].ndim == pl_module.net.spatial_dims + 3  # (B, K, C, *crop)
            image = batch["image"][0, k] if local else batch["image"][0]
            # the method's vote field of this landmark (None for methods without votes, e.g. heatmaps)
            votes = pl_module.meta.method_object.vote_field(out, pl_module.decoder, k)
            disp, posterior = votes if votes is not None else (None, None)
            self._first = {
                "image": image.float().cpu().numpy(),
                "affine": batch["affine"][0].double().cpu().numpy(),
                "origin": batch["origin"][0, k].double().cpu().numpy(),
                "ref_world": ref[0, k].double().cpu().numpy(),
                "pred_world": world[0, k].double().cpu().numpy(),
                "voxel": batch["landmarks"][0, k].double().cpu().numpy(),
                "disp": disp,
                "posterior": posterior,
                "stride": pl_module.net.stride,
                "name": pl_module.meta.landmark_names[k],
                "case": str(batch["case"][0]) if "case" in batch else "",
            }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._errors or not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        paths = {"sdr_curve": self.dirpath / f"step_{step:06d}_sdr.png"}
        plot_sdr_curve(
            {f"step {step}": np.concatenate([e.reshape(-1) for e in self._errors])}, paths["sdr_curve"]
        )
        first = self._first
        if first is not None:
            try:
                paths.update(self._draw(first, step))
            except (ValueError, RuntimeError) as exc:  # a picture must never stop training
                log.warning("validation pictures of step %d skipped: %s", step, exc)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, path in paths.items():
                    logger.log_image(key=f"val/{key}", images=[str(path)], step=step)

    def _draw(self, first: dict[str, Any], step: int) -> dict[str, Path]:
        name, paths = first["name"], {}
        # the working image's own voxel -> world affine: shift by the batch origin (crop / sub-image start)
        affine = first["affine"].copy()
        d = affine.shape[0] - 1
        affine[:d, d] += affine[:d, :d] @ first["origin"]
        paths["overlay"] = self.dirpath / f"step_{step:06d}_overlay.png"
        err = float(np.linalg.norm(first["pred_world"] - first["ref_world"]))
        plot_overlay(first["image"], affine, first["ref_world"], first["pred_world"], paths["overlay"],
                     title=f"step {step}: {first['case']} {name}, error {err:.2f} mm")  # fmt: skip
        if first["disp"] is None:  # no vote field (heatmap networks): SDR curve and overlay only
            return paths
        image, disp, post = first["image"].mean(axis=0), first["disp"], first["posterior"]
        ref, stride = first["voxel"], first["stride"]
        pred = world_to_voxel(first["pred_world"][None], affine)[0]  # in the working image / sub-image
        paths["votes"] = self.dirpath / f"step_{step:06d}_votes.png"
        # the network pads its input to a multiple of the stride: the grid may reach past the image
        plot_vector_field(image, disp, post, stride, paths["votes"], landmark=ref, prediction=pred,
                          title=f"step {step}: votes for {name}")  # fmt: skip
        return paths


class TrainingClock(L.Callback):
    """Training time spent so far, logged and stored in every checkpoint (``checkpoint["training_clock"]``).

    ``wall_s``: seconds since training started; ``cpu_s``: CPU seconds of this process (all threads, user
    + system), which counts only the time the process actually ran, so it measures a CPU budget even when
    other jobs share the machine; ``step``: optimiser steps. Resuming from a checkpoint continues its clock.
    Logged as ``time/wall_s`` and ``time/cpu_s`` with the training metrics.
    """

    def __init__(self) -> None:
        self._start_wall = self._start_cpu = None
        self._offset = {"wall_s": 0.0, "cpu_s": 0.0}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_wall, self._start_cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> dict[str, float]:
        if self._start_wall is None:
            return dict(self._offset)
        return {
            "wall_s": self._offset["wall_s"] + time.perf_counter() - self._start_wall,
            "cpu_s": self._offset["cpu_s"] + time.process_time() - self._start_cpu,
        }

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log_dict(
                {f"time/{k}": v for k, v in self.elapsed().items()}, on_step=True, on_epoch=False
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["training_clock"] = {**self.elapsed(), "step": int(trainer.global_step)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        clock = checkpoint.get("training_clock") or {}
        self._offset = {k: float(clock.get(k, 0.0)) for k in ("wall_s", "cpu_s")}

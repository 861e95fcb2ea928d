"""Thin LightningModules for the global and the local stage, and the heatmap-regression baseline.

Network, loss, decoder and optimiser are injected (built by Hydra from ``conf/``). Validation decodes whole
images (global) or sub-images (local), maps the landmarks to world millimetres and tracks radial errors
with a torchmetrics metric, logged as ``val/mre_mm``, ``val/median_mm``, ``val/sdr_2mm``, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from landmark_lit.decoding import Decoder
from landmark_lit.losses import LandmarkLoss
from landmark_lit.metrics import RadialErrorMetric
from landmark_lit.networks import LandmarkOutput


def voxels_to_world(points: Tensor, affine: Tensor) -> Tensor:
    """(B, K, D) voxel coordinates -> world mm with per-item affines (B, D + 1, D + 1)."""
    d = points.shape[-1]
    a = affine.to(torch.float64)
    return points.to(torch.float64) @ a[:, :d, :d].transpose(1, 2) + a[:, None, :d, d]


class LandmarkModule(L.LightningModule):
    """Shared training/validation logic; subclasses say how a batch becomes network input.

    Args:
        net: a :class:`~landmark_lit.networks.GlobalNet` or :class:`~landmark_lit.networks.LocalNet`
            (:class:`HeatmapModule`: a :class:`~landmark_lit.networks.HeatmapUNet`).
        loss: the configured :class:`~landmark_lit.losses.LandmarkLoss` (or
            :class:`~landmark_lit.heatmaps.HeatmapLoss`).
        decoder: the configured :class:`~landmark_lit.decoding.Decoder` (or
            :class:`~landmark_lit.heatmaps.HeatmapDecoder`).
        optimizer: a partial optimiser taking the parameters.
        scheduler: optional partial LR scheduler taking the optimiser.
        meta: what prediction needs besides the weights (landmark names, spacing, crop size, net config);
            stored in every checkpoint under ``"landmark_lit"``.
    """

    stage = "base"

    def __init__(
        self,
        net: nn.Module,
        loss: LandmarkLoss,
        decoder: Decoder,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        meta: dict | None = None,
    ) -> None:
        super().__init__()
        self.net, self.loss_fn, self.decoder = net, loss, decoder
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.meta = dict(meta or {})
        self.val_errors = RadialErrorMetric()
        self.test_errors = RadialErrorMetric()

    def forward(self, x: Tensor) -> LandmarkOutput:
        return self.net(x)

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["landmark_lit"] = {**self.meta, "stage": self.stage}

    def _step(self, batch: dict) -> tuple[LandmarkOutput, dict[str, Tensor]]:
        image = batch["image"]
        out = self.net(image)
        losses = self.loss_fn(out, batch["landmarks"], self.net.stride, image.shape[-self.net.spatial_dims :])
        return out, losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        _, losses = self._step(batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=bs)
        return losses["loss"]

    def predict_world(self, batch: dict, out: LandmarkOutput | None = None) -> Tensor:
        """Decoded landmarks in world mm (B, K, D) for a batch."""
        out = self.net(batch["image"]) if out is None else out
        voxels = self.decoder(out, self.net.stride) + batch["origin"].to(torch.float32)
        return voxels_to_world(voxels, batch["affine"])

    def _eval_step(self, batch: dict, metric: RadialErrorMetric, split: str) -> dict[str, Any]:
        out, losses = self._step(batch)
        bs = batch["image"].shape[0]
        self.log(f"{split}/loss", losses["loss"], batch_size=bs, on_epoch=True, on_step=False, sync_dist=True)
        world = self.predict_world(batch, out)
        metric.update(world, batch["landmarks_world"])
        # for callbacks (e.g. ValidationPictures), so that they need not run the network again
        return {"output": out, "world": world}

    def _log_metric(self, metric: RadialErrorMetric, split: str) -> None:
        values = metric.compute()
        for k, v in values.items():
            self.log(f"{split}/{k}", v.float(), prog_bar=k == "mre_mm")
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_errors, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_errors, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_errors, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_errors, "test")


class GlobalStageModule(LandmarkModule):
    """Global stage: image crops (B, C, *crop) in, all K landmarks out; validated on whole images."""

    stage = "global"


class LocalStageModule(LandmarkModule):
    """Local stage: one sub-image per landmark (B, K, C, *crop) in, landmark k refined in sub-image k."""

    stage = "local"


class HeatmapModule(LandmarkModule):
    """Heatmap-regression baseline in place of the global stage (``method=heatmap``): crops (B, C, *crop)
    in, K heatmaps at the input's resolution out (:class:`~landmark_lit.networks.HeatmapUNet`), trained with
    :class:`~landmark_lit.heatmaps.HeatmapLoss` and decoded by :class:`~landmark_lit.heatmaps.HeatmapDecoder`.
    Same data, training loop, logged names and metrics as :class:`GlobalStageModule`."""

    stage = "global"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        # the loss builds the Gaussian targets on the heatmaps' grid, which is the crop's (stride 1)
        out = self.net(batch["image"])
        return out, self.loss_fn(out, batch["landmarks"])

    def predict_world(self, batch: dict, out: Tensor | None = None) -> Tensor:
        out = self.net(batch["image"]) if out is None else out
        voxels = self.decoder(out) + batch["origin"].to(torch.float32)
        return voxels_to_world(voxels, batch["affine"])

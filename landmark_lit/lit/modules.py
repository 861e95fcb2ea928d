"""The thin LightningModule of every stage of every method.

Network, loss, decoder and optimiser are injected (built by Hydra from ``conf/``; the method,
:mod:`landmark_lit.methods`, says which). Validation decodes whole images (global stage) or sub-images
(local stage), maps the landmarks to world millimetres and tracks radial errors with a torchmetrics metric,
logged as ``val/mre_mm``, ``val/median_mm``, ``val/sdr_2mm``, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from landmark_lit.data.transforms import batch_voxel_to_world
from landmark_lit.inference.stage_meta import StageMeta
from landmark_lit.metrics import RadialErrorMetric


class LandmarkModule(L.LightningModule):
    """One stage: a batch's image in, the network's output, its loss, and decoded landmarks out.

    The batch's ``image`` is what the network takes: crops (B, C, *crop) for a global stage, one sub-image
    per landmark (B, K, C, *crop) for a local stage. The loss is called as ``loss(output, landmarks,
    stride, input_shape)`` and the decoder as ``decoder(output, stride)``, whatever the method.

    Args:
        net: the stage's network (:class:`~landmark_lit.networks.GlobalNet`, ``LocalNet``, ``HeatmapUNet``).
        loss: the method's configured loss (e.g. :class:`~landmark_lit.methods.displacement.DisplacementLoss`).
        decoder: the method's configured decoder (e.g. :class:`~landmark_lit.methods.displacement.VoteDecoder`).
        optimizer: a partial optimiser taking the parameters.
        scheduler: optional partial LR scheduler taking the optimiser.
        meta: the stage's description (:class:`~landmark_lit.inference.stages.StageMeta`), stored in every checkpoint
            under ``"landmark_lit"``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        decoder: Callable[..., Tensor],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None,
        meta: StageMeta,
    ) -> None:
        super().__init__()
        self.net, self.loss_fn, self.decoder = net, loss, decoder
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.meta = meta
        self.val_errors = RadialErrorMetric()
        self.test_errors = RadialErrorMetric()
        # step -> the figures of each validation (not the sanity check): the best checkpoint's go into the
        # run summary of experiment trackers
        self.val_history: dict[int, dict[str, float]] = {}

    @property
    def stage(self) -> str:
        return self.meta.stage

    def forward(self, x: Tensor) -> Any:
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
        checkpoint["landmark_lit"] = self.meta.to_dict()

    def _step(self, batch: dict) -> tuple[Any, dict[str, Tensor]]:
        image = batch["image"]
        out = self.net(image)
        losses = self.loss_fn(out, batch["landmarks"], self.net.stride, image.shape[-self.net.spatial_dims :])
        return out, losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        _, losses = self._step(batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=bs)
        return losses["loss"]

    def predict_world(self, batch: dict, out: Any = None) -> Tensor:
        """Decoded landmarks in world mm (B, K, D) for a batch."""
        out = self.net(batch["image"]) if out is None else out
        voxels = self.decoder(out, self.net.stride) + batch["origin"].to(torch.float32)
        return batch_voxel_to_world(voxels, batch["affine"])

    def _eval_step(self, batch: dict, metric: RadialErrorMetric, split: str) -> dict[str, Any]:
        out, losses = self._step(batch)
        bs = batch["image"].shape[0]
        self.log(f"{split}/loss", losses["loss"], batch_size=bs, on_epoch=True, on_step=False, sync_dist=True)
        world = self.predict_world(batch, out)
        metric.update(world, batch["landmarks_world"])
        # for callbacks (e.g. ValidationPictures), so that they need not run the network again
        return {"output": out, "world": world}

    def _log_metric(self, metric: RadialErrorMetric, split: str) -> None:
        values = {f"{split}/{k}": v.float() for k, v in metric.compute().items()}
        # per landmark, so that a dashboard shows which landmarks a change helps: val/mre_mm/<name>
        for k, per in metric.compute_per_landmark().items():
            for name, v in zip(self.meta.landmark_names, per, strict=True):
                values[f"{split}/{k}/{name}"] = v.float()
        for key, v in values.items():
            self.log(key, v, prog_bar=key == f"{split}/mre_mm")
        if split == "val" and not self.trainer.sanity_checking:
            self.val_history[int(self.global_step)] = {k: float(v) for k, v in values.items()}
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_errors, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_errors, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_errors, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_errors, "test")

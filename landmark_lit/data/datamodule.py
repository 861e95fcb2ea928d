"""LightningDataModule over any :class:`~landmark_lit.data.cases.CaseSource` (synthetic, real, manifest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from landmark_lit.data.augment import Augmentation, RandomFlip
from landmark_lit.data.cases import CaseSource
from landmark_lit.data.datasets import (
    GlobalTrainDataset,
    LocalEvalDataset,
    LocalTrainDataset,
    PreparedCases,
    SelectLandmarks,
    WholeImageDataset,
)
from landmark_lit.data.transforms import Preprocessing

STAGES = ("global", "local")


class LandmarkDataModule(L.LightningDataModule):
    """Training crops and whole-image (global) or sub-image (local) evaluation for one stage.

    Args:
        train, val, test: case sources (test optional).
        stage: "global" or "local".
        spacing: the stage's working spacing in mm.
        crop_size: training crop (global) or sub-image (local) size in working voxels.
        intensity: per-image intensity normalisation.
        batch_size: training batch size (evaluation uses 1 for whole images of varying size).
        samples_per_epoch: training crops per epoch.
        num_workers, pin_memory: the DataLoaders' (conf/loader/cpu.yaml; trainer=gpu sets them for a GPU).
        landmark_indices: restrict to these landmarks (single-landmark runs); None = all.
        local_margin: local training crops keep the landmark this many voxels inside.
        local_eval_jitter: local evaluation crops are centred this far (voxels, per axis) off the landmark.
        local_eval_seed: seed of those fixed offsets (the same for every run with this seed).
        augment: training augmentation; in the local stage it keeps each landmark ``local_margin``
            voxels inside its sub-image.
        min_size: zero-pad working images at the far end of axes shorter than this (voxels; see
            :class:`~landmark_lit.data.transforms.Preprocessing`); None: no padding.
        flip: random mirroring of whole training images (with the dataset's landmark pairs); None: none.
        local_offset_sd_mm: local training sub-images are centred a normal offset of this many mm (per
            axis; the previous stage's error on the training images) from the landmark; None: the
            landmark anywhere in the sub-image (the paper).
    """

    def __init__(
        self,
        train: CaseSource,
        val: CaseSource,
        test: CaseSource | None = None,
        stage: str = "global",
        spacing: float | Sequence[float] = 1.0,
        crop_size: Sequence[int] = (64, 64, 64),
        intensity: str = "zscore",
        batch_size: int = 4,
        samples_per_epoch: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        landmark_indices: Sequence[int] | None = None,
        local_margin: float = 1.0,
        local_eval_jitter: float = 2.0,
        local_eval_seed: int = 0,
        antialias: bool = True,
        augment: Augmentation | None = None,
        min_size: int | Sequence[int] | None = None,
        flip: RandomFlip | None = None,
        local_offset_sd_mm: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        sources = {"train": train, "val": val, "test": test}
        if landmark_indices is not None:
            sources = {
                k: SelectLandmarks(v, landmark_indices) if v is not None else None for k, v in sources.items()
            }
        self.sources = sources
        self.stage, self.crop_size = stage, [int(c) for c in crop_size]
        self.preprocessing = Preprocessing(
            spacing=spacing, intensity=intensity, antialias=antialias, min_size=min_size
        )
        self.batch_size, self.samples_per_epoch, self.num_workers = batch_size, samples_per_epoch, num_workers
        self.pin_memory = bool(pin_memory)
        self.local_margin, self.local_eval_jitter = local_margin, local_eval_jitter
        self.local_eval_seed = int(local_eval_seed)
        if augment is not None and stage == "local" and augment.keep_inside is None:
            augment = dataclasses.replace(augment, keep_inside=local_margin)
        self.augment = augment
        self.flip = flip.for_landmarks(self.landmark_names) if flip is not None else None
        self.local_offset_sd: list[float] | None = None
        if local_offset_sd_mm is not None:
            sd = np.broadcast_to(np.asarray(local_offset_sd_mm, dtype=float), np.shape(spacing) or (1,))
            sd = sd / np.asarray(spacing, dtype=float)
            if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
                raise ValueError(f"local_offset_sd_mm must be positive, got {local_offset_sd_mm}")
            self.local_offset_sd = [float(v) for v in np.ravel(sd)]
        self._prepared: dict[str, PreparedCases] = {}

    def use_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Prepare every image with ``preprocessing`` (training passes its stage description's, so training
        and prediction preprocess alike); before any image is prepared."""
        if self._prepared:
            raise RuntimeError("use_preprocessing must come before any image is prepared")
        self.preprocessing = preprocessing

    @property
    def landmark_names(self) -> list[str]:
        return list(self.sources["train"].landmark_names)

    @property
    def spatial_dims(self) -> int:
        return int(self.sources["train"].spatial_dims)

    def _cases(self, split: str) -> PreparedCases:
        if split not in self._prepared:
            source = self.sources[split]
            if source is None:
                raise ValueError(f"no {split} data configured")
            self._prepared[split] = PreparedCases(source, self.preprocessing)
        return self._prepared[split]

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        cases = self._cases("train")
        if self.stage == "global":
            ds = GlobalTrainDataset(cases, self.crop_size, self.samples_per_epoch, self.augment, self.flip)
        else:
            sd = self.local_offset_sd
            ds = LocalTrainDataset(
                cases,
                self.crop_size,
                self.samples_per_epoch,
                self.local_margin,
                self.augment,
                self.flip,
                offset_sd=sd[0] if sd is not None and len(sd) == 1 else sd,
            )
        return self._loader(ds, shuffle=True, batch_size=self.batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        cases = self._cases(split)
        if self.stage == "global":
            return self._loader(WholeImageDataset(cases), shuffle=False, batch_size=1)
        ds = LocalEvalDataset(cases, self.crop_size, self.local_eval_jitter, seed=self.local_eval_seed)
        return self._loader(ds, shuffle=False, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

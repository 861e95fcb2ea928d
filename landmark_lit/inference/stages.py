"""Trained stages ready for inference and the files that hold them.

A :class:`Stage` is a network (batch norms folded) with its description
(:class:`~landmark_lit.inference.stage_meta.StageMeta`). :func:`load_stage` rebuilds one from a Lightning
checkpoint; :func:`save_bundle` writes a model bundle (every stage's weights and description, the number of
local passes and the confidence settings in one file) and :func:`load_bundle` reads it back as a
:class:`Bundle`. Every file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landmark_lit.confidence import Calibration
from landmark_lit.data.transforms import Preprocessing
from landmark_lit.inference.settings import RunSettings
from landmark_lit.inference.stage_meta import (
    FORMAT_VERSION,
    STAGES,
    CheckpointError,
    StageMeta,
    network_classes,
    network_target,
)
from landmark_lit.methods import Method
from landmark_lit.networks import fast_grouped_pointwise, fold_batch_norm
from landmark_lit.utils import atomic_path, first_line, is_finite_number

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "FORMAT_VERSION",
    "STAGES",
    "Bundle",
    "RunSettings",
    "CheckpointError",
    "Stage",
    "StageMeta",
    "build_stage",
    "check_stages_fit",
    "checkpoint_parts",
    "load_bundle",
    "load_stage",
    "network_classes",
    "network_target",
    "save_bundle",
    "stage_calibration",
    "torch_load",
]

BUNDLE_FORMAT = "landmark_lit.bundle"
# version 2: optional ``calibration`` of the whole pipeline; version 1: a fixed confidence_threshold
BUNDLE_VERSION = 2


@dataclass
class Stage:
    """One trained stage ready for inference: its network (batch norms folded), description and source."""

    net: nn.Module
    meta: StageMeta
    path: str

    @property
    def method(self) -> Method:
        return self.meta.method_object

    @property
    def preprocessing(self) -> Preprocessing:
        return self.meta.preprocessing

    @functools.cached_property
    def decoder(self) -> Any:
        """The stage's decoder, built once from its description."""
        return self.meta.build_decoder()

    def with_decoder(self, **changes: Any) -> Stage:
        """The same stage with decoder settings changed (validated), e.g. ``top_k=9`` for a vote decoder."""
        decoder = {**self.meta.decoder, **changes}
        try:
            self.method.decoder_from_description(decoder)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {first_line(exc)}") from None
        return Stage(self.net, dataclasses.replace(self.meta, decoder=decoder), self.path)


def build_stage(meta: Any, state_dict: Any, where: str, expected_stage: str | None = None) -> Stage:
    """Validate a stage description, build its network and load the weights (batch norms folded)."""
    meta = meta if isinstance(meta, StageMeta) else StageMeta.from_dict(meta, where)
    if expected_stage and meta.stage != expected_stage:
        raise CheckpointError(f"{where}: a {meta.stage!r} stage, expected {expected_stage!r}")
    try:
        net = meta.build_network()
        net.load_state_dict(state_dict)
    except (TypeError, RuntimeError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: weights do not fit the stored network ({first_line(exc)})") from exc
    # inference only: batch norms folded into their convolutions, grouped 1^D convolutions as one batched
    # product, a 2D global network's weights in channels-last memory (oneDNN then skips reordering every
    # feature map; the local stage's grouped networks and the 3D ones gain nothing). The same outputs to
    # float rounding, less work (experiments/bench/RESULTS.md, issue 23)
    net = fast_grouped_pointwise(fold_batch_norm(net.eval()))
    if meta.stage == "global" and int(meta.spatial_dims) == 2:
        net = net.to(memory_format=torch.channels_last)
    return Stage(net, meta, where)


def check_stages_fit(global_stage: Stage, local_stages: Sequence[Stage]) -> None:
    """CheckpointError (one line) unless the local stages can follow the global stage."""
    g = global_stage.meta
    if g.stage != "global":
        raise CheckpointError(f"{global_stage.path}: a {g.stage!r} stage, expected 'global'")
    for loc in local_stages:
        m = loc.meta
        if m.stage != "local":
            raise CheckpointError(f"{loc.path}: a {m.stage!r} stage, expected 'local'")
        if g.landmark_names != m.landmark_names:
            raise CheckpointError(
                f"{loc.path}: local landmarks {m.landmark_names} differ from the global model's {g.landmark_names}"
            )
        if g.spatial_dims != m.spatial_dims:
            raise CheckpointError(
                f"{loc.path}: {m.spatial_dims}D local model with a {g.spatial_dims}D global model"
            )
        if g.net["in_channels"] != m.net["in_channels"]:
            raise CheckpointError(f"{loc.path}: local and global models expect different channel counts")


def stage_calibration(stage: Stage) -> Calibration | None:
    """The calibration stored with a stage at the end of its training, if any."""
    cal = stage.meta.calibration
    return None if cal is None else Calibration.from_dict(cal, f"{stage.path}: calibration")


# --- checkpoints -----------------------------------------------------------------------------------


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a one-line CheckpointError naming the file otherwise."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (legacy files: a pickle, which starts with its protocol byte 0x80)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        kind = "an empty file" if not head else "not a PyTorch file"
        raise CheckpointError(
            f"{path}: not a model file ({kind}; expected a checkpoint of landmark-train or a bundle of landmark-export)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read model file safely ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def checkpoint_parts(path: str | os.PathLike) -> tuple[dict, dict]:
    """The stored description and the network's weights of a ``landmark-train`` checkpoint."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or "landmark_lit" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a landmark_lit checkpoint (no 'landmark_lit' entry)")
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return ckpt["landmark_lit"], state


def load_stage(path: str | os.PathLike, expected_stage: str | None = None) -> Stage:
    """Rebuild a stage's network from a Lightning checkpoint written by ``landmark-train``."""
    meta, state = checkpoint_parts(path)
    return build_stage(meta, state, str(path), expected_stage)


# --- bundles ---------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """What a model bundle holds: the stages, how to run them, and the whole pipeline's calibration."""

    global_stage: Stage
    local_stages: list[Stage] = field(default_factory=list)
    settings: RunSettings = field(default_factory=RunSettings)
    calibration: Calibration | None = None


def save_bundle(
    path: str | os.PathLike,
    global_checkpoint: str | os.PathLike,
    local_checkpoints: Sequence[str | os.PathLike] = (),
    settings: RunSettings | None = None,
    calibration: Calibration | None = None,
    decoders: Sequence[dict[str, Any] | None] | None = None,
) -> dict:
    """Write a model bundle: the stages of these checkpoints and what prediction needs, in one file.

    The checkpoints are validated (they must load and fit together) before anything is written; the file
    is written atomically. ``settings``: how prediction runs (default :class:`RunSettings`);
    ``calibration``: the whole pipeline's, fitted on validation images
    (:func:`landmark_lit.inference.calibrate.calibrate_predictor`; None: the last stage's, if it has one);
    ``decoders``: per stage (global first), decoder settings stored instead of the checkpoint's where
    given (e.g. a vote decoder's ``top_k`` chosen after training; validated as :meth:`Stage.with_decoder`).
    Returns the bundle's summary (everything but the weights).
    """
    settings = settings or RunSettings()
    paths = [str(global_checkpoint), *map(str, local_checkpoints)]
    parts = [checkpoint_parts(p) for p in paths]
    stages = [build_stage(*parts[0], paths[0], "global")] + [
        build_stage(m, s, p, "local") for (m, s), p in zip(parts[1:], paths[1:], strict=True)
    ]
    if decoders is not None:
        if len(decoders) != len(stages):
            raise ValueError(f"decoders: one per stage ({len(stages)}), got {len(decoders)}")
        stages = [s if d is None else s.with_decoder(**d) for s, d in zip(stages, decoders, strict=True)]
    check_stages_fit(stages[0], stages[1:])
    try:
        settings.check_fits(len(stages[0].meta.landmark_names), int(stages[0].meta.spatial_dims))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    summary = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "landmark_names": list(stages[0].meta.landmark_names),
        "spatial_dims": int(stages[0].meta.spatial_dims),
        **settings.to_dict(),
        "calibration": None if calibration is None else calibration.to_dict(),
        "sources": [os.path.basename(p) for p in paths],
    }
    stored = [
        {"meta": s.meta.to_dict(), "state_dict": state} for s, (_, state) in zip(stages, parts, strict=True)
    ]
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({**summary, "stages": stored}, tmp)
    return summary


def load_bundle(path: str | os.PathLike) -> Bundle:
    """The stages and run settings of a model bundle written by :func:`save_bundle`."""
    path = str(path)
    data = torch_load(path)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: not a landmark_lit model bundle")
    version = data.get("version")
    if version not in (1, BUNDLE_VERSION):
        raise CheckpointError(
            f"{path}: bundle version {version!r}, this landmark_lit reads 1 to {BUNDLE_VERSION}"
        )
    stored = data.get("stages")
    if not isinstance(stored, list) or not stored or not all(isinstance(s, dict) for s in stored):
        raise CheckpointError(f"{path}: bundle holds no stages")
    built = [
        build_stage(
            s.get("meta"), s.get("state_dict"), f"{path} (stage {n})", "global" if n == 0 else "local"
        )
        for n, s in enumerate(stored)
    ]
    check_stages_fit(built[0], built[1:])
    try:
        # version 1 bundles state the threshold of their (uncalibrated) score
        if version == 1 and not is_finite_number(data.get("confidence_threshold")):
            raise ValueError(
                f"confidence_threshold must be a number, got {data.get('confidence_threshold')!r}"
            )
        settings = RunSettings.from_dict(data)
        settings.check_fits(len(built[0].meta.landmark_names), int(built[0].meta.spatial_dims))
        stored_cal = data.get("calibration")
        calibration = None if stored_cal is None else Calibration.from_dict(stored_cal, "calibration")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {first_line(exc)}") from None
    return Bundle(built[0], built[1:], settings, calibration)

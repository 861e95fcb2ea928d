"""Global-to-local prediction from trained checkpoints or a model bundle, on images of any size, spacing
and orientation.

Checkpoints and bundles are read with ``torch.load(weights_only=True)`` (tensors and plain containers only,
no code). The stored description of each stage is validated (:func:`validate_meta`) before a network is
built from it, and only the two known network classes can be built.

A model bundle (:func:`save_bundle`) is one file holding every stage's weights and description (landmark
names, working spacing, intensity normalisation, crop size, decoder, network shape) plus the number of
local passes and the confidence threshold, so prediction needs no training configuration.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landmark_lit.data.datasets import local_crop_starts, stack_local_crops
from landmark_lit.data.io import atomic_path, load_image
from landmark_lit.data.transforms import (
    INTENSITY_METHODS,
    Preprocessing,
    match_channels,
    spacing_of,
    voxel_to_world,
    world_to_voxel,
)
from landmark_lit.decoding import REGRESSION_MODES, Decoder, check_modes
from landmark_lit.heatmaps import DECODER_MODES, REFINE_MODES, HeatmapDecoder
from landmark_lit.networks import GlobalNet, HeatmapUNet, LocalNet, fold_batch_norm
from landmark_lit.networks.heatmap_net import NORMS

log = logging.getLogger(__name__)

NETWORKS: dict[str, type[nn.Module]] = {
    "landmark_lit.networks.GlobalNet": GlobalNet,
    "landmark_lit.networks.LocalNet": LocalNet,
    "landmark_lit.networks.HeatmapUNet": HeatmapUNet,
}
# the networks each method's stages may use: method -> stage -> network
METHOD_NETWORKS = {
    "displacement": {"global": "landmark_lit.networks.GlobalNet", "local": "landmark_lit.networks.LocalNet"},
    "heatmap": {"global": "landmark_lit.networks.HeatmapUNet"},
}
# network arguments that are strings, with their allowed values (all others are integers or booleans)
STRING_NET_ARGUMENTS = {"landmark_lit.networks.HeatmapUNet": {"norm": NORMS}}
BUNDLE_FORMAT = "landmark_lit.bundle"
BUNDLE_VERSION = 1
# a landmark whose confidence is below the threshold is flagged as a likely failure. The confidence's
# posterior means different things per method (a classification probability; a heatmap peak over the
# target's), so the default depends on the method of the last stage. Each is the round value just above
# the highest confidence of an error above 4 mm on the ISBI 2015 validation images: global-to-local 0.0089
# (7 failures of 190; experiments/isbi2015/RESULTS.md), heatmap U-Net 0.338 (2 failures of 190;
# experiments/bench/RESULTS.md)
DEFAULT_CONFIDENCE_THRESHOLD = 0.01
HEATMAP_CONFIDENCE_THRESHOLD = 0.34


class CheckpointError(ValueError):
    """A checkpoint or bundle is missing, unreadable or does not fit the model it is used for."""


class InputError(ValueError):
    """An image the model cannot be run on (wrong dimensionality, empty, constant, too small, bad geometry)."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _per_axis(value: Any, dims: int, kind: type, where: str, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    values = value if isinstance(value, list | tuple) else [value]
    ok = len(values) in (1, dims) if not isinstance(value, list | tuple) else len(values) == dims
    ok = ok and all(
        (isinstance(v, int) and not isinstance(v, bool)) if kind is int else _number(v) for v in values
    )
    if not ok or any(v <= 0 for v in values):
        raise CheckpointError(
            f"{where}: {key!r} must be a positive {kind.__name__} or {dims} of them, got {value!r}"
        )


def validate_meta(meta: Any, where: str) -> dict:
    """Check the description stored with a stage's weights; returns it, raises a one-line CheckpointError.

    Keys: ``stage`` ("global" / "local"), ``net`` (``_target_`` one of :data:`NETWORKS` and keyword
    arguments of its constructor with plain values), ``landmark_names`` (unique strings, as many as the
    network's landmarks), ``spatial_dims`` (2 or 3), ``spacing``, ``intensity``, ``decoder``, ``crop_size``
    (local stage; optional for global), ``min_size`` (optional), ``method`` (optional: "displacement", the
    default, or "heatmap", a global stage only, with a HeatmapUNet and a heatmap decoder).
    """
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a landmark_lit model (no 'landmark_lit' description)")
    required = ("stage", "net", "landmark_names", "spatial_dims", "spacing", "intensity", "decoder")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: model description lacks {missing}")
    if meta["stage"] not in ("global", "local"):
        raise CheckpointError(f"{where}: stage must be 'global' or 'local', got {meta['stage']!r}")
    method = meta.get("method", "displacement")
    if method not in METHOD_NETWORKS:
        raise CheckpointError(f"{where}: method must be one of {list(METHOD_NETWORKS)}, got {method!r}")
    if meta["stage"] not in METHOD_NETWORKS[method]:
        raise CheckpointError(f"{where}: the {method} method has no {meta['stage']} stage")
    dims = meta["spatial_dims"]
    if dims not in (2, 3) or isinstance(dims, bool):
        raise CheckpointError(f"{where}: spatial_dims must be 2 or 3, got {dims!r}")
    net = meta["net"]
    if not isinstance(net, dict) or net.get("_target_") not in NETWORKS:
        target = net.get("_target_") if isinstance(net, dict) else net
        raise CheckpointError(f"{where}: unknown network {target!r} (expected one of {list(NETWORKS)})")
    params = inspect.signature(NETWORKS[net["_target_"]].__init__).parameters
    allowed = set(params) - {"self"}
    optional = {k for k, p in params.items() if p.default is None}  # e.g. GlobalNet's pyramid_stride
    strings = STRING_NET_ARGUMENTS.get(net["_target_"], {})
    for key, value in net.items():
        if key == "_target_":
            continue
        if key not in allowed:
            raise CheckpointError(f"{where}: network argument {key!r} is not one of {sorted(allowed)}")
        if key in strings:
            if value not in strings[key]:
                raise CheckpointError(
                    f"{where}: network argument {key!r} must be one of {list(strings[key])}, got {value!r}"
                )
            continue
        if value is None and key in optional:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, bool | int) for v in items):
            raise CheckpointError(
                f"{where}: network argument {key!r} must be integers or booleans, got {value!r}"
            )
    if net.get("spatial_dims") != dims:
        raise CheckpointError(f"{where}: network is {net.get('spatial_dims')}D, description says {dims}D")
    if net["_target_"] != METHOD_NETWORKS[method][meta["stage"]]:
        raise CheckpointError(
            f"{where}: a {net['_target_']} cannot be a {meta['stage']} stage of the {method} method"
        )
    names = meta["landmark_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{where}: landmark_names must be a non-empty list of names")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: duplicate landmark names in {names}")
    if net.get("num_landmarks") != len(names):
        raise CheckpointError(
            f"{where}: {len(names)} landmark names for a network of {net.get('num_landmarks')}"
        )
    _per_axis(meta["spacing"], dims, float, where, "spacing")
    _per_axis(meta.get("crop_size"), dims, int, where, "crop_size", allow_none=meta["stage"] == "global")
    _per_axis(meta.get("min_size"), dims, int, where, "min_size", allow_none=True)
    if meta["intensity"] not in INTENSITY_METHODS:
        raise CheckpointError(
            f"{where}: intensity must be one of {INTENSITY_METHODS}, got {meta['intensity']!r}"
        )
    dec = meta["decoder"]
    if method == "heatmap":
        _check_heatmap_decoder(dec, where)
    elif (
        not isinstance(dec, dict)
        or set(dec) - {"regression", "classification", "log_base", "top_k"}
        or dec.get("regression", "log") not in REGRESSION_MODES
        or not isinstance(dec.get("classification", True), bool)
        or not _number(dec.get("log_base", 10.0))
        or (dec.get("regression", "log") == "none" and not dec.get("classification", True))
        or not _valid_top_k(dec)
    ):
        raise CheckpointError(f"{where}: invalid decoder {dec!r}")
    return meta


def _valid_top_k(dec: dict) -> bool:
    """The decoder's own check of ``top_k`` (a positive int, with classification), as a yes / no."""
    try:
        check_modes(dec.get("regression", "log"), dec.get("classification", True), dec.get("top_k"))
    except ValueError:
        return False
    return True


def _check_heatmap_decoder(dec: Any, where: str) -> None:
    ok = (
        isinstance(dec, dict)
        and not set(dec) - {"mode", "beta", "window", "amplitude", "refine"}
        and dec.get("mode", "argmax") in DECODER_MODES
        and dec.get("refine", "parabola") in REFINE_MODES
        and all(_number(dec.get(key, 1.0)) and dec.get(key, 1.0) > 0 for key in ("beta", "amplitude"))
        and isinstance(dec.get("window", 3), int)
        and not isinstance(dec.get("window", 3), bool)
        and dec.get("window", 3) >= 1
    )
    if not ok:
        raise CheckpointError(f"{where}: invalid heatmap decoder {dec!r}")


@dataclass
class Stage:
    """One trained stage ready for inference."""

    net: nn.Module
    meta: dict
    path: str

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            spacing=self.meta["spacing"],
            intensity=self.meta["intensity"],
            channels=self.meta["net"]["in_channels"],
            min_size=self.meta.get("min_size"),
        )

    @property
    def method(self) -> str:
        """The stage's method: "displacement" (the proposed method) or "heatmap" (the baseline)."""
        return self.meta.get("method", "displacement")

    @property
    def decoder(self) -> Decoder | HeatmapDecoder:
        if self.method == "heatmap":
            return HeatmapDecoder(**self.meta["decoder"])
        return Decoder(**self.meta["decoder"])


def build_stage(meta: Any, state_dict: Any, where: str, expected_stage: str | None = None) -> Stage:
    """Validate a stage description, build its network and load the weights (batch norms folded)."""
    meta = validate_meta(meta, where)
    if expected_stage and meta["stage"] != expected_stage:
        raise CheckpointError(f"{where}: a {meta['stage']!r} stage, expected {expected_stage!r}")
    net_cfg = {k: v for k, v in meta["net"].items() if k != "_target_"}
    try:
        net = NETWORKS[meta["net"]["_target_"]](**net_cfg)
        net.load_state_dict(state_dict)
    except (TypeError, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{where}: weights do not fit the stored network ({exc})".splitlines()[0]
        ) from exc
    # inference only: batch norms folded into their convolutions (same outputs, less work)
    return Stage(fold_batch_norm(net.eval()), meta, where)


def _torch_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: cannot read model file safely ({type(exc).__name__}: {reason})"
        ) from exc


def _checkpoint_parts(path: str) -> tuple[dict, dict]:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "landmark_lit" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a landmark_lit checkpoint (no 'landmark_lit' entry)")
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return ckpt["landmark_lit"], state


def load_stage(path: str | os.PathLike, expected_stage: str | None = None) -> Stage:
    """Rebuild a stage's network from a Lightning checkpoint written by ``landmark-train``."""
    meta, state = _checkpoint_parts(str(path))
    return build_stage(meta, state, str(path), expected_stage)


def default_confidence_threshold(stage: Stage) -> float:
    """The flagging threshold for a pipeline whose last stage is ``stage``: it depends on the method."""
    return HEATMAP_CONFIDENCE_THRESHOLD if stage.method == "heatmap" else DEFAULT_CONFIDENCE_THRESHOLD


def save_bundle(
    path: str | os.PathLike,
    global_checkpoint: str | os.PathLike,
    local_checkpoints: Sequence[str | os.PathLike] = (),
    local_iterations: int = 1,
    confidence_threshold: float | None = None,
) -> dict:
    """Write a model bundle: the stages of these checkpoints and what prediction needs, in one file.

    The checkpoints are validated (they must load and fit together) before anything is written; the file
    is written atomically. ``confidence_threshold`` None: the default of the last stage's method
    (:func:`default_confidence_threshold`). Returns the bundle's summary (everything but the weights).
    """
    parts = [_checkpoint_parts(str(global_checkpoint))] + [
        _checkpoint_parts(str(p)) for p in local_checkpoints
    ]
    paths = [str(global_checkpoint), *map(str, local_checkpoints)]
    # building the predictor checks every description, the weights and that the stages fit together
    predictor = LandmarkPredictor(
        build_stage(*parts[0], paths[0], "global"),
        [build_stage(m, s, p, "local") for (m, s), p in zip(parts[1:], paths[1:], strict=True)],
        local_iterations,
        confidence_threshold,
    )
    summary = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "landmark_names": list(parts[0][0]["landmark_names"]),
        "spatial_dims": int(parts[0][0]["spatial_dims"]),
        "local_iterations": int(local_iterations),
        "confidence_threshold": predictor.confidence_threshold,
        "sources": [str(Path(p).resolve()) for p in paths],
    }
    stages = [{"meta": dict(meta), "state_dict": state} for meta, state in parts]
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({**summary, "stages": stages}, tmp)
    return summary


def load_bundle(path: str | os.PathLike) -> LandmarkPredictor:
    """A :class:`LandmarkPredictor` from a model bundle written by :func:`save_bundle`."""
    path = str(path)
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: not a landmark_lit model bundle")
    if data.get("version") != BUNDLE_VERSION:
        raise CheckpointError(
            f"{path}: bundle version {data.get('version')!r}, this landmark_lit reads {BUNDLE_VERSION}"
        )
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise CheckpointError(f"{path}: bundle holds no stages")
    built = [
        build_stage(
            s.get("meta"), s.get("state_dict"), f"{path} (stage {n})", "global" if n == 0 else "local"
        )
        for n, s in enumerate(stages)
    ]
    iterations, threshold = data.get("local_iterations", 1), data.get("confidence_threshold")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise CheckpointError(f"{path}: local_iterations must be a positive integer, got {iterations!r}")
    if not _number(threshold):
        raise CheckpointError(f"{path}: confidence_threshold must be a number, got {threshold!r}")
    return LandmarkPredictor(built[0], built[1:], iterations, float(threshold))


class LandmarkPredictor:
    """Global network on the whole image, then (optionally) each landmark's local network on a sub-image.

    Several local stages (e.g. a coarse one with a wide window, then a fine one) run in turn, each on
    sub-images centred on the previous stage's answer.

    Every landmark gets a confidence score in [0, 1] from the last stage's posterior, the spread of its
    displacement votes and how far the last local pass moved it (:func:`landmark_confidence`); landmarks
    below ``confidence_threshold`` are flagged as likely failures.

    Example:
        >>> predictor = LandmarkPredictor.from_checkpoints("global/best.ckpt", "local/best.ckpt")
        >>> result = predictor.predict("image.nii.gz")
        >>> result["world"]  # (K, D) landmark coordinates in world mm
    """

    def __init__(
        self,
        global_stage: Stage,
        local_stages: Stage | Sequence[Stage] | None = None,
        local_iterations: int = 1,
        confidence_threshold: float | None = None,
    ) -> None:
        if int(local_iterations) < 1:
            raise ValueError(f"local_iterations must be at least 1, got {local_iterations}")
        if local_stages is None:
            local_stages = []
        elif isinstance(local_stages, Stage):
            local_stages = [local_stages]
        self.global_stage, self.local_stages = global_stage, list(local_stages)
        # each local stage runs this many times, each time on a sub-image re-centred on its last answer
        self.local_iterations = int(local_iterations)
        self.confidence_threshold = (
            default_confidence_threshold(self.local_stage or global_stage)
            if confidence_threshold is None
            else float(confidence_threshold)
        )
        g = global_stage.meta
        for loc in self.local_stages:
            if g["landmark_names"] != loc.meta["landmark_names"]:
                raise CheckpointError(
                    f"{loc.path}: local landmarks {loc.meta['landmark_names']} differ from the global "
                    f"model's {g['landmark_names']}"
                )
            if g["spatial_dims"] != loc.meta["spatial_dims"]:
                raise CheckpointError(
                    f"{loc.path}: {loc.meta['spatial_dims']}D local model with a {g['spatial_dims']}D global model"
                )
            if g["net"]["in_channels"] != loc.meta["net"]["in_channels"]:
                raise CheckpointError(f"{loc.path}: local and global models expect different channel counts")

    @property
    def local_stage(self) -> Stage | None:
        """The last (finest) local stage, or None for a global-only predictor."""
        return self.local_stages[-1] if self.local_stages else None

    @classmethod
    def from_checkpoints(
        cls,
        global_checkpoint: str | os.PathLike,
        local_checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        local_iterations: int = 1,
        confidence_threshold: float | None = None,
    ) -> LandmarkPredictor:
        """``local_checkpoint``: one local stage, or several run in the given order (coarse to fine)."""
        g = load_stage(global_checkpoint, "global")
        if local_checkpoint is None or local_checkpoint == "":
            paths = []
        elif isinstance(local_checkpoint, str | os.PathLike):
            paths = [local_checkpoint]
        else:
            paths = list(local_checkpoint)
        return cls(g, [load_stage(p, "local") for p in paths], local_iterations, confidence_threshold)

    def set_vote_top_k(self, global_top_k: int | None = None, local_top_k: int | None = None) -> None:
        """Decode the global stage (and every local stage) from its ``top_k`` most confident cells;
        None leaves a stage as stored. Only displacement stages have cells."""
        for stages, k in (([self.global_stage], global_top_k), (self.local_stages, local_top_k)):
            if k is None:
                continue
            for stage in stages:
                if stage.method != "displacement":
                    raise ValueError(
                        f"{stage.path}: top_k applies to displacement stages, not {stage.method}"
                    )
                decoder = {**stage.meta["decoder"], "top_k": int(k)}
                Decoder(**decoder)  # checks it
                stage.meta["decoder"] = decoder

    @classmethod
    def from_bundle(cls, path: str | os.PathLike) -> LandmarkPredictor:
        """The predictor stored in a model bundle (see :func:`save_bundle`)."""
        return load_bundle(path)

    @property
    def landmark_names(self) -> list[str]:
        return list(self.global_stage.meta["landmark_names"])

    @property
    def spatial_dims(self) -> int:
        return int(self.global_stage.meta["spatial_dims"])

    def check_input(self, image: np.ndarray | torch.Tensor, affine: np.ndarray) -> None:
        """Raise :class:`InputError` (one line) if the model cannot run on this image."""
        d = self.spatial_dims
        shape = tuple(image.shape)
        if len(shape) - 1 != d:
            raise InputError(
                f"the model is {d}D but the image is {len(shape) - 1}D (array shape {shape}, channels first)"
            )
        if any(n == 0 for n in shape):
            raise InputError(f"the image is empty (array shape {shape})")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (d + 1, d + 1) or not np.all(np.isfinite(affine)):
            raise InputError(
                f"invalid geometry: the voxel -> world affine is not a finite {d + 1}x{d + 1} matrix"
            )
        if abs(np.linalg.det(affine[:d, :d])) < 1e-12 or np.any(spacing_of(affine) <= 0):
            raise InputError(
                f"invalid geometry: zero spacing or singular affine (spacing {spacing_of(affine)})"
            )
        lo, hi = float(image.min()), float(image.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError("the image contains NaN or infinite values")
        if lo == hi:
            raise InputError(
                f"the image is constant (every voxel is {lo:g}): no structure to find landmarks in"
            )

    @torch.inference_mode()
    def predict_array(
        self, image: np.ndarray | torch.Tensor, affine: np.ndarray, keep_global_output: bool = False
    ) -> dict[str, Any]:
        """Landmarks of one image (C, *spatial) with its voxel -> world affine.

        Returns:
            world: (K, D) mm; voxel: (K, D) indices of the given image; global_world: (K, D) the global
            stage's estimate; confidence: (K,) in [0, 1]; flagged: (K,) bool, confidence below the
            threshold; spread_mm, posterior: (K,) of the last stage; global_spread_mm, global_posterior:
            (K,) of the global stage; shift_mm: (K,) how far the last local pass moved each landmark
            (0 without local stages). With ``keep_global_output``: ``global_output`` (the global network's
            output), ``global_image`` and ``global_affine`` (its working image and affine).
        Raises:
            InputError: the model cannot run on this image (see :meth:`check_input`).
        """
        x0 = torch.as_tensor(image, dtype=torch.float32)
        self.check_input(x0, affine)
        g = self.global_stage
        try:
            # one grey conversion (RGB -> grey) for all stages, done once on the full-size image
            x0 = match_channels(x0, g.meta["net"]["in_channels"])
        except ValueError as exc:
            raise InputError(str(exc)) from None
        x, aff = g.preprocessing(x0, affine)
        stride = g.net.stride
        if any(n < stride for n in x.shape[1:]):
            raise InputError(
                f"the image is {' x '.join(map(str, x.shape[1:]))} voxels at the global stage's "
                f"{g.meta['spacing']} mm, smaller than one {stride}-voxel patch of its network"
            )
        out = g.net(x[None])
        scale = torch.as_tensor(spacing_of(aff), dtype=torch.float32)
        coords, spread, posterior = g.decoder.statistics(out, stride, scale)
        world = voxel_to_world(coords[0].double().numpy(), aff)
        result: dict[str, Any] = {
            "global_world": world,
            "global_spread_mm": spread[0].numpy().astype(np.float64),
            "global_posterior": posterior[0].numpy().astype(np.float64),
        }
        if keep_global_output:
            result.update(global_output=out, global_image=x, global_affine=aff)
        shift = np.zeros(len(self.landmark_names))
        for loc in self.local_stages:
            xl, aff_l = loc.preprocessing(x0, affine)
            scale = torch.as_tensor(spacing_of(aff_l), dtype=torch.float32)
            centres = torch.as_tensor(world_to_voxel(world, aff_l), dtype=torch.float32)
            for _ in range(self.local_iterations):
                starts = local_crop_starts(centres, loc.meta["crop_size"])
                crops = stack_local_crops(xl, starts, loc.meta["crop_size"])
                coords, spread, posterior = loc.decoder.statistics(
                    loc.net(crops[None]), loc.net.stride, scale
                )
                new = coords[0] + starts
                shift = ((new - centres) * scale).norm(dim=-1).double().numpy()
                centres = new
            world = voxel_to_world(centres.double().numpy(), aff_l)
        spread_mm, post = spread[0].double().numpy(), posterior[0].double().numpy()
        last = self.local_stage or g
        confidence = landmark_confidence(post, spread_mm, shift, float(np.mean(last.meta["spacing"])))
        result.update(
            world=world,
            voxel=world_to_voxel(world, affine),
            spread_mm=spread_mm,
            posterior=post,
            shift_mm=shift,
            confidence=confidence,
            flagged=confidence < self.confidence_threshold,
        )
        return result

    def predict(
        self, path: str | os.PathLike, spacing: float | list[float] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Read an image file and predict; adds ``seconds`` (with reading), ``seconds_without_io``,
        ``image`` and ``affine`` (as read) to :meth:`predict_array`'s result.

        ``spacing`` (mm) replaces the file's geometry for images that carry none (PNG, JPEG, BMP, TIFF).
        Raises InputError / ImageReadError with one line naming the file.
        """
        t0 = time.perf_counter()
        image, affine = load_image(path)
        if spacing is not None:
            d = image.ndim - 1
            values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (d,))
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise InputError(f"{path}: spacing must be positive numbers, got {spacing!r}")
            affine = np.diag([*values, 1.0])
        t1 = time.perf_counter()
        try:
            result = self.predict_array(image, affine, **kwargs)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        t2 = time.perf_counter()
        result.update(seconds=t2 - t0, seconds_without_io=t2 - t1, image=image, affine=affine)
        return result


def landmark_confidence(
    posterior: np.ndarray, spread_mm: np.ndarray, shift_mm: np.ndarray, spacing_mm: float
) -> np.ndarray:
    """Per-landmark confidence score in [0, 1]: ``posterior * exp(-(spread_mm + shift_mm) / (3 * spacing_mm))``.

    ``posterior``: the last stage's highest cell posterior (some cell is sure the landmark is in it);
    ``spread_mm``: how far its displacement votes scatter; ``shift_mm``: how far its last local pass still
    moved the landmark (a stable answer moves little); ``spacing_mm``: the last stage's working voxel size,
    which sets the scale of the two distances. On the ISBI 2015 validation images this combination
    separated errors above 4 mm from the rest better than each signal alone (AUROC 0.90 against 0.87, 0.82
    and 0.85; experiments/isbi2015/RESULTS.md). It ranks landmarks; it is not a calibrated probability.
    """
    scale = 3.0 * float(spacing_mm)
    distance = np.asarray(spread_mm, np.float64) + np.asarray(shift_mm, np.float64)
    return np.clip(np.asarray(posterior, np.float64) * np.exp(-distance / scale), 0.0, 1.0)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux and macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

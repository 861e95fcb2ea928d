"""A trained stage: its description (:class:`StageMeta`), its network, and the files that hold them.

:class:`StageMeta` is everything prediction needs besides the weights: the stage and its method, the
network's class and arguments, the landmark names, the working spacing, intensity normalisation, crop size
and decoder. It is built from the training config (:meth:`StageMeta.from_config`), written into every
checkpoint under ``"landmark_lit"`` and into model bundles as plain data (:meth:`StageMeta.to_dict`, so files
load with ``torch.load(weights_only=True)``), and read back with validation (:meth:`StageMeta.from_dict`),
which also checks the description's ``format_version``.

Files: :func:`load_stage` rebuilds a stage from a Lightning checkpoint; :func:`save_bundle` writes a model
bundle (every stage's weights and description, the number of local passes and the confidence settings in
one file) and :func:`load_bundle` reads it back as a :class:`Bundle`. Only the networks of registered
methods (:mod:`landmark_lit.methods`) can be built.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from landmark_lit.confidence import Calibration
from landmark_lit.data.transforms import INTENSITY_METHODS, Preprocessing, mirror_permutation
from landmark_lit.methods import Method, get_method, method_names
from landmark_lit.methods.base import all_methods
from landmark_lit.methods.displacement import DISPLACEMENT
from landmark_lit.networks import fold_batch_norm
from landmark_lit.utils import atomic_path, first_line, is_finite_number

# version 3: optional ``calibration``; version 2: ``method`` always stated; version 1: no ``method`` key
# for the displacement method, unknown keys ignored
FORMAT_VERSION = 3
BUNDLE_FORMAT = "landmark_lit.bundle"
# version 2: optional ``calibration`` of the whole pipeline; version 1: a fixed confidence_threshold
BUNDLE_VERSION = 2
STAGES = ("global", "local")
# the score of an uncalibrated model: posterior * exp(-(spread + shift) / (scale * working spacing))
DEFAULT_CONFIDENCE_SCALE = 3.0


class CheckpointError(ValueError):
    """A checkpoint or bundle is missing, unreadable or does not fit the model it is used for."""


def network_target(cls: type[nn.Module]) -> str:
    """The ``_target_`` under which a network class is configured and stored (``landmark_lit.networks.X``)."""
    return f"landmark_lit.networks.{cls.__name__}"


def network_classes() -> dict[str, type[nn.Module]]:
    """``_target_`` -> class of every network some registered method builds."""
    return {network_target(c): c for m in all_methods() for c in m.networks.values()}


@dataclass
class StageMeta:
    """The description of one trained stage (see the module docstring). Build it with
    :meth:`from_config` or :meth:`from_dict`, which validate; the constructor does not."""

    stage: str
    method: str
    net: dict[str, Any]
    landmark_names: list[str]
    spatial_dims: int
    spacing: float | list[float]
    intensity: str
    decoder: dict[str, Any]
    crop_size: list[int] | None = None
    min_size: int | list[int] | None = None
    dataset: str | None = None
    ablation: str | None = None
    # how this stage's confidence maps to its errors (landmark_lit.confidence.Calibration.to_dict), fitted
    # on the validation images at the end of training; None for models trained before it existed
    calibration: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    # --- building ----------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: DictConfig, landmark_names: Sequence[str], decoder: Any) -> StageMeta:
        """The description of the stage ``cfg`` trains, with the data's landmark names and the configured
        decoder object; ValueError if the config does not describe a stage its method has."""
        method = get_method(str(cfg.method.name))
        stage = str(cfg.stage.name)
        expected = network_target(method.network_class(stage))
        net = _plain(cfg.stage.net)
        if net.get("_target_") != expected:
            raise ValueError(
                f"stage.net._target_ must be {expected} for the {stage} stage of the {method.name} method, "
                f"got {net.get('_target_')}"
            )
        if not isinstance(decoder, method.decoder_class):
            raise ValueError(
                f"the {method.name} method decodes with {method.decoder_class.__name__}, "
                f"got {type(decoder).__name__}"
            )
        net["num_landmarks"] = len(landmark_names)  # the data decides K
        min_size = OmegaConf.select(cfg, "data.min_size", default=None)
        meta = cls(
            stage=stage,
            method=method.name,
            net=net,
            landmark_names=list(landmark_names),
            spatial_dims=int(cfg.dataset.spatial_dims),
            spacing=_plain(cfg.stage.spacing),
            intensity=str(cfg.dataset.intensity),
            decoder=method.describe_decoder(decoder),
            crop_size=[int(c) for c in cfg.stage.crop_size],
            min_size=_plain(min_size),
            dataset=str(cfg.dataset.name),
            ablation=str(cfg.ablation.name) if "ablation" in cfg else None,
        )
        return cls.from_dict(meta.to_dict(), f"config of the {stage} stage")  # the same checks as files

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, strings, numbers), as stored in checkpoints and bundles."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StageMeta:
        """Validate a stored description; a one-line :class:`CheckpointError` naming ``where`` if it is not
        one this landmark_lit can use (including descriptions of a newer format)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: not a landmark_lit model (no 'landmark_lit' description)")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"{where}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: written by a newer landmark_lit (model format {version}; this one reads formats "
                f"1 to {FORMAT_VERSION}): update landmark_lit to use it"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        required = ("stage", "net", "landmark_names", "spatial_dims", "spacing", "intensity", "decoder")
        missing = [k for k in required if k not in data]
        if version >= 2 and "method" not in data:
            missing.append("method")
        if missing:
            raise CheckpointError(f"{where}: model description lacks {missing}")
        unknown = sorted(set(data) - fields)
        if unknown and version >= 2:
            raise CheckpointError(f"{where}: unknown model description keys {unknown}")
        values = {k: v for k, v in data.items() if k in fields}
        values.setdefault("method", DISPLACEMENT.name)  # format 1 stated only the heatmap method
        values["format_version"] = FORMAT_VERSION  # read into this version's form
        meta = cls(**values)
        meta._validate(where)
        return meta

    def _validate(self, where: str) -> None:
        if self.stage not in STAGES:
            raise CheckpointError(f"{where}: stage must be 'global' or 'local', got {self.stage!r}")
        if self.method not in method_names():
            raise CheckpointError(f"{where}: method must be one of {method_names()}, got {self.method!r}")
        method = get_method(self.method)
        if self.stage not in method.networks:
            raise CheckpointError(f"{where}: the {self.method} method has no {self.stage} stage")
        dims = self.spatial_dims
        if dims not in (2, 3) or isinstance(dims, bool):
            raise CheckpointError(f"{where}: spatial_dims must be 2 or 3, got {dims!r}")
        _check_network(self.net, method, self.stage, dims, where)
        names = self.landmark_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise CheckpointError(f"{where}: landmark_names must be a non-empty list of names")
        if len(set(names)) != len(names):
            raise CheckpointError(f"{where}: duplicate landmark names in {names}")
        if self.net.get("num_landmarks") != len(names):
            raise CheckpointError(
                f"{where}: {len(names)} landmark names for a network of {self.net.get('num_landmarks')}"
            )
        _check_positive_per_axis(self.spacing, dims, float, where, "spacing")
        _check_positive_per_axis(
            self.crop_size, dims, int, where, "crop_size", allow_none=self.stage == "global"
        )
        _check_positive_per_axis(self.min_size, dims, int, where, "min_size", allow_none=True)
        if self.intensity not in INTENSITY_METHODS:
            raise CheckpointError(
                f"{where}: intensity must be one of {INTENSITY_METHODS}, got {self.intensity!r}"
            )
        try:
            method.decoder_from_description(self.decoder)
            if self.calibration is not None:
                Calibration.from_dict(self.calibration, "calibration")
        except ValueError as exc:
            raise CheckpointError(f"{where}: {first_line(exc)}") from None

    # --- using -------------------------------------------------------------------------------------

    @property
    def method_object(self) -> Method:
        return get_method(self.method)

    def build_decoder(self) -> Any:
        return self.method_object.decoder_from_description(self.decoder)

    def build_network(self) -> nn.Module:
        cls = network_classes()[self.net["_target_"]]
        return cls(**{k: v for k, v in self.net.items() if k != "_target_"})

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            spacing=self.spacing,
            intensity=self.intensity,
            channels=self.net["in_channels"],
            min_size=self.min_size,
        )


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

    @property
    def decoder(self) -> Any:
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
    # inference only: batch norms folded into their convolutions (same outputs, less work)
    return Stage(fold_batch_norm(net.eval()), meta, where)


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


@dataclass(frozen=True)
class MirrorAverage:
    """Average each stage's answer over the image and its mirror image (test-time augmentation).

    ``axes``: spatial array axes mirrored together; ``pairs``: landmark index pairs a mirror swaps (left /
    right anatomy; none in a lateral projection such as a cephalogram); ``whole``: also run the global stage
    on the mirrored image (else only the local stages see mirrored sub-images). Valid for networks trained
    with the same mirror (``data.flip``): in the mirrored pass network k sees what network k saw in its
    mirrored training images, and its answer, mirrored back, is landmark ``pairs``' partner's.
    """

    axes: tuple[int, ...] = (0,)
    pairs: tuple[tuple[int, int], ...] = ()
    whole: bool = False

    def __post_init__(self) -> None:
        if not self.axes or len(set(self.axes)) != len(self.axes) or min(self.axes) < 0:
            raise ValueError(f"test-time mirror axes must be distinct spatial axes, got {list(self.axes)}")
        used = [i for p in self.pairs for i in p]
        if any(len(p) != 2 for p in self.pairs) or len(set(used)) != len(used) or min(used, default=0) < 0:
            raise ValueError(f"test-time mirror pairs must be disjoint index pairs, got {list(self.pairs)}")

    def permutation(self, num_landmarks: int) -> list[int]:
        """perm[k]: the landmark whose mirror image looks like landmark k (an involution), by the same rule
        as the training mirror (:func:`~landmark_lit.data.transforms.mirror_permutation`)."""
        return mirror_permutation(self.pairs, num_landmarks)

    def check(self, num_landmarks: int, spatial_dims: int) -> None:
        """ValueError unless the axes and pairs fit a model of ``num_landmarks`` and ``spatial_dims``."""
        self.permutation(num_landmarks)
        if max(self.axes) >= spatial_dims:
            raise ValueError(
                f"test-time mirror axes {list(self.axes)} out of range for a {spatial_dims}D model"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "pairs": [list(p) for p in self.pairs], "whole": self.whole}

    @classmethod
    def from_dict(cls, data: Any, names: Sequence[str] | None = None) -> MirrorAverage | None:
        """From ``{"axes": [...], "pairs": [[i, j], ...], "whole": bool}`` (None: no mirror); pairs may name
        landmarks when ``names`` are given. ValueError (one line) for anything else."""
        if data is None:
            return None
        if not isinstance(data, dict) or set(data) - {"axes", "pairs", "whole"}:
            raise ValueError(f"test-time mirror must be a mapping of axes, pairs, whole; got {data!r}")

        def index(v: Any) -> int:
            if isinstance(v, str) and names is not None and v in names:
                return list(names).index(v)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            raise ValueError(f"test-time mirror pair member {v!r} is not a landmark index or name")

        try:
            axes = tuple(int(a) for a in data.get("axes", (0,)))
            pairs = tuple((index(i), index(j)) for i, j in data.get("pairs") or ())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"test-time mirror {data!r}: {exc}") from None
        return cls(axes, pairs, bool(data.get("whole", False)))


@dataclass
class Bundle:
    """What a model bundle holds: the stages and how to run them."""

    global_stage: Stage
    local_stages: list[Stage] = field(default_factory=list)
    local_iterations: int = 1
    confidence_threshold: float | None = None
    confidence_scale: float = DEFAULT_CONFIDENCE_SCALE
    mirror: MirrorAverage | None = None
    calibration: Calibration | None = None


def save_bundle(
    path: str | os.PathLike,
    global_checkpoint: str | os.PathLike,
    local_checkpoints: Sequence[str | os.PathLike] = (),
    local_iterations: int = 1,
    confidence_threshold: float | None = None,
    confidence_scale: float = DEFAULT_CONFIDENCE_SCALE,
    mirror: MirrorAverage | None = None,
    calibration: Calibration | None = None,
) -> dict:
    """Write a model bundle: the stages of these checkpoints and what prediction needs, in one file.

    The checkpoints are validated (they must load and fit together) before anything is written; the file
    is written atomically. ``calibration``: the whole pipeline's, fitted on validation images
    (:func:`landmark_lit.inference.calibrate.calibrate_predictor`; None: the last stage's, if it has one);
    ``confidence_threshold``: flag below this instead of the calibration's threshold (None: the
    calibration's); ``mirror``: the test-time mirror prediction runs with (None: none). Returns the
    bundle's summary (everything but the weights).
    """
    paths = [str(global_checkpoint), *map(str, local_checkpoints)]
    parts = [checkpoint_parts(p) for p in paths]
    stages = [build_stage(*parts[0], paths[0], "global")] + [
        build_stage(m, s, p, "local") for (m, s), p in zip(parts[1:], paths[1:], strict=True)
    ]
    check_stages_fit(stages[0], stages[1:])
    _check_run_settings(local_iterations, confidence_threshold, confidence_scale, str(path))
    if mirror is not None:
        try:
            mirror.check(len(stages[0].meta.landmark_names), int(stages[0].meta.spatial_dims))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    summary = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "landmark_names": list(stages[0].meta.landmark_names),
        "spatial_dims": int(stages[0].meta.spatial_dims),
        "local_iterations": int(local_iterations),
        "confidence_threshold": None if confidence_threshold is None else float(confidence_threshold),
        "confidence_scale": float(confidence_scale),
        "mirror": None if mirror is None else mirror.to_dict(),
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
    iterations = data.get("local_iterations", 1)
    threshold = data.get("confidence_threshold")
    scale = data.get("confidence_scale", DEFAULT_CONFIDENCE_SCALE)
    # version 1 bundles state the threshold of their (uncalibrated) score
    _check_run_settings(iterations, threshold, scale, path, threshold_required=version == 1)
    try:
        mirror = MirrorAverage.from_dict(data.get("mirror"))
        if mirror is not None:
            mirror.check(len(built[0].meta.landmark_names), int(built[0].meta.spatial_dims))
        stored_cal = data.get("calibration")
        calibration = None if stored_cal is None else Calibration.from_dict(stored_cal, "calibration")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {first_line(exc)}") from None
    threshold = None if threshold is None else float(threshold)
    return Bundle(built[0], built[1:], iterations, threshold, float(scale), mirror, calibration)


def _check_run_settings(
    iterations: Any, threshold: Any, scale: Any, where: str, threshold_required: bool = False
) -> None:
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise CheckpointError(f"{where}: local_iterations must be a positive integer, got {iterations!r}")
    if (threshold is not None or threshold_required) and not is_finite_number(threshold):
        raise CheckpointError(f"{where}: confidence_threshold must be a number, got {threshold!r}")
    if not is_finite_number(scale) or scale <= 0:
        raise CheckpointError(f"{where}: confidence_scale must be a positive number, got {scale!r}")


# --- description checks ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_network(net: Any, method: Method, stage: str, dims: int, where: str) -> None:
    classes = network_classes()
    if not isinstance(net, dict) or net.get("_target_") not in classes:
        target = net.get("_target_") if isinstance(net, dict) else net
        raise CheckpointError(f"{where}: unknown network {target!r} (expected one of {list(classes)})")
    cls = classes[net["_target_"]]
    if cls is not method.networks[stage]:
        raise CheckpointError(
            f"{where}: a {net['_target_']} cannot be a {stage} stage of the {method.name} method"
        )
    params = inspect.signature(cls.__init__).parameters
    allowed = set(params) - {"self"}
    optional = {k for k, p in params.items() if p.default is None}  # e.g. GlobalNet's pyramid_stride
    strings = method.string_network_arguments.get(cls, {})
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


def _check_positive_per_axis(
    value: Any, dims: int, kind: type, where: str, key: str, allow_none: bool = False
) -> None:
    if value is None and allow_none:
        return
    values = value if isinstance(value, list | tuple) else [value]
    ok = len(values) in (1, dims) if not isinstance(value, list | tuple) else len(values) == dims
    ok = ok and all(
        (isinstance(v, int) and not isinstance(v, bool)) if kind is int else is_finite_number(v)
        for v in values
    )
    if not ok or any(v <= 0 for v in values):
        raise CheckpointError(
            f"{where}: {key!r} must be a positive {kind.__name__} or {dims} of them, got {value!r}"
        )

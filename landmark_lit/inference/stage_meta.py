"""The description of a trained stage (:class:`StageMeta`): built from a training config, stored as plain
data, read back with validation.

:class:`StageMeta` is everything prediction needs besides the weights: the stage and its method, the
network's class and arguments, the landmark names, the working spacing, intensity normalisation, crop size,
decoder and calibration. It is built from the training config (:meth:`StageMeta.from_config`), written into
every checkpoint under ``"landmark_lit"`` and into model bundles as plain data (:meth:`StageMeta.to_dict`, so
files load with ``torch.load(weights_only=True)``), and read back with validation (:meth:`StageMeta.from_dict`),
which also checks the description's ``format_version``. Only the networks of registered methods
(:mod:`landmark_lit.methods`) can be described. Building stages from descriptions and weights, and the files
holding them: :mod:`landmark_lit.inference.stages`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from landmark_lit.confidence import Calibration
from landmark_lit.data.transforms import INTENSITY_METHODS, Preprocessing
from landmark_lit.methods import Method, get_method, method_names
from landmark_lit.methods.base import all_methods
from landmark_lit.methods.displacement import DISPLACEMENT
from landmark_lit.utils import first_line, is_finite_number, plain

# version 4: optional ``antialias``; version 3: optional ``calibration``; version 2: ``method`` always stated; version 1: no ``method`` key
# for the displacement method, unknown keys ignored
FORMAT_VERSION = 4
STAGES = ("global", "local")


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
    # Gaussian pre-smoothing of down-sampled axes (data.antialias), the same in training and prediction
    antialias: bool = True
    format_version: int = FORMAT_VERSION

    # --- building ----------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: DictConfig, landmark_names: Sequence[str], decoder: Any) -> StageMeta:
        """The description of the stage ``cfg`` trains, with the data's landmark names and the configured
        decoder object; ValueError if the config does not describe a stage its method has."""
        method = get_method(str(cfg.method.name))
        stage = str(cfg.stage.name)
        expected = network_target(method.network_class(stage))
        net = plain(cfg.stage.net)
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
        antialias = OmegaConf.select(cfg, "data.antialias", default=True)
        meta = cls(
            stage=stage,
            method=method.name,
            net=net,
            landmark_names=list(landmark_names),
            spatial_dims=int(cfg.dataset.spatial_dims),
            spacing=plain(cfg.stage.spacing),
            intensity=str(cfg.dataset.intensity),
            decoder=method.describe_decoder(decoder),
            crop_size=[int(c) for c in cfg.stage.crop_size],
            min_size=plain(min_size),
            dataset=str(cfg.dataset.name),
            ablation=str(cfg.ablation.name) if "ablation" in cfg else None,
            antialias=antialias,
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
        _check_description(meta, where)
        return meta

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
            antialias=self.antialias,
            channels=self.net["in_channels"],
            min_size=self.min_size,
        )


# --- description checks ----------------------------------------------------------------------------


def _check_description(meta: StageMeta, where: str) -> None:
    """A one-line :class:`CheckpointError` naming ``where`` unless ``meta`` is a description this
    landmark_lit can use."""
    if meta.stage not in STAGES:
        raise CheckpointError(f"{where}: stage must be 'global' or 'local', got {meta.stage!r}")
    if meta.method not in method_names():
        raise CheckpointError(f"{where}: method must be one of {method_names()}, got {meta.method!r}")
    method = get_method(meta.method)
    if meta.stage not in method.networks:
        raise CheckpointError(f"{where}: the {meta.method} method has no {meta.stage} stage")
    dims = meta.spatial_dims
    if dims not in (2, 3) or isinstance(dims, bool):
        raise CheckpointError(f"{where}: spatial_dims must be 2 or 3, got {dims!r}")
    _check_network(meta.net, method, meta.stage, dims, where)
    names = meta.landmark_names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{where}: landmark_names must be a non-empty list of names")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: duplicate landmark names in {names}")
    if meta.net.get("num_landmarks") != len(names):
        raise CheckpointError(
            f"{where}: {len(names)} landmark names for a network of {meta.net.get('num_landmarks')}"
        )
    _check_positive_per_axis(meta.spacing, dims, float, where, "spacing")
    _check_positive_per_axis(meta.crop_size, dims, int, where, "crop_size", allow_none=meta.stage == "global")
    _check_positive_per_axis(meta.min_size, dims, int, where, "min_size", allow_none=True)
    if not isinstance(meta.antialias, bool):
        raise CheckpointError(f"{where}: antialias must be true or false, got {meta.antialias!r}")
    if meta.intensity not in INTENSITY_METHODS:
        raise CheckpointError(
            f"{where}: intensity must be one of {INTENSITY_METHODS}, got {meta.intensity!r}"
        )
    try:
        method.decoder_from_description(meta.decoder)
        if meta.calibration is not None:
            Calibration.from_dict(meta.calibration, "calibration")
    except ValueError as exc:
        raise CheckpointError(f"{where}: {first_line(exc)}") from None


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

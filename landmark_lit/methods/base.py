"""What every landmark-finding method tells the rest of landmark_lit, and the registry of methods.

A :class:`Method` is one way of turning network outputs into landmarks (the proposed displacement + presence
method, the heatmap baseline). It says which network class each stage of a model uses, which loss and
decoder classes train and decode it, how a configured decoder is described in a model file and rebuilt
from that description, its default confidence threshold, and, if it has one, the vote field drawn in
pictures. Training, prediction, pictures and export ask the method; nothing outside ``methods/`` compares
method names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn


class Method(ABC):
    """One method's parts. Subclasses set the class attributes and implement the decoder description.

    Attributes:
        name: the name in configs (``method.name``) and in model files.
        networks: stage name -> network class (e.g. ``{"global": GlobalNet, "local": LocalNet}``); the
            stages this method has.
        loss_class, decoder_class: the loss and decoder types the configs must build.
        has_votes: whether the method's outputs are cell votes that :meth:`vote_field` can draw.
        exportable: whether its networks export to TorchScript / ONNX
            (:mod:`landmark_lit.inference.export`: two outputs, displacements and presence logits).
        string_network_arguments: per network class, the network arguments that are strings and their
            allowed values (all other arguments are integers, booleans or lists of them).
    """

    name: ClassVar[str]
    networks: ClassVar[Mapping[str, type[nn.Module]]]
    loss_class: ClassVar[type]
    decoder_class: ClassVar[type]
    has_votes: ClassVar[bool] = False
    exportable: ClassVar[bool] = False
    string_network_arguments: ClassVar[Mapping[type[nn.Module], Mapping[str, tuple[str, ...]]]] = {}

    def network_class(self, stage: str) -> type[nn.Module]:
        """The network of ``stage``; ValueError if this method has no such stage."""
        if stage not in self.networks:
            raise ValueError(f"the {self.name} method has no {stage!r} stage (it has {list(self.networks)})")
        return self.networks[stage]

    @abstractmethod
    def describe_decoder(self, decoder: Any) -> dict[str, Any]:
        """A configured decoder as plain data (what a model file stores)."""

    @abstractmethod
    def decoder_from_description(self, description: Any) -> Any:
        """The decoder a model file describes; ValueError (one line) if the description is invalid."""

    def vote_field(self, output: Any, decoder: Any, landmark: int) -> tuple[np.ndarray, np.ndarray] | None:
        """One landmark's votes for pictures: displacement (D, *grid) in input voxels and posterior (*grid)
        of the first item of a batch output, or None for a method without votes (``has_votes`` False)."""
        return None


def valid_mask(landmarks: Tensor) -> Tensor:
    """(B, K) bool: True where the landmark is annotated (all coordinates finite)."""
    return torch.isfinite(landmarks).all(dim=-1)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` known by its name (to configs and model files)."""
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method of this name; ValueError naming the known ones otherwise."""
    from landmark_lit import methods  # noqa: F401  (importing the package registers the built-in methods)

    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r} (known: {sorted(_REGISTRY)})")
    return _REGISTRY[name]


def method_names() -> list[str]:
    from landmark_lit import methods  # noqa: F401

    return sorted(_REGISTRY)


def all_methods() -> list[Method]:
    """Every registered method, by name."""
    return [get_method(name) for name in method_names()]


def method_of_network(net: nn.Module | type) -> Method:
    """The method whose stages use this network (class or instance); ValueError if none does."""
    from landmark_lit import methods  # noqa: F401

    cls = net if isinstance(net, type) else type(net)
    for method in _REGISTRY.values():
        if any(issubclass(cls, c) for c in method.networks.values()):
            return method
    raise ValueError(f"{cls.__name__} is not the network of any method ({sorted(_REGISTRY)})")

"""A case (image + world landmarks) and the protocol every data source follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Case:
    """One annotated image.

    Attributes:
        case_id: identifier used in every output table.
        image: float32 (C, *spatial), channel first.
        affine: (D + 1, D + 1) voxel index -> world mm.
        landmarks_world: (K, D) world mm; NaN rows are missing landmarks.
        image_path: file the image came from, if any.
    """

    case_id: str
    image: np.ndarray
    affine: np.ndarray
    landmarks_world: np.ndarray
    image_path: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return self.image.ndim - 1


class CaseSource(Protocol):
    """A finite, indexable collection of cases with a fixed landmark list."""

    landmark_names: list[str]
    spatial_dims: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Case: ...

"""A user's images and landmarks, listed in a manifest (CSV or JSON), as a case source.

CSV: one row per case, columns ``case,image`` and either ``landmarks`` (a point file) or inline columns
``<name>_x,<name>_y[,<name>_z]`` (an empty cell marks a missing landmark); optional columns ``split``
and ``coordinate_system``::

    case,image,landmarks,split
    p001,images/p001.nii.gz,landmarks/p001.mrk.json,train

JSON::

    {"coordinate_system": "RAS" | "LPS" | "voxel",   (optional, default RAS)
     "landmarks": [names...],                         (needed for inline point lists)
     "cases": [{"case": "p001", "image": "images/p001.nrrd",
                "landmarks": "landmarks/p001.fcsv" | [[x, y, z] or null, ...] | {name: [x, y, z] or null},
                "split": "train", "coordinate_system": "LPS" (optional, overrides the top level)}],
     "meta": {...} (optional, free-form)}

Images: anything :func:`~landmark_lit.data.io.load_image` reads (NIfTI, NRRD, MHA/MHD, a DICOM series
folder, ...). Landmarks: inline, or a file :func:`~landmark_lit.data.point_files.read_point_list` reads
(Slicer ``.mrk.json`` and ``.fcsv`` state their own coordinate system; CSV files follow the row's). World
coordinates are RAS or LPS mm; ``voxel`` means indices of the image array as ``load_image`` returns it.
Relative paths are resolved against the manifest's folder. Everything but the images is read and checked
when the source is built (:mod:`landmark_lit.data.manifest_rows`), so a broken manifest fails at once, with
the manifest and row in the message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from landmark_lit.data.cases import Case
from landmark_lit.data.io import ImageReadError, load_image
from landmark_lit.data.landmark_tables import LandmarkTable, read_landmark_table
from landmark_lit.data.manifest_rows import (
    ManifestError,
    ManifestRow,
    is_manifest,
    manifest_images,
    parse_manifest,
)
from landmark_lit.data.point_files import PointList, coordinate_system_of
from landmark_lit.utils import atomic_write_text

__all__ = [
    "ManifestCases",
    "ManifestError",
    "ManifestRow",
    "manifest_images",
    "reference_table",
    "write_manifest",
]


class ManifestCases:
    """A :class:`~landmark_lit.data.cases.CaseSource` over the images and landmarks of a manifest.

    Args:
        manifest: the ``.csv`` or ``.json`` manifest.
        split: keep only the rows of this split (None: all rows).
        landmark_names: the landmarks to use, in this order (None: the manifest's, or those of its
            landmark files in order of first appearance); a case without one of them has it missing (NaN).
        coordinate_system: how points are stated where neither the row nor the manifest says
            ("RAS", "LPS" or "voxel").

    Raises:
        ManifestError: one line naming the manifest and, where it applies, the row (missing files,
            unknown landmarks, wrong coordinate counts, duplicate cases, an empty split, ...).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        split: str | None = None,
        landmark_names: list[str] | None = None,
        coordinate_system: str = "RAS",
    ) -> None:
        parsed = parse_manifest(manifest, split, landmark_names, coordinate_system)
        self.path = parsed.path
        self.rows = parsed.rows
        self.landmark_names = parsed.landmark_names
        self.spatial_dims = parsed.spatial_dims

    @property
    def cases(self) -> list[str]:
        """Case ids, in manifest order."""
        return [row.case for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Case:
        row = self.rows[index]
        try:
            image, affine = load_image(row.image)
        except ImageReadError as exc:
            raise ManifestError(f"{self.path}: {row.where}: {exc}") from None
        if image.ndim - 1 != self.spatial_dims:
            raise ManifestError(
                f"{self.path}: {row.where}: {image.ndim - 1}D image with {self.spatial_dims}D landmarks"
            )
        world = row.points.world(affine)
        selected = PointList(row.points.names, world).select(self.landmark_names)
        return Case(
            case_id=row.case,
            image=image,
            affine=affine,
            landmarks_world=selected,
            image_path=str(row.image),
            meta={"split": row.split, "manifest": str(self.path)},
        )


def write_manifest(
    path: str | os.PathLike,
    cases: list[dict[str, Any]],
    landmark_names: list[str] | None = None,
    coordinate_system: str = "RAS",
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a JSON manifest atomically (see the module docstring for the entries of ``cases``).

    Absolute paths inside ``path``'s folder are written relative to it, so the folder can be moved as a
    whole; relative paths are written as given (they are relative to the manifest's folder).
    """
    path = Path(path)
    root = path.parent.resolve()
    out = []
    for entry in cases:
        entry = dict(entry)
        for key in ("image", "landmarks"):
            value = entry.get(key)
            if isinstance(value, (str, os.PathLike)):
                given = Path(value)
                inside = given.is_absolute() and given.resolve().is_relative_to(root)
                entry[key] = str(given.resolve().relative_to(root)) if inside else str(given)
        out.append(entry)
    data: dict[str, Any] = {"coordinate_system": coordinate_system_of(coordinate_system), "cases": out}
    if landmark_names is not None:
        data["landmarks"] = list(landmark_names)
    if meta:
        data["meta"] = meta
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def reference_table(source: ManifestCases) -> LandmarkTable:
    """A manifest's landmarks in world mm RAS as a :class:`~landmark_lit.data.landmark_tables.LandmarkTable`
    for ``landmark-evaluate`` (images are read only for landmarks stated in voxel indices)."""
    coords, images = {}, {}
    for row in source.rows:
        affine = None
        if row.points.coordinate_system == "voxel":
            try:
                affine = load_image(row.image)[1]
            except ImageReadError as exc:
                raise ManifestError(f"{source.path}: {row.where}: {exc}") from None
        world = PointList(row.points.names, row.points.world(affine)).select(source.landmark_names)
        coords[row.case], images[row.case] = world, str(row.image)
    return LandmarkTable(names=list(source.landmark_names), coords=coords, images=images)


def read_references(path: str | os.PathLike, split: str | None = None) -> LandmarkTable:
    """Reference landmarks for ``landmark-evaluate`` / ``landmark-compare``: a landmark table (.csv /
    .json), or a manifest's landmarks in world mm RAS (only the rows of ``split`` if given).

    Raises:
        ValueError: one line naming the file and the problem (a ``split`` for a table among them).
    """
    if is_manifest(path):
        return reference_table(ManifestCases(path, split=split))
    if split is not None:
        raise ValueError(f"{path}: a landmark table, not a manifest: it has no splits (got split {split!r})")
    return read_landmark_table(path)

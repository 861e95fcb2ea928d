"""Landmark tables: reading and writing landmark coordinates per case, as long CSV or JSON.

Coordinates are world millimetres. A table holds, per case, an array (K, D) in the order of the landmark
names; NaN marks a missing landmark.

Long CSV: header ``case,landmark,x,y`` (2D) or ``case,landmark,x,y,z`` (3D), one row per case and landmark;
an empty or ``nan`` coordinate means the landmark is missing; extra columns (``i,j,k`` voxel indices,
``confidence``, ...) are ignored by the reader.

JSON::

    {"coordinate_system": "world_mm", "landmarks": [names...],
     "cases": {case: {"world_mm": [[x, y, z] or null per landmark], "voxel": [...] (optional),
                      "image": "path" (optional), "seconds": float (optional),
                      "seconds_without_io": float (optional)}}}

Point files of one case (:func:`read_point_list`), as a manifest references them: 3D Slicer markups
(``.mrk.json``, their ``coordinateSystem`` honoured, LPS when absent as in Slicer) and fiducial lists
(``.fcsv``, their ``# CoordinateSystem`` header honoured, RAS when absent as in Slicer before 4.11; the
position status Slicer 5 writes after each row's listed columns honoured), a CSV
``landmark,x,y[,z]`` (optionally with a ``case`` column: a long table as above), or a JSON landmark table.
World points in LPS become RAS by negating x and y; voxel indices become world RAS through the image's
affine (:func:`points_to_world`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from landmark_lit.data.io import atomic_write_text
from landmark_lit.data.transforms import voxel_to_world

COORD_COLUMNS = ("x", "y", "z")
VOXEL_COLUMNS = ("i", "j", "k")
COORDINATE_SYSTEM = "world_mm"
# how point coordinates are stated: world mm (RAS, as landmark_lit uses, or LPS, as ITK/DICOM/Slicer 5 do),
# or voxel indices of the image array as load_image returns it
COORDINATE_SYSTEMS = ("RAS", "LPS", "voxel")
SLICER_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_NAME_COLUMNS = ("landmark", "label", "name")
# the columns Slicer's "# columns" line lists (vtkMRMLMarkupsFiducialStorageNode::WriteDataInternal)
_FCSV_COLUMNS = (
    "id",
    "x",
    "y",
    "z",
    "ow",
    "ox",
    "oy",
    "oz",
    "vis",
    "sel",
    "lock",
    "label",
    "desc",
    "associatedNodeID",
)
# Slicer 5 writes two more cells on each row that the columns line does not list: the control point's position
# status (Slicer reads it at field 14, FIELD_POSITION_STATUS, empty or absent meaning defined) and autoCreated
_FCSV_STATUS_FIELD = 14
_FCSV_STATUS_COLUMNS = ("positionstatus", "pointpositionstatus")  # should a columns line ever name it
# vtkMRMLMarkupsNode's PositionStatus enum; .mrk.json files spell it out
_POSITION_STATUS = {"undefined": 0, "preview": 1, "defined": 2, "missing": 3}
_DEFINED = _POSITION_STATUS["defined"]
_NUMBER_LIST = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")


@dataclass
class LandmarkTable:
    """Landmark coordinates of several cases.

    Attributes:
        names: landmark names, K of them, in table order.
        coords: case id -> float64 array (K, D) in world mm; NaN rows are missing landmarks.
        images: case id -> image path (optional, JSON only).
        seconds: case id -> processing time per image in s, file reading included (optional, JSON only).
        seconds_without_io: case id -> processing time per image in s without file reading (optional).
    """

    names: list[str]
    coords: dict[str, np.ndarray]
    images: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    seconds_without_io: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = set()
        for case, array in self.coords.items():
            array = np.asarray(array, dtype=np.float64)
            if array.ndim != 2 or array.shape[0] != len(self.names) or array.shape[1] not in (2, 3):
                raise ValueError(
                    f"case {case!r}: coordinates must have shape (K={len(self.names)}, 2 or 3), "
                    f"got {array.shape}"
                )
            self.coords[case] = array
            dims.add(array.shape[1])
        if len(dims) > 1:
            raise ValueError(f"cases mix spatial dimensions {sorted(dims)}")

    @property
    def cases(self) -> list[str]:
        """Case ids, sorted."""
        return sorted(self.coords)

    @property
    def spatial_dims(self) -> int:
        """D, the number of coordinates per landmark (2 or 3); 0 for a table without cases."""
        return next(iter(self.coords.values())).shape[1] if self.coords else 0


def read_landmark_table(path: str | os.PathLike) -> LandmarkTable:
    """Read a landmark table from a ``.csv`` (long format) or ``.json`` file.

    Raises:
        ValueError: one line naming the file and the problem (missing file, unknown suffix, missing
            columns, non-numeric or partially missing coordinates, inconsistent dimensionality, duplicate
            (case, landmark) rows, landmark order inconsistent between cases, empty table).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: landmark file not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"{path}: unknown landmark file type {path.suffix!r} (expected .csv or .json)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    reader = _read_csv if suffix == ".csv" else _read_json
    try:
        table = reader(text)
    except _TableError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not table.coords:
        raise ValueError(f"{path}: no landmarks in file")
    return table


def write_landmark_table(
    path: str | os.PathLike,
    table: LandmarkTable,
    voxel: dict[str, np.ndarray] | None = None,
    extra: dict[str, dict[str, np.ndarray]] | None = None,
) -> None:
    """Write a landmark table atomically, as long CSV or JSON depending on the suffix of ``path``.

    Args:
        path: output file, ``.csv`` or ``.json``.
        table: coordinates in world mm.
        voxel: optional case id -> voxel indices (K, D) written beside the world coordinates (extra columns
            ``i,j[,k]`` in CSV, ``"voxel"`` in JSON).
        extra: optional column name -> case id -> (K,) values (e.g. ``confidence``), written beside each
            landmark (a column in CSV, a list per case in JSON); readers ignore them.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = _format_csv(table, voxel, extra or {})
    elif suffix == ".json":
        text = _format_json(table, voxel, extra or {})
    else:
        raise ValueError(f"{path}: unknown landmark file type {path.suffix!r} (expected .csv or .json)")
    atomic_write_text(path, text)


class _TableError(Exception):
    """A problem in a table's content; the public reader prefixes the file name."""


def _parse_coordinate(value: Any, where: str) -> float:
    """A coordinate cell as float; empty, ``nan`` or null -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise _TableError(f"{where}: non-numeric coordinate {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() == "nan":
            return math.nan
        try:
            value = float(text)
        except ValueError:
            raise _TableError(f"{where}: non-numeric coordinate {text!r}") from None
    if not isinstance(value, (int, float)):
        raise _TableError(f"{where}: non-numeric coordinate {value!r}")
    if math.isinf(value):
        raise _TableError(f"{where}: infinite coordinate {value!r}")
    return float(value)


def _point(values: list[float], where: str) -> list[float]:
    """Check that a point is either complete or entirely missing."""
    missing = [math.isnan(v) for v in values]
    if any(missing) and not all(missing):
        raise _TableError(f"{where}: some coordinates are missing and others not {values}")
    return values


def _read_csv(text: str) -> LandmarkTable:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [col for col in ("case", "landmark", "x", "y") if col not in header]
    if missing:
        raise _TableError(f"missing columns {missing} (header is {header})")
    if len(set(header)) != len(header):
        raise _TableError(f"duplicate column names in header {header}")
    axes = COORD_COLUMNS[:3] if "z" in header else COORD_COLUMNS[:2]

    names: list[str] = []
    rows_by_case: dict[str, dict[str, list[float]]] = {}
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise _TableError(f"line {line}: more values than columns")
        case, landmark = (row.get("case") or "").strip(), (row.get("landmark") or "").strip()
        if not case or not landmark:
            raise _TableError(f"line {line}: empty case or landmark")
        where = f"line {line} (case {case!r}, landmark {landmark!r})"
        values = []
        for axis in axes:
            cell = row.get(axis)
            if cell is None:
                raise _TableError(f"{where}: inconsistent dimensionality, no value for {axis!r}")
            values.append(_parse_coordinate(cell, where))
        if len(axes) == 3 and math.isnan(values[2]) and not math.isnan(values[0]):
            raise _TableError(f"{where}: inconsistent dimensionality, 3D file but z is empty")
        case_rows = rows_by_case.setdefault(case, {})
        if landmark in case_rows:
            raise _TableError(f"{where}: duplicate (case, landmark) row")
        case_rows[landmark] = _point(values, where)
        if landmark not in names:
            names.append(landmark)
    return _assemble(names, rows_by_case, len(axes))


def _assemble(names: list[str], rows_by_case: dict[str, dict[str, list[float]]], dims: int) -> LandmarkTable:
    """Build the table, landmarks in one order that agrees with every case's row order.

    That order is the order of first appearance, except where a later case shows that a landmark absent
    from an earlier case comes before it (case 1: A, C; case 2: A, B, C gives A, B, C).
    """
    names = _merge_orders(names, [list(rows) for rows in rows_by_case.values()], list(rows_by_case))
    index = {name: k for k, name in enumerate(names)}
    coords = {}
    for case, rows in rows_by_case.items():
        array = np.full((len(names), dims), np.nan)
        for name, values in rows.items():
            array[index[name]] = values
        coords[case] = array
    return LandmarkTable(names=names, coords=coords)


def _merge_orders(first_seen: list[str], orders: list[list[str]], cases: list[str]) -> list[str]:
    """Topological order of the landmarks under each case's order, ties broken by first appearance."""
    rank = {name: k for k, name in enumerate(first_seen)}
    after: dict[str, set[str]] = {name: set() for name in first_seen}
    before_count = dict.fromkeys(first_seen, 0)
    for order in orders:
        for a, b in pairwise(order):
            if b not in after[a]:
                after[a].add(b)
                before_count[b] += 1
    ready = [name for name in first_seen if before_count[name] == 0]
    merged: list[str] = []
    while ready:
        name = min(ready, key=rank.__getitem__)
        ready.remove(name)
        merged.append(name)
        for nxt in after[name]:
            before_count[nxt] -= 1
            if before_count[nxt] == 0:
                ready.append(nxt)
    if len(merged) != len(first_seen):
        conflicting = [n for n in first_seen if n not in merged]
        where = [c for c, order in zip(cases, orders, strict=True) if len(set(order) & set(conflicting)) > 1]
        raise _TableError(
            f"landmark order is inconsistent between cases {where[:5]} (landmarks {conflicting} appear in "
            "different orders)"
        )
    return merged


def _read_json(text: str) -> LandmarkTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _TableError(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _TableError("top level must be an object with 'landmarks' and 'cases'")
    system = data.get("coordinate_system", COORDINATE_SYSTEM)
    if system != COORDINATE_SYSTEM:
        raise _TableError(f"coordinate_system is {system!r}, only {COORDINATE_SYSTEM!r} is supported")
    names, cases = data.get("landmarks"), data.get("cases")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _TableError("'landmarks' must be a list of non-empty names")
    if len(set(names)) != len(names):
        raise _TableError(f"duplicate landmark names in {names}")
    if not isinstance(cases, dict):
        raise _TableError("'cases' must be an object mapping case id -> entry")

    coords, images, seconds, seconds_without_io = {}, {}, {}, {}
    dims: int | None = None
    for case, entry in cases.items():
        if not isinstance(entry, dict) or "world_mm" not in entry:
            raise _TableError(f"case {case!r}: missing 'world_mm'")
        points = entry["world_mm"]
        if not isinstance(points, list) or len(points) != len(names):
            raise _TableError(f"case {case!r}: 'world_mm' must list {len(names)} points, one per landmark")
        array = []
        for name, point in zip(names, points, strict=True):
            where = f"case {case!r}, landmark {name!r}"
            if point is None:
                array.append(None)
                continue
            if not isinstance(point, list) or len(point) not in (2, 3):
                raise _TableError(f"{where}: a point must be a list of 2 or 3 numbers or null, got {point!r}")
            if dims is None:
                dims = len(point)
            if len(point) != dims:
                raise _TableError(
                    f"{where}: inconsistent dimensionality, {len(point)} values, expected {dims}"
                )
            array.append(_point([_parse_coordinate(v, where) for v in point], where))
        coords[case] = array
        if entry.get("image") is not None:
            images[case] = str(entry["image"])
        for key, target in (("seconds", seconds), ("seconds_without_io", seconds_without_io)):
            if entry.get(key) is not None:
                value = entry[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise _TableError(f"case {case!r}: {key!r} must be a number, got {value!r}")
                target[case] = float(value)
    if dims is None and coords:
        raise _TableError("every landmark is missing, cannot tell 2D from 3D")
    arrays = {
        case: np.array([p if p is not None else [math.nan] * dims for p in points], dtype=np.float64).reshape(
            len(names), dims
        )
        for case, points in coords.items()
    }
    return LandmarkTable(
        names=list(names),
        coords=arrays,
        images=images,
        seconds=seconds,
        seconds_without_io=seconds_without_io,
    )


def _format_number(value: float) -> str:
    """Shortest text that reads back to the same float; ``nan`` for missing."""
    return "nan" if math.isnan(value) else repr(float(value))


def _extra_value(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    return _format_number(float(value))


def _format_csv(
    table: LandmarkTable, voxel: dict[str, np.ndarray] | None, extra: dict[str, dict[str, np.ndarray]]
) -> str:
    dims = table.spatial_dims or 2
    header = ["case", "landmark", *COORD_COLUMNS[:dims]]
    if voxel is not None:
        header += VOXEL_COLUMNS[:dims]
    header += list(extra)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for case in table.cases:
        vox = _voxel_for(voxel, case, table) if voxel is not None else None
        for k, name in enumerate(table.names):
            row = [case, name, *(_format_number(v) for v in table.coords[case][k])]
            if vox is not None:
                row += [_format_number(v) for v in vox[k]]
            row += [_extra_value(values[case][k]) for values in extra.values()]
            writer.writerow(row)
    return out.getvalue()


def _voxel_for(voxel: dict[str, np.ndarray], case: str, table: LandmarkTable) -> np.ndarray:
    if case not in voxel:
        raise ValueError(f"voxel coordinates missing for case {case!r}")
    array = np.asarray(voxel[case], dtype=np.float64)
    if array.shape != table.coords[case].shape:
        raise ValueError(
            f"case {case!r}: voxel shape {array.shape} != world shape {table.coords[case].shape}"
        )
    return array


def _points_json(array: np.ndarray) -> list[list[float] | None]:
    return [None if np.isnan(p).any() else [float(v) for v in p] for p in array]


def _format_json(
    table: LandmarkTable, voxel: dict[str, np.ndarray] | None, extra: dict[str, dict[str, np.ndarray]]
) -> str:
    cases: dict[str, dict[str, Any]] = {}
    for case in table.cases:
        entry: dict[str, Any] = {"world_mm": _points_json(table.coords[case])}
        if voxel is not None:
            entry["voxel"] = _points_json(_voxel_for(voxel, case, table))
        if case in table.images:
            entry["image"] = str(table.images[case])
        if case in table.seconds:
            entry["seconds"] = float(table.seconds[case])
        if case in table.seconds_without_io:
            entry["seconds_without_io"] = float(table.seconds_without_io[case])
        for key, values in extra.items():
            entry[key] = [
                None if isinstance(v, float) and not math.isfinite(v) else v
                for v in np.asarray(values[case]).tolist()
            ]
        cases[case] = entry
    data = {"coordinate_system": COORDINATE_SYSTEM, "landmarks": list(table.names), "cases": cases}
    text = json.dumps(data, indent=1, allow_nan=False)
    # one point per line: collapse the innermost lists of numbers
    return (
        _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", "", m.group(1)).replace(",", ", ") + "]", text) + "\n"
    )


def read_landmark_scores(
    path: str | os.PathLike, keys: Sequence[str], table: LandmarkTable
) -> dict[str, dict[str, np.ndarray]]:
    """The per-landmark values ``keys`` (e.g. ``confidence``, ``flagged``, ``radius_mm``) that
    :func:`write_landmark_table` wrote beside the coordinates of ``table`` (read from ``path``): key ->
    case -> (K,) float in ``table.names`` order (NaN where absent). Keys the file lacks are left out."""
    path = Path(path)
    index = {n: k for k, n in enumerate(table.names)}
    out: dict[str, dict[str, np.ndarray]] = {}
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        names = data.get("landmarks") or []
        for case, entry in (data.get("cases") or {}).items():
            for key in keys:
                values = entry.get(key) if isinstance(entry, dict) else None
                if not isinstance(values, list) or len(values) != len(names):
                    continue
                row = out.setdefault(key, {}).setdefault(case, np.full(len(table.names), np.nan))
                for name, v in zip(names, values, strict=True):
                    if name in index and v is not None:
                        row[index[name]] = float(v)
        return out
    for row in csv.DictReader(io.StringIO(text)):
        case, name = (row.get("case") or "").strip(), (row.get("landmark") or "").strip()
        for key in keys:
            cell = (row.get(key) or "").strip()
            if name in index and cell and cell.lower() != "nan":
                arr = out.setdefault(key, {}).setdefault(case, np.full(len(table.names), np.nan))
                arr[index[name]] = float(cell)
    return out


def coordinate_system_of(value: str) -> str:
    """Normalise a stated coordinate system ("ras", "LPS", "voxel", ...) to one of :data:`COORDINATE_SYSTEMS`."""
    text = str(value).strip()
    for system in COORDINATE_SYSTEMS:
        if text.lower() == system.lower():
            return system
    raise ValueError(f"unknown coordinate system {value!r} (expected one of {list(COORDINATE_SYSTEMS)})")


def points_to_world(
    points: np.ndarray, coordinate_system: str, affine: np.ndarray | None = None
) -> np.ndarray:
    """(K, D) points stated in ``coordinate_system`` -> world mm RAS (K, D). NaN rows stay NaN.

    Args:
        points: coordinates as stated (world mm or voxel indices).
        coordinate_system: "RAS", "LPS" (x and y negated) or "voxel" (through ``affine``).
        affine: (D + 1, D + 1) voxel -> world RAS of the image, needed for "voxel".
    """
    system = coordinate_system_of(coordinate_system)
    out = np.array(points, dtype=np.float64, copy=True)
    if system == "LPS":
        out[..., :2] *= -1.0
    elif system == "voxel":
        if affine is None:
            raise ValueError("voxel coordinates need the image affine")
        out = voxel_to_world(out, affine)
    return out


def parse_point(values: Any, dims: int) -> np.ndarray:
    """One point as a manifest or table states it -> float64 (dims,); None or all-empty -> NaN.

    Raises:
        ValueError: wrong number of values, non-numeric or infinite values, or only some missing.
    """
    if values is None:
        return np.full(dims, np.nan)
    if not isinstance(values, (list, tuple)) or len(values) != dims:
        raise ValueError(f"expected {dims} coordinates, got {values!r}")
    try:
        return np.asarray(_point([_parse_coordinate(v, "point") for v in values], "point"), dtype=np.float64)
    except _TableError as exc:
        raise ValueError(str(exc)) from None


@dataclass
class PointList:
    """Named points of one case as a file states them.

    Attributes:
        names: K landmark names, in file order.
        points: float64 (K, D) coordinates as stated; NaN rows are missing landmarks.
        coordinate_system: "RAS", "LPS" or "voxel".
    """

    names: list[str]
    points: np.ndarray
    coordinate_system: str = "RAS"

    def world(self, affine: np.ndarray | None = None) -> np.ndarray:
        """(K, D) world mm RAS (``affine`` is needed for voxel coordinates)."""
        return points_to_world(self.points, self.coordinate_system, affine)

    def select(self, names: list[str]) -> np.ndarray:
        """Points (len(names), D) in the order of ``names``; names absent from the file are NaN rows."""
        index = {name: k for k, name in enumerate(self.names)}
        out = np.full((len(names), self.points.shape[1]), np.nan)
        for k, name in enumerate(names):
            if name in index:
                out[k] = self.points[index[name]]
        return out


def read_point_list(
    path: str | os.PathLike, coordinate_system: str = "RAS", case: str | None = None
) -> PointList:
    """Read the landmarks of one case from a Slicer ``.mrk.json`` / ``.fcsv``, a CSV or a JSON table.

    Args:
        path: the file.
        coordinate_system: how a CSV states its points ("RAS", "LPS" or "voxel"); Slicer files state their
            own, and landmark_lit JSON tables are RAS world mm.
        case: for a table holding several cases (a ``case`` column or a JSON table), the case to pick; a
            table of a single case is used whatever its case id.

    Raises:
        ValueError: one line naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: landmark file not found")
    name = path.name.lower()
    try:
        if name.endswith(".fcsv"):
            names, points, system = _read_fcsv(_read_fcsv_file(path))
            return PointList(names, points, system)
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            if isinstance(data, dict) and "markups" in data:
                names, points = _read_markups(data)
                return PointList(names, points, "RAS")
            if coordinate_system_of(coordinate_system) != "RAS":
                raise _TableError(f"a landmark_lit JSON table is RAS world mm, not {coordinate_system!r}")
            table = read_landmark_table(path)
            return PointList(table.names, table.coords[_pick_case(table.cases, case)], "RAS")
        if name.endswith(".csv"):
            names, points = _read_point_csv(path.read_text(encoding="utf-8-sig"), case)
            return PointList(names, points, coordinate_system_of(coordinate_system))
    except (_TableError, ValueError) as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    raise ValueError(f"{path}: unknown landmark file type (expected .mrk.json, .fcsv, .csv or .json)")


def _pick_case(cases: list[str], case: str | None) -> str:
    if case is not None and case in cases:
        return case
    if len(cases) == 1:
        return cases[0]
    raise _TableError(f"holds cases {cases[:5]}{'...' if len(cases) > 5 else ''}, none of them {case!r}")


def _unique(names: list[str]) -> list[str]:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _TableError(f"duplicate landmark names {duplicates}")
    return names


def _read_point_csv(text: str, case: str | None) -> tuple[list[str], np.ndarray]:
    """``landmark,x,y[,z]`` rows (``label`` or ``name`` also name the landmark); a ``case`` column selects."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    name_col = next((c for c in _NAME_COLUMNS if c in header), None)
    if name_col is None or "x" not in header or "y" not in header:
        raise _TableError(f"expected columns landmark,x,y[,z] (header is {header})")
    axes = COORD_COLUMNS if "z" in header else COORD_COLUMNS[:2]
    rows = [(line, row) for line, row in enumerate(reader, start=2)]
    if "case" in header:
        chosen = _pick_case(sorted({(r.get("case") or "").strip() for _, r in rows}), case)
        rows = [(line, r) for line, r in rows if (r.get("case") or "").strip() == chosen]
    names, points = [], []
    for line, row in rows:
        label = (row.get(name_col) or "").strip()
        if not label:
            raise _TableError(f"line {line}: empty landmark name")
        where = f"line {line} (landmark {label!r})"
        points.append(_point([_parse_coordinate(row.get(a), where) for a in axes], where))
        names.append(label)
    if not names:
        raise _TableError("no landmarks in file")
    return _unique(names), np.asarray(points, dtype=np.float64)


def _slicer_system(value: str) -> str:
    """Slicer's coordinate system flag: "RAS"/"0" or "LPS"/"1"."""
    text = str(value).strip().upper()
    if text in ("RAS", "0"):
        return "RAS"
    if text in ("LPS", "1"):
        return "LPS"
    raise _TableError(f"unsupported coordinate system {value!r} (expected RAS / 0 or LPS / 1)")


def _read_markups(data: dict) -> tuple[list[str], np.ndarray]:
    """Slicer markups JSON -> names, (K, 3) RAS. Control points not "defined" are missing (NaN)."""
    names, points = [], []
    markups = data.get("markups")
    if not isinstance(markups, list) or not markups:
        raise _TableError("'markups' must be a non-empty list")
    for markup in markups:
        if not isinstance(markup, dict):
            raise _TableError("every 'markups' entry must be an object")
        kind = markup.get("type", "Fiducial")  # Slicer writes "Fiducial" for point lists
        if kind != "Fiducial":
            raise _TableError(f"a {kind!r} markup, not a point list (only 'Fiducial' markups hold landmarks)")
        system = _slicer_system(markup.get("coordinateSystem", "LPS"))  # Slicer reads a missing one as LPS
        # the schema's forms: "mm", or a coded entry ["mm", "UCUM", "millimeter"] (or an object with CodeValue)
        units = markup.get("coordinateUnits", "mm")
        if isinstance(units, dict):
            unit = units.get("CodeValue")
        elif isinstance(units, list):
            unit = units[0] if units else None
        else:
            unit = units
        if unit != "mm":
            raise _TableError(f"coordinate units {units!r}, only mm is supported")
        for n, cp in enumerate(markup.get("controlPoints") or [], start=1):
            label = str(cp.get("label") or cp.get("id") or "").strip()
            if not label:
                raise _TableError(f"control point {n} has no label")
            where = f"control point {n} ({label!r})"
            position = cp.get("position")
            status = cp.get("positionStatus", "defined")
            if status != "defined" or position in (None, "", []):
                point = [math.nan] * 3
            elif not isinstance(position, list) or len(position) != 3:
                raise _TableError(f"{where}: position must be 3 numbers, got {position!r}")
            else:
                point = _point([_parse_coordinate(v, where) for v in position], where)
            names.append(label)
            points.append(points_to_world(np.asarray(point, dtype=np.float64), system))
    if not names:
        raise _TableError("no control points in file")
    return _unique(names), np.asarray(points, dtype=np.float64).reshape(len(names), 3)


def _fcsv_lines(text: str) -> list[str]:
    """Lines of a fiducial CSV read without newline translation.

    Rows end in LF or CRLF; a CR inside a row is dropped (Slicer 5 files saved again from a CRLF file can
    carry one at the end of the last listed cell, before the status cells).
    """
    if "\n" not in text:
        return text.splitlines()
    return [line.replace("\r", "") for line in text.split("\n")]


def _fcsv_status(cell: str | None, where: str) -> int:
    """A position status cell -> vtkMRMLMarkupsNode's PositionStatus; absent or empty is defined, as in Slicer."""
    text = (cell or "").strip()
    if not text:
        return _DEFINED
    status = _POSITION_STATUS.get(text.lower())
    if status is None:
        try:
            status = int(text)
        except ValueError:
            status = -1
    if status not in _POSITION_STATUS.values():
        raise _TableError(
            f"{where}: position status {text!r} is not 0 (undefined), 1 (preview), 2 (defined) or 3 (missing)"
        )
    return status


def _read_fcsv(text: str, name_column: str = "label") -> tuple[list[str], np.ndarray, str]:
    """Slicer fiducial CSV -> names, (K, 3) points as stated, their coordinate system ("RAS" or "LPS").

    A point whose position status is not "defined" (undefined, preview or missing: Slicer writes 0,0,0 or
    the point's last position for it) is missing (NaN). The status is the column a columns line names
    ``positionStatus``, or else, under Slicer's own columns line, the first cell past them as Slicer 5 writes
    it; rows without it (Slicer before 5) are defined points.
    """
    system = "RAS"  # Slicer wrote no CoordinateSystem line before 4.11, and those files are RAS
    columns = list(_FCSV_COLUMNS)
    body = []
    for line in _fcsv_lines(text):
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip().lower() == "coordinatesystem":
                system = _slicer_system(value)
            elif key.strip().lower() == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            body.append(line)
    if name_column not in columns or not {"x", "y", "z"} <= set(columns):
        raise _TableError(f"columns {columns} lack x, y, z or {name_column!r}")
    status_column = next((c for c in columns if c.lower() in _FCSV_STATUS_COLUMNS), None)
    status_field = _FCSV_STATUS_FIELD if status_column is None and tuple(columns) == _FCSV_COLUMNS else None
    names, points = [], []
    for n, row in enumerate(csv.reader(body), start=1):
        cells = dict(zip(columns, row, strict=False))
        label = (cells.get(name_column) or "").strip()
        if not label:
            raise _TableError(f"fiducial {n} has an empty {name_column!r}")
        where = f"fiducial {n} ({label!r})"
        if status_column is not None:
            status_cell = cells.get(status_column)
        else:
            status_cell = row[status_field] if status_field is not None and len(row) > status_field else None
        names.append(label)
        if _fcsv_status(status_cell, where) != _DEFINED:
            points.append([math.nan] * 3)
        else:
            points.append(_point([_parse_coordinate(cells.get(a), where) for a in COORD_COLUMNS], where))
    if not names:
        raise _TableError("no fiducials in file")
    return _unique(names), np.asarray(points, dtype=np.float64), system


def _read_fcsv_file(path: Path) -> str:
    """The text of a fiducial CSV, newlines untranslated (see :func:`_fcsv_lines`)."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        return stream.read()


def read_fcsv(path: str | os.PathLike, name_column: str = "label") -> tuple[list[str], np.ndarray]:
    """Read a Slicer ``.fcsv`` fiducial list: names (from ``name_column``, e.g. "label" or "desc") and
    (K, 3) world mm RAS, the file's ``# CoordinateSystem`` honoured; points Slicer 5 states as not defined
    (missing, undefined, preview) are NaN."""
    path = Path(path)
    try:
        names, points, system = _read_fcsv(_read_fcsv_file(path), name_column)
    except _TableError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    return names, points_to_world(points, system)


def write_slicer_markups(
    path: str | os.PathLike,
    names: list[str],
    points: np.ndarray,
    coordinate_system: str = "LPS",
    descriptions: Sequence[str] | None = None,
) -> None:
    """Write (K, 3) world mm RAS points as a Slicer markups point list (``.mrk.json``), atomically.

    Points are stored in ``coordinate_system`` ("LPS", Slicer 5's default, or "RAS"); NaN rows become
    control points with ``positionStatus`` "missing", as Slicer writes them. ``descriptions``: one text per
    point, shown in Slicer's control point table (e.g. confidence and uncertainty radius).
    """
    system = coordinate_system_of(coordinate_system)
    if system == "voxel":
        raise ValueError("Slicer markups store world coordinates (RAS or LPS), not voxel indices")
    stated = points_to_world(np.asarray(points, dtype=np.float64), system)  # RAS <-> LPS is its own inverse
    control = []
    for k, (name, p) in enumerate(zip(names, stated, strict=True), start=1):
        missing = bool(np.isnan(p).any())
        control.append(
            {
                "id": str(k),
                "label": str(name),
                "position": "" if missing else [float(v) for v in p],
                "positionStatus": "missing" if missing else "defined",
            }
        )
        if descriptions is not None:
            control[-1]["description"] = str(descriptions[k - 1])
    data = {
        "@schema": SLICER_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "controlPoints": control,
            }
        ],
    }
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")

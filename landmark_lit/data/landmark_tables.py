"""Landmark tables: the landmark coordinates of many cases, as long CSV or JSON.

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

The point files of one case (Slicer markups, fiducial lists) are :mod:`landmark_lit.data.point_files`.
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

from landmark_lit.utils import atomic_write_text, read_table_text

COORD_COLUMNS = ("x", "y", "z")
VOXEL_COLUMNS = ("i", "j", "k")
COORDINATE_SYSTEM = "world_mm"
# a JSON list of numbers, written on one line
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
    path, suffix, text = read_table_text(path, "landmark file")
    reader = _read_csv if suffix == ".csv" else _read_json
    try:
        table = reader(text)
    except LandmarkFileError as exc:
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


class LandmarkFileError(Exception):
    """A problem in a landmark file's content; the public readers (here and in
    :mod:`landmark_lit.data.point_files`) prefix the file name."""


def parse_coordinate(value: Any, where: str) -> float:
    """A coordinate cell as float; empty, ``nan`` or null -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise LandmarkFileError(f"{where}: non-numeric coordinate {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() == "nan":
            return math.nan
        try:
            value = float(text)
        except ValueError:
            raise LandmarkFileError(f"{where}: non-numeric coordinate {text!r}") from None
    if not isinstance(value, (int, float)):
        raise LandmarkFileError(f"{where}: non-numeric coordinate {value!r}")
    if math.isinf(value):
        raise LandmarkFileError(f"{where}: infinite coordinate {value!r}")
    return float(value)


def complete_or_missing(values: list[float], where: str) -> list[float]:
    """``values`` if the point is either complete or entirely missing; else a :class:`LandmarkFileError`."""
    missing = [math.isnan(v) for v in values]
    if any(missing) and not all(missing):
        raise LandmarkFileError(f"{where}: some coordinates are missing and others not {values}")
    return values


def _read_csv(text: str) -> LandmarkTable:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [col for col in ("case", "landmark", "x", "y") if col not in header]
    if missing:
        raise LandmarkFileError(f"missing columns {missing} (header is {header})")
    if len(set(header)) != len(header):
        raise LandmarkFileError(f"duplicate column names in header {header}")
    axes = COORD_COLUMNS[:3] if "z" in header else COORD_COLUMNS[:2]

    names: list[str] = []
    rows_by_case: dict[str, dict[str, list[float]]] = {}
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise LandmarkFileError(f"line {line}: more values than columns")
        case, landmark = (row.get("case") or "").strip(), (row.get("landmark") or "").strip()
        if not case or not landmark:
            raise LandmarkFileError(f"line {line}: empty case or landmark")
        where = f"line {line} (case {case!r}, landmark {landmark!r})"
        values = []
        for axis in axes:
            cell = row.get(axis)
            if cell is None:
                raise LandmarkFileError(f"{where}: inconsistent dimensionality, no value for {axis!r}")
            values.append(parse_coordinate(cell, where))
        if len(axes) == 3 and math.isnan(values[2]) and not math.isnan(values[0]):
            raise LandmarkFileError(f"{where}: inconsistent dimensionality, 3D file but z is empty")
        case_rows = rows_by_case.setdefault(case, {})
        if landmark in case_rows:
            raise LandmarkFileError(f"{where}: duplicate (case, landmark) row")
        case_rows[landmark] = complete_or_missing(values, where)
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
        raise LandmarkFileError(
            f"landmark order is inconsistent between cases {where[:5]} (landmarks {conflicting} appear in "
            "different orders)"
        )
    return merged


def _read_json(text: str) -> LandmarkTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LandmarkFileError(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LandmarkFileError("top level must be an object with 'landmarks' and 'cases'")
    system = data.get("coordinate_system", COORDINATE_SYSTEM)
    if system != COORDINATE_SYSTEM:
        raise LandmarkFileError(f"coordinate_system is {system!r}, only {COORDINATE_SYSTEM!r} is supported")
    names, cases = data.get("landmarks"), data.get("cases")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise LandmarkFileError("'landmarks' must be a list of non-empty names")
    if len(set(names)) != len(names):
        raise LandmarkFileError(f"duplicate landmark names in {names}")
    if not isinstance(cases, dict):
        raise LandmarkFileError("'cases' must be an object mapping case id -> entry")
    table = LandmarkTable(names=list(names), coords={})
    points = {case: _json_points(case, entry, names) for case, entry in cases.items()}
    dims = {len(p) for case_points in points.values() for p in case_points if p is not None}
    if len(dims) > 1:
        raise LandmarkFileError(f"inconsistent dimensionality: points of {sorted(dims)} values")
    if not dims and points:
        raise LandmarkFileError("every landmark is missing, cannot tell 2D from 3D")
    d = dims.pop() if dims else 0
    for case, case_points in points.items():
        table.coords[case] = np.array([p if p is not None else [math.nan] * d for p in case_points]).reshape(
            -1, d
        )
        entry = cases[case]
        if entry.get("image") is not None:
            table.images[case] = str(entry["image"])
        for key, target in (("seconds", table.seconds), ("seconds_without_io", table.seconds_without_io)):
            if entry.get(key) is not None:
                value = entry[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise LandmarkFileError(f"case {case!r}: {key!r} must be a number, got {value!r}")
                target[case] = float(value)
    table.__post_init__()  # the coordinates' checks
    return table


def _json_points(case: str, entry: Any, names: list[str]) -> list[list[float] | None]:
    """One case's ``world_mm`` points (None: missing), each checked."""
    if not isinstance(entry, dict) or "world_mm" not in entry:
        raise LandmarkFileError(f"case {case!r}: missing 'world_mm'")
    points = entry["world_mm"]
    if not isinstance(points, list) or len(points) != len(names):
        raise LandmarkFileError(f"case {case!r}: 'world_mm' must list {len(names)} points, one per landmark")
    out: list[list[float] | None] = []
    for name, point in zip(names, points, strict=True):
        where = f"case {case!r}, landmark {name!r}"
        if point is not None and (not isinstance(point, list) or len(point) not in (2, 3)):
            raise LandmarkFileError(
                f"{where}: a point must be a list of 2 or 3 numbers or null, got {point!r}"
            )
        out.append(
            None if point is None else complete_or_missing([parse_coordinate(v, where) for v in point], where)
        )
    return out


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
        return np.asarray(
            complete_or_missing([parse_coordinate(v, "point") for v in values], "point"), dtype=np.float64
        )
    except LandmarkFileError as exc:
        raise ValueError(str(exc)) from None

"""Point files of one case, as a manifest references them and as prediction writes them.

Read (:func:`read_point_list`): 3D Slicer markups (``.mrk.json``, their ``coordinateSystem`` honoured, LPS
when absent as in Slicer) and fiducial lists (``.fcsv``, their ``# CoordinateSystem`` header honoured, RAS
when absent as in Slicer before 4.11; the position status Slicer 5 writes after each row's listed columns
honoured), a CSV ``landmark,x,y[,z]`` (optionally with a ``case`` column: a long table), or a JSON landmark
table (:mod:`landmark_lit.data.landmark_tables`). World points in LPS become RAS by negating x and y; voxel
indices become world RAS through the image's affine (:func:`points_to_world`).

Written (:func:`write_slicer_markups`): a Slicer markups point list, its points in the system they are
stated in (:func:`world_to_points` states RAS world points in LPS).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landmark_lit.data.landmark_tables import (
    COORD_COLUMNS,
    LandmarkFileError,
    complete_or_missing,
    parse_coordinate,
    read_landmark_table,
)
from landmark_lit.data.transforms import voxel_to_world
from landmark_lit.utils import atomic_write_text

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


def world_to_points(points: np.ndarray, coordinate_system: str) -> np.ndarray:
    """(K, D) world mm RAS -> the same points stated in ``coordinate_system`` ("RAS" or "LPS")."""
    system = coordinate_system_of(coordinate_system)
    if system == "voxel":
        raise ValueError("world_to_points states world points in RAS or LPS; voxel indices need the affine")
    return points_to_world(points, system)  # RAS <-> LPS negates x and y: its own inverse


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
                raise LandmarkFileError(
                    f"a landmark_lit JSON table is RAS world mm, not {coordinate_system!r}"
                )
            table = read_landmark_table(path)
            return PointList(table.names, table.coords[_pick_case(table.cases, case)], "RAS")
        if name.endswith(".csv"):
            names, points = _read_point_csv(path.read_text(encoding="utf-8-sig"), case)
            return PointList(names, points, coordinate_system_of(coordinate_system))
    except (LandmarkFileError, ValueError) as exc:
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
    raise LandmarkFileError(
        f"holds cases {cases[:5]}{'...' if len(cases) > 5 else ''}, none of them {case!r}"
    )


def _unique(names: list[str]) -> list[str]:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LandmarkFileError(f"duplicate landmark names {duplicates}")
    return names


def _read_point_csv(text: str, case: str | None) -> tuple[list[str], np.ndarray]:
    """``landmark,x,y[,z]`` rows (``label`` or ``name`` also name the landmark); a ``case`` column selects."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    name_col = next((c for c in _NAME_COLUMNS if c in header), None)
    if name_col is None or "x" not in header or "y" not in header:
        raise LandmarkFileError(f"expected columns landmark,x,y[,z] (header is {header})")
    axes = COORD_COLUMNS if "z" in header else COORD_COLUMNS[:2]
    rows = [(line, row) for line, row in enumerate(reader, start=2)]
    if "case" in header:
        chosen = _pick_case(sorted({(r.get("case") or "").strip() for _, r in rows}), case)
        rows = [(line, r) for line, r in rows if (r.get("case") or "").strip() == chosen]
    names, points = [], []
    for line, row in rows:
        label = (row.get(name_col) or "").strip()
        if not label:
            raise LandmarkFileError(f"line {line}: empty landmark name")
        where = f"line {line} (landmark {label!r})"
        points.append(complete_or_missing([parse_coordinate(row.get(a), where) for a in axes], where))
        names.append(label)
    if not names:
        raise LandmarkFileError("no landmarks in file")
    return _unique(names), np.asarray(points, dtype=np.float64)


def _slicer_system(value: str) -> str:
    """Slicer's coordinate system flag: "RAS"/"0" or "LPS"/"1"."""
    text = str(value).strip().upper()
    if text in ("RAS", "0"):
        return "RAS"
    if text in ("LPS", "1"):
        return "LPS"
    raise LandmarkFileError(f"unsupported coordinate system {value!r} (expected RAS / 0 or LPS / 1)")


def _read_markups(data: dict) -> tuple[list[str], np.ndarray]:
    """Slicer markups JSON -> names, (K, 3) RAS. Control points not "defined" are missing (NaN)."""
    names, points = [], []
    markups = data.get("markups")
    if not isinstance(markups, list) or not markups:
        raise LandmarkFileError("'markups' must be a non-empty list")
    for markup in markups:
        if not isinstance(markup, dict):
            raise LandmarkFileError("every 'markups' entry must be an object")
        kind = markup.get("type", "Fiducial")  # Slicer writes "Fiducial" for point lists
        if kind != "Fiducial":
            raise LandmarkFileError(
                f"a {kind!r} markup, not a point list (only 'Fiducial' markups hold landmarks)"
            )
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
            raise LandmarkFileError(f"coordinate units {units!r}, only mm is supported")
        for n, cp in enumerate(markup.get("controlPoints") or [], start=1):
            label = str(cp.get("label") or cp.get("id") or "").strip()
            if not label:
                raise LandmarkFileError(f"control point {n} has no label")
            where = f"control point {n} ({label!r})"
            position = cp.get("position")
            status = cp.get("positionStatus", "defined")
            if status != "defined" or position in (None, "", []):
                point = [math.nan] * 3
            elif not isinstance(position, list) or len(position) != 3:
                raise LandmarkFileError(f"{where}: position must be 3 numbers, got {position!r}")
            else:
                point = complete_or_missing([parse_coordinate(v, where) for v in position], where)
            names.append(label)
            points.append(points_to_world(np.asarray(point, dtype=np.float64), system))
    if not names:
        raise LandmarkFileError("no control points in file")
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
        raise LandmarkFileError(
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
        raise LandmarkFileError(f"columns {columns} lack x, y, z or {name_column!r}")
    status_column = next((c for c in columns if c.lower() in _FCSV_STATUS_COLUMNS), None)
    status_field = _FCSV_STATUS_FIELD if status_column is None and tuple(columns) == _FCSV_COLUMNS else None
    names, points = [], []
    for n, row in enumerate(csv.reader(body), start=1):
        cells = dict(zip(columns, row, strict=False))
        label = (cells.get(name_column) or "").strip()
        if not label:
            raise LandmarkFileError(f"fiducial {n} has an empty {name_column!r}")
        where = f"fiducial {n} ({label!r})"
        if status_column is not None:
            status_cell = cells.get(status_column)
        else:
            status_cell = row[status_field] if status_field is not None and len(row) > status_field else None
        names.append(label)
        if _fcsv_status(status_cell, where) != _DEFINED:
            points.append([math.nan] * 3)
        else:
            points.append(
                complete_or_missing([parse_coordinate(cells.get(a), where) for a in COORD_COLUMNS], where)
            )
    if not names:
        raise LandmarkFileError("no fiducials in file")
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
    except LandmarkFileError as exc:
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
    """Write (K, 3) points as a Slicer markups point list (``.mrk.json``), atomically.

    ``points`` are world mm stated in ``coordinate_system`` ("LPS", Slicer 5's default, or "RAS") and are
    written as given (:func:`world_to_points` states RAS points in LPS). NaN rows become control points with
    ``positionStatus`` "missing", as Slicer writes them. ``descriptions``: one text per point, shown in
    Slicer's control point table (e.g. confidence and uncertainty radius).
    """
    system = coordinate_system_of(coordinate_system)
    if system == "voxel":
        raise ValueError("Slicer markups store world coordinates (RAS or LPS), not voxel indices")
    stated = np.asarray(points, dtype=np.float64)
    if stated.ndim != 2 or stated.shape != (len(names), 3):
        raise ValueError(f"{path}: markups need ({len(names)}, 3) points, got {stated.shape}")
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

"""Reading and checking a manifest: its rows, each case's image path and landmarks as stated.

The format is described in :mod:`landmark_lit.data.manifest`, which builds cases from these rows. Everything
but the images is read and checked here, so a broken manifest fails at once, with the manifest and row in
the message.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landmark_lit.data.landmark_tables import parse_point
from landmark_lit.data.point_files import PointList, coordinate_system_of, read_point_list
from landmark_lit.utils import read_table_text

_JSON_KEYS = {"coordinate_system", "landmarks", "cases", "meta"}
_CASE_KEYS = {"case", "image", "landmarks", "split", "coordinate_system", "meta"}
_AXES = ("x", "y", "z")


class ManifestError(ValueError):
    """A manifest, or one of its rows, is unusable; the message names the manifest and the row."""


@dataclass
class ManifestRow:
    """One case of a manifest, checked but with its image not yet read.

    Attributes:
        case: case id.
        image: image file or DICOM folder.
        points: the case's landmarks as stated (names, (K, D) coordinates, coordinate system).
        split: split name, if the manifest has splits.
        where: the row, for messages ("line 3 (case 'p001')").
    """

    case: str
    image: Path
    points: PointList
    split: str | None
    where: str


@dataclass
class _Entry:
    """One row of a manifest as written: its cells (CSV) or keys (JSON), and where it is."""

    values: dict[str, Any]
    location: str  # "line 3" (CSV) or "case #2" (JSON)

    @property
    def case(self) -> str:
        return str(self.values.get("case") or "").strip()

    @property
    def split(self) -> str | None:
        value = self.values.get("split")
        text = str(value).strip() if value is not None else ""
        return text or None

    @property
    def where(self) -> str:
        # "line 3 (case 'p001')" / "case #2 ('p001')"
        label = repr(self.case) if self.location.startswith("case") else f"case {self.case!r}"
        return f"{self.location} ({label})"


@dataclass
class ManifestFile:
    """A manifest's rows as written, read and checked the same way for training (:func:`parse_manifest`)
    and for prediction (:func:`manifest_images`): the file, its form (CSV header / JSON structure and
    keys), one image per row, unique case ids and the split selection."""

    path: Path
    entries: list[_Entry]
    header: list[str] | None  # CSV columns
    top: dict[str, Any]  # JSON top level (without "cases")

    @classmethod
    def read(cls, manifest: str | os.PathLike) -> ManifestFile:
        path, suffix, text = read_table_text(manifest, "manifest", ManifestError)
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if "image" not in header:
                raise ManifestError(f"{path}: missing columns ['image'] (header is {header})")
            entries = []
            for line, cells in enumerate(reader, start=2):
                if None in cells:
                    raise ManifestError(f"{path}: line {line}: more values than columns")
                entries.append(_Entry(dict(cells), f"line {line}"))
            top: dict[str, Any] = {}
        else:
            header = None
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}: invalid JSON ({exc})") from None
            if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
                raise ManifestError(f"{path}: expected an object with a 'cases' list")
            unknown = sorted(set(data) - _JSON_KEYS)
            if unknown:
                raise ManifestError(f"{path}: unknown keys {unknown} (expected {sorted(_JSON_KEYS)})")
            entries = []
            for n, entry in enumerate(data["cases"], start=1):
                if not isinstance(entry, dict):
                    raise ManifestError(f"{path}: case #{n}: expected an object")
                row = _Entry(entry, f"case #{n}")
                unknown = sorted(set(entry) - _CASE_KEYS)
                if unknown:
                    raise ManifestError(
                        f"{path}: {row.where}: unknown keys {unknown} (expected {sorted(_CASE_KEYS)})"
                    )
                entries.append(row)
            top = {k: v for k, v in data.items() if k != "cases"}
        if not entries:
            raise ManifestError(f"{path}: no cases")
        seen: dict[str, str] = {}
        for row in entries:
            if not str(row.values.get("image") or "").strip():
                raise ManifestError(f"{path}: {row.where}: no image")
            if row.case and row.case in seen:
                raise ManifestError(f"{path}: {row.where}: duplicate case id (first at {seen[row.case]})")
            seen[row.case] = row.where
        return cls(path, entries, header, top)

    def image_path(self, row: _Entry) -> Path:
        """The row's image, relative paths resolved against the manifest's folder (not checked)."""
        path = Path(str(row.values.get("image")).strip()).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    def select(self, rows: list[Any], split: str | None, split_of: Any) -> list[Any]:
        """The rows of ``split`` (all for None); a ManifestError if the manifest has no splits or none
        of its rows is in it."""
        if split is None:
            return rows
        if all(split_of(row) is None for row in rows):
            raise ManifestError(f"{self.path}: no split column or key, cannot select split {split!r}")
        rows = [row for row in rows if split_of(row) == str(split)]
        if not rows:
            raise ManifestError(f"{self.path}: no cases in split {split!r}")
        return rows


@dataclass
class ParsedManifest:
    """A manifest's rows of one split, checked, and the landmark list they are read in."""

    path: Path
    rows: list[ManifestRow]
    landmark_names: list[str]
    spatial_dims: int


def parse_manifest(
    manifest: str | os.PathLike,
    split: str | None = None,
    landmark_names: list[str] | None = None,
    coordinate_system: str = "RAS",
) -> ParsedManifest:
    """Read and check a manifest's rows (see :class:`~landmark_lit.data.manifest.ManifestCases` for the
    arguments); images are not read.

    Raises:
        ManifestError: one line naming the manifest and, where it applies, the row.
    """
    file = ManifestFile.read(manifest)
    parser = _RowParser(file.path)
    default_system = parser.system(coordinate_system, "coordinate_system argument")
    parse = parser.parse_csv if file.header is not None else parser.parse_json
    rows, declared = parse(file, default_system)
    dims = {row.points.points.shape[1] for row in rows}
    if len(dims) > 1:
        raise ManifestError(f"{file.path}: cases mix 2D and 3D landmarks")
    rows = file.select(rows, split, lambda row: row.split)
    return ParsedManifest(file.path, rows, parser.names(rows, declared, landmark_names), dims.pop())


class _RowParser:
    """Rows of one manifest -> :class:`ManifestRow`; every message names the manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def system(self, value: Any, where: str) -> str:
        try:
            return coordinate_system_of(value)
        except ValueError as exc:
            raise ManifestError(f"{self.path}: {where}: {exc}") from None

    def file(self, value: Any, where: str, what: str) -> Path:
        text = str(value).strip() if value is not None else ""
        if not text:
            raise ManifestError(f"{self.path}: {where}: no {what}")
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.path.parent / path
        if not path.exists():
            raise ManifestError(f"{self.path}: {where}: {what} not found: {path}")
        return path

    def point_file(self, value: Any, case: str, system: str, where: str) -> PointList:
        path = self.file(value, where, "landmark file")
        try:
            return read_point_list(path, system, case=case)
        except ValueError as exc:
            raise ManifestError(f"{self.path}: {where}: {exc}") from None

    def inline(self, names: list[str], values: list[Any], dims: int, system: str, where: str) -> PointList:
        points = []
        for name, value in zip(names, values, strict=True):
            try:
                points.append(parse_point(value, dims))
            except ValueError as exc:
                raise ManifestError(f"{self.path}: {where}, landmark {name!r}: {exc}") from None
        return PointList(list(names), np.asarray(points, dtype=np.float64).reshape(len(names), dims), system)

    def case(self, row: _Entry) -> str:
        if not row.case:
            raise ManifestError(f"{self.path}: {row.location}: no case id")
        return row.case

    def parse_csv(
        self, file: ManifestFile, default_system: str
    ) -> tuple[list[ManifestRow], list[str] | None]:
        header = file.header
        if "case" not in header:
            raise ManifestError(f"{self.path}: missing columns ['case'] (header is {header})")
        inline = [h[:-2] for h in header if h.endswith("_x")]
        if ("landmarks" in header) == bool(inline):
            raise ManifestError(
                f"{self.path}: give either a 'landmarks' column (point files) or inline columns "
                f"<name>_x,<name>_y[,<name>_z] (header is {header})"
            )
        dims = 3 if any(f"{n}_z" in header for n in inline) else 2
        for name in inline:
            absent = [f"{name}_{a}" for a in _AXES[:dims] if f"{name}_{a}" not in header]
            if absent:
                raise ManifestError(
                    f"{self.path}: landmark {name!r} lacks columns {absent} ({dims}D manifest)"
                )
        rows = []
        for entry in file.entries:
            cells, case, where = entry.values, self.case(entry), entry.where
            system = default_system
            if (cells.get("coordinate_system") or "").strip():
                system = self.system(cells["coordinate_system"], where)
            image = self.file(cells.get("image"), where, "image")
            if inline:
                values = [[cells.get(f"{n}_{a}") for a in _AXES[:dims]] for n in inline]
                points = self.inline(inline, values, dims, system, where)
            else:
                points = self.point_file(cells.get("landmarks"), case, system, where)
            rows.append(ManifestRow(case, image, points, entry.split, where))
        return rows, (inline or None)

    def parse_json(
        self, file: ManifestFile, default_system: str
    ) -> tuple[list[ManifestRow], list[str] | None]:
        top = file.top
        system_all = (
            self.system(top["coordinate_system"], "top level") if "coordinate_system" in top else None
        )
        declared = top.get("landmarks")
        if declared is not None and (
            not isinstance(declared, list) or not all(isinstance(n, str) and n for n in declared)
        ):
            raise ManifestError(f"{self.path}: 'landmarks' must be a list of names")
        if declared is not None and len(set(declared)) != len(declared):
            raise ManifestError(f"{self.path}: duplicate landmark names in 'landmarks'")
        rows = []
        for entry in file.entries:
            values, case, where = entry.values, self.case(entry), entry.where
            system = system_all or default_system
            if values.get("coordinate_system") is not None:
                system = self.system(values["coordinate_system"], where)
            image = self.file(values.get("image"), where, "image")
            points = self.json_points(values.get("landmarks"), declared, case, system, where)
            rows.append(ManifestRow(case, image, points, entry.split, where))
        return rows, declared

    def json_points(
        self, value: Any, declared: list[str] | None, case: str, system: str, where: str
    ) -> PointList:
        if isinstance(value, str):
            return self.point_file(value, case, system, where)
        if isinstance(value, dict):
            names, values = list(value), list(value.values())
        elif isinstance(value, list):
            if declared is None:
                raise ManifestError(
                    f"{self.path}: {where}: an inline point list needs the top-level 'landmarks'"
                )
            if len(value) != len(declared):
                raise ManifestError(
                    f"{self.path}: {where}: {len(value)} points for {len(declared)} landmarks {declared}"
                )
            names, values = declared, value
        else:
            raise ManifestError(f"{self.path}: {where}: 'landmarks' must be a file path, a list or an object")
        known = next((v for v in values if v is not None), None)
        dims = len(known) if isinstance(known, (list, tuple)) and len(known) in (2, 3) else 3
        return self.inline(names, values, dims, system, where)

    def names(
        self, rows: list[ManifestRow], declared: list[str] | None, requested: list[str] | None
    ) -> list[str]:
        """The landmark list: requested, else declared, else the files' in order of first appearance."""
        if declared is not None:
            for row in rows:
                unknown = [n for n in row.points.names if n not in declared]
                if unknown:
                    raise ManifestError(
                        f"{self.path}: {row.where}: unknown landmarks {unknown} (the manifest lists {declared})"
                    )
            available = list(declared)
        else:
            available = list(dict.fromkeys(n for row in rows for n in row.points.names))
        if requested is None:
            return available
        requested = [str(n) for n in requested]
        unknown = [n for n in requested if n not in available]
        if unknown:
            raise ManifestError(f"{self.path}: unknown landmarks {unknown} (the manifest has {available})")
        if len(set(requested)) != len(requested):
            raise ManifestError(f"{self.path}: landmark_names lists a landmark twice: {requested}")
        return requested


def manifest_images(manifest: str | os.PathLike, split: str | None = None) -> list[tuple[str | None, Path]]:
    """(case, image path) of every row of a manifest, for prediction: landmarks are not needed or read.

    The manifest is read and checked as by :class:`ManifestCases` (the same forms, keys, duplicate-case
    and split rules), except that a ``case`` column or key is optional (None: the image's file name then
    names the case) and images are not checked here (prediction reports a missing image and goes on);
    relative paths are resolved against the manifest's folder.
    """
    file = ManifestFile.read(manifest)
    rows = file.select(file.entries, split, lambda row: row.split)
    return [(row.case or None, file.image_path(row)) for row in rows]


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a manifest rather than a landmark table: a JSON whose ``cases`` is a list (a
    table's is an object), or a CSV with an ``image`` column and no ``landmark`` column."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            return isinstance(data, dict) and isinstance(data.get("cases"), list)
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as stream:
                header = [h.strip() for h in next(csv.reader(stream), [])]
            return "image" in header and "landmark" not in header
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # the table reader names the problem
    return False

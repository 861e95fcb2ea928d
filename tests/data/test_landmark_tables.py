"""Landmark tables (CSV / JSON of many cases): round trips, landmark order, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from landmark_lit.data.landmark_tables import (
    LandmarkTable,
    parse_point,
    read_landmark_table,
    write_landmark_table,
)

NAN = math.nan


def _table_3d() -> LandmarkTable:
    return LandmarkTable(
        names=["nasion", "sella", "tip"],
        coords={
            "b": np.array([[1.0, 2.0, 3.0], [NAN, NAN, NAN], [0.1, -7.25, 1e-7]]),
            "a": np.array([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]),
        },
        images={"a": "images/a.nii.gz"},
        seconds={"a": 0.5, "b": 0.25},
        seconds_without_io={"a": 0.125},
    )


def _assert_same(read: LandmarkTable, table: LandmarkTable) -> None:
    assert read.names == table.names
    assert read.cases == table.cases
    for case in table.cases:
        np.testing.assert_array_equal(read.coords[case], table.coords[case])  # NaN == NaN here


def test_table_properties() -> None:
    table = _table_3d()
    assert table.cases == ["a", "b"]
    assert table.spatial_dims == 3
    with pytest.raises(ValueError, match="shape"):
        LandmarkTable(names=["x"], coords={"a": np.zeros((2, 2))})


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_with_nan(tmp_path: Path, suffix: str) -> None:
    table = _table_3d()
    path = tmp_path / f"landmarks{suffix}"
    write_landmark_table(path, table)
    read = read_landmark_table(path)
    _assert_same(read, table)
    if suffix == ".json":
        assert read.images == table.images
        assert read.seconds == table.seconds
        assert read.seconds_without_io == table.seconds_without_io
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_round_trip_2d_with_voxel_columns(tmp_path: Path) -> None:
    table = LandmarkTable(names=["L1", "L2"], coords={"c": np.array([[1.5, 2.5], [NAN, NAN]])})
    voxel = {"c": np.array([[3.0, 5.0], [NAN, NAN]])}
    write_landmark_table(tmp_path / "t.csv", table, voxel=voxel)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines == ["case,landmark,x,y,i,j", "c,L1,1.5,2.5,3.0,5.0", "c,L2,nan,nan,nan,nan"]
    _assert_same(read_landmark_table(tmp_path / "t.csv"), table)
    write_landmark_table(tmp_path / "t.json", table, voxel=voxel)
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["coordinate_system"] == "world_mm"
    assert data["cases"]["c"] == {"world_mm": [[1.5, 2.5], None], "voxel": [[3.0, 5.0], None]}
    _assert_same(read_landmark_table(tmp_path / "t.json"), table)


def test_csv_extra_columns_missing_rows_and_order(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "case,landmark,x,y,confidence\nc2,A,1,2,0.9\nc2,C,,,0.1\nc1,A,3,4,1\nc1,B,5,6,1\nc1,C,NaN,nan,1\n"
    )
    table = read_landmark_table(path)
    # first appearance is A, C, B, but c1 shows that B (absent from c2) comes before C
    assert table.names == ["A", "B", "C"]
    assert table.spatial_dims == 2
    np.testing.assert_array_equal(table.coords["c1"], [[3, 4], [5, 6], [NAN, NAN]])
    np.testing.assert_array_equal(table.coords["c2"], [[1, 2], [NAN, NAN], [NAN, NAN]])  # B has no row


def test_csv_order_of_first_appearance(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("case,landmark,x,y\nz,S,1,2\nz,N,3,4\na,S,5,6\na,N,7,8\n")
    table = read_landmark_table(path)
    assert table.names == ["S", "N"]
    assert table.cases == ["a", "z"]
    np.testing.assert_array_equal(table.coords["a"], [[5, 6], [7, 8]])


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("cols.csv", "case,landmark,x\nc,A,1\n", "missing columns"),
        ("num.csv", "case,landmark,x,y\nc,A,1,abc\n", "non-numeric"),
        ("dim.csv", "case,landmark,x,y,z\nc,A,1,2,\n", "inconsistent dimensionality"),
        ("dup.csv", "case,landmark,x,y\nc,A,1,2\nc,A,1,2\n", "duplicate"),
        ("order.csv", "case,landmark,x,y\nc,A,1,2\nc,B,1,2\nd,B,1,2\nd,A,1,2\n", "order"),
        ("partial.csv", "case,landmark,x,y\nc,A,1,nan\n", "missing"),
        ("empty.csv", "case,landmark,x,y\n", "no landmarks"),
        (
            "dim.json",
            '{"landmarks": ["A", "B"], "cases": {"c": {"world_mm": [[1, 2], [1, 2, 3]]}}}',
            "dimension",
        ),
        ("num.json", '{"landmarks": ["A"], "cases": {"c": {"world_mm": [[1, "x"]]}}}', "non-numeric"),
        ("count.json", '{"landmarks": ["A", "B"], "cases": {"c": {"world_mm": [[1, 2]]}}}', "2 points"),
        ("sys.json", '{"coordinate_system": "voxel", "landmarks": [], "cases": {}}', "coordinate_system"),
        ("bad.json", "{not json", "invalid JSON"),
        ("t.txt", "case,landmark,x,y\n", "unknown landmark file type"),
    ],
)
def test_bad_files_raise_value_error_naming_file(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as info:
        read_landmark_table(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found") as info:
        read_landmark_table(tmp_path / "absent.csv")
    assert str(tmp_path / "absent.csv") in str(info.value)


def test_parse_point_checks_counts_and_missing_values():
    np.testing.assert_allclose(parse_point(["1", 2, 3.5], 3), [1, 2, 3.5])
    assert np.isnan(parse_point(None, 3)).all() and np.isnan(parse_point(["", "nan", None], 3)).all()
    with pytest.raises(ValueError, match="expected 3 coordinates"):
        parse_point([1, 2], 3)
    with pytest.raises(ValueError, match="some coordinates are missing"):
        parse_point([1, None, 2], 3)

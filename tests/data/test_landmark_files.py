"""Landmark tables (CSV / JSON) and point files (Slicer .mrk.json / .fcsv, CSV), their coordinate systems and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from landmark_lit.data.landmark_files import (
    LandmarkTable,
    parse_point,
    points_to_world,
    read_fcsv,
    read_landmark_table,
    read_point_list,
    write_landmark_table,
    write_slicer_markups,
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


RAS = np.array([[10.5, -20.25, 3.0], [np.nan, np.nan, np.nan], [-1.0, 2.0, -3.5]])


NAMES = ["A", "B", "C"]


def test_lps_and_voxel_points_become_ras():
    np.testing.assert_allclose(points_to_world(np.array([[1.0, 2.0, 3.0]]), "lps"), [[-1.0, -2.0, 3.0]])
    affine = np.array([[0, 2.0, 0, 5], [1.5, 0, 0, -3], [0, 0, 0.5, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(
        points_to_world(np.array([[1.0, 2.0, 4.0]]), "voxel", affine), [[9.0, -1.5, 3.0]]
    )
    assert np.isnan(points_to_world(np.full((1, 3), np.nan), "LPS")).all()
    with pytest.raises(ValueError, match="need the image affine"):
        points_to_world(np.zeros((1, 3)), "voxel")
    with pytest.raises(ValueError, match="unknown coordinate system 'IJK'"):
        points_to_world(np.zeros((1, 3)), "IJK")


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_markups_round_trip_with_a_missing_point(tmp_path, system):
    path = tmp_path / "p.mrk.json"
    write_slicer_markups(path, NAMES, RAS, coordinate_system=system)
    data = json.loads(path.read_text())
    stored = data["markups"][0]["controlPoints"]
    assert data["markups"][0]["coordinateSystem"] == system and stored[1]["positionStatus"] == "missing"
    sign = np.array([-1, -1, 1]) if system == "LPS" else np.ones(3)
    np.testing.assert_allclose(stored[0]["position"], RAS[0] * sign)
    points = read_point_list(path)
    assert points.names == NAMES
    np.testing.assert_allclose(points.world(), RAS)


def test_slicer_markups_as_slicer_writes_them(tmp_path):
    # no coordinateSystem key means LPS in Slicer; "undefined" points are missing
    data = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
        "Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {
                "type": "Fiducial",
                "coordinateUnits": "mm",
                "controlPoints": [
                    {"id": "1", "label": "F-1", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
                    {"id": "2", "label": "F-2", "position": "", "positionStatus": "undefined"},
                ],
            }
        ],
    }
    (tmp_path / "s.mrk.json").write_text(json.dumps(data))
    points = read_point_list(tmp_path / "s.mrk.json")
    assert points.names == ["F-1", "F-2"]
    np.testing.assert_allclose(points.world()[0], [-1.0, -2.0, 3.0])
    assert np.isnan(points.world()[1]).all()


FCSV = """# Markups fiducial file version = 4.11
# CoordinateSystem = {system}
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_1,1.5,-2.5,3.5,0,0,0,1,1,1,0,AC,anterior commissure,
vtkMRMLMarkupsFiducialNode_2,-4,5,6,0,0,0,1,1,1,0,PC,posterior commissure,
"""


@pytest.mark.parametrize("system,sign", [("0", 1), ("RAS", 1), ("1", -1), ("LPS", -1)])
def test_fcsv_honours_its_coordinate_system_header(tmp_path, system, sign):
    (tmp_path / "f.fcsv").write_text(FCSV.format(system=system))
    names, ras = read_fcsv(tmp_path / "f.fcsv")
    assert names == ["AC", "PC"]
    np.testing.assert_allclose(ras, [[1.5 * sign, -2.5 * sign, 3.5], [-4 * sign, 5 * sign, 6]])
    names, _ = read_fcsv(tmp_path / "f.fcsv", name_column="desc")
    assert names == ["anterior commissure", "posterior commissure"]
    np.testing.assert_allclose(read_point_list(tmp_path / "f.fcsv", coordinate_system="voxel").world(), ras)


def test_fcsv_without_header_is_ras_as_in_old_slicer(tmp_path):
    (tmp_path / "f.fcsv").write_text("\n".join(FCSV.format(system="1").splitlines()[3:]))
    _, ras = read_fcsv(tmp_path / "f.fcsv")
    np.testing.assert_allclose(ras[0], [1.5, -2.5, 3.5])


def test_csv_point_file_in_voxels_and_a_long_table_picks_its_case(tmp_path):
    (tmp_path / "p.csv").write_text("landmark,x,y,z\nA,1,2,3\nB,,,\n")
    points = read_point_list(tmp_path / "p.csv", coordinate_system="voxel")
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(points.world(affine)[0], [2.0, 6.0, 12.0])
    assert np.isnan(points.world(affine)[1]).all()
    table = LandmarkTable(NAMES, {"c1": RAS, "c2": RAS + 1})
    write_landmark_table(tmp_path / "t.csv", table)
    write_landmark_table(tmp_path / "t.json", table)
    for name in ("t.csv", "t.json"):
        np.testing.assert_allclose(read_point_list(tmp_path / name, case="c2").points, RAS + 1)
        with pytest.raises(ValueError, match=rf"{name}: holds cases \['c1', 'c2'\], none of them 'c3'"):
            read_point_list(tmp_path / name, case="c3")


def test_point_file_errors_name_the_file(tmp_path):
    (tmp_path / "bad.csv").write_text("landmark,x,y,z\nA,1,,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2 .*some coordinates are missing"):
        read_point_list(tmp_path / "bad.csv")
    (tmp_path / "dup.fcsv").write_text(FCSV.format(system="0").replace(",PC,", ",AC,"))
    with pytest.raises(ValueError, match=r"dup\.fcsv: duplicate landmark names \['AC'\]"):
        read_point_list(tmp_path / "dup.fcsv")
    with pytest.raises(ValueError, match=r"nope\.fcsv: landmark file not found"):
        read_point_list(tmp_path / "nope.fcsv")
    (tmp_path / "p.txt").write_text("")
    with pytest.raises(ValueError, match=r"p\.txt: unknown landmark file type"):
        read_point_list(tmp_path / "p.txt")


def test_parse_point_checks_counts_and_missing_values():
    np.testing.assert_allclose(parse_point(["1", 2, 3.5], 3), [1, 2, 3.5])
    assert np.isnan(parse_point(None, 3)).all() and np.isnan(parse_point(["", "nan", None], 3)).all()
    with pytest.raises(ValueError, match="expected 3 coordinates"):
        parse_point([1, 2], 3)
    with pytest.raises(ValueError, match="some coordinates are missing"):
        parse_point([1, None, 2], 3)


def test_slicer_markups_units_in_both_forms_and_other_markup_types(tmp_path):
    """coordinateUnits as the schema allows it, a string or a coded entry ["mm", "UCUM", "millimeter"];
    a line (or any markup that is not a point list) is refused with its type named."""
    point = {"id": "1", "label": "A", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"}
    for units in ("mm", ["mm", "UCUM", "millimeter"]):
        data = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": units,
                             "controlPoints": [point]}]}  # fmt: skip
        (tmp_path / "u.mrk.json").write_text(json.dumps(data))
        np.testing.assert_allclose(read_point_list(tmp_path / "u.mrk.json").world(), [[1.0, 2.0, 3.0]])
    data["markups"][0]["coordinateUnits"] = ["um", "UCUM", "micrometer"]
    (tmp_path / "um.mrk.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"um\.mrk\.json: coordinate units .*only mm"):
        read_point_list(tmp_path / "um.mrk.json")
    line = {"markups": [{"type": "Line", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                         "controlPoints": [point, {**point, "id": "2", "label": "B"}]}]}  # fmt: skip
    (tmp_path / "line.mrk.json").write_text(json.dumps(line))
    with pytest.raises(ValueError, match=r"line\.mrk\.json: a 'Line' markup, not a point list"):
        read_point_list(tmp_path / "line.mrk.json")


# a point list as Slicer 5 saves it to .fcsv (vtkMRMLMarkupsFiducialStorageNode::GetPointAsString): the columns
# line lists 14 columns, each row carries two more, the position status (0 undefined, 1 preview, 2 defined,
# 3 missing) and autoCreated; a missing point keeps its last position, an undefined one is written at 0,0,0
SLICER5_FCSV = """{version}# CoordinateSystem = LPS
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
1,-10.5,20.25,3,0,0,0,1,1,1,0,S,sella,vtkMRMLScalarVolumeNode1,2,0
2,-7,30,1.5,0,0,0,1,1,1,0,N,nasion,vtkMRMLScalarVolumeNode1,3,0
3,0,0,0,0,0,0,1,1,1,0,Po,porion,,0,0
4,12,-8,2,0,0,0,1,1,1,0,Or,orbitale,,1,0
5,4,-5,6,0,0,0,1,1,1,0,"Go, left",gonion,,2,0
"""
SLICER5_NAMES = ["S", "N", "Po", "Or", "Go, left"]
SLICER5_RAS = [[10.5, -20.25, 3.0], [NAN] * 3, [NAN] * 3, [NAN] * 3, [-4.0, 5.0, 6.0]]


@pytest.mark.parametrize(
    "version", ["# Markups fiducial file version = 5.6\n", ""], ids=["version-line", "no-version-line"]
)
def test_fcsv_as_slicer_5_writes_it_points_not_defined_are_nan(tmp_path, version):
    """Missing, undefined and preview points are NaN whatever coordinates their row carries; defined points
    are read in RAS (the file is LPS); the newest Slicer writes no version line."""
    path = tmp_path / "s.fcsv"
    path.write_text(SLICER5_FCSV.format(version=version))
    names, ras = read_fcsv(path)
    assert names == SLICER5_NAMES
    np.testing.assert_array_equal(ras, SLICER5_RAS)
    assert read_fcsv(path, name_column="desc")[0] == ["sella", "nasion", "porion", "orbitale", "gonion"]
    points = read_point_list(path)
    assert points.names == SLICER5_NAMES and points.coordinate_system == "LPS"
    np.testing.assert_array_equal(points.world(), SLICER5_RAS)


def test_fcsv_slicer_5_rows_with_windows_line_endings(tmp_path):
    """CRLF rows, and a CR left in the last listed cell before the status (a CRLF file saved again by Slicer)."""
    text = SLICER5_FCSV.format(version="# Markups fiducial file version = 5.2\n").replace("\n", "\r\n")
    text = text.replace("vtkMRMLScalarVolumeNode1,", "vtkMRMLScalarVolumeNode1\r,").replace(",,", ",\r,", 1)
    (tmp_path / "w.fcsv").write_bytes(text.encode())
    names, ras = read_fcsv(tmp_path / "w.fcsv")
    assert names == SLICER5_NAMES
    np.testing.assert_array_equal(ras, SLICER5_RAS)


@pytest.mark.parametrize("column", ["positionStatus", "pointPositionStatus"])
def test_fcsv_status_column_named_in_the_columns_line(tmp_path, column):
    header = f"# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID,{column},autoCreated"
    text = SLICER5_FCSV.format(version="").replace(SLICER5_FCSV.splitlines()[1], header)
    (tmp_path / "n.fcsv").write_text(text)
    names, ras = read_fcsv(tmp_path / "n.fcsv")
    assert names == SLICER5_NAMES
    np.testing.assert_array_equal(ras, SLICER5_RAS)
    # a named column may also hold the names .mrk.json files use
    (tmp_path / "w.fcsv").write_text(text.replace(",3,0\n", ",missing,0\n").replace(",2,0\n", ",defined,0\n"))
    np.testing.assert_array_equal(read_fcsv(tmp_path / "w.fcsv")[1], SLICER5_RAS)


def test_fcsv_without_status_column_reads_as_before(tmp_path):
    """Slicer before 5 writes no status: every row is a point, 0,0,0 included; cells past a columns line that
    is not Slicer's own are not taken for a status."""
    (tmp_path / "old.fcsv").write_text(FCSV.format(system="LPS").replace("-4,5,6", "0,0,0"))
    names, ras = read_fcsv(tmp_path / "old.fcsv")
    assert names == ["AC", "PC"]
    np.testing.assert_array_equal(ras, [[-1.5, 2.5, 3.5], [0.0, 0.0, 0.0]])
    (tmp_path / "other.fcsv").write_text("# columns = label,x,y,z\nA,1,2,3,0,0\n")
    np.testing.assert_array_equal(read_fcsv(tmp_path / "other.fcsv")[1], [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("status", ["7", "x", "2.5"])
def test_fcsv_bad_position_status_is_a_one_line_error(tmp_path, status):
    (tmp_path / "bad.fcsv").write_text(SLICER5_FCSV.format(version="").replace(",2,0\n", f",{status},0\n", 1))
    for read in (read_fcsv, read_point_list):
        with pytest.raises(
            ValueError, match=rf"bad\.fcsv: fiducial 1 \('S'\): position status '{status}' is not 0"
        ) as info:
            read(tmp_path / "bad.fcsv")
        assert "\n" not in str(info.value)


def test_slicer_markups_points_not_defined_are_nan_even_with_a_position(tmp_path):
    """Slicer writes "" as the position of a point that is not defined; a position there is still ignored."""
    control = [
        {"id": "1", "label": "A", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
        {"id": "2", "label": "B", "position": [4.0, 5.0, 6.0], "positionStatus": "missing"},
        {"id": "3", "label": "C", "position": [7.0, 8.0, 9.0], "positionStatus": "preview"},
        {"id": "4", "label": "D", "position": "", "positionStatus": "missing"},
    ]
    data = {
        "markups": [
            {"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "controlPoints": control}
        ]
    }
    (tmp_path / "m.mrk.json").write_text(json.dumps(data))
    np.testing.assert_array_equal(
        read_point_list(tmp_path / "m.mrk.json").world(), [[-1.0, -2.0, 3.0]] + [[NAN] * 3] * 3
    )

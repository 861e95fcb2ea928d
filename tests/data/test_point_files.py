"""Point files of one case (Slicer .mrk.json / .fcsv, CSV, JSON tables), their coordinate systems and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from landmark_lit.data.landmark_tables import LandmarkTable, write_landmark_table
from landmark_lit.data.point_files import (
    points_to_world,
    read_fcsv,
    read_point_list,
    world_to_points,
    write_slicer_markups,
)

NAN = math.nan


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
    write_slicer_markups(path, NAMES, world_to_points(RAS, system), coordinate_system=system)
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


def test_slicer_markups_writer_keeps_points_as_stated_and_checks_their_shape(tmp_path):
    path = tmp_path / "p.mrk.json"
    stated = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    write_slicer_markups(path, ["P", "Q"], stated, coordinate_system="LPS")
    stored = json.loads(path.read_text())["markups"][0]["controlPoints"]
    np.testing.assert_allclose([cp["position"] for cp in stored], stated)  # written as given, LPS
    np.testing.assert_allclose(read_point_list(path).world(), stated * [-1, -1, 1])  # read back as RAS
    with pytest.raises(ValueError, match=r"q\.mrk\.json: markups need \(2, 3\) points, got \(2, 2\)"):
        write_slicer_markups(tmp_path / "q.mrk.json", ["P", "Q"], stated[:, :2])
    assert not (tmp_path / "q.mrk.json").exists()
    with pytest.raises(ValueError, match="voxel indices need the affine"):
        world_to_points(stated, "voxel")

"""Point files of one case: Slicer .mrk.json / .fcsv, CSV and JSON, in RAS, LPS or voxel coordinates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landmark_lit.data.landmark_files import (
    LandmarkTable,
    parse_point,
    points_to_world,
    read_fcsv,
    read_point_list,
    write_landmark_table,
    write_slicer_markups,
)

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

"""ManifestCases: user manifests (CSV / JSON), coordinate systems, errors, and landmarks that stay on their
voxel through reading, resampling, far-end padding and cropping."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from landmark_lit.data.datasets import GlobalTrainDataset, LocalTrainDataset, PreparedCases
from landmark_lit.data.io import save_nifti
from landmark_lit.data.landmark_tables import write_landmark_table
from landmark_lit.data.manifest import ManifestCases, ManifestError, read_references, write_manifest
from landmark_lit.data.manifest_rows import is_manifest
from landmark_lit.data.point_files import world_to_points, write_slicer_markups
from landmark_lit.data.transforms import Preprocessing, pad_to_min_size, voxel_to_world, world_to_voxel

LPS = np.array([-1.0, -1.0, 1.0])


def rotation(axis, deg: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * np.radians(deg)).as_matrix()


def affine_of(linear: np.ndarray, origin) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, origin
    return out


AFFINES = {
    "ras_anisotropic": affine_of(np.diag([0.8, 1.1, 2.5]), (-20.0, 15.0, -7.0)),
    # as a DICOM / NRRD volume in LPS orientation arrives in RAS, tilted about a skew axis
    "lps_oblique": affine_of(
        np.diag(LPS) @ rotation((1, 2, 3), 17.0) @ np.diag([0.9, 0.9, 1.7]), (30, 40, -5)
    ),
    # olfactory-MR-like: 0.47 mm in plane, 1 mm coronal slices, oblique
    "oblique_thin_slices": affine_of(rotation((0, 1, 1), 12.0) @ np.diag([0.47, 1.0, 0.47]), (-14, 3, 8)),
}
SHAPE = (40, 14, 36)
VOXELS = np.array([[17.0, 6.0, 9.0], [5.0, 2.0, 30.0]])


def write_case(folder: Path, name: str, affine: np.ndarray, voxel: np.ndarray) -> Path:
    image = np.zeros(SHAPE, np.float32)
    image[tuple(voxel.astype(int))] = 1000.0
    save_nifti(folder / f"{name}.nii.gz", image, affine)
    return folder / f"{name}.nii.gz"


def argmax_voxel(image: torch.Tensor) -> np.ndarray:
    return np.array(np.unravel_index(int(image[0].argmax()), image.shape[1:]), float)


@pytest.mark.parametrize("system", ["RAS", "LPS", "voxel"])
@pytest.mark.parametrize("geometry", list(AFFINES))
def test_round_trip_and_bright_voxel_through_every_transform(tmp_path, geometry, system):
    affine = AFFINES[geometry]
    world = voxel_to_world(VOXELS, affine)
    stated = {"RAS": world, "LPS": world * LPS, "voxel": VOXELS}[system]
    write_case(tmp_path, "c0", affine, VOXELS[0])
    manifest = {
        "coordinate_system": system,
        "landmarks": ["bright", "other"],
        "cases": [{"case": "c0", "image": "c0.nii.gz", "landmarks": stated.tolist(), "split": "train"}],
    }
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    source = ManifestCases(tmp_path / "m.json", split="train")
    case = source[0]
    np.testing.assert_allclose(case.landmarks_world, world, atol=1e-6)  # read back in world RAS

    prep = PreparedCases(source, Preprocessing(spacing=1.5, intensity="none", min_size=24))[0]
    aff = prep["affine"].numpy()
    assert min(prep["image"].shape[1:]) >= 24  # the thin axis is zero-padded at the far end
    q = prep["voxels"].numpy().astype(np.float64)
    np.testing.assert_allclose(voxel_to_world(q, aff), world, atol=0.01)  # world -> voxel -> resample -> back
    assert np.all(np.abs(argmax_voxel(prep["image"]) - q[0]) <= 0.5 + 1e-6)

    for dataset in (
        GlobalTrainDataset(PreparedCases(source, Preprocessing(1.5, "none", min_size=24)), (16,) * 3, 6),
    ):
        for i in range(6):
            item = dataset[i]
            back = voxel_to_world((item["landmarks"] + item["origin"]).double().numpy(), aff)
            np.testing.assert_allclose(back, world, atol=0.01)  # crop -> back
            lm = item["landmarks"][0].numpy()
            if np.all((lm >= 0) & (lm <= 15)):
                assert np.all(np.abs(argmax_voxel(item["image"]) - lm) <= 0.5 + 1e-6)
    local = LocalTrainDataset(PreparedCases(source, Preprocessing(1.0, "none")), (8, 8, 8), 4, margin=1.0)
    for i in range(4):
        item = local[i]
        aff1 = PreparedCases(source, Preprocessing(1.0, "none"))[0]["affine"].numpy()
        back = voxel_to_world((item["landmarks"] + item["origin"]).double().numpy(), aff1)
        np.testing.assert_allclose(back, world, atol=0.01)
        assert np.all(np.abs(argmax_voxel(item["image"][0]) - item["landmarks"][0].numpy()) <= 0.5 + 1e-6)


def test_pad_to_min_size_pads_only_short_axes_at_the_far_end():
    image = torch.arange(24.0).view(1, 2, 3, 4) + 1
    out = pad_to_min_size(image, [1, 5, 4])
    assert out.shape == (1, 2, 5, 4) and torch.equal(out[:, :, :3], image) and out[:, :, 3:].abs().sum() == 0
    assert pad_to_min_size(image, None) is image and pad_to_min_size(image, 2) is image
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    x, aff = Preprocessing(spacing=2.0, intensity="none", min_size=6)(image.numpy(), affine)
    assert x.shape == (1, 6, 6, 6) and np.array_equal(aff, affine) and torch.equal(x[:, :2, :3, :4], image)


@pytest.fixture
def study(tmp_path) -> Path:
    """Three cases: a Slicer file in LPS, an fcsv in RAS, a voxel CSV; one landmark missing in case c."""
    affine = AFFINES["lps_oblique"]
    world = voxel_to_world(VOXELS, affine)
    (tmp_path / "img").mkdir()
    for name in "abc":
        write_case(tmp_path / "img", name, affine, VOXELS[0])
    write_slicer_markups(
        tmp_path / "a.mrk.json", ["P", "Q"], world_to_points(world, "LPS"), coordinate_system="LPS"
    )
    fcsv = "# CoordinateSystem = RAS\n# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    fcsv += "".join(
        f"{k},{x},{y},{z},0,0,0,1,1,1,0,{n},,\n"
        for k, (n, (x, y, z)) in enumerate(zip("QP", world[::-1], strict=True))
    )
    (tmp_path / "b.fcsv").write_text(fcsv)
    (tmp_path / "c.csv").write_text("landmark,x,y,z\nP,{},{},{}\n".format(*VOXELS[0]))
    (tmp_path / "m.csv").write_text(
        "case,image,landmarks,split,coordinate_system\n"
        "a,img/a.nii.gz,a.mrk.json,train,\n"
        "b,img/b.nii.gz,b.fcsv,train,\n"
        f"c,{tmp_path / 'img' / 'c.nii.gz'},c.csv,val,voxel\n"
    )
    return tmp_path


def test_csv_manifest_with_slicer_fcsv_and_voxel_files(study):
    world = voxel_to_world(VOXELS, AFFINES["lps_oblique"])
    every = ManifestCases(study / "m.csv")
    assert every.cases == ["a", "b", "c"] and every.landmark_names == ["P", "Q"] and every.spatial_dims == 3
    for index in range(2):
        np.testing.assert_allclose(every[index].landmarks_world, world, atol=1e-6)
    c = every[2]
    np.testing.assert_allclose(c.landmarks_world[0], world[0], atol=1e-6)
    assert np.isnan(c.landmarks_world[1]).all() and c.meta["split"] == "val"
    train = ManifestCases(study / "m.csv", split="train", landmark_names=["Q", "P"])
    assert len(train) == 2 and train.landmark_names == ["Q", "P"]
    np.testing.assert_allclose(train[1].landmarks_world, world[::-1], atol=1e-6)
    assert train[0].image.shape == (1, *SHAPE) and train[0].image_path.endswith("a.nii.gz")


def test_inline_csv_and_json_forms(tmp_path):
    affine = AFFINES["ras_anisotropic"]
    write_case(tmp_path, "a", affine, VOXELS[0])
    w = voxel_to_world(VOXELS, affine)
    (tmp_path / "m.csv").write_text(
        "case,image,P_x,P_y,P_z,Q_x,Q_y,Q_z\n" + f"a,a.nii.gz,{w[0, 0]},{w[0, 1]},{w[0, 2]},,,\n"
    )
    src = ManifestCases(tmp_path / "m.csv")
    assert src.landmark_names == ["P", "Q"] and np.isnan(src[0].landmarks_world[1]).all()
    np.testing.assert_allclose(src[0].landmarks_world[0], w[0], atol=1e-9)
    cases = [
        {"case": "lps", "image": "a.nii.gz", "landmarks": {"Q": (w[1] * LPS).tolist(), "P": None}},
        {
            "case": "vox",
            "image": "a.nii.gz",
            "landmarks": [VOXELS[0].tolist(), None],
            "coordinate_system": "voxel",
        },
    ]
    write_manifest(tmp_path / "m.json", cases, ["P", "Q"], coordinate_system="LPS")
    assert json.loads((tmp_path / "m.json").read_text())["cases"][0]["image"] == "a.nii.gz"
    src = ManifestCases(tmp_path / "m.json")
    np.testing.assert_allclose(src[0].landmarks_world[1], w[1], atol=1e-9)
    np.testing.assert_allclose(src[1].landmarks_world[0], w[0], atol=1e-9)
    assert np.isnan(src[0].landmarks_world[0]).all() and np.isnan(src[1].landmarks_world[1]).all()


def _json(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "m.json").write_text(json.dumps(data))
    return tmp_path / "m.json"


def test_errors_name_the_manifest_and_the_row(tmp_path, study):
    m = str(study / "m.csv")
    with pytest.raises(
        ManifestError, match=r"m\.csv: unknown landmarks \['R'\] \(the manifest has \['P', 'Q'\]\)"
    ):
        ManifestCases(m, landmark_names=["P", "R"])
    with pytest.raises(ManifestError, match=r"m\.csv: no cases in split 'test'"):
        ManifestCases(m, split="test")
    (study / "b.fcsv").unlink()
    with pytest.raises(
        ManifestError, match=r"m\.csv: line 3 \(case 'b'\): landmark file not found: .*b\.fcsv"
    ):
        ManifestCases(m)

    write_case(tmp_path, "a", np.eye(4), VOXELS[0])
    base = {
        "landmarks": ["P", "Q"],
        "cases": [{"case": "a", "image": "a.nii.gz", "landmarks": [[1, 2, 3], None]}],
    }
    bad = json.loads(json.dumps(base))
    bad["cases"][0]["landmarks"] = [[1, 2, 3], [1, 2]]
    with pytest.raises(
        ManifestError, match=r"m\.json: case #1 \('a'\), landmark 'Q': expected 3 coordinates"
    ):
        ManifestCases(_json(tmp_path, bad))
    bad["cases"][0]["landmarks"] = [[1, 2, 3]]
    with pytest.raises(ManifestError, match=r"case #1 \('a'\): 1 points for 2 landmarks"):
        ManifestCases(_json(tmp_path, bad))
    bad["cases"][0]["landmarks"] = {"P": [1, 2, 3], "Z": None}
    with pytest.raises(ManifestError, match=r"case #1 \('a'\): unknown landmarks \['Z'\]"):
        ManifestCases(_json(tmp_path, bad))
    bad = {**base, "cases": base["cases"] * 2}
    with pytest.raises(ManifestError, match=r"case #2 \('a'\): duplicate case id \(first at case #1"):
        ManifestCases(_json(tmp_path, bad))
    bad = {**base, "coordinate_sytem": "LPS"}
    with pytest.raises(ManifestError, match=r"m\.json: unknown keys \['coordinate_sytem'\]"):
        ManifestCases(_json(tmp_path, bad))
    bad = {**base, "cases": [{**base["cases"][0], "image": "missing.nii.gz"}]}
    with pytest.raises(ManifestError, match=r"m\.json: case #1 \('a'\): image not found: .*missing\.nii\.gz"):
        ManifestCases(_json(tmp_path, bad))
    with pytest.raises(ManifestError, match=r"m\.json: no split column or key, cannot select split 'train'"):
        ManifestCases(_json(tmp_path, base), split="train")
    (tmp_path / "m2.csv").write_text("case,image,P_x,P_y\na,a.nii.gz,1,2\n")
    with pytest.raises(ManifestError, match=r"m2\.csv: line 2 \(case 'a'\): 3D image with 2D landmarks"):
        ManifestCases(tmp_path / "m2.csv")[0]
    (tmp_path / "m3.csv").write_text("case,image,P_x,P_y,P_z,Q_x,Q_y\na,a.nii.gz,1,2,3,4,5\n")
    with pytest.raises(ManifestError, match=r"m3\.csv: landmark 'Q' lacks columns \['Q_z'\]"):
        ManifestCases(tmp_path / "m3.csv")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "x.nii")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    (tmp_path / "m4.csv").write_text("case,image,P_x,P_y,P_z\nz,broken.nii.gz,1,2,3\n")
    with pytest.raises(
        ManifestError, match=r"m4\.csv: line 2 \(case 'z'\): .*broken\.nii\.gz: cannot read image"
    ):
        ManifestCases(tmp_path / "m4.csv")[0]
    assert world_to_voxel(np.zeros(3), np.eye(4)).shape == (3,)


def test_a_manifest_split_as_references(study, tmp_path):
    """landmark-evaluate / landmark-compare references=MANIFEST references_split=val: the split's landmarks
    in world mm; a landmark table stays a table, and a split for it is a one-line error."""
    world = voxel_to_world(VOXELS, AFFINES["lps_oblique"])
    assert is_manifest(study / "m.csv")
    table = read_references(study / "m.csv", split="val")
    # case c states its landmark in voxel indices: world mm through the image's affine
    assert list(table.coords) == ["c"] and table.names == ["P"]
    np.testing.assert_allclose(table.coords["c"][0], world[0], atol=1e-6)
    assert table.images == {"c": str(study / "img" / "c.nii.gz")}
    write_landmark_table(tmp_path / "r.csv", table)
    write_landmark_table(tmp_path / "r.json", table)
    for name in ("r.csv", "r.json"):
        assert not is_manifest(tmp_path / name)
        np.testing.assert_allclose(read_references(tmp_path / name).coords["c"], table.coords["c"])
    with pytest.raises(ValueError, match=r"r\.csv: a landmark table, not a manifest: it has no splits"):
        read_references(tmp_path / "r.csv", split="val")
    with pytest.raises(ManifestError, match="no cases in split 'nope'"):
        read_references(study / "m.csv", split="nope")


def test_prediction_reads_manifests_with_the_same_checks(tmp_path):
    """manifest_images (landmark-predict input=manifest) and ManifestCases read a manifest alike: the same
    structure and key checks, duplicate cases and split rules; only case ids are optional for prediction."""
    from landmark_lit.data.manifest import manifest_images

    image = tmp_path / "a.nii.gz"
    save_nifti(image, np.zeros((1, 4, 4, 4), np.float32), np.eye(4))
    good = {"cases": [{"case": "a", "image": "a.nii.gz", "split": "test"}, {"image": "b.nii.gz"}]}
    (tmp_path / "m.json").write_text(json.dumps(good))
    assert manifest_images(tmp_path / "m.json") == [("a", image), (None, tmp_path / "b.nii.gz")]
    assert manifest_images(tmp_path / "m.json", split="test") == [("a", image)]
    bad = {
        "unknown keys \\['speling'\\]": {"cases": [{"case": "a", "image": "a.nii.gz", "speling": 1}]},
        "duplicate case id": {
            "cases": [{"case": "a", "image": "a.nii.gz"}, {"case": "a", "image": "a.nii.gz"}]
        },
        "no image": {"cases": [{"case": "a"}]},
        "no cases": {"cases": []},
        "unknown keys \\['cases_'\\]": {"cases": [{"case": "a", "image": "a.nii.gz"}], "cases_": []},
    }
    for message, content in bad.items():
        (tmp_path / "bad.json").write_text(json.dumps(content))
        for read in (manifest_images, ManifestCases):
            with pytest.raises(ManifestError, match=message):
                read(tmp_path / "bad.json")
    with pytest.raises(ManifestError, match="no split column or key, cannot select split 'test'"):
        (tmp_path / "nosplit.csv").write_text("case,image\na,a.nii.gz\n")
        manifest_images(tmp_path / "nosplit.csv", split="test")
    with pytest.raises(ManifestError, match="unknown manifest type '.txt'"):
        (tmp_path / "m.txt").write_text("a.nii.gz\n")
        manifest_images(tmp_path / "m.txt")

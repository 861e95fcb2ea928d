"""MNI152 + AFIDs benchmark builder: fiducials follow the deformation exactly; seeded; readable manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from landmark_lit.config import PROJECT_ROOT
from landmark_lit.data import mni_afids
from landmark_lit.data.io import load_image
from landmark_lit.data.manifest import ManifestCases
from landmark_lit.data.transforms import voxel_to_world, world_to_voxel

SHARED = PROJECT_ROOT.parent / "shared" / "data" / "mni152-afids"
FIDUCIAL_VOXELS = np.array([[20.0, 24.0, 18.0], [10.0, 30.0, 25.0], [30.0, 12.0, 9.0]])


def tiny_template(bright: int | None = 0) -> mni_afids.Template:
    """A 40 x 44 x 36 mm "head" at 1 mm (soft ellipsoid), fiducials at voxel centres; optionally one bright
    voxel at fiducial ``bright``."""
    shape = (40, 44, 36)
    affine = np.eye(4)
    affine[:3, 3] = (-20.0, -25.0, -15.0)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    r = np.linalg.norm((grid - (np.array(shape) - 1) / 2) / (np.array(shape) * 0.4), axis=-1)
    image = (100.0 * (r < 1)).astype(np.float32)
    if bright is not None:
        image[tuple(FIDUCIAL_VOXELS[bright].astype(int))] = 1.0e4
    fiducials = voxel_to_world(FIDUCIAL_VOXELS, affine)
    return mni_afids.Template(image, affine, ["AC", "PC", "R olfactory sulcal fundus"], fiducials)


def write_template_files(template: mni_afids.Template, image_path: Path, fcsv_path: Path) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    fcsv_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(template.image, template.affine), image_path)
    lines = ["# Markups fiducial file version = 4.6", "# CoordinateSystem = 0"]
    lines.append("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID")
    for k, (name, (x, y, z)) in enumerate(zip(template.names, template.fiducials, strict=True), start=1):
        lines.append(
            f"vtkMRMLMarkupsFiducialNode_{k},{x},{y},{z},0,0,0,1,1,1,0,{k},{name},vtkMRMLScalarVolumeNode1"
        )
    fcsv_path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("intensity", [False, True])
def test_brightest_voxel_follows_its_fiducial(seed, intensity):
    template = tiny_template(bright=0)
    shape, affine = mni_afids.output_grid(template, spacing=1.0, margin_mm=4.0)
    settings = mni_afids.DeformationSettings(max_translation_mm=3.0, elastic_mm=1.5, elastic_spacing_mm=15.0)
    image, moved = mni_afids.deform_case(
        template, shape, affine, np.random.default_rng(seed), settings, intensity=intensity
    )
    assert image.shape == shape and moved.shape == (3, 3)
    brightest = np.array(np.unravel_index(int(image.argmax()), image.shape), float)
    expected = world_to_voxel(moved[0], affine)
    assert np.abs(brightest - expected).max() <= 1.0, (brightest, expected)
    # the fiducials moved (the deformation is not the identity) and map back onto the template's exactly
    assert np.linalg.norm(moved - template.fiducials, axis=1).max() > 0.5


def test_inverse_is_exact_on_the_continuous_mapping():
    template = tiny_template()
    shape, affine = mni_afids.output_grid(template, spacing=2.0)
    phi = mni_afids.Deformation.random(
        np.random.default_rng(5), shape, affine, mni_afids.DeformationSettings()
    )
    points = np.vstack([template.fiducials, np.full((1, 3), np.nan)])
    w = phi.inverse(points)
    np.testing.assert_allclose(phi(w[:3]), template.fiducials, atol=1e-5)
    assert np.isnan(w[3]).all()
    # the image is sampled through the same mapping: grid values of phi agree with phi at voxel centres
    voxels = np.array([[0, 0, 0], [3, 5, 7], [shape[0] - 1, 2, shape[2] - 1]])
    grid = phi.grid_to_voxels(template.affine)[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T
    np.testing.assert_allclose(
        grid, world_to_voxel(phi(voxel_to_world(voxels, affine)), template.affine), atol=1e-9
    )


def test_build_benchmark_writes_a_seeded_manifest(tmp_path):
    template = tiny_template(bright=None)
    manifest = mni_afids.build_benchmark(
        tmp_path / "a", {"train": 2, "val": 1}, seed=3, spacing=2.0, template=template
    )
    again = mni_afids.build_benchmark(
        tmp_path / "b", {"train": 2, "val": 1}, seed=3, spacing=2.0, template=template
    )
    other = mni_afids.build_benchmark(tmp_path / "c", {"train": 1}, seed=4, spacing=2.0, template=template)
    train = ManifestCases(manifest, split="train")
    assert train.cases == ["train_000", "train_001"] and train.landmark_names == template.names
    assert ManifestCases(manifest, split="val").cases == ["val_000"]
    case = train[1]
    assert case.image.shape[0] == 1 and np.allclose(np.linalg.norm(case.affine[:3, :3], axis=0), 2.0)
    assert np.isfinite(case.landmarks_world).all()
    # identical for the same seed, different for another; a split's cases do not depend on other splits
    same = ManifestCases(again, split="train")[1]
    np.testing.assert_array_equal(case.image, same.image)
    np.testing.assert_allclose(case.landmarks_world, same.landmarks_world, atol=1e-9)
    assert not np.allclose(ManifestCases(other)[0].landmarks_world, train[0].landmarks_world)
    val_only = mni_afids.build_benchmark(tmp_path / "d", {"val": 1}, seed=3, spacing=2.0, template=template)
    np.testing.assert_array_equal(
        ManifestCases(val_only)[0].image, ManifestCases(manifest, split="val")[0].image
    )
    assert (tmp_path / "a" / "landmarks" / "train_000.mrk.json").is_file()


def test_from_wheels_finds_the_files_in_the_installed_packages(tmp_path, monkeypatch, capsys):
    roots = {"nilearn": tmp_path / "site" / "nilearn", "afids_utils": tmp_path / "site" / "afids_utils"}
    tpl_inner = mni_afids.WHEEL_FILES[mni_afids.TEMPLATE_FILE][1]
    fcsv_inner = mni_afids.WHEEL_FILES[mni_afids.FIDUCIALS_FILE][1]
    if SHARED.is_dir():  # copies of the real files, where the wheels hold them
        for src, dst in (
            (SHARED / mni_afids.TEMPLATE_FILE, roots["nilearn"] / tpl_inner),
            (SHARED / mni_afids.FIDUCIALS_FILE, roots["afids_utils"] / fcsv_inner),
        ):
            dst.parent.mkdir(parents=True)
            shutil.copy(src, dst)
        count = 32
    else:
        write_template_files(tiny_template(), roots["nilearn"] / tpl_inner, roots["afids_utils"] / fcsv_inner)
        count = 3
    monkeypatch.setattr(mni_afids, "_package_root", roots.get)
    template = mni_afids.load_template(from_wheels=True)
    assert len(template.names) == count and template.names[:2] == ["AC", "PC"]
    monkeypatch.setattr(mni_afids, "_package_root", lambda package: None)
    assert mni_afids.main([str(tmp_path / "out"), "--from-wheels", "--train", "1"]) == 1
    assert "pip install nilearn afids-utils" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="pip install nilearn afids-utils"):
        mni_afids.template_files(tmp_path / "empty")


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"MNI152 + AFIDs data not found at {SHARED}")
def test_main_builds_two_real_cases_into_a_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    code = mni_afids.main(
        [
            tmp_path.name,  # relative: the manifest must still find its files from any working directory
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "0",
            "--spacing",
            "3.0",
            "--source-dir",
            str(SHARED),
        ]
    )
    assert code == 0
    monkeypatch.chdir(tmp_path)
    cases = ManifestCases(tmp_path / "manifest.json")
    assert cases.cases == ["train_000", "val_000"] and len(cases.landmark_names) == 32
    case = cases[0]
    voxels = world_to_voxel(case.landmarks_world, case.affine)
    assert np.all(voxels > 0) and np.all(voxels < np.array(case.image.shape[1:]) - 1)
    # the fiducials sit in the brain: brighter than the background on average
    values = case.image[0][tuple(np.round(voxels).astype(int).T)]
    assert values.mean() > 0.1 and case.image[0, 0, 0, 0] < 0.1
    image, affine = load_image(tmp_path / "images" / "val_000.nii.gz")
    assert image.shape == case.image.shape and np.allclose(affine, case.affine)

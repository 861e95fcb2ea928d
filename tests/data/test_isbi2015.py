"""ISBI 2015 cephalograms from ../shared/data: pixel alignment through loading and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from landmark_lit.config import CONFIG_DIR, PROJECT_ROOT
from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.data.transforms import Preprocessing, world_to_voxel

DATA = PROJECT_ROOT.parent / "shared" / "data" / "isbi2015-ceph"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"ISBI 2015 data not found at {DATA}")


@pytest.fixture(scope="module")
def source() -> ISBI2015Cephalograms:
    return ISBI2015Cephalograms(DATA, split="train", limit=2)


def test_loaded_array_is_indexed_by_annotated_x_then_y(source):
    case = source[0]
    assert case.image.shape == (1, 1935, 2400)
    pil = np.asarray(Image.open(DATA / "images" / "001.jpg"))[..., 0]  # rows = y, columns = x
    for x, y in source.senior["001"].astype(int):
        assert case.image[0, x, y] == pytest.approx(float(pil[y, x]), abs=0.51)
    # world mm are 0.1 * pixels and map back onto the same pixel
    np.testing.assert_allclose(
        world_to_voxel(case.landmarks_world, case.affine), source.pixels("001"), atol=1e-9
    )


def test_ground_truth_conventions(source):
    avg, sen, jun = (source.pixels("001", gt) for gt in ("average", "senior", "junior"))
    np.testing.assert_allclose(avg, (sen + jun) / 2)
    assert not np.allclose(sen, jun)


@pytest.mark.parametrize("spacing,intensity", [(0.8, "histeq"), (0.3, "histeq"), (0.1, "none")])
def test_bright_pixel_on_each_landmark_survives_preprocessing(source, spacing, intensity):
    case = source[1]
    pixels = source.pixels(source.ids[1]).round()
    for k in (0, 7, 15):  # sella, menton, soft-tissue pogonion
        image = np.zeros_like(case.image)
        x, y = pixels[k].astype(int)
        image[0, x, y] = 1.0e4
        out, affine = Preprocessing(spacing=spacing, intensity=intensity)(image, case.affine)
        q = world_to_voxel(pixels[k] * 0.1, affine)
        got = np.array(np.unravel_index(int(torch.argmax(out[0])), out.shape[1:]))
        assert np.all(np.abs(got - q) <= 0.5 + 1e-6), (k, got, q)


def test_validation_subset_is_disjoint_and_seeded():
    train = ISBI2015Cephalograms(DATA, split="train", subset="train")
    val = ISBI2015Cephalograms(DATA, split="train", subset="val")
    assert len(train) == 140 and len(val) == 10 and not set(train.ids) & set(val.ids)
    assert ISBI2015Cephalograms(DATA, split="train", subset="val").ids == val.ids
    assert len(ISBI2015Cephalograms(DATA, split="test1")) == 150


def test_cross_fitting_folds_hold_every_training_image_out_once(tmp_path):
    vals = [ISBI2015Cephalograms(DATA, subset="val", folds=5, fold=k).ids for k in range(5)]
    assert [len(v) for v in vals] == [30] * 5 and len(set().union(*vals)) == 150
    train = ISBI2015Cephalograms(DATA, subset="train", folds=5, fold=3).ids
    assert len(train) == 120 and not set(train) & set(vals[3])
    with pytest.raises(ValueError, match="folds must be 0 or 2 to 150"):
        ISBI2015Cephalograms(DATA, subset="val", folds=5, fold=5)
    # the dataset config passes dataset.folds / dataset.fold to both subsets
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "dataset=isbi2015",
                f"paths.output_dir={tmp_path}",
                "dataset.folds=5",
                "dataset.fold=3",
            ],
        )
    assert instantiate(cfg.dataset.val).ids == vals[3] and instantiate(cfg.dataset.train).ids == train


def test_dataset_config_points_at_the_shared_data(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["dataset=isbi2015", f"paths.output_dir={tmp_path}", "dataset.ground_truth=senior"],
        )
    test = instantiate(cfg.dataset.test)
    assert Path(test.root).resolve() == DATA.resolve() and test.ground_truth == "senior" and len(test) == 150


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ISBI 2015 data not found"):
        ISBI2015Cephalograms(tmp_path / "nowhere")


def test_mirrored_images_carry_their_mirrored_references(tmp_path):
    """A patient facing the other way: the mirrored PNG holds, at each mirrored reference, the grey value
    the original holds at the reference; loading the PNG gives the mirrored array."""
    from landmark_lit.data.io import load_image
    from landmark_lit.data.isbi2015 import SPACING_MM, mirrored_table

    src = ISBI2015Cephalograms(DATA, split="test1", limit=1, ground_truth="senior")
    table = mirrored_table(src, tmp_path / "mirrored", "senior")
    case = src[0]
    mirrored, _ = load_image(table.images[case.case_id])
    assert mirrored.shape[1:] == case.image.shape[1:]
    np.testing.assert_allclose(mirrored[0], case.image[0, ::-1], atol=0.51)  # rounding to uint8
    px = np.round(src.pixels(case.case_id, "senior")).astype(int)
    mpx = np.round(table.coords[case.case_id] / SPACING_MM).astype(int)
    assert np.array_equal(mpx[:, 1], px[:, 1]) and np.array_equal(mpx[:, 0], 1935 - 1 - px[:, 0])
    for (x, y), (mx, my) in zip(px, mpx, strict=True):
        assert mirrored[0, mx, my] == pytest.approx(case.image[0, x, y], abs=0.51)


def test_mirror_command_writes_a_list_that_landmark_predict_reads(tmp_path):
    from landmark_lit.data.isbi2015 import mirrored_table
    from landmark_lit.inference.predict_files import find_inputs

    src = ISBI2015Cephalograms(DATA, split="test1", limit=2)
    out = tmp_path / "m"
    mirrored_table(src, out)
    found = find_inputs(out / "list.txt")
    assert [case for case, _ in found] == ["151", "152"] and all(p.is_file() for _, p in found)

"""The pull of a local stage's answers toward its cell centres: removed by the vote decoder, fitted on
annotated cases, stored in the checkpoint by the end-of-training calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import NAMES, stage_description, write_checkpoint
from test_calibrate import RandomCases

import landmark_lit.inference.cell_pull as cell_pull_module
from landmark_lit.data.crops import local_crop_starts
from landmark_lit.data.intensity import working_image_for_parts
from landmark_lit.data.transforms import voxel_to_world, world_to_voxel
from landmark_lit.inference.calibrate import calibrate_checkpoint, store_calibration
from landmark_lit.inference.cell_pull import fit_cell_pull
from landmark_lit.inference.passes import StageEstimate
from landmark_lit.inference.stages import load_stage
from landmark_lit.methods.displacement import (
    DisplacementMethod,
    VoteDecoder,
    cell_pull_shape,
    remove_cell_pull,
)


@pytest.mark.parametrize(("stride", "pull"), [(2, 0.2), (2, -0.25), (4, 0.5)])
def test_removing_the_pull_inverts_it(stride, pull):
    true = torch.rand(50, 3) * 20
    pulled = true + pull * cell_pull_shape(true, stride)
    torch.testing.assert_close(remove_cell_pull(pulled, stride, pull), true, atol=1e-4, rtol=0)
    assert remove_cell_pull(pulled, stride, 0.0) is pulled
    # the shape: zero at a cell centre and half a cell from it, largest a quarter cell below the centre
    c = (stride - 1) / 2
    at = torch.tensor([c, c + stride / 2, c - stride / 4, c + 3 * stride])
    torch.testing.assert_close(
        cell_pull_shape(at, stride), torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="too large for stride"):
        remove_cell_pull(pulled, stride, stride / (2 * math.pi))


def test_the_decoder_describes_its_pull_only_when_set():
    method = DisplacementMethod()
    plain = {"regression": "log", "classification": True, "log_base": 10.0}
    assert method.describe_decoder(method.decoder_from_description(plain)) == plain  # older ones unchanged
    d = method.decoder_from_description(plain | {"cell_pull": 0.18})
    assert d.cell_pull == 0.18 and method.describe_decoder(d) == plain | {"cell_pull": 0.18}
    for bad in (float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="invalid decoder"):
            method.decoder_from_description(plain | {"cell_pull": bad})
    # decoding: the vote's answer without the pull
    disp, logits = torch.randn(1, 2, 2, 6, 6), torch.randn(1, 2, 6, 6)
    raw = VoteDecoder()((disp, logits), 4)
    got = VoteDecoder(cell_pull=0.4)((disp, logits), 4)
    torch.testing.assert_close(got + 0.4 * cell_pull_shape(got, 4), raw, atol=1e-4, rtol=0)
    coords, _, _ = VoteDecoder(cell_pull=0.4).statistics((disp, logits), 4)
    torch.testing.assert_close(coords, got)


def test_fit_recovers_a_planted_pull(tmp_path, monkeypatch):
    """A stage whose answers are the references plus A sin(...) of their phase in the sub-image's cell
    grid, the sub-images placed as the real pass places them (the working grid of the real resampling)."""
    loc = write_checkpoint(tmp_path / "local.ckpt", stage_description("local", 2, 1.0, 8))
    stage = load_stage(loc)
    stride = int(stage.net.stride)
    planted, cases = 0.21, RandomCases(n=6)
    truth = {}

    def fake_refine(stage_, image, affine, world, iterations):
        _, aff, _ = working_image_for_parts(stage_.preprocessing, image, affine)  # the real working grid
        starts = local_crop_starts(torch.as_tensor(world_to_voxel(world, aff)), stage_.meta.crop_size).numpy()
        ref = world_to_voxel(truth["ref"], aff)
        answer = ref + planted * cell_pull_shape(torch.as_tensor(ref - starts), stride).numpy()
        return StageEstimate(voxel_to_world(answer, aff), np.zeros(len(world)), np.ones(len(world))), None

    class Recording:
        landmark_names = NAMES

        def __len__(self):
            return len(cases)

        def __getitem__(self, i):
            truth["ref"] = cases[i].landmarks_world
            return cases[i]

    monkeypatch.setattr(cell_pull_module, "refine_locally", fake_refine)
    assert fit_cell_pull(stage, Recording(), offset_sd_mm=1.0) == pytest.approx(planted, abs=1e-6)
    # too large a pull is kept where removing it still converges
    planted = 5.0
    assert fit_cell_pull(stage, Recording(), offset_sd_mm=1.0) == pytest.approx(0.9 * stride / (2 * math.pi))


def test_end_of_training_fits_the_pull_into_the_checkpoint(tmp_path):
    loc = write_checkpoint(tmp_path / "local.ckpt", stage_description("local", 2, 1.0, 8))
    last = tmp_path / "last.ckpt"
    last.write_bytes(loc.read_bytes())
    settings = {"failure_mm": 3.0, "goal": 0.7, "coverage": 0.8}
    calibrate_checkpoint(loc, [], RandomCases(), settings, offset_sd_mm=1.0)
    assert "cell_pull" not in load_stage(loc).meta.decoder  # off unless asked
    cal = calibrate_checkpoint(loc, [last], RandomCases(), settings | {"cell_pull": True}, offset_sd_mm=1.0)
    plain = load_stage(last).with_decoder(cell_pull=0.0)
    expected = fit_cell_pull(
        plain, RandomCases(), offset_sd_mm=1.0 * int(plain.net.stride) / 2
    )  # half a cell
    for path in (loc, last):
        stage = load_stage(path)
        assert stage.decoder.cell_pull == pytest.approx(expected) and expected != 0.0
        assert stage.meta.calibration == cal.to_dict()
    # written as a copy, the original untouched
    store_calibration(loc, None, {**load_stage(loc).meta.decoder, "cell_pull": 0.05}, tmp_path / "copy.ckpt")
    assert load_stage(tmp_path / "copy.ckpt").decoder.cell_pull == 0.05
    assert load_stage(loc).decoder.cell_pull == pytest.approx(expected)


def test_a_shift_averaged_pass_is_decoded_without_the_pull_removal(tmp_path):
    """The moved sub-images' mean cancels the pull itself: the shift-averaged last pass decodes as the
    stage without its pull does; the passes before it remove the pull."""
    from test_calibrate import RandomCases as Cases

    from landmark_lit.inference.passes import refine_locally

    loc = write_checkpoint(tmp_path / "local.ckpt", stage_description("local", 2, 1.0, 8))
    plain = load_stage(loc)
    pulled = plain.with_decoder(cell_pull=0.2)
    case = Cases(n=1)[0]
    image, start = torch.as_tensor(case.image), case.landmarks_world + 1.3
    first, _ = refine_locally(pulled, image, case.affine, start, 1)
    assert np.abs(first.world - refine_locally(plain, image, case.affine, start, 1)[0].world).max() > 1e-3
    got, _ = refine_locally(pulled, image, case.affine, start, 2, shifts="axes")
    want, _ = refine_locally(plain, image, case.affine, first.world, 1, shifts="axes")
    np.testing.assert_allclose(got.world, want.world, atol=1e-5)
    two, _ = refine_locally(pulled, image, case.affine, start, 2)
    np.testing.assert_allclose(
        two.world, refine_locally(pulled, image, case.affine, first.world, 1)[0].world, atol=1e-5
    )

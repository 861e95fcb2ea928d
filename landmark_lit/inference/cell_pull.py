"""The pull of a local stage's answers toward the centres of its network's output cells, measured and removed.

A local network of output stride s votes from cells of s working voxels. Its answers lean toward the
centre of the cell that holds the landmark: the signed error per axis follows the landmark's phase in
the cell grid, p = (landmark voxel - sub-image start) mod s, as b(p) = A sin(2 pi (c - p) / s) with
c = (s - 1) / 2 (experiments/mni_afids/phase_bias.py tabulates it). :func:`fit_cell_pull` fits A by
least squares on annotated cases, one pass from starts moved a normal offset off the references (the
global stage's error the local stage was trained for); the vote decoder then removes it from every
answer (``VoteDecoder.cell_pull``, :func:`~landmark_lit.methods.displacement.remove_cell_pull`), at no
network cost. The end of ``landmark-train`` fits it on the validation images with the calibration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from landmark_lit.data.cases import CaseSource
from landmark_lit.data.crops import local_crop_starts
from landmark_lit.data.transforms import (
    match_channels,
    resampled_affine,
    world_to_voxel,
)
from landmark_lit.inference.passes import refine_locally
from landmark_lit.inference.stages import Stage
from landmark_lit.methods.displacement import cell_pull_shape

# the fitted amplitude is kept below this share of stride / (2 pi), where removing it stays a contraction
MAX_SHARE = 0.9


def pass_phases(
    stage: Stage, image: np.ndarray, affine: np.ndarray, reference: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of ``stage`` (its decoder as it is) from landmarks ``starts`` (K, D) mm: the references'
    phases in the cell grid of their sub-images and the signed errors, both (K, D) working voxels."""
    aff = resampled_affine(affine, stage.preprocessing.spacing)
    crop_starts = local_crop_starts(torch.as_tensor(world_to_voxel(starts, aff)), stage.meta.crop_size)
    x = match_channels(torch.as_tensor(image, dtype=torch.float32), stage.meta.net["in_channels"])
    est, _ = refine_locally(stage, x, affine, starts, 1)
    ref = world_to_voxel(reference, aff)
    phase = np.mod(ref - crop_starts.double().numpy(), int(stage.net.stride))
    return phase, world_to_voxel(est.world, aff) - ref


def fit_cell_pull(
    stage: Stage,
    source: CaseSource,
    offset_sd_mm: float | Sequence[float],
    seed: int = 0,
    max_cases: int | None = None,
) -> float:
    """The amplitude A (working voxels) of the pull of ``stage``'s answers toward its cell centres, fitted
    on the annotated cases of ``source`` (at most ``max_cases``), one pass from the references moved a
    normal ``offset_sd_mm`` (per axis; fixed ``seed``) off; the stage's own pull is left out while
    measuring. Missing references are skipped. Kept under ``MAX_SHARE`` * stride / (2 pi)."""
    plain = stage.with_decoder(cell_pull=0.0)
    stride = int(stage.net.stride)
    rng = np.random.default_rng(seed)
    shapes, errors = [], []
    for i in range(len(source) if max_cases is None else min(max_cases, len(source))):
        case = source[i]
        ref = np.asarray(case.landmarks_world, np.float64)
        sd = np.broadcast_to(np.asarray(offset_sd_mm, np.float64), (ref.shape[1],))
        starts = ref + rng.normal(size=ref.shape) * sd
        keep = np.isfinite(ref).all(1)
        if not keep.any():
            continue
        phase, error = pass_phases(plain, case.image, case.affine, ref[keep], starts[keep])
        shapes.append(cell_pull_shape(torch.as_tensor(phase), stride).numpy())
        errors.append(error)
    if not shapes:
        raise ValueError("fit_cell_pull: no annotated landmarks to fit on")
    x, y = np.concatenate(shapes).ravel(), np.concatenate(errors).ravel()
    amplitude = float((x * y).sum() / max((x * x).sum(), 1e-12))
    limit = MAX_SHARE * stride / (2 * math.pi)
    return float(np.clip(amplitude, -limit, limit))

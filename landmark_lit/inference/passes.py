"""One stage's network on an image: the whole working image (global) or one sub-image per landmark
(:func:`refine_locally`), optionally averaged with the mirrored pass, decoded to a :class:`StageEstimate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from landmark_lit.data.crops import local_crop_starts, stack_local_crops
from landmark_lit.data.intensity import working_image_for_parts
from landmark_lit.data.transforms import (
    spacing_of,
    voxel_to_world,
    world_to_voxel,
)
from landmark_lit.inference.settings import MirrorAverage, RunSettings
from landmark_lit.inference.stages import Stage


@dataclass(frozen=True)
class StageEstimate:
    """One stage's answer: landmarks (K, D) in world mm, how far its votes (or heatmap mass) spread (K,) mm,
    its highest posterior (K,), and with a test-time mirror how far the mirrored pass's answer lay from
    the unmirrored one (K,) mm."""

    world: np.ndarray
    spread_mm: np.ndarray
    posterior: np.ndarray
    mirror_gap_mm: np.ndarray | None = None


def decode_stage(
    stage: Stage,
    x: torch.Tensor,
    scale: torch.Tensor,
    mirror: MirrorAverage | None,
    net: Any = None,
    perm: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, torch.Tensor | None]:
    """A stage's network on a batch ``x`` (B, ..., *spatial) -> coords (B, K, D) in input voxels, spread and
    posterior (B, K), the network output of the unmirrored pass, and the mirror gap; with ``mirror``,
    each averaged with the pass on the mirrored input (mirrored back, pairs swapped), and the gap (B, K)
    mm between the two passes' answers (None without mirror). ``net`` runs instead of the stage's network
    (its networks for some landmarks only, with ``perm`` the mirror's landmark order among them)."""
    kind = stage.meta.stage
    net = stage.net if net is None else net
    with record_function(
        f"{kind} network"
    ):  # labels for torch.profiler (experiments/bench/profile_predict.py)
        out = net(x)
    with record_function(f"{kind} decoding"):
        coords, spread, posterior = stage.decoder.statistics(out, stage.net.stride, scale)
    if mirror is None:
        return coords, spread, posterior, out, None
    d = coords.shape[-1]
    if max(mirror.axes) >= d:
        raise ValueError(f"test-time mirror axes {list(mirror.axes)} out of range for a {d}D image")
    dims = [x.ndim - d + a for a in mirror.axes]
    perm = mirror.permutation(coords.shape[1]) if perm is None else perm
    if x.ndim == d + 3:  # local stages: (B, K, C, *crop), network k reads sub-image k
        x_m = torch.flip(x, dims)[:, perm]
    else:
        x_m = torch.flip(x, dims)
    c_m, s_m, p_m = stage.decoder.statistics(net(x_m), stage.net.stride, scale)
    c_m, s_m, p_m = c_m[:, perm].clone(), s_m[:, perm], p_m[:, perm]
    for a in mirror.axes:
        c_m[..., a] = (x.shape[x.ndim - d + a] - 1) - c_m[..., a]
    gap = ((coords - c_m) * scale).norm(dim=-1)
    return (coords + c_m) / 2, (spread + s_m) / 2, (posterior + p_m) / 2, out, gap


@torch.inference_mode()
def refine_locally(
    stage: Stage,
    image: torch.Tensor,
    affine: np.ndarray,
    world: np.ndarray,
    iterations: int = 1,
    mirror: MirrorAverage | None = None,
    repass_mm: float = 0.0,
    shifts: str = "none",
    resampled: Mapping[tuple, tuple[torch.Tensor, np.ndarray]] | None = None,
) -> tuple[StageEstimate, np.ndarray]:
    """One local stage on the image (C, *spatial) with its affine, starting from landmarks ``world`` (K, D)
    mm: each pass decodes landmark k in the sub-image centred on its last estimate (with ``mirror``, the
    mean of that and of the mirrored sub-image's answer). With ``repass_mm`` > 0 the passes after the
    first run only for the landmarks the pass before moved more than that many mm (with a mirror that
    swaps landmark pairs, with their partners); the others keep their last answer, as they would have
    been, and the networks run for the moved ones only. With ``shifts`` ("axes" or "faces",
    :func:`local_shift_offsets`) the last pass reads each landmark's sub-image and its copies moved by half
    a cell of the network's output grid (stride / 2 working voxels, at least one), and averages their
    answers and statistics (test-time augmentation).

    ``resampled``: working images made already, by :attr:`Preprocessing.resampling` (a streamed volume's).

    Returns the stage's estimate and (K,) how far the last pass that ran for each landmark moved it, in mm.
    """
    with record_function("local preprocessing"):
        # the resampled image and its normalisation, applied to the sub-images only
        prep = stage.preprocessing
        done = (resampled or {}).get(prep.resampling)
        x, aff, normalise = working_image_for_parts(prep, image, affine, done)
    device = network_device(stage.net)
    scale = torch.as_tensor(spacing_of(aff), dtype=torch.float32)
    centres = torch.as_tensor(world_to_voxel(world, aff), dtype=torch.float32)
    crop = stage.meta.crop_size
    k = len(world)
    shift = np.zeros(k)
    spread = posterior = gap = None
    # moves of half a cell: the landmark at the other phase of its cell (answers lean to cell centres)
    offsets = local_shift_offsets(shifts, len(crop)) * max(1, int(stage.net.stride) // 2)
    averaged = _unpulled(stage) if shifts != "none" else stage
    for it in range(int(iterations)):
        active = None if it == 0 or repass_mm <= 0 else _moved(shift, repass_mm, mirror)
        if active is not None and len(active) == 0:
            break
        if active is not None and len(active) == k:
            active = None
        net, perm = _cut_networks(stage, active, mirror, k)
        cut = net is not None
        run = active if cut else None
        moves = offsets if it == int(iterations) - 1 else offsets[:1]
        with record_function("local sub-images"):
            start_from = centres if run is None else centres[run]
            starts = local_crop_starts(start_from, crop)[None] + moves[:, None]  # (S, K, D)
            flat = stack_local_crops(x, starts.reshape(-1, starts.shape[-1]), crop, normalise)  # on the CPU
            crops = flat.view(*starts.shape[:2], *flat.shape[1:])
        last = averaged if it == int(iterations) - 1 else stage
        coords, s, p, _, g = decode_stage(last, crops.to(device), scale.to(device), mirror, net, perm)
        # the mean over the moved sub-images (one without shifts), statistics kept as (1, K)
        new = (coords.cpu() + starts).mean(0)
        s, p = s.mean(0, keepdim=True), p.mean(0, keepdim=True)
        g = None if g is None else g.mean(0, keepdim=True)
        moved = ((new - start_from) * scale).norm(dim=-1).double().numpy()
        if active is None:
            centres, shift, spread, posterior, gap = new, moved, s, p, g
            continue
        rows = list(range(len(active))) if cut else list(active)  # rows of this pass's outputs
        centres[active], shift[active] = new[rows], moved[rows]
        spread, posterior = spread.clone(), posterior.clone()
        spread[:, active], posterior[:, active] = s[:, rows], p[:, rows]
        if gap is not None:
            gap = gap.clone()
            gap[:, active] = g[:, rows]
    return stage_estimate(centres, spread, posterior, gap, aff), shift


def refine_in_turn(
    stages: list[Stage],
    image: Any,
    affine: np.ndarray,
    start: StageEstimate,
    settings: RunSettings,
    resampled: Mapping[tuple, tuple[torch.Tensor, np.ndarray]] | None = None,
) -> tuple[StageEstimate, np.ndarray]:
    """The local ``stages`` in turn (coarse to fine), each from the last one's answer (the first from
    ``start``), run as ``settings`` say; the last answer and how far its last pass moved each landmark
    (mm; zeros without local stages). ``resampled``: as :func:`refine_locally`'s."""
    s, estimate, shift = settings, start, np.zeros(len(start.world))
    for stage in stages:
        estimate, shift = refine_locally(
            stage, image, affine, estimate.world, s.local_iterations, s.mirror, s.local_repass_mm, s.local_shifts,
            resampled,
        )  # fmt: skip
    return estimate, shift


def local_shift_offsets(shifts: str, spatial_dims: int) -> torch.Tensor:
    """(S, D) moves of the sub-images a shift-averaged pass reads, in steps: the centred one first, then
    +1 along each axis ("axes") or -1 and +1 along each axis ("faces"); "none": the centred one only."""
    eye = torch.eye(spatial_dims)
    moves = {"none": [], "axes": [eye], "faces": [-eye, eye]}
    if shifts not in moves:
        raise ValueError(f"local shifts must be one of {list(moves)}, got {shifts!r}")
    return torch.cat([torch.zeros(1, spatial_dims), *moves[shifts]])


def _unpulled(stage: Stage) -> Stage:
    """The stage decoding without removing its pull toward the cell centres (a shift-averaged pass: the
    moved sub-images' mean cancels that pull already); the stage itself when it removes none."""
    return stage.with_decoder(cell_pull=0.0) if getattr(stage.decoder, "cell_pull", 0) else stage


def _cut_networks(
    stage: Stage, active: list[int] | None, mirror: MirrorAverage | None, k: int
) -> tuple[torch.nn.Module | None, list[int] | None]:
    """The networks of the ``active`` landmarks only, where the network can be cut (not exported ones),
    and with a mirror the pairing of their rows; (None, None): the whole network runs."""
    if active is None or not hasattr(stage.net, "for_landmarks"):
        return None, None
    perm = None
    if mirror is not None:
        full = mirror.permutation(k)
        where = {a: j for j, a in enumerate(active)}
        perm = [where[full[a]] for a in active]
    return stage.net.for_landmarks(active), perm


def _moved(shift: np.ndarray, repass_mm: float, mirror: MirrorAverage | None) -> list[int]:
    """Landmarks whose last pass moved them more than ``repass_mm``, with their mirror partners."""
    active = set(np.flatnonzero(shift > repass_mm).tolist())
    if mirror is not None and active:
        full = mirror.permutation(len(shift))
        active |= {full[a] for a in active}
    return sorted(active)


def stage_estimate(
    coords: torch.Tensor,
    spread: torch.Tensor,
    posterior: torch.Tensor,
    gap: torch.Tensor | None,
    affine: np.ndarray,
) -> StageEstimate:
    """A stage's estimate from its decoded voxel coordinates (K, D) or (1, K, D) and (1, K) statistics
    in the voxels of the image whose affine is ``affine``."""

    return StageEstimate(
        voxel_to_world(coords.reshape(-1, coords.shape[-1]).double().cpu().numpy(), affine),
        spread.reshape(-1).double().cpu().numpy(),
        posterior.reshape(-1).double().cpu().numpy(),
        None if gap is None else gap.reshape(-1).double().cpu().numpy(),
    )


def network_device(net: torch.nn.Module) -> torch.device:
    """Where a network's parameters are (the CPU for exported networks without torch parameters)."""
    return next(iter(net.parameters()), torch.empty(0)).device

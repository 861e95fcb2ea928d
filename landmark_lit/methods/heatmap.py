"""The heatmap-regression baseline: a U-Net in place of the global stage regresses one Gaussian heatmap per
landmark; Gaussian heatmap targets, their masked MSE loss and their decoding (pure, batched torch functions).

Targets follow MONAI's ``monai.transforms.GenerateHeatmap`` (landmark coordinates in array-axis order,
``sigma`` in working voxels, each voxel the Gaussian integrated over the voxel -- MONAI's ``approx="erf"``
kernel -- truncated at ``truncated * sigma``, every channel normalised to peak 1). MONAI's transform
(MONAI 1.6) places the Gaussian at the landmark rounded to the nearest voxel; :func:`heatmap_targets`
centres it at the exact sub-voxel position instead (``subvoxel=True``, the default), which equals MONAI's
output at integer positions and does not quantise the supervision by up to half a voxel per axis.
``subvoxel=False`` calls MONAI's transform itself.

A missing landmark (NaN) gives an all-zero channel and is masked out of the loss. A landmark outside the
array (its voxel centre not within ``[-0.5, n - 0.5)`` on some axis) gives an all-zero channel that *is*
supervised: "the landmark is not here".

Decoding: the integer argmax refined per axis by a parabola through the maximum and its two neighbours, or
a soft-argmax (softmax expectation) in a window around the argmax; see :class:`HeatmapDecoder`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landmark_lit.methods.base import Method, register, valid_mask
from landmark_lit.networks import HeatmapUNet
from landmark_lit.networks.heatmap_net import NORMS

DECODER_MODES = ("argmax", "soft_argmax")
REFINE_MODES = ("parabola", "log_parabola", "none")


def _positive_per_axis(value: float | Sequence[float], d: int, name: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)] * d
    if len(values) != d or any(not v > 0 for v in values):
        raise ValueError(f"{name} must be positive, one value or {d}, got {value!r}")
    return values


def inside(landmarks: Tensor, shape: Sequence[int]) -> Tensor:
    """(B, K) whether each landmark (B, K, D) lies in an array of ``shape`` (voxel extents ``[-0.5, n - 0.5)``)."""
    n = torch.as_tensor(list(shape), dtype=landmarks.dtype, device=landmarks.device)
    return ((landmarks >= -0.5) & (landmarks < n - 0.5)).all(-1) & valid_mask(landmarks)


def _axis_profile(centre: Tensor, n: int, sigma: float, truncated: float) -> Tensor:
    """(B, K) centres on one axis -> (B, K, n): MONAI's erf Gaussian kernel centred at the sub-voxel centre,
    truncated like MONAI's (``|i - c| <= int(max(sigma * truncated, 0.5) + 0.5)``), normalised to peak 1."""
    x = torch.arange(n, dtype=torch.float32, device=centre.device) - centre.unsqueeze(-1).float()
    t = 1.0 / (sigma * math.sqrt(2.0))
    p = (0.5 * (torch.erf((x + 0.5) * t) - torch.erf((x - 0.5) * t))).clamp(min=0.0)
    tail = int(max(sigma * truncated, 0.5) + 0.5)
    p = torch.where(x.abs() <= tail, p, torch.zeros_like(p))
    peak = p.amax(-1, keepdim=True)
    return torch.where(peak > 0, p / peak.clamp(min=1e-30), torch.zeros_like(p))


def heatmap_targets(
    landmarks: Tensor,
    shape: Sequence[int],
    sigma: float | Sequence[float],
    truncated: float = 4.0,
    subvoxel: bool = True,
) -> Tensor:
    """Gaussian heatmaps (B, K, *shape), peak 1, from landmarks (B, K, D) in voxels of an array of ``shape``.

    ``sigma`` in voxels (one value or one per axis). Missing (NaN) and outside landmarks give zero channels.
    ``subvoxel=False`` uses ``monai.transforms.GenerateHeatmap`` (Gaussian at the nearest voxel).
    """
    b, k, d = landmarks.shape
    shape = [int(n) for n in shape]
    if len(shape) != d:
        raise ValueError(f"landmarks are {d}D but the heatmap shape is {shape}")
    sig = _positive_per_axis(sigma, d, "sigma")
    keep = inside(landmarks, shape)  # (B, K)
    if not subvoxel:
        from monai.transforms import GenerateHeatmap

        transform = GenerateHeatmap(sigma=sig, spatial_shape=shape, truncated=truncated, normalize=True)
        pts = torch.where(
            keep.unsqueeze(-1), landmarks.float(), torch.full_like(landmarks.float(), torch.nan)
        )
        maps = torch.stack([transform(p) for p in pts.cpu()]).to(landmarks.device)
        return maps * keep.view(b, k, *([1] * d)).to(maps.dtype)
    centres = torch.where(keep.unsqueeze(-1), landmarks, torch.zeros_like(landmarks))
    out = keep.to(torch.float32).view(b, k, *([1] * d))
    for axis in range(d):
        prof = _axis_profile(centres[..., axis], shape[axis], sig[axis], truncated)
        view = [b, k] + [1] * d
        view[2 + axis] = shape[axis]
        out = out * prof.view(view)
    return out


class HeatmapLoss(nn.Module):
    """Masked MSE between predicted heatmaps and ``amplitude`` x the Gaussian targets.

    Args:
        sigma: Gaussian standard deviation in working voxels (one value or one per axis).
        amplitude: peak height of the targets. Heatmaps are mostly background, and how fast the peaks are
            learnt depends on this scale (100 chosen on synthetic2d validation, experiments/bench/RESULTS.md).
        foreground_weight: optional extra weight ``1 + foreground_weight * target / amplitude`` per voxel.
        truncated: targets are zero beyond ``truncated * sigma`` (MONAI's ``truncated``).
        subvoxel: exact sub-voxel Gaussian centres (see :func:`heatmap_targets`).
    Channels of missing (NaN) landmarks are masked out; the mean runs over annotated channels and voxels.
    Returns ``{"loss": ..., "loss_heatmap": ...}`` (the same total, logged as :class:`~landmark_lit.methods.displacement.DisplacementLoss` logs its terms).
    """

    def __init__(
        self,
        sigma: float | Sequence[float] = 2.0,
        amplitude: float = 100.0,
        foreground_weight: float = 0.0,
        truncated: float = 4.0,
        subvoxel: bool = True,
    ) -> None:
        super().__init__()
        if not amplitude > 0 or foreground_weight < 0:
            raise ValueError("amplitude must be positive and foreground_weight non-negative")
        self.sigma = list(sigma) if isinstance(sigma, Sequence) else float(sigma)
        self.amplitude, self.foreground_weight = float(amplitude), float(foreground_weight)
        self.truncated, self.subvoxel = float(truncated), bool(subvoxel)

    def targets(self, landmarks: Tensor, shape: Sequence[int]) -> Tensor:
        """Targets in heatmap units (peak ``amplitude``)."""
        unit = heatmap_targets(landmarks, shape, self.sigma, self.truncated, self.subvoxel)
        return self.amplitude * unit

    def forward(
        self,
        heatmaps: Tensor,
        landmarks: Tensor,
        stride: int = 1,
        input_shape: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """heatmaps (B, K, *spatial); landmarks (B, K, D) in voxels of the same grid (NaN = missing).
        ``stride`` and ``input_shape`` are accepted for the displacement loss's call form and unused."""
        if stride != 1:
            raise ValueError(f"heatmap networks have stride 1, got {stride}")
        grid = heatmaps.shape[2:]
        mask = valid_mask(landmarks)  # (B, K)
        n_valid = mask.sum()
        if n_valid == 0:  # nothing annotated: a zero loss that keeps the graph connected
            zero = heatmaps.sum() * 0.0
            return {"loss": zero, "loss_heatmap": zero}
        target = self.targets(landmarks, grid).to(heatmaps.dtype)
        err = (heatmaps - target) ** 2
        if self.foreground_weight:
            err = err * (1.0 + self.foreground_weight * target / self.amplitude)
        m = mask.view(*mask.shape, *([1] * len(grid))).to(err.dtype)
        loss = (err * m).sum() / (n_valid * grid.numel())
        return {"loss": loss, "loss_heatmap": loss.detach()}


def _unravel(flat: Tensor, shape: Sequence[int]) -> Tensor:
    """Flat indices (...) -> (..., D) array indices."""
    out = []
    for n in reversed(list(shape)):
        out.append(flat % n)
        flat = torch.div(flat, n, rounding_mode="floor")
    return torch.stack(out[::-1], dim=-1)


def _window(peak: Tensor, shape: Sequence[int], radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Voxels within ``radius`` (per axis, a box) of the integer peaks (B, K, D).

    Returns positions (B, K, W, D) (long), flat indices (B, K, W) clamped into the array, and a (B, K, W)
    mask of the positions inside the array.
    """
    d = len(shape)
    offsets = torch.tensor(
        list(itertools.product(range(-radius, radius + 1), repeat=d)), dtype=torch.long, device=peak.device
    )  # (W, D)
    pos = peak.unsqueeze(2) + offsets  # (B, K, W, D)
    n = torch.as_tensor(list(shape), dtype=torch.long, device=peak.device)
    ok = ((pos >= 0) & (pos < n)).all(-1)
    clamped = torch.minimum(pos.clamp(min=0), n - 1)
    strides = [math.prod(shape[a + 1 :]) for a in range(d)]
    flat = (clamped * torch.as_tensor(strides, dtype=torch.long, device=peak.device)).sum(-1)
    return pos, flat, ok


@dataclass
class HeatmapDecoder:
    """Landmark coordinates from heatmaps (B, K, *spatial) -> (B, K, D) voxels.

    Args:
        mode: "argmax" (integer maximum, then per axis the vertex of the parabola through the maximum and
            its two neighbours, clamped to +-0.5 voxel; no refinement on an axis where the maximum lies on
            the border or the three values are not peaked) or "soft_argmax" (the expectation of
            ``softmax(beta * heatmap / amplitude)`` over the voxels within ``window`` of the argmax).
        beta: soft-argmax sharpness per unit of peak height (``amplitude``).
        window: radius in voxels (a box) of the soft-argmax and of the spread in :meth:`statistics`.
        amplitude: the targets' peak height (as in :class:`HeatmapLoss`); the posterior is the peak over it.
        refine: argmax refinement: "parabola" (through the values), "log_parabola" (through their logs: exact
            for a Gaussian; falls back to "parabola" where a value is not positive) or "none".
    """

    mode: str = "argmax"
    beta: float = 10.0
    window: int = 3
    amplitude: float = 100.0
    refine: str = "parabola"

    def __post_init__(self) -> None:
        if self.mode not in DECODER_MODES:
            raise ValueError(f"mode must be one of {DECODER_MODES}, got {self.mode!r}")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if not self.beta > 0 or not self.amplitude > 0 or int(self.window) < 1:
            raise ValueError("beta and amplitude must be positive and window at least 1")

    def __call__(self, heatmaps: Tensor, stride: int = 1) -> Tensor:
        return self._decode(heatmaps)[0]

    def _decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """coords (B, K, D) float32, integer peak (B, K, D), peak value (B, K)."""
        b, k = heatmaps.shape[:2]
        shape = list(heatmaps.shape[2:])
        d = len(shape)
        flat = heatmaps.detach().reshape(b, k, -1).float()
        value, idx = flat.max(-1)
        peak = _unravel(idx, shape)  # (B, K, D)
        if self.mode == "soft_argmax":
            pos, fidx, ok = _window(peak, shape, int(self.window))
            logits = self.beta * flat.gather(-1, fidx.flatten(2)) / self.amplitude
            w = torch.softmax(logits.masked_fill(~ok, -torch.inf), dim=-1)  # (B, K, W)
            return (w.unsqueeze(-1) * pos.float()).sum(2), peak, value
        coords = peak.float()
        if self.refine == "none":
            return coords, peak, value
        strides = [math.prod(shape[a + 1 :]) for a in range(d)]
        for a in range(d):
            lo_ok, hi_ok = peak[..., a] > 0, peak[..., a] < shape[a] - 1
            lo = flat.gather(-1, (idx - strides[a] * lo_ok.long()).unsqueeze(-1)).squeeze(-1)
            hi = flat.gather(-1, (idx + strides[a] * hi_ok.long()).unsqueeze(-1)).squeeze(-1)
            offset = _parabola_vertex(lo, value, hi)
            if self.refine == "log_parabola":
                positive = (lo > 0) & (value > 0) & (hi > 0)
                logs = [v.clamp(min=1e-30).log() for v in (lo, value, hi)]
                offset = torch.where(positive, _parabola_vertex(*logs), offset)
            coords[..., a] += torch.where(lo_ok & hi_ok, offset, torch.zeros_like(offset))
        return coords, peak, value

    def statistics(
        self, heatmaps: Tensor, stride: int = 1, spacing: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :func:`landmark_lit.methods.displacement.vote_statistics`: coords (B, K, D) voxels; spread (B, K), the RMS
        distance to coords of the positive heatmap mass within ``window`` of the peak (mm with ``spacing``
        (D,) mm per voxel, else voxels; 0 without positive mass); posterior (B, K), the peak value over
        ``amplitude`` clipped to [0, 1]."""
        coords, peak, value = self._decode(heatmaps)
        b, k = heatmaps.shape[:2]
        shape = list(heatmaps.shape[2:])
        pos, fidx, ok = _window(peak, shape, int(self.window))
        mass = heatmaps.detach().reshape(b, k, -1).float().gather(-1, fidx.flatten(2)).clamp(min=0) * ok
        total = mass.sum(-1, keepdim=True)
        w = torch.where(total > 0, mass / total.clamp(min=1e-30), torch.zeros_like(mass))
        diff = pos.float() - coords.unsqueeze(2)  # (B, K, W, D)
        if spacing is not None:
            diff = diff * spacing.to(diff).view(1, 1, 1, -1)
        spread = ((diff**2).sum(-1) * w).sum(-1).sqrt()
        posterior = (value / self.amplitude).clamp(0.0, 1.0)
        return coords, spread, posterior


def _parabola_vertex(lo: Tensor, mid: Tensor, hi: Tensor) -> Tensor:
    """Offset of the vertex of the parabola through (-1, lo), (0, mid), (1, hi), clamped to +-0.5; 0 where
    the three values do not make a maximum (curvature not negative)."""
    curvature = lo - 2.0 * mid + hi
    ok = curvature < 0
    offset = 0.5 * (lo - hi) / torch.where(ok, curvature, torch.ones_like(curvature))
    return torch.where(ok, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


class HeatmapMethod(Method):
    """The heatmap baseline: a :class:`HeatmapUNet` global stage (its checkpoints can be followed by the
    displacement method's local stages). Decoder descriptions: the fields of :class:`HeatmapDecoder`."""

    name = "heatmap"
    networks = {"global": HeatmapUNet}
    loss_class = HeatmapLoss
    decoder_class = HeatmapDecoder
    string_network_arguments = {HeatmapUNet: {"norm": NORMS}}

    def describe_decoder(self, decoder: HeatmapDecoder) -> dict[str, Any]:
        dec = asdict(decoder)
        return {
            "mode": str(dec["mode"]),
            "beta": float(dec["beta"]),
            "window": int(dec["window"]),
            "amplitude": float(dec["amplitude"]),
            "refine": str(dec["refine"]),
        }

    def decoder_from_description(self, description: Any) -> HeatmapDecoder:
        ok = isinstance(description, dict) and not set(description) - {
            "mode", "beta", "window", "amplitude", "refine"
        }  # fmt: skip
        if ok:
            window = description.get("window", 3)
            numbers = [description.get(key, 1.0) for key in ("beta", "amplitude")]
            ok = (
                isinstance(window, int)
                and not isinstance(window, bool)
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in numbers
                )
            )
        if not ok:
            raise ValueError(f"invalid heatmap decoder {description!r}")
        try:
            return HeatmapDecoder(**description)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid heatmap decoder {description!r} ({exc})") from None


HEATMAP = register(HeatmapMethod())

"""Heatmap-regression baseline network: a MONAI U-Net with one output channel (heatmap) per landmark.

The input is zero-padded at the far end of every axis to a multiple of the product of the U-Net's strides
(as :func:`~landmark_lit.networks.landmark_net.pad_to_multiple` does for the displacement networks) and the
output is cropped back, so an input of any size gives heatmaps of its own spatial shape and voxel
coordinates are not shifted by the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import Tensor, nn

from landmark_lit.networks.landmark_net import pad_to_multiple

NORMS = ("batch", "instance")


class HeatmapUNet(nn.Module):
    """U-Net (``monai.networks.nets.UNet``) regressing K heatmaps at the input's resolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_landmarks: K (output channels).
        channels, strides, num_res_units: the U-Net's encoder widths, downsampling strides and residual
            units per block (see MONAI's ``UNet``); ``len(strides) == len(channels) - 1``.
        norm: "batch" or "instance".
    Input (B, C, *spatial) of any size; output (B, K, *spatial) heatmaps (a plain tensor, linear output).
    Attributes ``spatial_dims``, ``num_landmarks`` and ``stride`` (1: one output voxel per input voxel).
    """

    stride = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_landmarks: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"len(strides) must be len(channels) - 1, got {len(strides)} and {len(channels)}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.spatial_dims, self.num_landmarks = int(spatial_dims), int(num_landmarks)
        # the input is padded to a multiple of this, so every down/up-sampling step is exact
        self.size_multiple = int(math.prod(int(s) for s in strides))
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_landmarks,
            channels=tuple(int(c) for c in channels),
            strides=tuple(int(s) for s in strides),
            num_res_units=int(num_res_units),
            norm=norm,
        )

    def forward(self, x: Tensor) -> Tensor:
        spatial = x.shape[2:]
        out = self.unet(pad_to_multiple(x, self.size_multiple))
        if tuple(out.shape[2:]) != tuple(spatial):
            out = out[(..., *(slice(0, n) for n in spatial))]
        return out

from __future__ import annotations

from landmark_lit.networks.blocks import fast_grouped_pointwise, fold_batch_norm
from landmark_lit.networks.heatmap_net import HeatmapUNet
from landmark_lit.networks.landmark_net import DisplacementOutput, GlobalNet, LocalNet, pad_to_multiple

__all__ = [
    "GlobalNet",
    "fast_grouped_pointwise",
    "fold_batch_norm",
    "HeatmapUNet",
    "DisplacementOutput",
    "LocalNet",
    "pad_to_multiple",
]

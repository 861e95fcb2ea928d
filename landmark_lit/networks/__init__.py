from __future__ import annotations

from landmark_lit.networks.landmark_net import GlobalNet, LandmarkOutput, LocalNet, pad_to_multiple

__all__ = ["GlobalNet", "LandmarkOutput", "LocalNet", "pad_to_multiple"]

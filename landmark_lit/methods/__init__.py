"""The methods landmark_lit trains and runs, one module each, registered by name (:func:`get_method`).

- :mod:`~landmark_lit.methods.displacement`: the proposed method (displacement + presence per cell,
  weighted-vote decoding; global and local stages);
- :mod:`~landmark_lit.methods.heatmap`: the heatmap-regression baseline (a U-Net in place of the global
  stage).
"""

from __future__ import annotations

from landmark_lit.methods.base import Method, get_method, method_names, method_of_network, register
from landmark_lit.methods.displacement import DISPLACEMENT
from landmark_lit.methods.heatmap import HEATMAP

__all__ = ["DISPLACEMENT", "HEATMAP", "Method", "get_method", "method_names", "method_of_network", "register"]

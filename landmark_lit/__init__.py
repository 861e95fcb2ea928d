"""landmark_lit: global-to-local landmark localization with displacement regression and presence classification."""

from __future__ import annotations

__version__ = "0.1.0"

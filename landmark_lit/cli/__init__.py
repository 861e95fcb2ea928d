"""Thin Hydra entry points around plain functions."""

from __future__ import annotations

from pathlib import Path

# conf/ sits at the top of the checkout (the package is installed editable by `make install`).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

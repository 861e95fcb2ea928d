"""Thin Hydra entry points around plain functions."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# conf/ sits at the top of the checkout (the package is installed editable by `make install`).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "conf")

# ${project_root:} in configs: the checkout, whatever the working directory
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))

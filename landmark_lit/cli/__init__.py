"""Thin Hydra entry points around plain functions."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from omegaconf import OmegaConf

# the configs: conf/ at the top of the checkout, shipped in the wheel as the package data of
# landmark_lit.conf (pyproject.toml), so an editable install and an installed wheel both find them
CONFIG_DIR = str(importlib.resources.files("landmark_lit.conf"))
# landmark-predict's and landmark-export's configs sit in their own folder: there `model=PATH` names a
# model bundle, whereas in conf/ `model` is the training config group of network shapes
PREDICT_CONFIG_DIR = str(Path(CONFIG_DIR) / "predict")
# the source checkout the package sits in (with `make install`, an editable install), if it does
_CHECKOUT = Path(__file__).resolve().parents[2]
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


def data_root() -> str:
    """Where the real data is looked for by default: ``../shared/data`` beside a checkout, else ``./data``."""
    return str(PROJECT_ROOT.parent / "shared" / "data") if PROJECT_ROOT else str(Path.cwd() / "data")


# ${cwd:}: the current folder (outputs go below it); ${data_root:}: see data_root()
if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", lambda: os.getcwd())
if not OmegaConf.has_resolver("data_root"):
    OmegaConf.register_new_resolver("data_root", data_root)


def sweep_id() -> str:
    """The folder name of the running Hydra multirun (one per sweep, shared by its jobs), else "single"."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # no Hydra app running (compose API, tests)
        return "single"
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return "single"
    return Path(str(hydra_cfg.sweep.dir)).name


# ${sweep_id:} in configs: groups the wandb runs of one sweep
if not OmegaConf.has_resolver("sweep_id"):
    OmegaConf.register_new_resolver("sweep_id", sweep_id)

"""Thin Hydra entry points around plain functions."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# conf/ sits at the top of the checkout (the package is installed editable by `make install`).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "conf")
# landmark-predict's and landmark-export's configs sit in their own folder: there `model=PATH` names a
# model bundle, whereas in conf/ `model` is the training config group of network shapes
PREDICT_CONFIG_DIR = str(PROJECT_ROOT / "conf" / "predict")

# ${project_root:} in configs: the checkout, whatever the working directory
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


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

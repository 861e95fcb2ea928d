"""Where the Hydra configs are and how they are composed: the config folders, and the OmegaConf resolvers
the configs use (``${cwd:}``, ``${data_root:}``, ``${sweep_id:}``, ``${when:}``), registered by
:func:`register_resolvers` before anything is composed (each command's entry point,
:func:`compose_config`, the tests' conftest).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the configs: conf/ at the top of the checkout, shipped in the wheel as the package data of
# landmark_lit.conf (pyproject.toml), so an editable install and an installed wheel both find them
CONFIG_DIR = str(importlib.resources.files("landmark_lit.conf"))
# the source checkout the package sits in (with `make install`, an editable install), if it does
_CHECKOUT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


def data_root() -> str:
    """Where the real data is looked for by default: ``../shared/data`` beside a checkout, else ``./data``."""
    return str(PROJECT_ROOT.parent / "shared" / "data") if PROJECT_ROOT else str(Path.cwd() / "data")


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


def when(condition: bool, value: Any, otherwise: Any = None) -> Any:
    """``value`` if ``condition`` holds, else ``otherwise`` (None): ``${when:${ablation.classification},
    ${stage.vote_top_k}}`` keeps a stage's option that needs classification out of the variants without
    it (the ablation grid)."""
    return value if condition else otherwise


def register_resolvers() -> None:
    """Register the configs' resolvers (once; calling again does nothing): ``${cwd:}`` the current folder
    (outputs go below it), ``${data_root:}`` (:func:`data_root`), ``${sweep_id:}`` (:func:`sweep_id`,
    groups the wandb runs of one sweep), ``${when:COND,VALUE}`` (:func:`when`)."""
    resolvers = (("cwd", os.getcwd), ("data_root", data_root), ("sweep_id", sweep_id), ("when", when))
    for name, resolver in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def compose_config(
    config_name: str, overrides: Sequence[str] = (), config_dir: str = CONFIG_DIR
) -> DictConfig:
    """Compose a config with Hydra's compose API (no run folder), the resolvers registered."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return compose(config_name, overrides=list(overrides))

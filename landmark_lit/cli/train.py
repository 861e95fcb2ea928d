"""``landmark-train``: train one stage; ``-m`` for Hydra multirun sweeps."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from landmark_lit.config import CONFIG_DIR, register_resolvers
from landmark_lit.training import train


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def run(cfg: DictConfig) -> float | None:
    result = train(cfg)
    # returned for sweepers (e.g. Optuna) that minimise `optimized_metric` (conf/train.yaml): the best
    # checkpoint's value when the checkpoint callback monitors it, else the last validation's
    metrics = result["metrics"]
    name = cfg.optimized_metric
    return metrics.get(f"best_{name}", metrics.get(name))


def main() -> None:
    """Console entry point: the configs' resolvers, then Hydra."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()

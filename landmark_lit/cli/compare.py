"""``landmark-compare``: several runs' predictions on the same images in the paper's Table I form
(conf/compare.yaml)."""

from __future__ import annotations

from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from landmark_lit.config import CONFIG_DIR, register_resolvers
from landmark_lit.evaluation.compare import compare_runs, format_comparison, log_comparison_to_wandb


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Plain function behind the CLI; prints the Markdown table and returns the result."""
    runs = OmegaConf.to_container(cfg.runs) if OmegaConf.is_config(cfg.runs) else cfg.runs
    if not isinstance(runs, dict):
        raise ValueError(f"runs must map run names to prediction files, got {runs!r}")
    runs = {
        str(name): [to_absolute_path(str(f)) for f in files]
        if isinstance(files, list)
        else to_absolute_path(str(files))
        for name, files in runs.items()
    }
    landmarks = OmegaConf.to_container(cfg.landmarks) if OmegaConf.is_list(cfg.landmarks) else cfg.landmarks
    result = compare_runs(
        runs,
        to_absolute_path(str(cfg.references)),
        to_absolute_path(str(cfg.output_dir)),
        reference_run=cfg.reference_run,
        landmarks=landmarks,
        thresholds=[float(t) for t in cfg.thresholds],
        failure_mm=float(cfg.get("failure_mm", 4.0)),
        references_split=cfg.get("references_split"),
    )
    print(format_comparison(result))
    out = to_absolute_path(str(cfg.output_dir))
    tracking = cfg.get("wandb") or {}
    if tracking.get("enabled"):
        run_id = log_comparison_to_wandb(
            result,
            [float(t) for t in cfg.thresholds],
            sdr_picture=f"{out}/sdr_curves.png",
            project=tracking.get("project", "landmark_lit"),
            group=tracking.get("group"),
            name=tracking.get("name"),
            save_dir=out,
            mode=tracking.get("mode", "offline"),
        )
        result["wandb_run"] = run_id
        print(f"wandb run {run_id} (group {tracking.get('group')}) in {out}/wandb")
    print(f"Outputs: {out}")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
def run(cfg: DictConfig) -> None:
    compare(cfg)


def main() -> None:
    """Console entry point: the configs' resolvers, then Hydra."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()

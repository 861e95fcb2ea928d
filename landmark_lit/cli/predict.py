"""``landmark-predict``: run trained global (+ local) networks on image files."""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from landmark_lit.cli import CONFIG_DIR
from landmark_lit.inference import LandmarkPredictor, predict_files


def predict(cfg: DictConfig) -> dict:
    """Plain function behind the CLI: load the checkpoints, predict ``cfg.input``, write to ``cfg.output_dir``."""
    torch.set_num_threads(int(cfg.threads))
    local = cfg.get("local_checkpoint")
    local = OmegaConf.to_container(local) if OmegaConf.is_list(local) else local
    predictor = LandmarkPredictor.from_checkpoints(
        cfg.global_checkpoint, local, int(cfg.get("local_iterations", 1))
    )
    inputs = OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else str(cfg.input)
    spacing = cfg.get("spacing")
    spacing = OmegaConf.to_container(spacing) if OmegaConf.is_list(spacing) else spacing
    return predict_files(predictor, inputs, cfg.output_dir, root=cfg.get("input_root"), spacing=spacing)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    result = predict(cfg)
    seconds = result["median_seconds"]
    print(
        f"{result['done']} images done, {len(result['failed'])} failed"
        + (f", {seconds:.3f} s per image (median)" if seconds is not None else "")
        + f", peak memory {result['peak_memory_mb']:.0f} MB; output in {cfg.output_dir}"
    )
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

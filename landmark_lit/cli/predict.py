"""``landmark-predict``: run a trained model (a bundle, or global + local checkpoints) on image files."""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from landmark_lit.cli import PREDICT_CONFIG_DIR
from landmark_lit.predict_files import predict_files, summary_line
from landmark_lit.predictor import LandmarkPredictor
from landmark_lit.stages import DEFAULT_CONFIDENCE_SCALE
from landmark_lit.utils import first_line


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def load_predictor(cfg: DictConfig) -> LandmarkPredictor:
    """The predictor of ``cfg.model`` (a bundle) or ``cfg.global_checkpoint`` (+ ``local_checkpoint``);
    ``local_iterations``, ``confidence_threshold``, ``confidence_scale`` and the vote decoders'
    ``global_top_k`` / ``local_top_k``, when set, override the stored ones."""
    model, global_ckpt = cfg.get("model"), cfg.get("global_checkpoint")
    if bool(model) == bool(global_ckpt):
        raise ValueError(
            "give either model=BUNDLE or global_checkpoint=CKPT (with optional local_checkpoint)"
        )
    iterations, threshold = cfg.get("local_iterations"), cfg.get("confidence_threshold")
    scale = cfg.get("confidence_scale")
    if model:
        if cfg.get("local_checkpoint"):
            raise ValueError("local_checkpoint goes with global_checkpoint, not with a model bundle")
        predictor = LandmarkPredictor.from_bundle(model)
        if iterations is not None:
            predictor.local_iterations = int(iterations)
        if threshold is not None:
            predictor.confidence_threshold = float(threshold)
        if scale is not None:
            predictor.confidence_scale = float(scale)
    else:
        predictor = LandmarkPredictor.from_checkpoints(
            global_ckpt,
            _plain(cfg.get("local_checkpoint")),
            int(iterations) if iterations is not None else 1,
            None if threshold is None else float(threshold),  # None: the last stage's method's default
            float(scale) if scale is not None else DEFAULT_CONFIDENCE_SCALE,
        )
    predictor.set_vote_top_k(cfg.get("global_top_k"), cfg.get("local_top_k"))
    return predictor


def predict(cfg: DictConfig) -> dict:
    """Plain function behind the CLI: load the model, predict ``cfg.input``, write to ``cfg.output_dir``."""
    torch.set_num_threads(int(cfg.threads))
    predictor = load_predictor(cfg)
    return predict_files(
        predictor,
        _plain(cfg.input) if OmegaConf.is_list(cfg.input) else str(cfg.input),
        cfg.output_dir,
        root=cfg.get("input_root"),
        spacing=_plain(cfg.get("spacing")),
        split=cfg.get("input_split"),
        pictures=bool(cfg.get("pictures", False)),
        vector_field=cfg.get("vector_field"),
        references=cfg.get("references"),
        progress=cfg.get("progress"),
    )


@hydra.main(version_base="1.3", config_path=PREDICT_CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        result = predict(cfg)
    except (ValueError, FileNotFoundError) as exc:  # a bad model or input spec: one line, no traceback
        print(f"error: {first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    print(f"{summary_line(result)}; output in {cfg.output_dir}")
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""What ``landmark-predict`` and ``landmark-export`` share: the model options of their configs
(conf/predict.yaml, conf/export.yaml) turned into one checked predictor."""

from __future__ import annotations

from omegaconf import DictConfig

from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.utils import plain

# the run settings (landmark_lit.inference.settings.RunSettings) a config may change; null keeps them
SETTING_KEYS = (
    "local_iterations", "local_repass_mm", "local_shifts", "confidence_threshold", "confidence_scale", "mirror"
)  # fmt: skip


def load_predictor(cfg: DictConfig) -> LandmarkPredictor:
    """The predictor of ``cfg.model`` (a bundle) or ``cfg.global_checkpoint`` (+ ``local_checkpoint``),
    run with the bundle's settings (or the defaults) changed by the options of :data:`SETTING_KEYS` that are
    set, checked once; the vote decoders' ``global_top_k`` / ``local_top_k``, when set, override the
    stored ones. ValueError (one line) for a bad combination or value."""
    model, global_ckpt = cfg.get("model"), cfg.get("global_checkpoint")
    if bool(model) == bool(global_ckpt):
        raise ValueError(
            "give either model=BUNDLE or global_checkpoint=CKPT (with optional local_checkpoint)"
        )
    if model:
        if cfg.get("local_checkpoint"):
            raise ValueError("local_checkpoint goes with global_checkpoint, not with a model bundle")
        predictor = LandmarkPredictor.from_bundle(model)
    else:
        predictor = LandmarkPredictor.from_checkpoints(
            global_ckpt, plain(cfg.get("local_checkpoint")) or None
        )
    options = {key: plain(cfg.get(key)) for key in SETTING_KEYS}
    predictor.configure(predictor.settings.overridden(options, predictor.landmark_names))
    predictor.set_vote_top_k(cfg.get("global_top_k"), cfg.get("local_top_k"))
    return predictor

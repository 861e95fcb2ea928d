"""``landmark-export``: write a model bundle from training checkpoints, and TorchScript / ONNX networks."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from landmark_lit.cli.common import load_predictor
from landmark_lit.confidence import DEFAULT_COVERAGE, DEFAULT_FAILURE_MM, DEFAULT_GOAL, Calibration
from landmark_lit.config import CONFIG_DIR, register_resolvers
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import Stage, save_bundle
from landmark_lit.utils import first_line, plain

FORMATS = ("bundle", "torchscript", "onnx")


def example_input(stage: Stage) -> torch.Tensor:
    """A zero input of the stage's training crop size (any size works; this one is typical)."""
    meta, c = stage.meta, stage.meta.net["in_channels"]
    d = int(meta.spatial_dims)
    crop = meta.crop_size or [64] * d
    crop = [int(n) for n in (crop if isinstance(crop, list | tuple) else [crop] * d)]
    if meta.stage == "local":
        return torch.zeros(1, len(meta.landmark_names), c, *crop)
    return torch.zeros(1, c, *crop)


def export(cfg: DictConfig) -> dict[str, Path]:
    """Plain function behind the CLI; returns format/stage -> written file."""
    torch.set_num_threads(int(cfg.get("threads", 2)))
    formats = list(OmegaConf.to_container(cfg.formats)) if OmegaConf.is_list(cfg.formats) else [cfg.formats]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"formats: unknown {unknown} (expected any of {list(FORMATS)})")
    out, written = Path(cfg.output), {}
    if cfg.get("model") and "bundle" in formats:
        raise ValueError("model=BUNDLE is already a bundle: export its networks with formats=[onnx] etc.")
    predictor = load_predictor(cfg)  # the bundle's, or the checkpoints' with the run settings checked
    if not cfg.get("model"):
        calibration = None
        if cfg.get("calibration_dataset") or cfg.get("calibration_manifest"):
            calibration = calibrate(cfg, predictor)
            written["calibration"] = _calibration_line(calibration)
        if "bundle" in formats:
            local = plain(cfg.get("local_checkpoint")) or []
            local = [local] if isinstance(local, str) else local
            # the decoders as the predictor runs them (the config's global_top_k / local_top_k applied)
            decoders = [s.meta.decoder for s in (predictor.global_stage, *predictor.local_stages)]
            save_bundle(out, cfg.global_checkpoint, local, predictor.settings, calibration, decoders)
            written["bundle"] = out
    stages = {"global": predictor.global_stage} | {
        f"local{n}": s for n, s in enumerate(predictor.local_stages)
    }
    if "torchscript" in formats or "onnx" in formats:
        from landmark_lit.inference.export import export_onnx, export_torchscript

        for name, stage in stages.items():
            stem = out.with_suffix("").name
            if "torchscript" in formats:
                path = out.with_name(f"{stem}.{name}.ts")
                export_torchscript(stage.net, path, example_input(stage), meta=stage.meta.to_dict())
                written[f"torchscript/{name}"] = path
            if "onnx" in formats:
                path = out.with_name(f"{stem}.{name}.onnx")
                export_onnx(stage.net, path, example_input(stage), meta=stage.meta.to_dict())
                written[f"onnx/{name}"] = path
    return written


def calibrate(cfg: DictConfig, predictor: LandmarkPredictor) -> Calibration:
    """The calibration ``cfg`` asks for: ``predictor`` on the validation cases, or, with
    ``calibration_folds`` (bundles of the same pipeline trained with one fold held out each), every fold's
    pipeline on its held-out cases (run with ``predictor``'s settings), fitted as one; bundle k held out
    fold k of ``calibration_fold_count`` (default: one bundle per fold)."""
    from landmark_lit.inference.calibrate import calibrate_cross_fitted, calibration_source

    dataset, manifest = cfg.get("calibration_dataset"), cfg.get("calibration_manifest")
    folds = plain(cfg.get("calibration_folds")) or []
    folds = [folds] if isinstance(folds, str) else list(folds)
    split = plain(cfg.get("calibration_split")) or "val"
    if folds and manifest and (not isinstance(split, list) or len(split) != len(folds)):
        raise ValueError(
            f"calibration_folds with a manifest: calibration_split must list one split per fold "
            f"({len(folds)}), got {split!r}"
        )
    if isinstance(split, list) and not (folds and manifest):
        raise ValueError(f"calibration_split: one split unless folds come from a manifest, got {split!r}")
    # the dataset's split the bundles were trained with: bundle k held out fold k of ``count``
    count = int(cfg.get("calibration_fold_count") or len(folds))
    if folds and count < len(folds):
        raise ValueError(
            f"calibration_fold_count: {count} folds cannot hold {len(folds)} bundles' held-out cases"
        )
    if not folds:
        pairs = [(predictor, calibration_source(dataset, manifest, str(split)))]
    else:
        pairs = []
        for k, path in enumerate(folds):
            fold_split = split[k] if manifest else str(split)
            source = calibration_source(dataset, manifest, fold_split, *((count, k) if dataset else ()))
            pairs.append((_fold_predictor(path, predictor, cfg), source))
    failure = cfg.get("failure_mm") or pairs[0][1][1] or DEFAULT_FAILURE_MM
    description = "; ".join(source[2] for _, source in pairs)
    return calibrate_cross_fitted(
        [(p, source[0]) for p, source in pairs],
        float(failure),
        float(cfg.get("calibration_goal", DEFAULT_GOAL)),
        float(cfg.get("radius_coverage", DEFAULT_COVERAGE)),
        description,
        failure_model=cfg.get("calibration_failure_model"),
        threshold_from=cfg.get("calibration_threshold_from"),
    )


def _fold_predictor(path: str, predictor: LandmarkPredictor, cfg: DictConfig) -> LandmarkPredictor:
    """The pipeline of one cross-fitting fold's bundle, run as ``predictor`` runs (its settings, the
    config's vote ``top_k``); it must be the same kind of pipeline (landmarks, stages, working spacings)."""
    fold = LandmarkPredictor.from_bundle(path)

    def shape(p: LandmarkPredictor) -> list:
        stages = [p.global_stage, *p.local_stages]
        return [(s.meta.stage, [round(float(v), 6) for v in np.atleast_1d(s.meta.spacing)]) for s in stages]

    if fold.landmark_names != predictor.landmark_names or shape(fold) != shape(predictor):
        raise ValueError(
            f"calibration_folds: {path} is another kind of pipeline ({shape(fold)}, "
            f"{len(fold.landmark_names)} landmarks) than the one exported ({shape(predictor)}, "
            f"{len(predictor.landmark_names)} landmarks)"
        )
    fold.configure(predictor.settings)
    fold.set_vote_top_k(cfg.get("global_top_k"), cfg.get("local_top_k"))
    return fold


def _calibration_line(cal: Calibration) -> str:
    v = cal.validation
    return (
        f"{v['n_landmarks']} validation landmarks: threshold {cal.threshold:.3f} flags "
        f"{100 * v['share_flagged']:.1f} % and catches {v['failures_caught']} of {v['failures']} errors "
        f"> {cal.failure_mm:g} mm; the {100 * cal.coverage:g} % radius covers "
        f"{100 * v['radius_coverage']:.1f} % (median {v['radius_median_mm']:.2f} mm)"
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def run(cfg: DictConfig) -> None:
    try:
        written = export(cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    for key, path in written.items():
        print(f"{key}: {path}")


def main() -> None:
    """Console entry point: the configs' resolvers, then Hydra."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()

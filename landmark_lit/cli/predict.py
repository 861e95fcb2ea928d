"""``landmark-predict``: run a trained model (a bundle, or global + local checkpoints) on image files.

Two forms, the same options (conf/predict.yaml):

    landmark-predict -i scans/ -o predictions/ -m model.pt [--spacing 0.1] [--pictures] [--threads 2]
    landmark-predict model=model.pt input=scans/ output_dir=predictions/      # key=value, as in scripts

Prediction runs without a Hydra run folder: the output folder holds the predictions only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from landmark_lit.cli.common import load_predictor
from landmark_lit.config import compose_config
from landmark_lit.inference.predict_files import predict_files, summary_line
from landmark_lit.inference.settings import LOCAL_SHIFTS
from landmark_lit.utils import first_line, plain


def predict(cfg: DictConfig) -> dict:
    """Plain function behind the CLI: load the model, predict ``cfg.input``, write to ``cfg.output_dir``."""
    torch.set_num_threads(int(cfg.threads))
    predictor = load_predictor(cfg).to(cfg.get("device") or "cpu")
    return predict_files(
        predictor,
        plain(cfg.input) if OmegaConf.is_list(cfg.input) else str(cfg.input),
        cfg.output_dir,
        root=cfg.get("input_root"),
        spacing=plain(cfg.get("spacing")),
        split=cfg.get("input_split"),
        pictures=bool(cfg.get("pictures", False)),
        report=bool(cfg.get("report", False)),
        vector_field=cfg.get("vector_field"),
        references=cfg.get("references"),
        progress=cfg.get("progress"),
        reduced_jpeg=bool(cfg.get("reduced_jpeg", True)),
    )


def parser() -> argparse.ArgumentParser:
    """The options of ``landmark-predict`` in the form nnU-Net users know."""
    p = argparse.ArgumentParser(
        prog="landmark-predict",
        description="Find the landmarks of a trained model in image files. Per image: <case>.csv, "
        "<case>.json (world mm, voxel indices, confidence, flags) and <case>.mrk.json (3D Slicer); "
        "predictions.csv/.json for all.",
        epilog="Every option of conf/predict.yaml can also be given as key=value after the flags "
        "(e.g. confidence_threshold=0.05 global_top_k=9), or alone: landmark-predict model=model.pt "
        "input=scans/ output_dir=out/.",
    )
    p.add_argument("-i", "--input", nargs="+", metavar="INPUT", help="image file(s), folder(s), glob pattern(s), "
                   "a .txt list of images or a .csv/.json manifest (NIfTI, NRRD, MHA/MHD, MGH, MINC, ANALYZE, "
                   "DICOM series folders, PNG/JPEG/BMP/TIFF)")  # fmt: skip
    p.add_argument(
        "-o", "--output", metavar="OUTPUT", help="output folder (created; files are written atomically)"
    )
    p.add_argument("-m", "--model", metavar="MODEL", help="a model bundle written by landmark-export")
    p.add_argument("--global-checkpoint", metavar="CKPT", help="instead of -m: a global-stage checkpoint")
    p.add_argument("--local-checkpoint", nargs="+", metavar="CKPT", default=None,
                   help="with --global-checkpoint: local-stage checkpoints, run in the given order")  # fmt: skip
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="pixel spacing in mm of images without geometry (PNG, JPEG, BMP, TIFF), one value or one "
                   "per axis")  # fmt: skip
    p.add_argument("--pictures", action="store_true", help="draw the landmarks on each image (pictures/)")
    p.add_argument("--report", action="store_true",
                   help="write report.html: one review page, least confident cases and flagged landmarks first")  # fmt: skip
    p.add_argument(
        "--vector-field", metavar="LANDMARK", help="draw the global votes for this landmark (name or index)"
    )
    p.add_argument("--references", metavar="TABLE", help="a landmark table (CSV/JSON) drawn in the pictures")
    p.add_argument(
        "--local-iterations", type=int, metavar="N", help="passes of each local stage (default: the model's)"
    )
    p.add_argument("--local-repass-mm", type=float, metavar="MM",
                   help="passes after a local stage's first only for landmarks the pass before moved more than MM "
                   "(0: all; default: the model's)")  # fmt: skip
    p.add_argument("--local-shifts", choices=LOCAL_SHIFTS,
                   help="average each local stage's last pass over sub-images moved half a network cell along each axis "
                   "(axes: +, faces: - and +; default: the model's)")  # fmt: skip
    p.add_argument("--mirror", choices=["none", "local", "whole"],
                   help="test-time mirror: also run the local stages (local) or the whole pipeline (whole) on the "
                   "mirror image and average (default: the model's; for networks trained with data.flip)")  # fmt: skip
    p.add_argument("--confidence-threshold", type=float, metavar="T",
                   help="flag landmarks below this confidence (default: the model's)")  # fmt: skip
    p.add_argument(
        "--input-root", metavar="DIR", help="folder of the entries of a .txt list (default: its folder)"
    )
    p.add_argument("--split", metavar="SPLIT", help="only the manifest rows of this split")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the networks run (default cpu)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal only)")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="further options of conf/predict.yaml")
    return p


# flag -> config key
_FLAGS = {
    "input": "input", "output": "output_dir", "model": "model", "global_checkpoint": "global_checkpoint",
    "local_checkpoint": "local_checkpoint", "spacing": "spacing", "vector_field": "vector_field",
    "references": "references", "local_iterations": "local_iterations", "local_repass_mm": "local_repass_mm",
    "local_shifts": "local_shifts", "confidence_threshold": "confidence_threshold", "input_root": "input_root",
    "split": "input_split",
    "threads": "threads", "device": "device", "progress": "progress", "mirror": "mirror",
}  # fmt: skip


def config_from_args(argv: Sequence[str]) -> DictConfig:
    """The prediction config of a command line (flags and / or key=value overrides), without Hydra's run
    folder. Flag values are set as given (no quoting needed for globs, lists or spaces)."""
    args = parser().parse_args(list(argv))
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"unexpected argument {bad[0]!r}: options are flags (see --help) or key=value")
    cfg = compose_config("predict", args.overrides)
    for flag, key in _FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "input" and len(value) == 1:
            value = value[0]
        if flag == "spacing" and len(value) == 1:
            value = value[0]
        OmegaConf.update(cfg, key, value, force_add=True)
    if args.pictures:
        cfg.pictures = True
    if args.report:
        cfg.report = True
    if OmegaConf.is_missing(cfg, "input"):
        raise ValueError("give the images: -i INPUT (or input=...)")
    return cfg


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = config_from_args(argv)
        result = predict(cfg)
    except (
        ValueError,
        FileNotFoundError,
        RuntimeError,
        HydraException,
    ) as exc:  # a bad model or input: one line
        print(f"error: {first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    print(f"{summary_line(result)}; output in {Path(cfg.output_dir)}")
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

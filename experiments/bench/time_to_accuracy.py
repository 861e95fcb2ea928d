"""Mean radial error on ISBI 2015 Test1 (average ground truth) against training time, per method.

Each method is trained once with a checkpoint every N steps (``+callbacks.periodic=...``, see RESULTS.md);
this script predicts Test1 with every checkpoint and puts the MRE against the training time spent to
reach it:

- global-to-local: global checkpoints alone (global-only predictions), then the final global stage with
  each local checkpoint (time = the whole global run + the local run so far);
- heatmap: each checkpoint.

Time is the training wall-clock up to the checkpoint (its file time minus the run's start, when the CSV logger
wrote the hyper-parameters), and, for a comparison free of whatever else ran on the machine, the steps
times the median seconds per training step measured on the idle machine (``--step-seconds``).

    python experiments/bench/time_to_accuracy.py \
        --run g2l:global=outputs/tta/g2l_global --run g2l:local=outputs/tta/g2l_local \
        --run heatmap:global=outputs/tta/heatmap --step-seconds g2l:global=0.6 ... --out outputs/tta
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from landmark_lit.data.isbi2015 import ISBI2015Cephalograms
from landmark_lit.evaluation.plots import _new_figure, _save
from landmark_lit.inference import LandmarkPredictor

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2015-ceph"


def run_start(run: Path) -> float:
    """The run's start: when its CSV logger wrote the hyper-parameters (before the first step)."""
    found = sorted(run.glob("csv/version_*/hparams.yaml"))
    if not found:
        raise SystemExit(f"{run}: no csv/version_*/hparams.yaml (train with logger=csv)")
    return found[0].stat().st_mtime


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's periodic checkpoints, by step."""
    found = []
    for p in (run / "checkpoints" / "periodic").glob("step_*.ckpt"):
        found.append((int(re.search(r"step_(\d+)", p.name).group(1)), p))
    return sorted(found)


def test1_mre(predictor: LandmarkPredictor, source: ISBI2015Cephalograms) -> tuple[float, float]:
    errors = []
    for i in range(len(source)):
        case = source[i]
        world = predictor.predict_array(case.image, case.affine)["world"]
        errors.append(np.linalg.norm(world - case.landmarks_world, axis=1))
    e = np.concatenate(errors)
    return float(e.mean()), float(np.median(e))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="METHOD:STAGE=RUN_DIR")
    parser.add_argument("--step-seconds", action="append", default=[], help="METHOD:STAGE=SECONDS")
    parser.add_argument("--local-iterations", type=int, default=2)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", type=int, default=None, help="first N Test1 images only")
    parser.add_argument("--out", default="outputs/tta")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = {}
    for spec in args.run:
        key, _, folder = spec.partition("=")
        runs[key] = Path(folder)
    step_s = {k: float(v) for k, _, v in (s.partition("=") for s in args.step_seconds)}
    source = ISBI2015Cephalograms(args.data, split="test1", ground_truth="average", limit=args.limit)
    rows = []
    methods = sorted({k.split(":")[0] for k in runs})
    for method in methods:
        g_run, l_run = runs[f"{method}:global"], runs.get(f"{method}:local")
        g_start, g_points = run_start(g_run), checkpoints(g_run)
        g_final = g_points[-1]
        g_wall = g_final[1].stat().st_mtime - g_start
        for step, path in g_points:
            mre, med = test1_mre(LandmarkPredictor.from_checkpoints(path), source)
            rows.append({"method": method, "stage": "global", "step": step, "checkpoint": str(path),
                         "wall_min": (path.stat().st_mtime - g_start) / 60,
                         "idle_min": step * step_s.get(f"{method}:global", float("nan")) / 60,
                         "test1_mre_mm": mre, "test1_median_mm": med})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        if l_run is None:
            continue
        l_start = run_start(l_run)
        for step, path in checkpoints(l_run):
            predictor = LandmarkPredictor.from_checkpoints(g_final[1], path, args.local_iterations)
            mre, med = test1_mre(predictor, source)
            rows.append({"method": method, "stage": "local", "step": step, "checkpoint": str(path),
                         "wall_min": (g_wall + path.stat().st_mtime - l_start) / 60,
                         "idle_min": (g_final[0] * step_s.get(f"{method}:global", float("nan"))
                                      + step * step_s.get(f"{method}:local", float("nan"))) / 60,
                         "test1_mre_mm": mre, "test1_median_mm": med})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    axis = "idle_min" if step_s else "wall_min"
    for method in methods:
        pts = [r for r in rows if r["method"] == method]
        ax.plot([r[axis] for r in pts], [r["test1_mre_mm"] for r in pts], "o-", label=method)
    ax.set_xlabel("training time (min" + (", steps x idle seconds per step)" if step_s else ", wall-clock)"))
    ax.set_ylabel("Test1 mean radial error (mm)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, out / "time_to_accuracy.png")
    print("| method | stage | step | training min (idle) | wall-clock min | Test1 MRE (mm) | median |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['stage']} | {r['step']} | {r['idle_min']:.1f} | {r['wall_min']:.1f} | "
              f"{r['test1_mre_mm']:.2f} | {r['test1_median_mm']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Mean radial error on ISBI 2015 Test1 (average ground truth) against training time, per method.

Each method is trained once with a checkpoint every N steps (``+callbacks.periodic=...``, see RESULTS.md);
this script predicts Test1 with every checkpoint and puts the MRE against the training time spent to
reach it:

- global-to-local: global checkpoints alone (global-only predictions), then the final global stage with
  each local checkpoint (time = the whole global run + the local run so far);
- heatmap: each checkpoint.

A method may reuse another's global run (e.g. ``--run hybrid:global=outputs/tta/heatmap --run
hybrid:local=outputs/tta/g2l_local``: the heatmap U-Net followed by the local stages); a checkpoint is
predicted once however many methods list it.

Time comes from the ``training_clock`` every checkpoint stores (the TrainingClock callback): the CPU
time the training process used (core-minutes: what a CPU budget measures, unaffected by other jobs on the
machine) and its wall-clock.

    python experiments/bench/time_to_accuracy.py \
        --run g2l:global=outputs/tta/g2l_global --run g2l:local=outputs/tta/g2l_local \
        --run heatmap:global=outputs/tta/heatmap --out outputs/tta
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
from landmark_lit.inference.predictor import LandmarkPredictor

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2015-ceph"


def clock(path: Path) -> dict[str, float]:
    """The checkpoint's training clock: wall_s, cpu_s, step."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "training_clock" not in ckpt:
        raise SystemExit(f"{path}: no training_clock (train with callbacks=default, which has TrainingClock)")
    return ckpt["training_clock"]


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
        world = predictor.predict(case.image, case.affine).world
        errors.append(np.linalg.norm(world - case.landmarks_world, axis=1))
    e = np.concatenate(errors)
    return float(e.mean()), float(np.median(e))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="METHOD:STAGE=RUN_DIR")
    parser.add_argument("--local-iterations", type=int, default=2)
    parser.add_argument(
        "--local-repass-mm", type=float, default=0.0, help="later passes only for landmarks moved more"
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", type=int, default=None, help="first N Test1 images only")
    parser.add_argument("--out", default="outputs/tta")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reuse",
        default=None,
        help="a file of rows this script printed before (JSON lines): not predicted again",
    )
    parser.add_argument(
        "--replot", action="store_true", help="redraw OUT/time_to_accuracy.json, no prediction"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        return report(json.loads((out / "time_to_accuracy.json").read_text()), out)
    if not args.run:
        parser.error("give --run METHOD:STAGE=RUN_DIR (or --replot)")
    torch.set_num_threads(args.threads)
    runs = {}
    for spec in args.run:
        key, _, folder = spec.partition("=")
        runs[key] = Path(folder)
    source = ISBI2015Cephalograms(args.data, split="test1", ground_truth="average", limit=args.limit)
    rows = []
    cache: dict[tuple[str, str | None], tuple[float, float]] = {}  # (checkpoint, global) -> MRE, median
    if args.reuse:  # rows of an earlier run: (checkpoint, its global stage) -> MRE, median
        for line in Path(args.reuse).read_text().splitlines():
            r = json.loads(line)
            key = (r["checkpoint"], r.get("global_checkpoint"))
            cache[key] = (r["test1_mre_mm"], r["test1_median_mm"])
    methods = sorted({k.split(":")[0] for k in runs})
    for method in methods:
        g_points = checkpoints(runs[f"{method}:global"])
        g_final, g_clock = g_points[-1][1], clock(g_points[-1][1])
        points = [("global", step, path, clock(path), None) for step, path in g_points]
        if f"{method}:local" in runs:
            for step, path in checkpoints(runs[f"{method}:local"]):
                c = clock(path)
                total = {k: g_clock[k] + c[k] for k in ("wall_s", "cpu_s")}
                points.append(("local", step, path, total, g_final))
        for stage, step, path, c, global_path in points:
            key = (str(path), None if global_path is None else str(global_path))
            if key not in cache:
                if stage == "global":
                    predictor = LandmarkPredictor.from_checkpoints(path)
                else:
                    predictor = LandmarkPredictor.from_checkpoints(
                        global_path,
                        path,
                        local_iterations=args.local_iterations,
                        local_repass_mm=args.local_repass_mm,
                    )
                cache[key] = test1_mre(predictor, source)
            mre, med = cache[key]
            rows.append({"method": method, "stage": stage, "step": step, "checkpoint": str(path),
                         "global_checkpoint": None if global_path is None else str(global_path),
                         "cpu_min": c["cpu_s"] / 60, "wall_min": c["wall_s"] / 60,
                         "test1_mre_mm": mre, "test1_median_mm": med})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    report(rows, out)


def report(rows: list[dict], out: Path) -> None:
    """The plot (out/time_to_accuracy.png) and the Markdown table of ``rows``. A method that reuses another
    method's global run is drawn from that run's last point on (dashed), not over it."""
    from matplotlib.ticker import ScalarFormatter

    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    drawn: set[str] = set()
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        shared = [r for r in pts if r["stage"] == "global" and r["checkpoint"] in drawn]
        style = "o-"
        if shared:  # global run already drawn: start at its final checkpoint
            pts = [shared[-1]] + [r for r in pts if r["stage"] != "global"]
            style = "o--"
        drawn.update(r["checkpoint"] for r in pts)
        ax.plot([r["cpu_min"] for r in pts], [r["test1_mre_mm"] for r in pts], style, label=method)
    ax.set_xlabel("training CPU time (core-minutes)")
    ax.set_ylabel("Test1 mean radial error (mm)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, out / "time_to_accuracy.png")
    print("| method | stage | step | CPU core-min | wall-clock min | Test1 MRE (mm) | median |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['stage']} | {r['step']} | {r['cpu_min']:.1f} | {r['wall_min']:.1f} | "
              f"{r['test1_mre_mm']:.2f} | {r['test1_median_mm']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

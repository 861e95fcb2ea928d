"""Where one prediction's time goes: ``torch.profiler`` over landmark-predict's own code path
(:func:`~landmark_lit.inference.predict_files.predict_files` on one image, outputs written), summed by the
labels the pipeline carries (reading, global preprocessing, global network, global decoding, local
preprocessing, local sub-images, local network, local decoding, scoring, writing) and, inside the
networks, by operator.

    python experiments/bench/profile_predict.py MODEL.pt IMAGE [--spacing 0.1] [--threads 2] [--runs 5]
        [--no-reduced-jpeg] [--json OUT.json]

Each label's time is the median over ``--runs`` profiled predictions (after a warm-up) of its total per
prediction (a local label sums the passes); "other" is the rest of the wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from landmark_lit.inference.predict_files import predict_files
from landmark_lit.inference.predictor import LandmarkPredictor

LABELS = (
    "reading",
    "streamed reading and resampling",
    "global preprocessing",
    "global network",
    "global decoding",
    "local preprocessing",
    "local sub-images",
    "local network",
    "local decoding",
    "scoring",
    "writing",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--spacing", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reduced-jpeg", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = LandmarkPredictor.from_bundle(args.model)
    options = {"spacing": args.spacing, "reduced_jpeg": args.reduced_jpeg, "warmup": False, "progress": False}
    with tempfile.TemporaryDirectory() as out:
        predict_files(predictor, args.image, out, **options)  # warm-up
        per_run: list[dict[str, float]] = []
        ops: dict[str, list[float]] = {}
        for _ in range(args.runs):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                predict_files(predictor, args.image, out, **options)
                wall = time.perf_counter() - t0
            totals = dict.fromkeys(LABELS, 0.0)
            for event in prof.events():
                if event.name in totals:
                    totals[event.name] += event.cpu_time_total / 1e6
            totals["other"] = wall - sum(totals.values())
            totals["total"] = wall
            per_run.append(totals)
            for row in prof.key_averages():
                if row.key.startswith("aten::") and row.key not in ("aten::empty", "aten::to"):
                    ops.setdefault(row.key, []).append(row.self_cpu_time_total / 1e6)
    median = {k: float(np.median([r[k] for r in per_run])) for k in per_run[0]}
    top_ops = sorted(((k, float(np.median(v))) for k, v in ops.items()), key=lambda kv: -kv[1])[:10]
    print(f"{args.image}, {args.threads} threads, median of {args.runs} profiled predictions")
    print("| step | s | share |")
    print("|---|---|---|")
    for key, value in median.items():
        print(f"| {key} | {value:.4f} | {100 * value / median['total']:.0f} % |")
    print("\nOperators by own CPU time (all threads' time, s per prediction):")
    for key, value in top_ops:
        print(f"  {key}: {value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps_s": median, "top_ops_s": dict(top_ops)}, indent=1))


if __name__ == "__main__":
    main()

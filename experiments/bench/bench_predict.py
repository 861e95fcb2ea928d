"""Time the whole prediction pipeline per image: median of several runs after warm-up, with and without
reading the file, and the process's peak memory.

Each case runs in its own process (so peak memory belongs to that pipeline alone), with the given number
of torch threads:

    python experiments/bench/bench_predict.py --case ceph MODEL.pt IMAGE [--spacing 0.1]
    python experiments/bench/bench_predict.py --case volume MODEL.pt IMAGE [--pad-to 128]
    python experiments/bench/bench_predict.py --all --ceph-model M --ceph-image I --volume-model M --volume-image I

``--pad-to N`` embeds the volume, at the local stage's working spacing, in an N^3 grid (zero background),
so the pipeline sees an N^3 working volume. Prints one Markdown row per case; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_case(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from landmark_lit.data.io import load_image, save_nifti
    from landmark_lit.data.transforms import resample_to_spacing, spacing_of
    from landmark_lit.inference.predict_files import predict_file
    from landmark_lit.inference.predictor import LandmarkPredictor
    from landmark_lit.utils import peak_memory_mb

    predictor = LandmarkPredictor.from_bundle(args.model)
    if args.local_iterations:
        predictor.configure(local_iterations=args.local_iterations)
    image_path = Path(args.image)
    tmp = None
    if args.pad_to:
        # an N^3 working volume: resample to the finest stage's spacing, embed in an N^3 grid
        spacing = min(
            float(np.mean(s.meta.spacing)) for s in [predictor.global_stage, *predictor.local_stages]
        )
        image, affine = load_image(image_path)
        x, aff = resample_to_spacing(image, affine, spacing)
        grid = np.zeros((1, *[args.pad_to] * 3), np.float32)
        n = [min(a, args.pad_to) for a in x.shape[1:]]
        grid[0, : n[0], : n[1], : n[2]] = x[0, : n[0], : n[1], : n[2]].numpy()
        tmp = tempfile.TemporaryDirectory()
        image_path = Path(tmp.name) / "padded.nii.gz"
        save_nifti(image_path, grid, aff)
    image, affine = load_image(image_path)
    if args.spacing:
        affine = np.diag([*[args.spacing] * (image.ndim - 1), 1.0])
    for _ in range(args.warmup):
        predict_file(predictor, image_path, args.spacing)
    with_io, without_io = [], []
    for _ in range(args.runs):
        r, _, _ = predict_file(predictor, image_path, args.spacing)
        with_io.append(r.seconds)
        without_io.append(r.seconds_without_io)
    working = [
        s.preprocessing(image, affine)[0].shape[1:] for s in [predictor.global_stage, *predictor.local_stages]
    ]
    steps = breakdown(predictor, image_path, args.spacing, args.runs)
    return {
        "steps_s": steps,
        "case": args.case,
        "model": str(args.model),
        "image": str(args.image),
        "input_shape": list(image.shape[1:]),
        "input_spacing_mm": [round(float(v), 4) for v in spacing_of(affine)],
        "working_shapes": [list(w) for w in working],
        "local_iterations": predictor.local_iterations,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "median_s": float(np.median(with_io)),
        "median_s_without_reading": float(np.median(without_io)),
        "min_s_without_reading": float(np.min(without_io)),
        "peak_memory_mb": peak_memory_mb(),
    }


def breakdown(predictor, image_path: Path, spacing: float | None, runs: int) -> dict[str, float]:
    """Median seconds of each step of one prediction: reading, and per stage preprocessing and network."""
    import torch

    from landmark_lit.data.crops import local_crop_starts, stack_local_crops
    from landmark_lit.data.io import load_image
    from landmark_lit.data.transforms import match_channels, voxel_to_world, world_to_voxel

    times: dict[str, list[float]] = {}

    def clock(key: str, fn, *fn_args):
        t0 = time.perf_counter()
        out = fn(*fn_args)
        times.setdefault(key, []).append(time.perf_counter() - t0)
        return out

    g = predictor.global_stage
    for _ in range(runs + 1):
        image, affine = clock("read", load_image, image_path)
        if spacing:
            affine = np.diag([*[spacing] * (image.ndim - 1), 1.0])
        with torch.inference_mode():
            x0 = match_channels(torch.as_tensor(image), g.meta.net["in_channels"])
            x, aff = clock("global preprocessing", g.preprocessing, x0, affine)
            out = clock("global network", g.net, x[None])
            world = voxel_to_world(g.decoder(out, g.net.stride)[0].double().numpy(), aff)
            for n, loc in enumerate(predictor.local_stages):
                xl, aff_l = clock(f"local {n} preprocessing", loc.preprocessing, x0, affine)
                centres = torch.as_tensor(world_to_voxel(world, aff_l))
                for _ in range(predictor.local_iterations):
                    starts = local_crop_starts(centres.float(), loc.meta.crop_size)
                    crops = stack_local_crops(xl, starts, loc.meta.crop_size)
                    clock(
                        f"local {n} network (x{predictor.local_iterations})",
                        lambda loc=loc, c=crops: loc.net(c[None]),
                    )
    # first run is warm-up; passes of one run are summed
    result = {}
    for key, values in times.items():
        per_run = np.asarray(values).reshape(runs + 1, -1).sum(1)[1:]
        result[key] = float(np.median(per_run))
    return result


def row(r: dict) -> str:
    shapes = " / ".join("x".join(map(str, s)) for s in r["working_shapes"])
    return (
        f"| {r['case']} | {'x'.join(map(str, r['input_shape']))} | {shapes} | {r['median_s']:.3f} | "
        f"{r['median_s_without_reading']:.3f} | {r['peak_memory_mb']:.0f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("image", nargs="?")
    parser.add_argument("--case", default="image")
    parser.add_argument("--spacing", type=float, default=None, help="pixel spacing (mm) of a 2D bitmap")
    parser.add_argument("--pad-to", type=int, default=None)
    parser.add_argument("--local-iterations", type=int, default=None, help="override the bundle's passes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--all", action="store_true", help="the cephalogram and volume cases, one process each"
    )
    parser.add_argument("--ceph-model")
    parser.add_argument("--ceph-image")
    parser.add_argument("--volume-model")
    parser.add_argument("--volume-image")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not args.all:
        result = run_case(args)
        print(json.dumps(result))
        return
    cases = [
        ["--case", "cephalogram 1935x2400", args.ceph_model, args.ceph_image, "--spacing", "0.1"],
        ["--case", "volume (native)", args.volume_model, args.volume_image],
        ["--case", "volume 128^3 working", args.volume_model, args.volume_image, "--pad-to", "128"],
    ]
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for case in cases:
        cmd = [sys.executable, __file__, *case, "--threads", str(args.threads), "--runs", str(args.runs),
               "--warmup", str(args.warmup)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| case | input voxels | working voxels (global / local) | s per image | without reading | peak MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(row(r))
    print()
    for r in results:
        print(f"{r['case']}: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["steps_s"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Head to head on the same images and the same threads: this project's global-to-local pipeline, the
heatmap baseline (``method=heatmap``) and the SpatialConfigurationNet (SCN) of the ``landmarker`` package.

For every method, in its own process: inference time per image (median after warm-up; from the file as
landmark-predict reads it, and from the image in memory), peak memory, the floating-point operations of the networks in one prediction
(``torch.utils.flop_counter``: convolutions and matrix products, 2 per multiply-add), and the fraction of
this CPU's measured matrix-multiply rate the pipeline reaches (network FLOPs / time without reading /
float32 GEMM rate on the same threads).

    make bench-install   # landmarker without its dependencies (they would replace the CPU torch)
    python experiments/bench/bench_methods.py --image CEPH.jpg --spacing 0.1 \
        --method g2l=outputs/models/isbi2015.pt --method heatmap=outputs/models/isbi2015_heatmap.pt \
        --method scn --json outputs/bench/methods_ceph.json

``--method NAME=BUNDLE`` runs a landmark_lit model bundle (global-to-local or heatmap), ``NAME=BUNDLE#reduced``
the same with JPEGs decoded at the reduction landmark-predict picks (``reduced_jpeg``), ``NAME=BUNDLE#whole``
with a gzip NIfTI read whole before the prediction instead of streamed; ``NAME=BUNDLE@SRC``
the same with landmark_lit imported from the checkout SRC (another commit's ``git worktree``); ``--method scn``
runs landmarker's SpatialConfigurationNet as its ISBI example configures it (2D: 512 x 512 input, 19
outputs, default widths; 3D: OriginalSpatialConfigurationNet3d at ``--scn-size``^3), untrained (the time
does not depend on the weights), with the image resampled to that input and the heatmaps decoded by
argmax, as landmarker does.

``--rounds R`` runs the whole list R times, in alternating order (forward, backward, ...), and reports
per method the median over rounds and its time relative to the first method's in the same round
(median and range): on a machine whose speed drifts within minutes, the ratio is the figure to trust.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Median float32 GEMM rate (GFLOP/s) of an n x n product on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _scn_pipeline(spatial_dims: int, num_landmarks: int, size: int):
    """landmarker's SCN with its example settings; returns predict(image, affine) -> (K, D) voxels."""
    import torch
    import torch.nn.functional as F

    try:
        from landmarker.models import OriginalSpatialConfigurationNet3d, SpatialConfigurationNet
    except ImportError as exc:  # pragma: no cover - bench only
        raise SystemExit(f"landmarker is not installed ({exc}): run `make bench-install`") from None
    if spatial_dims == 2:
        net = SpatialConfigurationNet(spatial_dims=2, in_channels=1, out_channels=num_landmarks)
    else:
        net = OriginalSpatialConfigurationNet3d(in_channels=1, out_channels=num_landmarks)
    net.eval()

    def predict(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(image, dtype=torch.float32).mean(0, keepdim=True)[None]
        shape = x.shape[2:]
        x = F.interpolate(x, size=[size] * spatial_dims, mode="bilinear" if spatial_dims == 2 else "trilinear",
                          align_corners=False, antialias=spatial_dims == 2)  # fmt: skip
        x = (x - x.mean()) / x.std().clamp_min(1e-6)
        with torch.inference_mode():
            heat = net(x)[0]
        flat = heat.flatten(1).argmax(1)
        idx = torch.stack(torch.unravel_index(flat, heat.shape[1:]), 1).double().numpy()
        scale = np.asarray(shape, dtype=np.float64) / size
        return (idx + 0.5) * scale - 0.5

    return predict, net


def run_method(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    from landmark_lit.data.io import load_image

    try:
        from landmark_lit.inference.predictor import LandmarkPredictor
    except ModuleNotFoundError:  # a checkout from before landmark_lit.inference (NAME=BUNDLE@SRC)
        from landmark_lit.predictor import LandmarkPredictor
    from landmark_lit.utils import peak_memory_mb

    name, _, model = args.run.partition("=")
    model, _, option = model.partition("#")  # NAME=BUNDLE#reduced: JPEGs decoded reduced, as landmark-predict
    reduce = 1

    # integer volumes as stored, where the checkout can (landmark-predict reads them so)
    kept = {"integers": True} if "integers" in inspect.signature(load_image).parameters else {}

    def read() -> tuple[np.ndarray, np.ndarray]:
        img, aff = (
            load_image(args.image, jpeg_reduce=reduce, **kept)
            if reduce > 1
            else load_image(args.image, **kept)
        )
        if args.spacing:  # as landmark-predict: the spacing scales a reduced JPEG's grid, else replaces it
            scale = np.diag([*[args.spacing] * (img.ndim - 1), 1.0])
            aff = scale @ aff if reduce > 1 else scale
        return img, aff

    image, affine = read()
    d = image.ndim - 1
    if name == "scn":
        predict, _ = _scn_pipeline(d, args.num_landmarks, args.scn_size if d == 3 else 512)
        describe = f"landmarker SpatialConfigurationNet ({'512^2' if d == 2 else f'{args.scn_size}^3'} input)"
    else:
        predictor = LandmarkPredictor.from_bundle(model)
        if option == "reduced":
            from landmark_lit.inference.predict_files import jpeg_reduction

            reduce = jpeg_reduction(predictor, args.spacing or 1.0)
            image, affine = read()

        def predict(image, affine):
            return predictor.predict(image, affine).voxel

        stages = [predictor.global_stage, *predictor.local_stages]
        describe = " + ".join(
            f"{s.meta.method} {s.meta.stage} {np.mean(s.meta.spacing):g} mm" for s in stages
        ) + (f", local x{predictor.local_iterations}" if predictor.local_stages else "")
        describe += f", JPEG decoded at 1/{reduce}" if reduce > 1 else ""
        shifts = getattr(predictor, "local_shifts", "none")  # (older checkouts have no such setting)
        describe += (
            f", last pass shift-averaged ({shifts})" if predictor.local_stages and shifts != "none" else ""
        )

    read_and_predict = _file_pipeline(predictor, args, option) if name != "scn" else None
    if read_and_predict is None:  # landmarker, or a checkout without landmark-predict's file path

        def read_and_predict():
            return predict(*read())

    for _ in range(args.warmup):
        read_and_predict()
    with_io, without_io = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        read_and_predict()
        t1 = time.perf_counter()
        img, aff = read()
        t2 = time.perf_counter()
        predict(img, aff)
        with_io.append(t1 - t0)
        without_io.append(time.perf_counter() - t2)
    with FlopCounterMode(display=False) as counter:
        predict(image, affine)
    flops = float(counter.get_total_flops())
    gemm = matmul_gflops(args.threads)
    seconds = float(np.median(without_io))
    return {
        "method": name,
        "description": describe,
        "image": str(args.image),
        "threads": args.threads,
        "runs": args.runs,
        "median_s": float(np.median(with_io)),
        "median_s_without_reading": seconds,
        "peak_memory_mb": peak_memory_mb(),
        "gflop": flops / 1e9,
        "gemm_gflops": gemm,
        "fraction_of_gemm_rate": flops / seconds / (gemm * 1e9),
    }


def _file_pipeline(predictor, args: argparse.Namespace, option: str):
    """landmark-predict's own path from the file (``predict_file``: a JPEG decoded reduced with
    ``#reduced``, a gzip NIfTI volume streamed unless ``#whole``), where the checkout has it; else None."""
    try:
        from landmark_lit.inference.predict_files import predict_file
    except ImportError:
        return None
    accepted = inspect.signature(predict_file).parameters
    options = {"reduced_jpeg": option == "reduced", "streamed": option != "whole"}
    options = {k: v for k, v in options.items() if k in accepted}

    def read_and_predict():
        return predict_file(predictor, args.image, spacing=args.spacing, **options)

    return read_and_predict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--spacing", type=float, default=None, help="pixel spacing (mm) of a 2D bitmap")
    parser.add_argument("--method", action="append", default=[], help="NAME=BUNDLE[@SRC], or scn")
    parser.add_argument("--num-landmarks", type=int, default=19, help="SCN outputs")
    parser.add_argument("--scn-size", type=int, default=128, help="SCN 3D input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the methods this many times, in alternating order; medians"
    )
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # one method, in this process
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_method(args)))
        return
    rounds = [run_round(args, args.method if r % 2 == 0 else args.method[::-1]) for r in range(args.rounds)]
    results = summarise(rounds, args.method)
    print("| method | s per image | without reading | peak MB | GFLOP | % of GEMM rate | time vs first |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['time_vs_first']:.2f}x" + (
            f" ({r['time_vs_first_min']:.2f}-{r['time_vs_first_max']:.2f})" if args.rounds > 1 else ""
        )
        print(
            f"| {r['method']}: {r['description']} | {r['median_s']:.3f} | {r['median_s_without_reading']:.3f} | "
            f"{r['peak_memory_mb']:.0f} | {r['gflop']:.1f} | {100 * r['fraction_of_gemm_rate']:.0f} % | {ratio} |"
        )
    if results:
        rates = [r["gemm_gflops"] for r in results]
        print(
            f"\nfloat32 GEMM rate on {args.threads} threads: {min(rates):.0f}-{max(rates):.0f} GFLOP/s"
            + (
                f"; medians over {args.rounds} rounds, methods run in alternating order"
                if args.rounds > 1
                else ""
            )
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": results, "rounds": rounds}, indent=1) + "\n")


def run_round(args: argparse.Namespace, methods: list[str]) -> dict[str, dict]:
    """Every method once, each in its own process, in the order given; results by method spec."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = {}
    for spec in methods:
        # NAME=BUNDLE@SRC: that method's process imports landmark_lit from the checkout SRC (e.g. an older
        # commit's `git worktree`), for before / after figures in one run
        method, _, src = spec.partition("@")
        env = {**env, "PYTHONPATH": src} if src else {k: v for k, v in env.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, __file__, "--run", method, "--image", args.image, "--threads", str(args.threads),
               "--runs", str(args.runs), "--warmup", str(args.warmup), "--num-landmarks", str(args.num_landmarks),
               "--scn-size", str(args.scn_size)] + (["--spacing", str(args.spacing)] if args.spacing else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(
                f"{method}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}"
            )
        out[spec] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def summarise(rounds: list[dict[str, dict]], specs: list[str]) -> list[dict]:
    """Per method, in the order of ``specs`` (``--method``): the median over rounds of its times, GEMM rate
    and memory, and of its time relative to the first method's in the same round (with that ratio's
    range); with one round, the figures as run."""
    results = []
    for spec in specs:
        runs = [r[spec] for r in rounds]
        ratios = [r[spec]["median_s"] / r[specs[0]]["median_s"] for r in rounds]
        row = dict(runs[0])
        for key in (
            "median_s",
            "median_s_without_reading",
            "gemm_gflops",
            "fraction_of_gemm_rate",
            "peak_memory_mb",
        ):
            row[key] = float(np.median([x[key] for x in runs]))
        row.update(
            time_vs_first=float(np.median(ratios)),
            time_vs_first_min=min(ratios),
            time_vs_first_max=max(ratios),
        )
        results.append(row)
    return results


if __name__ == "__main__":
    main()

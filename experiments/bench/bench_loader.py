"""The training DataModule alone: seconds per batch at steady state, and samples/s per loader worker.

Every image is read and preprocessed once (cached), then ``--batches`` batches are drawn from the
training loader in the main process (``num_workers=0``) and timed one by one; the median is reported,
with the network's own training step (forward, backward, optimiser) on the same batch beside it.

    python experiments/bench/bench_loader.py experiment=isbi2015_local [--batches 30] [--threads 1] [OVERRIDE ...]

Measure with nothing else running on the core (``taskset -c N``); compare configurations in one session.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from landmark_lit.config import compose_config
from landmark_lit.training import build


def _median_seconds(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="+", help="Hydra overrides of conf/train.yaml (experiment=...)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose_config("train", [*args.overrides, "data.num_workers=0"])
    datamodule, module = build(cfg)
    loader = datamodule.train_dataloader()
    cases = datamodule._cases("train")
    t = time.perf_counter()
    for i in range(len(cases)):  # read and preprocess every image once
        cases[i]
    prepare = time.perf_counter() - t
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    per_batch = _median_seconds(lambda: next(batches), args.batches)
    batch = next(batches)
    size = int(batch["image"].shape[0])
    row = {
        "overrides": args.overrides,
        "threads": args.threads,
        "prepare_s": round(prepare, 1),
        "images": len(cases),
        "batch_size": size,
        "s_per_batch": round(per_batch, 4),
        "samples_per_s_per_worker": round(size / per_batch, 1),
    }
    if args.steps > 0:
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
        module.train()

        def step() -> None:
            optimizer.zero_grad()
            module._step(batch)[1]["loss"].backward()
            optimizer.step()

        step()
        row["network_step_s"] = round(_median_seconds(step, args.steps), 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()

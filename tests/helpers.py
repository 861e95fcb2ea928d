"""Helpers shared by the test modules: tiny training configs and stage descriptions / checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from landmark_lit.config import CONFIG_DIR
from landmark_lit.networks import GlobalNet, LocalNet

DATASETS = ["synthetic2d", "synthetic3d"]

DIMS = {"synthetic2d": 2, "synthetic3d": 3, "isbi2015": 2}

STAGES = ["global", "local"]

ABLATIONS = ["R", "Rlog", "C", "R+C", "Rlog+C"]

TINY = {
    "synthetic2d": ["dataset.train.size=40", "dataset.val.size=40", "dataset.test.size=40"],
    "synthetic3d": ["dataset.train.size=20", "dataset.val.size=20", "dataset.test.size=20"],
}


def tiny_overrides(dataset: str, out: Path) -> list[str]:
    return [
        f"dataset={dataset}",
        "net=small",
        "trainer=ci",
        "dataset.train.num_cases=3",
        "dataset.val.num_cases=2",
        "dataset.test.num_cases=2",
        "stage.samples_per_epoch=8",
        "stage.batch_size=2",
        f"paths.output_dir={out}",
        *TINY[dataset],
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


NAMES = ["a", "b"]


def stage_description(kind: str, dims: int, spacing: float, crop: int) -> dict:
    if kind == "global":
        net = dict(_target_="landmark_lit.networks.GlobalNet", spatial_dims=dims, in_channels=1, num_landmarks=2,
                   stem_channels=4, stage_channels=[4, 4], stage_blocks=[1, 1], pool_before=[True, False],
                   head_channels=4)  # fmt: skip
    else:
        net = dict(_target_="landmark_lit.networks.LocalNet", spatial_dims=dims, in_channels=1, num_landmarks=2,
                   channels=[4, 4], head_channels=4)  # fmt: skip
    return {
        "format_version": 1,
        "net": net,
        "landmark_names": NAMES,
        "spatial_dims": dims,
        "spacing": spacing,
        "crop_size": [crop] * dims,
        "intensity": "zscore",
        "decoder": {"regression": "log", "classification": True, "log_base": 10.0},
        "stage": kind,
    }


def write_checkpoint(path: Path, meta: dict) -> Path:
    cfg = {k: v for k, v in meta["net"].items() if k != "_target_"}
    net = (GlobalNet if meta["stage"] == "global" else LocalNet)(**cfg)
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "landmark_lit": meta}, path
    )
    return path


HEATMAP_NET = dict(spatial_dims=2, in_channels=1, num_landmarks=2, channels=[4, 8, 8], strides=[2, 2],
                   num_res_units=1, norm="batch")  # fmt: skip


def heatmap_meta() -> dict:
    """A format-1 description (no format_version), as the first heatmap checkpoints stored it."""
    cfg = HEATMAP_NET
    return {
        "net": {"_target_": "landmark_lit.networks.HeatmapUNet", **cfg},
        "landmark_names": ["a", "b"],
        "spatial_dims": 2,
        "spacing": 1.0,
        "crop_size": [16, 16],
        "intensity": "zscore",
        "decoder": {"mode": "argmax", "beta": 10.0, "window": 3, "amplitude": 100.0, "refine": "parabola"},
        "stage": "global",
        "method": "heatmap",
    }


def read_wandb_offline_run(path: Path) -> dict:
    """What an offline wandb run (its ``run-<id>.wandb`` transaction log) holds: ``id``, ``group``, ``config``,
    ``history`` (one dict per logged step) and ``summary``, values decoded from JSON.

    The file is wandb's record log (a LevelDB-style log: a 7-byte header ``:W&B`` + magic + version, then
    32 KiB blocks of records, each with a CRC, a length and a FULL / FIRST / MIDDLE / LAST type) of
    ``wandb_internal_pb2.Record`` messages; wandb 0.31 has no Python reader for it any more.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    block, pos, pending, messages = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            messages.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            messages.append(pending + chunk)

    def items(entries) -> dict:
        return {(e.key or "/".join(e.nested_key)): json.loads(e.value_json) for e in entries}

    out: dict = {"id": None, "group": None, "config": {}, "history": [], "summary": {}, "exit_code": None}
    for message in messages:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(message)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["group"] = record.run.run_group
            out["config"].update(items(record.run.config.update))
        elif kind == "config":
            out["config"].update(items(record.config.update))
        elif kind == "history":
            out["history"].append(items(record.history.item))
        elif kind == "summary":
            out["summary"].update(items(record.summary.update))
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out

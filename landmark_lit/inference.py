"""Global-to-local prediction from trained checkpoints, on images of any size, spacing and orientation.

Checkpoints are read with ``torch.load(weights_only=True)``; the networks are rebuilt from the plain
``landmark_lit`` entry each checkpoint carries (only the two known network classes can be built).
"""

from __future__ import annotations

import glob
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landmark_lit.data.datasets import local_crop_starts, stack_local_crops
from landmark_lit.data.io import load_image
from landmark_lit.data.transforms import Preprocessing, match_channels, voxel_to_world, world_to_voxel
from landmark_lit.decoding import Decoder
from landmark_lit.networks import GlobalNet, LocalNet, fold_batch_norm

log = logging.getLogger(__name__)

NETWORKS: dict[str, type[nn.Module]] = {
    "landmark_lit.networks.GlobalNet": GlobalNet,
    "landmark_lit.networks.LocalNet": LocalNet,
}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model it is used for."""


@dataclass
class Stage:
    """One trained stage ready for inference."""

    net: nn.Module
    meta: dict
    path: str

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            spacing=self.meta["spacing"],
            intensity=self.meta["intensity"],
            channels=self.meta["net"]["in_channels"],
            min_size=self.meta.get("min_size"),
        )

    @property
    def decoder(self) -> Decoder:
        return Decoder(**self.meta["decoder"])


def load_stage(path: str | os.PathLike, expected_stage: str | None = None) -> Stage:
    """Rebuild a stage's network from a Lightning checkpoint written by ``landmark-train``."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint safely ({type(exc).__name__}: {exc})") from exc
    meta = ckpt.get("landmark_lit") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "net" not in meta:
        raise CheckpointError(f"{path}: not a landmark_lit checkpoint (no 'landmark_lit' entry)")
    if expected_stage and meta.get("stage") != expected_stage:
        raise CheckpointError(
            f"{path}: a {meta.get('stage')!r} stage checkpoint, expected {expected_stage!r}"
        )
    net_cfg = dict(meta["net"])
    target = net_cfg.pop("_target_", None)
    if target not in NETWORKS:
        raise CheckpointError(f"{path}: unknown network {target!r}")
    try:
        net = NETWORKS[target](**net_cfg)
        state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(state)
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the stored network ({exc})".splitlines()[0]
        ) from exc
    # inference only: batch norms folded into their convolutions (same outputs, less work)
    return Stage(fold_batch_norm(net.eval()), meta, path)


class LandmarkPredictor:
    """Global network on the whole image, then (optionally) each landmark's local network on a sub-image.

    Several local stages (e.g. a coarse one with a wide window, then a fine one) run in turn, each on
    sub-images centred on the previous stage's answer.

    Example:
        >>> predictor = LandmarkPredictor.from_checkpoints("global/best.ckpt", "local/best.ckpt")
        >>> result = predictor.predict("image.nii.gz")
        >>> result["world"]  # (K, D) landmark coordinates in world mm
    """

    def __init__(
        self,
        global_stage: Stage,
        local_stages: Stage | Sequence[Stage] | None = None,
        local_iterations: int = 1,
    ) -> None:
        if int(local_iterations) < 1:
            raise ValueError(f"local_iterations must be at least 1, got {local_iterations}")
        if local_stages is None:
            local_stages = []
        elif isinstance(local_stages, Stage):
            local_stages = [local_stages]
        self.global_stage, self.local_stages = global_stage, list(local_stages)
        # each local stage runs this many times, each time on a sub-image re-centred on its last answer
        self.local_iterations = int(local_iterations)
        g = global_stage.meta
        for loc in self.local_stages:
            if g["landmark_names"] != loc.meta["landmark_names"]:
                raise CheckpointError(
                    f"{loc.path}: local landmarks {loc.meta['landmark_names']} differ from the global "
                    f"model's {g['landmark_names']}"
                )
            if g["spatial_dims"] != loc.meta["spatial_dims"]:
                raise CheckpointError(
                    f"{loc.path}: {loc.meta['spatial_dims']}D local model with a {g['spatial_dims']}D global model"
                )

    @property
    def local_stage(self) -> Stage | None:
        """The last (finest) local stage, or None for a global-only predictor."""
        return self.local_stages[-1] if self.local_stages else None

    @classmethod
    def from_checkpoints(
        cls,
        global_checkpoint: str | os.PathLike,
        local_checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        local_iterations: int = 1,
    ) -> LandmarkPredictor:
        """``local_checkpoint``: one local stage, or several run in the given order (coarse to fine)."""
        g = load_stage(global_checkpoint, "global")
        if local_checkpoint is None or local_checkpoint == "":
            paths = []
        elif isinstance(local_checkpoint, str | os.PathLike):
            paths = [local_checkpoint]
        else:
            paths = list(local_checkpoint)
        return cls(g, [load_stage(p, "local") for p in paths], local_iterations)

    @property
    def landmark_names(self) -> list[str]:
        return list(self.global_stage.meta["landmark_names"])

    @property
    def spatial_dims(self) -> int:
        return int(self.global_stage.meta["spatial_dims"])

    @torch.inference_mode()
    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
        """Landmarks of one image (C, *spatial) with its voxel -> world affine.

        Returns ``world`` (K, D) mm, ``voxel`` (K, D) indices of the given image, ``global_world`` (K, D)
        the global stage's estimate.
        """
        if image.ndim - 1 != self.spatial_dims:
            raise ValueError(
                f"the model is {self.spatial_dims}D but the image has shape {tuple(image.shape)}"
            )
        g = self.global_stage
        # one grey conversion (RGB -> grey) for all stages, done once on the full-size image
        image = match_channels(torch.as_tensor(image, dtype=torch.float32), g.meta["net"]["in_channels"])
        x, aff = g.preprocessing(image, affine)
        out = g.net(x[None])
        world = voxel_to_world(g.decoder(out, g.net.stride)[0].double().numpy(), aff)
        global_world = world
        for loc in self.local_stages:
            xl, aff_l = loc.preprocessing(image, affine)
            centres = torch.as_tensor(world_to_voxel(world, aff_l), dtype=torch.float32)
            for _ in range(self.local_iterations):
                starts = local_crop_starts(centres, loc.meta["crop_size"])
                crops = stack_local_crops(xl, starts, loc.meta["crop_size"])
                centres = loc.decoder(loc.net(crops[None]), loc.net.stride)[0] + starts
            world = voxel_to_world(centres.double().numpy(), aff_l)
        return {"world": world, "voxel": world_to_voxel(world, affine), "global_world": global_world}

    def predict(
        self, path: str | os.PathLike, spacing: float | list[float] | None = None
    ) -> dict[str, np.ndarray | float]:
        """Read an image file and predict; adds ``seconds`` (with reading) and ``seconds_without_io``.

        ``spacing`` (mm) replaces the file's geometry for images that carry none (PNG, JPEG, BMP, TIFF).
        """
        t0 = time.perf_counter()
        image, affine = load_image(path)
        if spacing is not None:
            d = image.ndim - 1
            affine = np.diag([*np.broadcast_to(np.asarray(spacing, dtype=np.float64), (d,)), 1.0])
        t1 = time.perf_counter()
        result: dict = self.predict_array(image, affine)
        t2 = time.perf_counter()
        result["seconds"], result["seconds_without_io"] = t2 - t0, t2 - t1
        return result


IMAGE_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".nhdr",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
)


def case_id_of(path: str | os.PathLike) -> str:
    """File name without its image suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def find_images(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Image files from a file, a folder (its image files, sorted), a glob pattern, or a ``.txt`` list.

    A list holds one image per line: a path, or a name without suffix (``151`` finds ``151.jpg``);
    relative entries are looked up in ``root`` (default: the list's folder).
    """
    p = Path(spec)
    if p.is_file() and p.suffix.lower() == ".txt":
        base = Path(root) if root is not None else p.parent
        files = [_resolve_entry(base, line.strip(), p) for line in p.read_text().splitlines() if line.strip()]
    elif p.is_dir() and any(f.suffix.lower() == ".dcm" for f in p.iterdir()):
        files = [p]  # a DICOM series folder is one image
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
        # sub-folders holding DICOM series are images too
        files += sorted(
            d for d in p.iterdir() if d.is_dir() and any(f.suffix.lower() == ".dcm" for f in d.iterdir())
        )
    elif p.exists():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(spec)))
    if not files:
        raise FileNotFoundError(f"{spec}: no image files found")
    return files


def _resolve_entry(base: Path, entry: str, listing: Path) -> Path:
    path = Path(entry) if Path(entry).is_absolute() else base / entry
    if path.exists():
        return path
    matches = sorted(
        f for f in base.glob(f"{glob.escape(entry)}.*") if f.name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not matches:
        raise FileNotFoundError(f"{listing}: no image for entry {entry!r} in {base}")
    return matches[0]


def predict_files(
    predictor: LandmarkPredictor,
    inputs: str | os.PathLike | list,
    output_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    spacing: float | list[float] | None = None,
    warmup: bool = True,
) -> dict:
    """Predict every image of ``inputs`` (a file, folder, glob, ``.txt`` list, or a list of them) and write
    ``predictions.csv`` and ``predictions.json`` (world mm, voxel indices, image paths, timings) to
    ``output_dir``. An image that fails is reported on one line and skipped; the rest go on.

    ``root``: folder of the entries of ``.txt`` lists; ``spacing``: pixel spacing (mm) for images without
    geometry; ``warmup``: run the first image once untimed, so timings exclude one-off start-up costs.

    Returns ``{"table": LandmarkTable, "failed": {path: reason}, "done": n}``.
    """
    from landmark_lit.data.landmark_files import LandmarkTable, write_landmark_table

    specs = inputs if isinstance(inputs, list | tuple) else [inputs]
    files = [f for spec in specs for f in find_images(spec, root)]
    if warmup and files:
        try:
            predictor.predict(files[0], spacing)
        except Exception:  # reported below, when the file comes up in turn
            pass
    table = LandmarkTable(names=predictor.landmark_names, coords={})
    voxels: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for f in files:
        case = case_id_of(f)
        try:
            result = predictor.predict(f, spacing)
        except Exception as exc:  # one bad file must not stop the batch
            failed[str(f)] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("%s: %s", f, failed[str(f)])
            continue
        table.coords[case] = result["world"]
        voxels[case] = result["voxel"]
        table.images[case] = str(Path(f).resolve())
        table.seconds[case] = float(result["seconds"])
        table.seconds_without_io[case] = float(result["seconds_without_io"])
    out = Path(output_dir)
    if table.coords:
        write_landmark_table(out / "predictions.csv", table, voxel=voxels)
        write_landmark_table(out / "predictions.json", table, voxel=voxels)
    times = list(table.seconds.values())
    peak_mb = peak_memory_mb()
    log.info(
        "%d images done, %d failed%s, peak memory %.0f MB",
        len(table.coords),
        len(failed),
        f", {np.median(times):.3f} s per image (median)" if times else "",
        peak_mb,
    )
    return {
        "table": table,
        "failed": failed,
        "done": len(table.coords),
        "median_seconds": float(np.median(times)) if times else None,
        "peak_memory_mb": peak_mb,
    }


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux and macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

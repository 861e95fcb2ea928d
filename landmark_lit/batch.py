"""Prediction on many image files: finding the inputs, writing each image's results, pictures, a summary.

For every image ``<case>`` the output folder gets, as soon as the image is done (each file atomically):

- ``<case>.csv`` and ``<case>.json``: world mm (RAS) and voxel indices of every landmark with its
  ``confidence`` and ``flagged`` (confidence below the model's threshold), ``spread_mm``, ``posterior``;
- ``<case>.mrk.json``: a 3D Slicer markups point list named after the model's landmarks. Images with
  geometry (NIfTI, NRRD, MHA/MHD, DICOM) get RAS world coordinates, as Slicer places them. Images without
  geometry (PNG, JPEG, BMP, TIFF) are shown by Slicer with 1 mm pixels at LPS (column, row, 0); their
  markups hold those pixel coordinates (coordinateSystem LPS), so they sit on the image in Slicer whatever
  ``spacing`` was given (the CSV and JSON hold mm at that spacing). 2D points get z = 0;
- with ``pictures``: ``pictures/<case>.png`` (2D: the image with every landmark named) or
  ``pictures/<case>/<landmark>.png`` (3D: three orthogonal slices through each landmark); with
  ``vector_field``: ``pictures/<case>_votes_<landmark>.png``, the global network's votes for one landmark.

At the end, ``predictions.csv`` and ``predictions.json`` hold every image. A file that fails (unreadable,
wrong dimensionality, empty, constant, too small, bad geometry) is reported on one line naming it and the
reason; the others go on.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from landmark_lit.data.landmark_files import (
    LandmarkTable,
    read_landmark_table,
    write_landmark_table,
    write_slicer_markups,
)
from landmark_lit.inference import LandmarkPredictor, peak_memory_mb

log = logging.getLogger(__name__)

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
# formats without geometry: their pixel spacing comes from the ``spacing`` option
NO_GEOMETRY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# per-landmark values written beside the coordinates
SCORE_COLUMNS = ("confidence", "flagged", "spread_mm", "posterior")


def case_id_of(path: str | os.PathLike) -> str:
    """File name without its image suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(f.suffix.lower() == ".dcm" for f in path.iterdir())


def find_inputs(
    spec: str | os.PathLike, root: str | os.PathLike | None = None, split: str | None = None
) -> list[tuple[str, Path]]:
    """(case id, image) pairs from a file, a folder, a glob pattern, a ``.txt`` list or a manifest.

    - a folder: its image files (sorted) and its sub-folders holding a DICOM series; a folder of DICOM
      slices is one image;
    - a ``.txt`` list: one image per line, a path or a name without suffix (``151`` finds ``151.jpg``),
      relative entries looked up in ``root`` (default: the list's folder);
    - a ``.csv`` / ``.json`` manifest (``image`` column or key, optional ``case`` and ``split``; see
      :mod:`landmark_lit.data.manifest`): its images, only those of ``split`` if given.
    Case ids are file names without their image suffix unless the manifest names them.
    """
    from landmark_lit.data.manifest import manifest_images

    p = Path(spec)
    suffix = p.suffix.lower()
    if p.is_file() and suffix in (".csv", ".json"):
        return [(case or case_id_of(f), f) for case, f in manifest_images(p, split)]
    if p.is_file() and suffix == ".txt":
        base = Path(root) if root is not None else p.parent
        files = [_resolve_entry(base, line.strip(), p) for line in p.read_text().splitlines() if line.strip()]
    elif _is_dicom_dir(p):
        files = [p]  # a DICOM series folder is one image
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
        files += sorted(d for d in p.iterdir() if _is_dicom_dir(d))
    elif p.exists():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(spec)))
    if not files:
        raise FileNotFoundError(f"{spec}: no image files found")
    return [(case_id_of(f), f) for f in files]


def find_images(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """The image paths of :func:`find_inputs`."""
    return [f for _, f in find_inputs(spec, root)]


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


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_case_outputs(
    out: Path, case: str, image_path: Path, names: list[str], result: dict[str, Any]
) -> LandmarkTable:
    """``<case>.csv``, ``<case>.json`` and ``<case>.mrk.json`` of one image (each atomic)."""
    table = LandmarkTable(
        names=names,
        coords={case: result["world"]},
        images={case: str(Path(image_path).resolve())},
        seconds={case: float(result["seconds"])},
        seconds_without_io={case: float(result["seconds_without_io"])},
    )
    scores = {key: {case: result[key]} for key in SCORE_COLUMNS}
    voxel = {case: result["voxel"]}
    write_landmark_table(out / f"{case}.csv", table, voxel=voxel, extra=scores)
    write_landmark_table(out / f"{case}.json", table, voxel=voxel, extra=scores)
    d = result["world"].shape[1]
    if Path(image_path).name.lower().endswith(NO_GEOMETRY_SUFFIXES):
        # Slicer shows these with 1 mm pixels at LPS (column, row): state the pixel indices in LPS
        points, system = result["voxel"], "LPS"
    else:
        points, system = result["world"], "RAS"
    points = np.concatenate([points, np.zeros((len(points), 3 - d))], axis=1) if d == 2 else points
    # write_slicer_markups takes RAS and states them in ``system``: LPS pixel indices are given as RAS
    ras = points * np.array([-1.0, -1.0, 1.0]) if system == "LPS" else points
    write_slicer_markups(out / f"{case}.mrk.json", names, ras, coordinate_system=system)
    return table


def draw_case_pictures(
    out: Path,
    case: str,
    names: list[str],
    result: dict[str, Any],
    reference: np.ndarray | None,
    pictures: bool,
    vector_field: int | None,
    predictor: LandmarkPredictor,
) -> None:
    """Overlay pictures and the vote field of one landmark (see the module docstring)."""
    from landmark_lit.data.transforms import world_to_voxel
    from landmark_lit.evaluation.plots import plot_landmarks, plot_vector_field
    from landmark_lit.targets import inverse_log_transform

    folder = out / "pictures"
    if pictures:
        if result["world"].shape[1] == 2:
            plot_landmarks(result["image"], result["affine"], names, result["world"], folder / f"{case}.png",
                           reference_mm=reference, flagged=result["flagged"], title=case)  # fmt: skip
        else:
            for k, name in enumerate(names):
                plot_landmarks(
                    result["image"], result["affine"], names, result["world"],
                    folder / case / f"{_safe_name(name)}.png", reference_mm=reference,
                    flagged=result["flagged"], landmark=k,
                    title=f"{case}: {name}, confidence {result['confidence'][k]:.2f}",
                )  # fmt: skip
    if vector_field is not None:
        k, g = vector_field, predictor.global_stage
        disp, logits = result["global_output"]
        disp, logits = disp[0, k].float(), logits[0, k].float()
        if g.decoder.regression == "log":
            disp = inverse_log_transform(disp, g.decoder.log_base)
        post = logits.sigmoid() if g.decoder.classification else logits.new_ones(logits.shape)
        image, stride = result["global_image"].mean(0).numpy(), g.net.stride
        pred = world_to_voxel(result["global_world"][k : k + 1], result["global_affine"])[0]
        disp, post = disp.numpy(), post.numpy()
        if image.ndim == 3:  # the slice of cells through the global estimate
            cell = int(np.clip(np.floor(pred[2] / stride), 0, post.shape[2] - 1))
            z = int(np.clip(round(cell * stride + (stride - 1) / 2), 0, image.shape[2] - 1))
            image, disp, post, pred = image[:, :, z], disp[:2, :, :, cell], post[:, :, cell], pred[:2]
        plot_vector_field(image, disp, post, stride, folder / f"{case}_votes_{_safe_name(names[k])}.png",
                          prediction=pred, title=f"{case}: global votes for {names[k]}")  # fmt: skip


def predict_files(
    predictor: LandmarkPredictor,
    inputs: str | os.PathLike | list,
    output_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    spacing: float | list[float] | None = None,
    warmup: bool = True,
    split: str | None = None,
    pictures: bool = False,
    vector_field: str | int | None = None,
    references: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict:
    """Predict every image of ``inputs`` (a file, folder, glob, ``.txt`` list, manifest, or a list of
    them) and write each image's files and the combined ``predictions.csv`` / ``predictions.json`` to
    ``output_dir`` (see the module docstring). An image that fails is reported on one line and skipped.

    Args:
        root: folder of the entries of ``.txt`` lists; split: rows of a manifest to use.
        spacing: pixel spacing (mm) for images without geometry.
        warmup: run the first image once untimed, so timings exclude one-off start-up costs.
        pictures: draw overlay pictures; vector_field: a landmark name or index whose global votes to draw.
        references: a landmark table (CSV / JSON) whose cases are drawn in the pictures as references.
        progress: progress bar (None: only on a terminal).

    Returns ``{"table", "failed": {path: reason}, "done", "median_seconds", "median_seconds_without_io",
    "peak_memory_mb", "flagged"}``.
    """
    names = predictor.landmark_names
    field = _landmark_index(vector_field, names)
    if field is not None and predictor.global_stage.method != "displacement":
        raise ValueError(
            f"vector_field: the global stage is a {predictor.global_stage.method} network, it has no votes"
        )
    ref_table = read_landmark_table(references) if references else None
    specs = inputs if isinstance(inputs, list | tuple) else [inputs]
    items = [item for spec in specs for item in find_inputs(spec, root, split)]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if warmup and items:
        try:
            predictor.predict(items[0][1], spacing)
        except Exception:  # reported below, when the file comes up in turn
            pass
    table = LandmarkTable(names=names, coords={})
    voxels: dict[str, np.ndarray] = {}
    scores: dict[str, dict[str, np.ndarray]] = {key: {} for key in SCORE_COLUMNS}
    failed: dict[str, str] = {}
    seen: dict[str, Path] = {}
    # tqdm's disable=None: a bar only on a terminal
    bar = tqdm(items, desc="predicting", unit="image", disable=None if progress is None else not progress)
    for case, f in bar:
        try:
            if case in seen:
                raise ValueError(f"{f}: case id {case!r} already used by {seen[case]}")
            seen[case] = f
            result = predictor.predict(f, spacing, keep_global_output=field is not None)
            write_case_outputs(out, case, f, names, result)
            reference = ref_table.coords.get(case) if ref_table is not None else None
            if pictures or field is not None:
                draw_case_pictures(out, case, names, result, reference, pictures, field, predictor)
        except Exception as exc:  # one bad file must not stop the batch
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failed[str(f)] = reason if str(f) in reason else f"{f}: {reason}"
            log.error("%s", failed[str(f)])
            continue
        table.coords[case] = result["world"]
        voxels[case] = result["voxel"]
        table.images[case] = str(Path(f).resolve())
        table.seconds[case] = float(result["seconds"])
        table.seconds_without_io[case] = float(result["seconds_without_io"])
        for key in SCORE_COLUMNS:
            scores[key][case] = result[key]
    if table.coords:
        write_landmark_table(out / "predictions.csv", table, voxel=voxels, extra=scores)
        write_landmark_table(out / "predictions.json", table, voxel=voxels, extra=scores)
    times = list(table.seconds.values())
    times_no_io = list(table.seconds_without_io.values())
    flagged = int(sum(int(np.sum(v)) for v in scores["flagged"].values()))
    summary = {
        "table": table,
        "failed": failed,
        "done": len(table.coords),
        "median_seconds": float(np.median(times)) if times else None,
        "median_seconds_without_io": float(np.median(times_no_io)) if times_no_io else None,
        "peak_memory_mb": peak_memory_mb(),
        "flagged": flagged,
    }
    log.info("%s", summary_line(summary))
    return summary


def summary_line(summary: dict) -> str:
    """``12 images done, 1 failed, 3 landmarks flagged, 0.180 s per image (median; 0.120 s without
    reading), peak memory 770 MB``."""
    text = f"{summary['done']} images done, {len(summary['failed'])} failed, {summary['flagged']} landmarks flagged"
    if summary["median_seconds"] is not None:
        text += (
            f", {summary['median_seconds']:.3f} s per image (median; "
            f"{summary['median_seconds_without_io']:.3f} s without reading)"
        )
    return text + f", peak memory {summary['peak_memory_mb']:.0f} MB"


def _landmark_index(value: str | int | None, names: list[str]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(names):
            raise ValueError(f"vector_field: landmark index {value} outside 0..{len(names) - 1}")
        return value
    if str(value) not in names:
        raise ValueError(f"vector_field: unknown landmark {value!r} (the model has {names})")
    return names.index(str(value))

"""Prediction on image files: finding the inputs, reading and timing each image, writing its results and
pictures, and a summary of all of them.

For every image ``<case>`` the output folder gets, as soon as the image is done (each file atomically):

- ``<case>.csv`` and ``<case>.json``: world mm (RAS) and voxel indices of every landmark with its
  ``confidence`` and ``flagged`` (confidence below the model's threshold), ``radius_mm`` (the true
  landmark lies this close with the calibration's probability, 90 % by default), ``spread_mm``,
  ``posterior``;
- ``<case>.mrk.json``: a 3D Slicer markups point list named after the model's landmarks (each point's
  description: its confidence, radius and flag). Images with
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

import dataclasses
import glob
import logging
import os
import time
from pathlib import Path

import numpy as np
from torch.profiler import record_function
from tqdm.auto import tqdm

from landmark_lit.data.io import IMAGE_SUFFIXES, NO_GEOMETRY_SUFFIXES, load_image
from landmark_lit.data.landmark_tables import LandmarkTable, read_landmark_table, write_landmark_table
from landmark_lit.data.point_files import write_slicer_markups
from landmark_lit.data.streamed import StreamedVolume, open_streamed
from landmark_lit.data.transforms import world_to_voxel
from landmark_lit.inference.predictor import InputError, LandmarkPredictor, Prediction
from landmark_lit.utils import first_line, peak_memory_mb, safe_file_name

log = logging.getLogger(__name__)

# per-landmark values written beside the coordinates
SCORE_COLUMNS = ("confidence", "flagged", "radius_mm", "spread_mm", "posterior")


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


def predict_file(
    predictor: LandmarkPredictor,
    path: str | os.PathLike,
    spacing: float | list[float] | None = None,
    keep_global_view: bool = False,
    reduced_jpeg: bool = True,
    streamed: bool = True,
) -> tuple[Prediction, np.ndarray, np.ndarray]:
    """Read an image file and predict its landmarks; returns the prediction (with ``seconds``, reading
    included, and ``seconds_without_io``), and the image and affine as read.

    ``spacing`` (mm) replaces the file's geometry for images that carry none (PNG, JPEG, BMP, TIFF).
    ``reduced_jpeg``: decode a JPEG at 1/2, 1/4 or 1/8 of its size, the coarsest still at least as fine as
    every stage's working spacing (:func:`jpeg_reduction`; positions in mm unchanged). ``streamed``: a
    gzip NIfTI volume is resampled for every stage while it is inflated (:mod:`landmark_lit.data.streamed`;
    the same landmarks); ``seconds_without_io`` then counts the inflating that the resampling did not hide.
    Raises InputError / ImageReadError with one line naming the file.
    """
    t0 = time.perf_counter()
    values = None
    if spacing is not None:
        values = np.asarray(spacing, dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise InputError(f"{path}: spacing must be positive numbers, got {spacing!r}")
    reduce = jpeg_reduction(predictor, 1.0 if values is None else float(values.max())) if reduced_jpeg else 1
    with record_function("reading"):
        # a gzip NIfTI volume is inflated while the prediction resamples it (read whole otherwise)
        image = open_streamed(path) if streamed and predictor.global_stage.meta.spatial_dims == 3 else None
        image, affine = (
            (image, image.affine) if image is not None else load_image(path, reduce, integers=True)
        )
    d = len(image.shape) if isinstance(image, StreamedVolume) else image.ndim - 1
    if values is not None and len(values) not in (1, d):
        raise InputError(f"{path}: spacing must be one value or {d}, got {spacing!r}")
    # the full-size pixel grid in mm: a reduced JPEG's affine maps onto it; otherwise the spacing replaces
    # the file's affine
    full = np.eye(d + 1) if values is None else np.diag([*np.broadcast_to(values, (d,)), 1.0])
    if values is not None or reduce > 1:
        affine = full @ affine if reduce > 1 else full
    t1 = time.perf_counter()
    try:
        prediction = predictor.predict(image, affine, keep_global_view=keep_global_view)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    t2 = time.perf_counter()
    if reduce > 1:  # voxel indices of the file as it is, not of its reduced decoding
        prediction = dataclasses.replace(prediction, voxel=world_to_voxel(prediction.world, full))
    image = image.array if isinstance(image, StreamedVolume) else image
    return dataclasses.replace(prediction, seconds=t2 - t0, seconds_without_io=t2 - t1), image, affine


def jpeg_reduction(predictor: LandmarkPredictor, pixel_mm: float) -> int:
    """The largest of 1, 2, 4, 8 whose reduced pixels (``pixel_mm`` times it) are still no coarser than the
    finest working spacing of the predictor's stages."""
    finest = min(float(np.min(s.meta.spacing)) for s in (predictor.global_stage, *predictor.local_stages))
    return next(r for r in (8, 4, 2, 1) if r == 1 or r * pixel_mm <= finest + 1e-9)


def _scores(prediction: Prediction) -> dict[str, np.ndarray]:
    scores = {key: getattr(prediction, key) for key in SCORE_COLUMNS}
    if scores["radius_mm"] is None:
        scores["radius_mm"] = np.full(len(prediction.world), np.nan)
    return scores


def _descriptions(prediction: Prediction) -> list[str]:
    """Per landmark: ``confidence 0.93, radius 1.8 mm[, FLAGGED: check]`` for Slicer's point table."""
    radius = _scores(prediction)["radius_mm"]
    return [
        f"confidence {c:.3f}" + (f", radius {r:.2f} mm" if np.isfinite(r) else "")
        + (", FLAGGED: check" if f else "")
        for c, r, f in zip(prediction.confidence, radius, prediction.flagged, strict=True)
    ]  # fmt: skip


def write_case_outputs(
    out: Path, case: str, image_path: Path, names: list[str], prediction: Prediction
) -> LandmarkTable:
    """``<case>.csv``, ``<case>.json`` and ``<case>.mrk.json`` of one image (each atomic)."""
    table = LandmarkTable(
        names=names,
        coords={case: prediction.world},
        images={case: str(Path(image_path).resolve())},
        seconds={case: float(prediction.seconds)},
        seconds_without_io={case: float(prediction.seconds_without_io)},
    )
    scores = {key: {case: value} for key, value in _scores(prediction).items()}
    voxel = {case: prediction.voxel}
    write_landmark_table(out / f"{case}.csv", table, voxel=voxel, extra=scores)
    write_landmark_table(out / f"{case}.json", table, voxel=voxel, extra=scores)
    d = prediction.world.shape[1]
    if Path(image_path).name.lower().endswith(NO_GEOMETRY_SUFFIXES):
        # Slicer shows these with 1 mm pixels at LPS (column, row): the pixel indices are LPS points
        points, system = prediction.voxel, "LPS"
    else:
        points, system = prediction.world, "RAS"
    points = np.concatenate([points, np.zeros((len(points), 3 - d))], axis=1) if d == 2 else points
    write_slicer_markups(
        out / f"{case}.mrk.json",
        names,
        points,
        coordinate_system=system,
        descriptions=_descriptions(prediction),
    )
    return table


def draw_case_pictures(
    out: Path,
    case: str,
    names: list[str],
    prediction: Prediction,
    image: np.ndarray,
    affine: np.ndarray,
    reference: np.ndarray | None,
    pictures: bool,
    vector_field: int | None,
    predictor: LandmarkPredictor,
) -> None:
    """Overlay pictures and the vote field of one landmark (see the module docstring)."""
    from landmark_lit.data.transforms import world_to_voxel
    from landmark_lit.evaluation.plots import plot_landmarks, plot_vector_field

    folder = out / "pictures"
    world, flagged = prediction.world, prediction.flagged
    if pictures:
        if world.shape[1] == 2:
            plot_landmarks(image, affine, names, world, folder / f"{case}.png", reference_mm=reference,
                           flagged=flagged, title=case, radius_mm=prediction.radius_mm)  # fmt: skip
        else:
            for k, name in enumerate(names):
                plot_landmarks(
                    image, affine, names, world, folder / case / f"{safe_file_name(name)}.png",
                    reference_mm=reference, flagged=flagged, landmark=k, radius_mm=prediction.radius_mm,
                    title=f"{case}: {name}, confidence {prediction.confidence[k]:.2f}",
                )  # fmt: skip
    if vector_field is not None:
        k, g, view = vector_field, predictor.global_stage, prediction.global_view
        disp, post = g.method.vote_field(view.output, g.decoder, k)
        pred = world_to_voxel(prediction.global_estimate.world[k : k + 1], view.affine)[0]
        plot_vector_field(view.image.mean(0).numpy(), disp, post, g.net.stride,
                          folder / f"{case}_votes_{safe_file_name(names[k])}.png", prediction=pred,
                          title=f"{case}: global votes for {names[k]}")  # fmt: skip


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
    report: bool = False,
    reduced_jpeg: bool = True,
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
        report: write ``report.html``, a review page of every image (implies ``pictures``).
        reduced_jpeg: decode JPEGs at a reduced size (see :func:`predict_file`).

    Returns ``{"table", "failed": {path: reason}, "done", "median_seconds", "median_seconds_without_io",
    "peak_memory_mb", "flagged"}``.
    """
    names = predictor.landmark_names
    pictures = pictures or report
    field = _landmark_index(vector_field, names)
    g = predictor.global_stage
    if field is not None and not g.method.has_votes:
        raise ValueError(f"vector_field: the global stage is a {g.method.name} network, it has no votes")
    ref_table = read_landmark_table(references) if references else None
    specs = inputs if isinstance(inputs, list | tuple) else [inputs]
    items = [item for spec in specs for item in find_inputs(spec, root, split)]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if warmup and items:
        try:
            predict_file(predictor, items[0][1], spacing, reduced_jpeg=reduced_jpeg)
        except Exception:  # reported below, when the file comes up in turn
            pass
    results = _Results(LandmarkTable(names=names, coords={}))
    seen: dict[str, Path] = {}
    # tqdm's disable=None: a bar only on a terminal
    bar = tqdm(items, desc="predicting", unit="image", disable=None if progress is None else not progress)
    for case, f in bar:
        try:
            if case in seen:
                raise ValueError(f"{f}: case id {case!r} already used by {seen[case]}")
            seen[case] = f
            prediction, image, affine = predict_file(
                predictor, f, spacing, keep_global_view=field is not None, reduced_jpeg=reduced_jpeg
            )
            with record_function("writing"):
                write_case_outputs(out, case, f, names, prediction)
            reference = ref_table.coords.get(case) if ref_table is not None else None
            if pictures or field is not None:
                draw_case_pictures(
                    out, case, names, prediction, image, affine, reference, pictures, field, predictor
                )
        except Exception as exc:  # one bad file must not stop the batch
            reason = first_line(exc)
            results.failed[str(f)] = reason if str(f) in reason else f"{f}: {reason}"
            log.error("%s", results.failed[str(f)])
            continue
        results.add(case, f, prediction)
    return results.write(out, report)


@dataclasses.dataclass
class _Results:
    """The images done and failed so far, and what :func:`predict_files` writes and returns of them."""

    table: LandmarkTable
    voxels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    scores: dict[str, dict[str, np.ndarray]] = dataclasses.field(
        default_factory=lambda: {key: {} for key in SCORE_COLUMNS}
    )
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, case: str, path: Path, prediction: Prediction) -> None:
        table = self.table
        table.coords[case] = prediction.world
        self.voxels[case] = prediction.voxel
        table.images[case] = str(Path(path).resolve())
        table.seconds[case] = float(prediction.seconds)
        table.seconds_without_io[case] = float(prediction.seconds_without_io)
        for key, value in _scores(prediction).items():
            self.scores[key][case] = value

    def write(self, out: Path, report: bool) -> dict:
        """``predictions.csv`` / ``.json`` (and ``report.html``) of the images done; the summary."""
        table, scores = self.table, self.scores
        if table.coords:
            write_landmark_table(out / "predictions.csv", table, voxel=self.voxels, extra=scores)
            write_landmark_table(out / "predictions.json", table, voxel=self.voxels, extra=scores)
        if report and table.coords:
            write_prediction_report(out, table, scores)
        times = list(table.seconds.values())
        times_no_io = list(table.seconds_without_io.values())
        summary = {
            "table": table,
            "failed": self.failed,
            "done": len(table.coords),
            "median_seconds": float(np.median(times)) if times else None,
            "median_seconds_without_io": float(np.median(times_no_io)) if times_no_io else None,
            "peak_memory_mb": peak_memory_mb(),
            "flagged": int(sum(int(np.sum(v)) for v in scores["flagged"].values())),
        }
        log.info("%s", summary_line(summary))
        return summary


def write_prediction_report(
    out: Path, table: LandmarkTable, scores: dict[str, dict[str, np.ndarray]]
) -> Path:
    """``report.html``: the review page of the images done (see :mod:`landmark_lit.evaluation.html`)."""
    from landmark_lit.evaluation.html import prediction_report

    cases = []
    for case, world in table.coords.items():
        conf = scores["confidence"][case]
        if world.shape[1] == 2:
            picture = out / "pictures" / f"{case}.png"
        else:  # 3D: the slices through the least confident landmark
            picture = out / "pictures" / case / f"{safe_file_name(table.names[int(np.argmin(conf))])}.png"
        landmarks = [
            {"name": name, "confidence": float(conf[k]), "flagged": bool(scores["flagged"][case][k]),
             "radius_mm": None if not np.isfinite(scores["radius_mm"][case][k]) else float(scores["radius_mm"][case][k]),
             "world": [float(v) for v in world[k]]}
            for k, name in enumerate(table.names)
        ]  # fmt: skip
        cases.append(
            {"case": case, "picture": picture if picture.is_file() else None, "landmarks": landmarks}
        )
    return prediction_report(out / "report.html", cases)


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

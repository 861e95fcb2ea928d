"""Evaluation of a predictions table against reference landmarks (SPEC section 5).

:func:`evaluate_predictions` writes, into one folder: ``errors.csv`` (every case and landmark),
``summary.json``, ``summary.md``, ``sdr_curve.png``, ``boxplot.png``, ``worst_XX_<case>_<landmark>.png``
overlays of the worst errors, with confidences in the predictions ``confidence_curve.png``, and on request
``report.html``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landmark_lit.confidence import DEFAULT_FAILURE_MM, confidence_figures
from landmark_lit.data.io import ImageReadError, load_image
from landmark_lit.data.landmark_tables import LandmarkTable, read_landmark_scores, read_landmark_table
from landmark_lit.data.manifest import read_references
from landmark_lit.evaluation.plots import (
    plot_confidence_curve,
    plot_error_boxplot,
    plot_overlay,
    plot_sdr_curve,
)
from landmark_lit.evaluation.stats import summarize_by_landmark
from landmark_lit.metrics import ISBI_THRESHOLDS_MM, PAPER_THRESHOLDS_MM, radial_errors, sdr_key
from landmark_lit.utils import atomic_write_text, safe_file_name

log = logging.getLogger(__name__)

MAX_LISTED = 10  # how many offending cases/landmarks an error message names


def evaluate_predictions(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    output_dir: str | os.PathLike,
    thresholds: Sequence[float] = ISBI_THRESHOLDS_MM,
    n_worst: int = 3,
    failure_mm: float = DEFAULT_FAILURE_MM,
    report: bool = False,
    references_split: str | None = None,
) -> dict[str, Any]:
    """Compare predicted with reference landmarks (both world mm) and write the evaluation outputs.

    Landmarks are matched by name and cases by id. Reference cases absent from the predictions, reference
    landmarks absent from the predictions, and predicted coordinates missing where the reference has some
    are errors. Missing reference landmarks (NaN) are left out of the statistics. Predictions for cases or
    landmarks without a reference are ignored (logged).

    Args:
        predictions: predictions table (.csv or .json); a JSON may carry ``image`` paths (for the worst-case
            overlays; relative paths are tried from the working directory, then from the file's folder)
            and ``seconds`` / ``seconds_without_io`` per image.
        references: reference table (.csv or .json), or a manifest (its landmarks).
        output_dir: folder for the outputs (created).
        thresholds: SDR thresholds in mm shown in the Markdown table (the JSON also holds 0.5..5 mm).
        n_worst: number of worst (case, landmark) errors to draw.
        failure_mm: an error above this is a failure: how well the predictions' ``confidence``, ``flagged``
            and ``radius_mm`` (when the table has them) find the failures, overall and per landmark
            (``confidence`` in the summary, ``confidence_curve.png``).
        report: also write ``report.html``, one self-contained page of the tables and figures.
        references_split: the split of a manifest given as ``references`` (None: all its rows).

    Returns:
        The summary written to ``summary.json`` (NaN as None): ``per_landmark`` and ``overall`` statistics
        (see :func:`landmark_lit.evaluation.stats.summarize_errors`), ``time_s`` (or None) and the inputs.
    """
    predictions, references, output_dir = Path(predictions), Path(references), Path(output_dir)
    pred, ref = read_landmark_table(predictions), read_references(references, references_split)
    errors = match_errors(pred, ref, predictions)
    cases, names = ref.cases, ref.names

    thresholds = [float(t) for t in thresholds]
    all_thresholds = sorted({*thresholds, *ISBI_THRESHOLDS_MM, *PAPER_THRESHOLDS_MM})
    stats = summarize_by_landmark(errors, names, all_thresholds)
    summary: dict[str, Any] = {
        "predictions": str(predictions),
        "references": str(references),
        "n_cases": len(cases),
        "landmarks": list(names),
        "spatial_dims": ref.spatial_dims,
        "thresholds_mm": thresholds,
        "overall": stats["overall"],
        "per_landmark": stats["per_landmark"],
        "time_s": _time_summary(pred, cases),
    }
    scores = prediction_scores(predictions, pred, ref)
    if scores:
        summary["confidence"] = confidence_summary(errors, names, scores, failure_mm)
    summary = _json_safe(summary)

    _write_outputs(output_dir, summary, pred, ref, errors, scores, predictions, failure_mm, n_worst, report)
    log.info("evaluation of %s against %s written to %s", predictions, references, output_dir)
    return summary


def _write_outputs(
    output_dir: Path,
    summary: dict[str, Any],
    pred: LandmarkTable,
    ref: LandmarkTable,
    errors: np.ndarray,
    scores: dict[str, dict[str, np.ndarray]],
    predictions: Path,
    failure_mm: float,
    n_worst: int,
    report: bool,
) -> None:
    """errors.csv, summary.json / .md, the plots, the worst cases' overlays and (with ``report``) report.html."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_errors_csv(output_dir / "errors.csv", ref.cases, ref.names, errors)
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    atomic_write_text(output_dir / "summary.md", format_markdown(summary))
    plot_sdr_curve({predictions.stem: errors}, output_dir / "sdr_curve.png")
    plot_error_boxplot(errors, ref.names, output_dir / "boxplot.png")
    if scores.get("confidence") is not None:
        plot_confidence_curve(errors, scores["confidence"], failure_mm, output_dir / "confidence_curve.png",
                              flagged=scores.get("flagged"))  # fmt: skip
    worst = _plot_worst(pred, ref, errors, predictions, output_dir, n_worst)
    if report:
        _write_report(output_dir, summary, worst)


def match_errors(
    pred: LandmarkTable, ref: LandmarkTable, source: str | os.PathLike = "predictions"
) -> np.ndarray:
    """Radial errors of the predictions, in the reference's case and landmark order.

    Returns:
        (N, K) errors in mm for the N sorted reference cases and K reference landmarks; NaN where the
        reference landmark is missing.

    Raises:
        ValueError: naming ``source``, when dimensionality differs or a reference case, landmark or
            coordinate has no prediction.
    """
    if pred.spatial_dims != ref.spatial_dims:
        raise ValueError(f"{source}: {pred.spatial_dims}D predictions for {ref.spatial_dims}D references")
    missing_cases = [case for case in ref.cases if case not in pred.coords]
    if missing_cases:
        raise ValueError(
            f"{source}: no prediction for {len(missing_cases)} reference case(s): {_listed(missing_cases)}"
        )
    missing_names = [name for name in ref.names if name not in pred.names]
    if missing_names:
        raise ValueError(f"{source}: no prediction for reference landmark(s) {_listed(missing_names)}")
    extra_cases = sorted(set(pred.coords) - set(ref.coords))
    extra_names = [name for name in pred.names if name not in ref.names]
    if extra_cases or extra_names:
        log.info(
            "ignoring predictions without reference: %d case(s) %s, landmark(s) %s",
            len(extra_cases),
            _listed(extra_cases),
            extra_names,
        )

    order = [pred.names.index(name) for name in ref.names]
    pred_mm = np.stack([pred.coords[case][order] for case in ref.cases])  # (N, K, D)
    ref_mm = np.stack([ref.coords[case] for case in ref.cases])
    unpredicted = np.isnan(pred_mm).any(-1) & ~np.isnan(ref_mm).any(-1)
    if unpredicted.any():
        pairs = [f"{ref.cases[n]}/{ref.names[k]}" for n, k in zip(*np.nonzero(unpredicted), strict=True)]
        raise ValueError(
            f"{source}: {len(pairs)} reference landmark(s) have no predicted coordinates: {_listed(pairs)}"
        )
    return radial_errors(torch.from_numpy(pred_mm), torch.from_numpy(ref_mm)).numpy()


def format_table(summary: dict[str, Any]) -> str:
    """Aligned Markdown table of a summary: one row per landmark and "All"; median (IQR) and mean ± SD in mm,
    SDR in % at the summary's ``thresholds_mm``."""
    thresholds = summary.get("thresholds_mm", list(ISBI_THRESHOLDS_MM))
    header = ["Landmark", "n", "Median (IQR) mm", "Mean ± SD mm", *(f"SDR {t:g} mm %" for t in thresholds)]
    rows = []
    for name, stats in [*summary["per_landmark"].items(), ("All", summary["overall"])]:
        rows.append(
            [
                name,
                str(stats["n"]),
                f"{_fmt(stats['median_mm'])} ({_fmt(stats['iqr_mm'])})",
                f"{_fmt(stats['mre_mm'])} ± {_fmt(stats['sd_mm'])}",
                *(_fmt(stats.get(sdr_key(t)), 1) for t in thresholds),
            ]
        )
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if c else (":" + "-" * (w + 1)) for c, w in enumerate(widths))
    return "\n".join([line(header), rule + "|", *(line(row) for row in rows)])


def format_time(time_s: dict[str, Any] | None) -> str:
    """One line on processing time per image."""
    if not time_s:
        return "Processing time per image: not recorded in the predictions."
    text = (
        f"Processing time per image (n = {time_s['n']}): median {_fmt(time_s['median'], 3)} s, "
        f"max {_fmt(time_s['max'], 3)} s with file reading"
    )
    if time_s.get("median_without_io") is not None:
        text += (
            f"; median {_fmt(time_s['median_without_io'], 3)} s, "
            f"max {_fmt(time_s['max_without_io'], 3)} s without"
        )
    return text + "."


def format_markdown(summary: dict[str, Any]) -> str:
    """The ``summary.md`` document: inputs, table, confidence table and processing time."""
    text = (
        "# Landmark evaluation\n\n"
        f"- predictions: `{summary['predictions']}`\n"
        f"- references: `{summary['references']}`\n"
        f"- {summary['n_cases']} cases, {len(summary['landmarks'])} landmarks, {summary['spatial_dims']}D, "
        "radial errors in world mm\n\n"
        f"{format_table(summary)}\n\n"
    )
    if summary.get("confidence"):
        text += f"## Confidence\n\n{markdown_table(*confidence_rows(summary['confidence']))}\n\n"
    return text + f"{format_time(summary.get('time_s'))}\n"


CONFIDENCE_COLUMNS = (
    ("n", "n", 0),
    ("failures", "failures", 0),
    ("auroc_2mm", "AUROC >2 mm", 3),
    ("auroc_failure", "AUROC >{failure} mm", 3),
    ("share_flagged", "flagged %", 1),
    ("share_failures_caught", "failures caught %", 1),
    ("radius_coverage", "radius coverage %", 1),
    ("radius_median_mm", "radius median mm", 2),
)


def confidence_summary(
    errors: np.ndarray, names: Sequence[str], scores: dict[str, np.ndarray], failure_mm: float
) -> dict[str, Any]:
    """:func:`~landmark_lit.confidence.confidence_figures` of (N, K) errors and their (N, K) scores,
    overall and per landmark."""

    def figures(sel: Any) -> dict[str, Any]:
        part = {k: (v[sel] if v is not None else None) for k, v in scores.items()}
        out = confidence_figures(errors[sel], part.get("confidence"), part.get("flagged"),
                                 part.get("radius_mm"), failure_mm)  # fmt: skip
        out["auroc_failure"] = out.get(f"auroc_{float(failure_mm):g}mm")
        return out

    return {
        "failure_mm": float(failure_mm),
        "overall": figures(slice(None)),
        "per_landmark": {name: figures((slice(None), k)) for k, name in enumerate(names)},
    }


def confidence_rows(conf: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (per landmark, then All) of a :func:`confidence_summary`; the failure distance's
    AUROC column only when that distance is not 2 mm (it would repeat the column before)."""
    columns = [c for c in CONFIDENCE_COLUMNS if c[0] != "auroc_failure" or float(conf["failure_mm"]) != 2.0]
    header = ["Landmark", *(label.format(failure=f"{conf['failure_mm']:g}") for _, label, _ in columns)]
    rows = []
    for name, fig in [*conf["per_landmark"].items(), ("All", conf["overall"])]:
        cells = [name]
        for key, _, digits in columns:
            v = fig.get(key)
            scale = 100 if key.startswith(("share", "radius_cov")) and v is not None else 1
            cells.append(_fmt(None if v is None else v * scale, digits))
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def prediction_scores(path: Path, pred: LandmarkTable, ref: LandmarkTable) -> dict[str, np.ndarray]:
    """(N, K) ``confidence``, ``flagged`` and ``radius_mm`` of the predictions, in the reference's case
    and landmark order; keys the predictions lack (or that are NaN throughout) are left out."""
    stored = read_landmark_scores(path, ("confidence", "flagged", "radius_mm"), pred)
    order = [pred.names.index(name) for name in ref.names]
    out = {}
    for key, per_case in stored.items():
        if not all(c in per_case for c in ref.cases):
            continue
        values = np.stack([per_case[c][order] for c in ref.cases])
        if np.isfinite(values).any():
            out[key] = values.astype(bool) if key == "flagged" else values
    return out


def _write_report(output_dir: Path, summary: dict[str, Any], worst: list[tuple[str, Path]]) -> None:
    from landmark_lit.evaluation.html import evaluation_report

    tables = [{"caption": "Radial error (mm) and SDR (%)", **_table_of(format_table(summary))}]
    if summary.get("confidence"):
        header, rows = confidence_rows(summary["confidence"])
        tables.append({"caption": f"Confidence (failure: error > {summary['confidence']['failure_mm']:g} mm)",
                       "columns": header, "rows": [_numbers(r) for r in rows]})  # fmt: skip
    images = [{"caption": "Success detection rate", "path": output_dir / "sdr_curve.png"},
              {"caption": "Error per landmark", "path": output_dir / "boxplot.png"}]  # fmt: skip
    if (output_dir / "confidence_curve.png").is_file():
        images.append({"caption": "Confidence curve: share flagged vs failures caught",
                       "path": output_dir / "confidence_curve.png"})  # fmt: skip
    images += [
        {"caption": f"Worst case {n}: {title}", "path": path} for n, (title, path) in enumerate(worst, 1)
    ]
    evaluation_report(output_dir / "report.html", tables, images)


def _numbers(row: list[str]) -> list[Any]:
    out: list[Any] = []
    for cell in row:
        try:
            out.append(float(cell))
        except ValueError:
            out.append(None if cell == "n/a" else cell)
    return out


def _table_of(markdown: str) -> dict[str, Any]:
    lines = [
        line for line in markdown.splitlines() if not line.startswith("|-") and not line.startswith("|:")
    ]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {"columns": cells[0], "rows": cells[1:]}


def _fmt(value: float | None, digits: int = 2) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _time_summary(pred: LandmarkTable, cases: Sequence[str]) -> dict[str, Any] | None:
    """Median and max seconds per image over the evaluated cases that carry timings, or None."""
    with_io = [pred.seconds[c] for c in cases if c in pred.seconds]
    without_io = [pred.seconds_without_io[c] for c in cases if c in pred.seconds_without_io]
    if not with_io and not without_io:
        return None
    out: dict[str, Any] = {"n": len(with_io), "median": None, "max": None}
    if with_io:
        out |= {"median": float(np.median(with_io)), "max": float(np.max(with_io))}
    if without_io:
        out |= {
            "n_without_io": len(without_io),
            "median_without_io": float(np.median(without_io)),
            "max_without_io": float(np.max(without_io)),
        }
    return out


def _json_safe(value: Any) -> Any:
    """Replace NaN by None recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_errors_csv(path: Path, cases: Sequence[str], names: Sequence[str], errors: np.ndarray) -> None:
    """``case,landmark,error_mm``, one row per case and landmark; ``nan`` where the reference is missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case", "landmark", "error_mm"])
    for n, case in enumerate(cases):
        for k, name in enumerate(names):
            writer.writerow([case, name, "nan" if np.isnan(errors[n, k]) else repr(float(errors[n, k]))])
    atomic_write_text(path, out.getvalue())


def _resolve_image(path: str, table_file: Path) -> Path | None:
    for candidate in (Path(path), table_file.parent / path):
        if candidate.is_file():
            return candidate
    return None


def _plot_worst(
    pred: LandmarkTable,
    ref: LandmarkTable,
    errors: np.ndarray,
    predictions: Path,
    output_dir: Path,
    n_worst: int,
) -> None:
    """Overlays of the ``n_worst`` largest errors, when the image of the case can be found; returns
    (title, file) of each one drawn."""
    for stale in output_dir.glob("worst_[0-9][0-9]_*.png"):  # from an earlier run into the same folder
        stale.unlink()
    drawn: list[tuple[str, Path]] = []
    if n_worst <= 0:
        return drawn
    flat = np.where(np.isnan(errors), -np.inf, errors).reshape(-1)
    ranked = [i for i in np.argsort(-flat, kind="stable")[:n_worst] if np.isfinite(flat[i])]
    images: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    skipped = []
    for rank, index in enumerate(ranked, start=1):
        n, k = divmod(int(index), errors.shape[1])
        case, name = ref.cases[n], ref.names[k]
        if case not in images:
            images[case] = None
            source = pred.images.get(case) or ref.images.get(case)
            path = _resolve_image(source, predictions) if source else None
            if path is not None:
                try:
                    images[case] = load_image(path)
                except ImageReadError as exc:
                    log.warning("worst-case overlay skipped: %s", exc)
        if images[case] is None:
            skipped.append(case)
            continue
        image, affine = images[case]
        file = output_dir / f"worst_{rank:02d}_{safe_file_name(case)}_{safe_file_name(name)}.png"
        title = f"{case} / {name}: {errors[n, k]:.2f} mm"
        plot_overlay(
            image, affine, ref.coords[case][k], pred.coords[case][pred.names.index(name)], file, title=title
        )
        drawn.append((title, file))
    if skipped:
        log.info(
            "worst-case overlays skipped for %d case(s) without a readable image path in the predictions: %s",
            len(skipped),
            _listed(sorted(set(skipped))),
        )
    return drawn

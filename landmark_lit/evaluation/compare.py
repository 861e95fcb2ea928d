"""Comparison of several runs' predictions on the same images, in the form of the paper's Table I.

Rows are runs, columns are landmarks and "All"; each cell is the median (IQR) radial error in mm, marked
by a paired two-sided Wilcoxon signed-rank test against a reference run (``*`` p < 0.05, ``†`` p < 0.01,
``‡`` p < 0.001; per landmark over cases, for "All" over every case and landmark). :func:`compare_runs`
writes ``comparison.md``, ``comparison.csv`` (cells and p values), ``comparison.json`` and
``sdr_curves.png`` (SDR against threshold, one line per run: the paper's Fig. 4 form).

A run may be several prediction files, merged by landmark: e.g. the single-landmark networks of one
study, each predicting one landmark, compared as one run with the multi-landmark network.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landmark_lit.confidence import DEFAULT_FAILURE_MM
from landmark_lit.data.landmark_tables import LandmarkTable, read_landmark_table
from landmark_lit.data.manifest import read_references
from landmark_lit.evaluation.plots import plot_sdr_curve
from landmark_lit.evaluation.report import (
    _json_safe,
    confidence_rows,
    confidence_summary,
    markdown_table,
    match_errors,
    prediction_scores,
)
from landmark_lit.evaluation.stats import summarize_errors, wilcoxon_marker
from landmark_lit.metrics import PAPER_THRESHOLDS_MM
from landmark_lit.utils import atomic_write_text

log = logging.getLogger(__name__)

ALL = "All"


def merge_tables(paths: Sequence[str | os.PathLike]) -> LandmarkTable:
    """One table from prediction files of the same cases that each hold some of the landmarks.

    Raises:
        ValueError: naming the file, when a landmark is predicted by two files or the files mix 2D and 3D.
    """
    tables = [(Path(p), read_landmark_table(p)) for p in paths]
    if len(tables) == 1:
        return tables[0][1]
    names: list[str] = []
    owner: dict[str, Path] = {}
    for path, table in tables:
        for name in table.names:
            if name in owner:
                raise ValueError(f"{path}: landmark {name!r} is also predicted by {owner[name]}")
            owner[name] = path
            names.append(name)
    dims = {t.spatial_dims for _, t in tables}
    if len(dims) > 1:
        raise ValueError(f"{tables[0][0]}: the files to merge mix 2D and 3D landmarks")
    d = dims.pop()
    cases = sorted(set().union(*(t.coords for _, t in tables)))
    coords = {}
    for case in cases:
        rows = []
        for _, t in tables:
            rows.append(t.coords[case] if case in t.coords else np.full((len(t.names), d), np.nan))
        coords[case] = np.concatenate(rows)
    return LandmarkTable(names=names, coords=coords)


def _compared_references(
    ref: LandmarkTable,
    tables: list[LandmarkTable],
    landmarks: Sequence[str] | None,
    references: str | os.PathLike,
) -> LandmarkTable:
    """The references of the compared landmarks: ``landmarks``, or those every run predicts."""
    if landmarks is None:
        landmarks = [n for n in ref.names if all(n in t.names for t in tables)]
        if not landmarks:
            raise ValueError(f"{references}: no reference landmark is predicted by every run")
    else:
        unknown = [n for n in landmarks if n not in ref.names]
        if unknown:
            raise ValueError(f"{references}: no reference for landmark(s) {unknown}")
    keep = [ref.names.index(n) for n in landmarks]
    return LandmarkTable(names=list(landmarks), coords={c: v[keep] for c, v in ref.coords.items()})


def _cells(
    err: np.ndarray, base: np.ndarray, landmarks: list[str], thresholds: Sequence[float], is_reference: bool
) -> dict[str, dict[str, Any]]:
    """One run's summary per landmark and overall (:data:`ALL`), with the Wilcoxon test against ``base``."""
    row = {}
    for k, landmark in enumerate([*landmarks, ALL]):
        e, b = (err, base) if landmark == ALL else (err[:, k], base[:, k])
        summary: dict[str, Any] = summarize_errors(e, thresholds)
        summary["p_value"], summary["marker"] = (None, "") if is_reference else wilcoxon_marker(e, b)
        row[landmark] = summary
    return row


def compare_runs(
    runs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
    references: str | os.PathLike,
    output_dir: str | os.PathLike,
    reference_run: str | None = None,
    landmarks: Sequence[str] | None = None,
    thresholds: Sequence[float] = PAPER_THRESHOLDS_MM,
    failure_mm: float = DEFAULT_FAILURE_MM,
    references_split: str | None = None,
) -> dict[str, Any]:
    """Compare runs on the reference cases and write the table, CSV, JSON and SDR plot.

    Args:
        runs: run name -> predictions file (.csv or .json), or a list of files merged by landmark.
        references: reference landmark table, or a manifest (its landmarks, of ``references_split`` if
            given); every run must predict every reference case.
        output_dir: folder for the outputs (created).
        reference_run: the run the others are tested against (default: the first).
        landmarks: the landmarks to compare (default: the reference landmarks that every run predicts).
        thresholds: thresholds (mm) of the SDR curve and the SDR columns of the JSON.
        failure_mm: an error above this is a failure, for the confidence figures of the runs whose
            predictions carry ``confidence`` (one predictions file per run).
        references_split: the split of a manifest given as ``references``.

    Returns:
        ``{"runs", "reference_run", "landmarks", "cells": {run: {landmark: summary + p_value + marker}},
        "confidence": {run: overall confidence figures}}``.
    """
    if not runs:
        raise ValueError("no runs to compare")
    names_of_runs = list(runs)
    reference_run = reference_run or names_of_runs[0]
    if reference_run not in runs:
        raise ValueError(f"reference run {reference_run!r} is not one of the runs {names_of_runs}")
    files = {name: [f] if isinstance(f, str | os.PathLike) else list(f) for name, f in runs.items()}
    tables = {name: (merge_tables(paths), paths[0]) for name, paths in files.items()}
    ref = _compared_references(
        read_references(references, references_split), [t for t, _ in tables.values()], landmarks, references
    )
    landmarks = ref.names
    errors = {name: match_errors(table, ref, source) for name, (table, source) in tables.items()}
    cells = {name: _cells(err, errors[reference_run], landmarks, thresholds, name == reference_run)
             for name, err in errors.items()}  # fmt: skip
    confidence = {}
    for name, (table, source) in tables.items():
        scores = prediction_scores(Path(source), table, ref) if len(files[name]) == 1 else {}
        if "confidence" in scores:
            confidence[name] = confidence_summary(errors[name], landmarks, scores, failure_mm)["overall"]
    result = _json_safe(
        {
            "references": str(references),
            "n_cases": len(ref.cases),
            "runs": {name: [str(f) for f in files[name]] for name in names_of_runs},
            "reference_run": reference_run,
            "landmarks": landmarks,
            "cells": cells,
            "confidence": confidence,
        }
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.md", format_comparison(result))
    atomic_write_text(out / "comparison.csv", _comparison_csv(result))
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    plot_sdr_curve(errors, out / "sdr_curves.png", thresholds)
    log.info("comparison of %d runs written to %s", len(runs), out)
    return result


def _cell(summary: Mapping[str, Any]) -> str:
    if summary["median_mm"] is None:
        return "-"
    return f"{summary['median_mm']:.2f} ({summary['iqr_mm']:.2f}){summary['marker']}"


def format_comparison(result: Mapping[str, Any]) -> str:
    """Markdown table: runs x (landmarks + All), median (IQR) in mm with Wilcoxon markers."""
    columns = [*result["landmarks"], ALL]
    lines = [
        "| Run | " + " | ".join(columns) + " |",
        "|:--|" + "--:|" * len(columns),
    ]
    for name, row in result["cells"].items():
        label = f"{name} (reference)" if name == result["reference_run"] else name
        lines.append(f"| {label} | " + " | ".join(_cell(row[c]) for c in columns) + " |")
    lines.append("")
    lines.append(
        f"Median (IQR) radial error in mm over {result['n_cases']} cases. Paired two-sided Wilcoxon "
        f"signed-rank test against {result['reference_run']}: * p < 0.05, † p < 0.01, ‡ p < 0.001."
    )
    if result.get("confidence"):
        first = next(iter(result["confidence"].values()))
        lines += ["", f"Confidence (failure: error > {first['failure_mm']:g} mm):", ""]
        header, rows = confidence_rows(
            {"failure_mm": first["failure_mm"], "per_landmark": result["confidence"], "overall": {}}
        )
        lines.append(markdown_table(["Run", *header[1:]], rows[:-1]))
    return "\n".join(lines) + "\n"


def _comparison_csv(result: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "landmark", "median_mm", "iqr_mm", "mre_mm", "sd_mm", "n", "p_value", "marker"])
    for name, row in result["cells"].items():
        for landmark, s in row.items():
            writer.writerow(
                [name, landmark]
                + [
                    "" if s[k] is None else s[k]
                    for k in ("median_mm", "iqr_mm", "mre_mm", "sd_mm", "n", "p_value")
                ]
                + [s["marker"]]
            )
    return buffer.getvalue()


def log_comparison_to_wandb(
    result: Mapping[str, Any],
    thresholds: Sequence[float],
    sdr_picture: str | os.PathLike | None = None,
    project: str = "landmark_lit",
    group: str | None = None,
    name: str | None = None,
    save_dir: str | os.PathLike = ".",
    mode: str = "offline",
) -> str:
    """Log a comparison to its own wandb run (job type ``compare``, in the sweep's ``group``): the median
    (IQR) table with the Wilcoxon markers as a wandb Table ``comparison/median_iqr`` (a row per run, a
    column per landmark and "All"), the SDR-against-threshold curves of all runs as one line plot
    ``comparison/sdr_curves`` (and the SDR picture). Offline by default (``wandb sync`` uploads later).
    Returns the run's id."""
    import wandb

    columns = [*result["landmarks"], ALL]
    run = wandb.init(
        project=project, group=group, name=name, job_type="compare", dir=str(save_dir), mode=mode,
        config={"references": result["references"], "reference_run": result["reference_run"],
                "runs": result["runs"], "thresholds": list(thresholds)},
        reinit="create_new",
    )  # fmt: skip
    try:
        table = wandb.Table(columns=["run", *columns])
        for run_name, row in result["cells"].items():
            table.add_data(run_name, *[_cell(row[c]) for c in columns])
        curves = [[row[ALL].get(f"sdr_{t:g}mm") for t in thresholds] for row in result["cells"].values()]
        run.log(
            {
                "comparison/median_iqr": table,
                "comparison/sdr_curves": wandb.plot.line_series(
                    xs=[float(t) for t in thresholds],
                    ys=curves,
                    keys=list(result["cells"]),
                    title="SDR against threshold",
                    xname="threshold (mm)",
                ),  # fmt: skip
                **({"comparison/sdr_picture": wandb.Image(str(sdr_picture))} if sdr_picture else {}),
            }
        )
        run.summary.update(
            {f"{n}/All/median_mm": row[ALL]["median_mm"] for n, row in result["cells"].items()}
        )
        return run.id
    finally:
        run.finish()

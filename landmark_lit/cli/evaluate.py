"""``landmark-evaluate``: radial errors, statistics and figures of a predictions table (conf/evaluate.yaml).

Example::

    landmark-evaluate predictions=outputs/predict/predictions.json references=refs.csv \
        output_dir=outputs/evaluate/test1
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from landmark_lit.confidence import DEFAULT_FAILURE_MM
from landmark_lit.config import CONFIG_DIR, register_resolvers
from landmark_lit.evaluation.report import (
    confidence_rows,
    evaluate_predictions,
    format_table,
    format_time,
    markdown_table,
)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.predictions`` against ``cfg.references`` into ``cfg.output_dir``; print the table.

    Returns:
        The summary dict (see :func:`landmark_lit.evaluation.report.evaluate_predictions`).
    """
    summary = evaluate_predictions(
        predictions=to_absolute_path(str(cfg.predictions)),
        references=to_absolute_path(str(cfg.references)),
        output_dir=to_absolute_path(str(cfg.output_dir)),
        thresholds=[float(t) for t in cfg.thresholds],
        n_worst=int(cfg.n_worst),
        failure_mm=float(cfg.get("failure_mm", DEFAULT_FAILURE_MM)),
        report=bool(cfg.get("report", False)),
        references_split=cfg.get("references_split"),
    )
    print(format_table(summary))
    if summary.get("confidence"):
        header, rows = confidence_rows(summary["confidence"])
        print(markdown_table(header, rows))
    print(format_time(summary.get("time_s")))
    print(f"Outputs: {to_absolute_path(str(cfg.output_dir))}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def run(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """Console entry point: the configs' resolvers, then Hydra."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()

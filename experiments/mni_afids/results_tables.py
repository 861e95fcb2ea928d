"""Markdown tables for experiments/mni_afids/RESULTS.md from the outputs of evaluate_test.sh.

python experiments/mni_afids/results_tables.py outputs/mni_afids_test
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = {"global": "Global only", "global_to_local": "Global-to-local"}
THRESHOLDS = [1, 2, 3, 4, 5]


def load(root: Path, run: str) -> dict:
    return json.loads((root / f"eval_{run}" / "summary.json").read_text())


def overall(root: Path) -> str:
    lines = [
        "| Run | MRE ± SD (mm) | Median (IQR) | " + " | ".join(f"SDR {t} mm" for t in THRESHOLDS) + " |",
        "|:--|--:|--:|" + "--:|" * len(THRESHOLDS),
    ]
    for run, name in RUNS.items():
        o = load(root, run)["overall"]
        sdr = " | ".join(f"{o[f'sdr_{t:g}mm']:.1f} %" for t in THRESHOLDS)
        lines.append(
            f"| {name} | {o['mre_mm']:.2f} ± {o['sd_mm']:.2f} | {o['median_mm']:.2f} ({o['iqr_mm']:.2f}) | {sdr} |"
        )
    return "\n".join(lines)


def per_landmark(root: Path) -> str:
    g, gl = load(root, "global"), load(root, "global_to_local")
    lines = [
        "| Fiducial | Global median (IQR) | Global-to-local median (IQR) | Global-to-local mean ± SD |",
        "|:--|--:|--:|--:|",
    ]
    for name in gl["landmarks"]:
        a, b = g["per_landmark"][name], gl["per_landmark"][name]
        lines.append(
            f"| {name} | {a['median_mm']:.2f} ({a['iqr_mm']:.2f}) | {b['median_mm']:.2f} ({b['iqr_mm']:.2f}) "
            f"| {b['mre_mm']:.2f} ± {b['sd_mm']:.2f} |"
        )
    return "\n".join(lines)


def timing(root: Path) -> str:
    lines = [
        "| Run | median with reading (s) | max | median without reading (s) | max |",
        "|:--|--:|--:|--:|--:|",
    ]
    for run, name in RUNS.items():
        t = load(root, run)["time_s"]
        lines.append(
            f"| {name} | {t['median']:.3f} | {t['max']:.3f} | {t['median_without_io']:.3f} | {t['max_without_io']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/mni_afids_test")
    print("### Overall\n\n" + overall(root))
    print("\n### Per fiducial\n\n" + per_landmark(root))
    print("\n### Time per volume (2 threads, after one warm-up volume)\n\n" + timing(root))
    for name in ("compare_stages", "compare_sl_ml"):
        path = root / name / "comparison.md"
        if path.is_file():
            print(f"\n### {name}\n\n" + path.read_text())


if __name__ == "__main__":
    main()

"""Markdown tables for experiments/isbi2015/RESULTS.md from the summaries written by evaluate_test1.sh.

python experiments/isbi2015/results_tables.py outputs/isbi2015_test1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = {"global": "Global only", "global_to_local": "Global-to-local"}
GTS = {"average": "average of both doctors", "senior": "senior doctor"}
PAPER_SDR = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


def load(root: Path, run: str, gt: str) -> dict:
    return json.loads((root / f"eval_{run}_{gt}" / "summary.json").read_text())


def per_landmark(root: Path, gt: str) -> str:
    g, gl = load(root, "global", gt), load(root, "global_to_local", gt)
    lines = [
        "| Landmark | Global median (IQR) | Global-to-local median (IQR) | Global-to-local mean ± SD |",
        "|:--|--:|--:|--:|",
    ]
    for name in gl["landmarks"]:
        a, b = g["per_landmark"][name], gl["per_landmark"][name]
        lines.append(
            f"| {name} | {a['median_mm']:.2f} ({a['iqr_mm']:.2f}) | {b['median_mm']:.2f} ({b['iqr_mm']:.2f}) "
            f"| {b['mre_mm']:.2f} ± {b['sd_mm']:.2f} |"
        )
    a, b = g["overall"], gl["overall"]
    lines.append(
        f"| **All** | {a['median_mm']:.2f} ({a['iqr_mm']:.2f}) | **{b['median_mm']:.2f} ({b['iqr_mm']:.2f})** "
        f"| **{b['mre_mm']:.2f} ± {b['sd_mm']:.2f}** |"
    )
    return "\n".join(lines)


def overall(root: Path) -> str:
    head = "| Run | Ground truth | MRE ± SD (mm) | Median (IQR) | " + " | ".join(
        f"SDR {t:g}" for t in (2, 2.5, 3, 4)
    )
    lines = [head + " |", "|:--|:--|--:|--:|" + "--:|" * 4]
    for run, run_name in RUNS.items():
        for gt in GTS:
            o = load(root, run, gt)["overall"]
            sdr = " | ".join(f"{o[f'sdr_{t:g}mm']:.1f} %" for t in (2, 2.5, 3, 4))
            lines.append(
                f"| {run_name} | {gt} | {o['mre_mm']:.2f} ± {o['sd_mm']:.2f} | "
                f"{o['median_mm']:.2f} ({o['iqr_mm']:.2f}) | {sdr} |"
            )
    return "\n".join(lines)


def sdr_curve(root: Path) -> str:
    lines = ["| Run | Ground truth | " + " | ".join(f"{t:g} mm" for t in PAPER_SDR) + " |"]
    lines.append("|:--|:--|" + "--:|" * len(PAPER_SDR))
    for run, run_name in RUNS.items():
        for gt in GTS:
            o = load(root, run, gt)["overall"]
            lines.append(
                f"| {run_name} | {gt} | " + " | ".join(f"{o[f'sdr_{t:g}mm']:.1f}" for t in PAPER_SDR) + " |"
            )
    return "\n".join(lines)


def timing(root: Path) -> str:
    lines = [
        "| Run | median with reading (s) | max | median without reading (s) | max |",
        "|:--|--:|--:|--:|--:|",
    ]
    for run, run_name in RUNS.items():
        t = load(root, run, "average")["time_s"]
        lines.append(
            f"| {run_name} | {t['median']:.3f} | {t['max']:.3f} | {t['median_without_io']:.3f} | "
            f"{t['max_without_io']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/isbi2015_test1")
    print("## Overall\n\n" + overall(root))
    print("\n## SDR (%) at 0.5 ... 5 mm\n\n" + sdr_curve(root))
    for gt, name in GTS.items():
        print(f"\n## Per landmark, {name}\n\n" + per_landmark(root, gt))
    print("\n## Processing time per image (2 threads, after one warm-up image)\n\n" + timing(root))


if __name__ == "__main__":
    main()

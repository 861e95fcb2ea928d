from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from landmark_lit.cli.compare import compare
from landmark_lit.config import CONFIG_DIR
from landmark_lit.data.landmark_tables import LandmarkTable, write_landmark_table
from landmark_lit.evaluation.compare import compare_runs

N = 30


def _study(tmp_path):
    """References for A, B on N cases; run 'good' off by 1 mm, run 'bad' by 3 mm on A and 1.1 mm on B;
    run 'sl' is two single-landmark files whose A and B equal 'good' plus small noise."""
    rng = np.random.default_rng(0)
    ref = {f"c{i:02d}": rng.uniform(0, 100, (2, 2)) for i in range(N)}
    write_landmark_table(tmp_path / "ref.csv", LandmarkTable(names=["A", "B"], coords=ref))
    offsets = {"good": (1.0, 1.0), "bad": (3.0, 1.1)}
    for run, (da, db) in offsets.items():
        coords = {c: v + np.array([[da, 0.0], [0.0, db]]) for c, v in ref.items()}
        write_landmark_table(tmp_path / f"{run}.json", LandmarkTable(names=["A", "B"], coords=coords))
    for k, name in enumerate("AB"):
        noise = rng.uniform(-0.01, 0.01, N)
        coords = {c: v[[k]] + np.array([[1.0 + noise[i], 0.0]]) for i, (c, v) in enumerate(ref.items())}
        write_landmark_table(tmp_path / f"sl_{name}.csv", LandmarkTable(names=[name], coords=coords))
    return tmp_path


def test_table_cells_and_wilcoxon_markers(tmp_path):
    d = _study(tmp_path)
    runs = {"good": d / "good.json", "bad": d / "bad.json", "sl": [d / "sl_A.csv", d / "sl_B.csv"]}
    result = compare_runs(runs, d / "ref.csv", d / "out")
    cells = result["cells"]
    assert result["reference_run"] == "good" and result["landmarks"] == ["A", "B"]
    assert cells["good"]["A"]["median_mm"] == pytest.approx(1.0) and cells["good"]["A"]["marker"] == ""
    assert cells["bad"]["A"]["median_mm"] == pytest.approx(3.0) and cells["bad"]["B"][
        "median_mm"
    ] == pytest.approx(1.1)
    # 30 paired cases, every one worse by 2 mm: signed-rank p ~ 1e-7 (not exactly 2 / 2^30: float ties)
    assert 0 < cells["bad"]["A"]["p_value"] < 1e-6 and cells["bad"]["A"]["marker"] == "‡"
    assert cells["bad"]["All"]["n"] == 2 * N and cells["bad"]["All"]["marker"] == "‡"
    # the merged single-landmark run differs from 'good' by symmetric noise only
    assert cells["sl"]["A"]["p_value"] > 0.05 and cells["sl"]["A"]["marker"] == ""
    md = (d / "out" / "comparison.md").read_text()
    assert "| good (reference) | 1.00 (0.00) | 1.00 (0.00) | 1.00 (0.00) |" in md
    assert "| bad | 3.00 (0.00)‡ | 1.10 (0.00)‡ | " in md
    rows = list(csv.DictReader((d / "out" / "comparison.csv").open()))
    assert len(rows) == 3 * 3 and {r["landmark"] for r in rows} == {"A", "B", "All"}
    assert json.loads((d / "out" / "comparison.json").read_text())["runs"]["sl"][1].endswith("sl_B.csv")
    assert (d / "out" / "sdr_curves.png").stat().st_size > 1000


def test_landmarks_common_to_all_runs_and_bad_input(tmp_path):
    d = _study(tmp_path)
    result = compare_runs({"a_only": d / "sl_A.csv", "good": d / "good.json"}, d / "ref.csv", d / "o1")
    assert result["landmarks"] == ["A"]
    with pytest.raises(ValueError, match="reference run 'x' is not one of the runs"):
        compare_runs({"good": d / "good.json"}, d / "ref.csv", d / "o2", reference_run="x")
    with pytest.raises(ValueError, match="sl_A.csv: landmark 'A' is also predicted by"):
        compare_runs({"dup": [d / "sl_A.csv", d / "sl_A.csv"]}, d / "ref.csv", d / "o3")
    write_landmark_table(d / "few.csv", LandmarkTable(names=["A", "B"], coords={"c00": np.zeros((2, 2))}))
    with pytest.raises(ValueError, match="few.csv: no prediction for 29 reference case"):
        compare_runs({"good": d / "good.json", "few": d / "few.csv"}, d / "ref.csv", d / "o4")
    assert not (d / "o4").exists()


def test_cli_composes_runs_from_overrides(tmp_path, capsys):
    d = _study(tmp_path)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "compare",
            overrides=[
                f"runs={{Rlog+C: {d / 'good.json'}, C: {d / 'bad.json'}}}",
                f"references={d / 'ref.csv'}",
                f"output_dir={d / 'cli'}",
                "reference_run=C",
            ],
        )
    result = compare(cfg)
    assert result["reference_run"] == "C" and result["cells"]["Rlog+C"]["A"]["marker"] == "‡"
    assert "| Rlog+C | 1.00 (0.00)‡" in capsys.readouterr().out


def test_the_study_is_logged_to_its_sweep_group_in_wandb(tmp_path, monkeypatch):
    """landmark-compare wandb.enabled=true: its own offline run (job type compare) in the sweep's group,
    with the median (IQR) table and its Wilcoxon markers as a wandb Table and the SDR curves of all runs
    as one plot."""
    from helpers import read_wandb_offline_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb's process-wide settings: as the other tests have them
    d = _study(tmp_path)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "compare",
            overrides=[
                f"runs={{good: {d / 'good.json'}, bad: {d / 'bad.json'}}}",
                f"references={d / 'ref.csv'}",
                f"output_dir={d / 'cli'}",
                "wandb.enabled=true",
                "wandb.group=train-2026-12-02_10-00-00",
            ],
        )
    result = compare(cfg)
    import wandb

    wandb.teardown()  # the wandb service writes the run file in the background: let it finish, as at exit
    (file,) = (d / "cli" / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_wandb_offline_run(file)
    assert run["id"] == result["wandb_run"] and run["config"]["reference_run"] == "good"
    assert run["group"] == "train-2026-12-02_10-00-00"
    (logged,) = [h for h in run["history"] if "comparison/median_iqr/_type" in h]
    assert (
        logged["comparison/median_iqr/_type"] == logged["comparison/sdr_curves_table/_type"] == "table-file"
    )
    table = json.loads((file.parent / "files" / logged["comparison/median_iqr/path"]).read_text())
    assert table["columns"] == ["run", "A", "B", "All"]
    assert table["data"][1][:2] == ["bad", "3.00 (0.00)‡"]
    curves = json.loads((file.parent / "files" / logged["comparison/sdr_curves_table/path"]).read_text())
    assert {row[1] for row in curves["data"]} == {"good", "bad"}  # one curve per run
    assert run["summary"]["good/All/median_mm"] == pytest.approx(1.0)

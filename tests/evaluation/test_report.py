from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from landmark_lit.data.landmark_tables import LandmarkTable, write_landmark_table
from landmark_lit.evaluation.report import evaluate_predictions, format_table

NAN = math.nan
OUTPUTS = ["errors.csv", "summary.json", "summary.md", "sdr_curve.png", "boxplot.png"]


def _write_2d(tmp_path: Path, images: bool = True) -> tuple[Path, Path]:
    """References and predictions whose errors are case1: A 5, B 1, C 0; case2: A 2, B missing, C 10."""
    refs = LandmarkTable(
        names=["A", "B", "C"],
        coords={
            "case1": np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 5.0]]),
            "case2": np.array([[5.0, 5.0], [NAN, NAN], [0.0, 0.0]]),
        },
    )
    preds = LandmarkTable(
        names=["C", "A", "B", "D"],  # other order and an extra landmark, matched by name
        coords={
            "case1": np.array([[30.0, 5.0], [13.0, 14.0], [20.0, 21.0], [0.0, 0.0]]),
            "case2": np.array([[6.0, 8.0], [5.0, 7.0], [1.0, 1.0], [0.0, 0.0]]),
            "case3": np.zeros((4, 2)),  # no reference: ignored
        },
        seconds={"case1": 0.2, "case2": 0.4, "case3": 9.0},
        seconds_without_io={"case1": 0.1, "case2": 0.3},
    )
    if images:
        (tmp_path / "img").mkdir()
        for case in ("case1", "case2"):
            pixels = np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)  # (rows, columns)
            Image.fromarray(pixels).save(tmp_path / "img" / f"{case}.png")
        preds.images = {"case1": str(tmp_path / "img" / "case1.png"), "case2": "img/case2.png"}  # relative
    write_landmark_table(tmp_path / "refs.csv", refs)
    write_landmark_table(tmp_path / "preds.json", preds)
    return tmp_path / "preds.json", tmp_path / "refs.csv"


def test_evaluate_2d_numbers_and_outputs(tmp_path: Path) -> None:
    preds, refs = _write_2d(tmp_path)
    out = tmp_path / "out"
    summary = evaluate_predictions(preds, refs, out)

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*OUTPUTS, "worst_01_case2_C.png", "worst_02_case1_A.png", "worst_03_case2_A.png"]
    )
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100

    with open(out / "errors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["landmark"]) for r in rows][:3] == [("case1", "A"), ("case1", "B"), ("case1", "C")]
    assert [float(r["error_mm"]) for r in rows] == pytest.approx([5, 1, 0, 2, NAN, 10], nan_ok=True)

    overall = summary["overall"]  # errors 5, 1, 0, 2, 10
    assert overall["n"] == 5 and overall["n_missing"] == 1
    assert overall["mre_mm"] == pytest.approx(3.6)
    assert overall["median_mm"] == pytest.approx(2.0)
    assert overall["iqr_mm"] == pytest.approx(4.0)
    assert overall["sd_mm"] == pytest.approx(math.sqrt(65.2 / 4))
    assert overall["sdr_2mm"] == pytest.approx(60.0)
    assert overall["sdr_4mm"] == pytest.approx(60.0)
    assert overall["sdr_0.5mm"] == pytest.approx(20.0)
    assert overall["sdr_5mm"] == pytest.approx(80.0)
    assert {f"sdr_{t:g}mm" for t in np.arange(0.5, 5.01, 0.5)} <= set(overall)
    a = summary["per_landmark"]["A"]  # errors 5, 2
    assert (a["median_mm"], a["iqr_mm"], a["mre_mm"], a["sd_mm"]) == pytest.approx(
        (3.5, 1.5, 3.5, math.sqrt(4.5))
    )
    assert summary["per_landmark"]["B"]["n"] == 1 and summary["per_landmark"]["B"]["sd_mm"] is None
    assert list(summary["per_landmark"]) == ["A", "B", "C"]
    assert summary["time_s"] == pytest.approx(
        {
            "n": 2,
            "median": 0.3,
            "max": 0.4,
            "n_without_io": 2,
            "median_without_io": 0.2,
            "max_without_io": 0.3,
        }
    )

    assert json.loads((out / "summary.json").read_text()) == summary
    markdown = (out / "summary.md").read_text()
    assert "| All " in markdown and "2.00 (4.00)" in markdown and "3.60 ± 4.04" in markdown
    assert "median 0.300 s, max 0.400 s" in markdown and "median 0.200 s, max 0.300 s without" in markdown
    table = format_table(summary)
    assert len(table.splitlines()) == 2 + 4
    assert "SDR 2.5 mm" in table and "60.0" in table


def test_evaluate_without_images_skips_overlays(tmp_path: Path) -> None:
    preds, refs = _write_2d(tmp_path, images=False)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "worst_01_old_X.png").write_bytes(b"stale")
    evaluate_predictions(preds, refs, out, thresholds=(1.0,), n_worst=2)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert "SDR 1 mm" in (out / "summary.md").read_text()


def test_evaluate_3d_with_nifti(tmp_path: Path) -> None:
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    volume = np.random.default_rng(1).random((12, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "vol.nii.gz")
    refs = LandmarkTable(
        names=["A", "B"], coords={"x": np.array([[0.0, 10.0, 5.0], [4.0, 12.0, 7.0]]), "y": np.zeros((2, 3))}
    )
    preds = LandmarkTable(
        names=["A", "B"],
        coords={
            "x": np.array([[1.0, 12.0, 7.0], [4.0, 12.0, 7.0]]),
            "y": np.array([[2.0, 3.0, 6.0], [0, 0, 4]]),
        },
        images={"x": "vol.nii.gz", "y": "vol.nii.gz"},
    )
    write_landmark_table(tmp_path / "refs.json", refs)
    write_landmark_table(tmp_path / "preds.json", preds)
    summary = evaluate_predictions(
        tmp_path / "preds.json", tmp_path / "refs.json", tmp_path / "out", n_worst=2
    )
    overall = summary["overall"]  # errors 3, 0, 7, 4
    assert (overall["mre_mm"], overall["median_mm"], overall["iqr_mm"]) == pytest.approx((3.5, 3.5, 2.5))
    assert summary["spatial_dims"] == 3 and summary["time_s"] is None
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([*OUTPUTS, "worst_01_y_A.png", "worst_02_y_B.png"])
    assert "not recorded" in (tmp_path / "out" / "summary.md").read_text()


def test_missing_predictions_are_errors(tmp_path: Path) -> None:
    refs = LandmarkTable(names=["A", "B"], coords={"c1": np.zeros((2, 2)), "c2": np.zeros((2, 2))})
    write_landmark_table(tmp_path / "refs.csv", refs)
    cases = [
        (
            LandmarkTable(names=["A", "B"], coords={"c1": np.zeros((2, 2))}),
            "no prediction for 1 reference case",
        ),
        (LandmarkTable(names=["A"], coords={"c1": np.zeros((1, 2)), "c2": np.zeros((1, 2))}), "landmark"),
        (
            LandmarkTable(
                names=["A", "B"], coords={"c1": np.zeros((2, 2)), "c2": np.array([[0, 0], [NAN, NAN]])}
            ),
            "c2/B",
        ),
        (LandmarkTable(names=["A", "B"], coords={"c1": np.zeros((2, 3)), "c2": np.zeros((2, 3))}), "3D"),
    ]
    for n, (preds, problem) in enumerate(cases):
        path = tmp_path / f"preds{n}.csv"
        write_landmark_table(path, preds)
        with pytest.raises(ValueError, match=problem) as info:
            evaluate_predictions(path, tmp_path / "refs.csv", tmp_path / "out")
        assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_compose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hydra import compose, initialize_config_dir

    from landmark_lit.cli.evaluate import evaluate
    from landmark_lit.config import CONFIG_DIR

    preds, refs = _write_2d(tmp_path, images=False)
    overrides = [f"predictions={preds}", f"references={refs}", f"output_dir={tmp_path / 'cli'}", "n_worst=1"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    assert list(cfg.thresholds) == [2.0, 2.5, 3.0, 4.0]
    summary = evaluate(cfg)
    assert summary["overall"]["mre_mm"] == pytest.approx(3.6)
    assert (tmp_path / "cli" / "summary.json").is_file()
    assert "| All " in capsys.readouterr().out


def test_cli_subprocess(tmp_path: Path) -> None:
    preds, refs = _write_2d(tmp_path, images=False)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "landmark_lit.cli.evaluate",
            "predictions=preds.json",
            "references=refs.csv",
            "output_dir=run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| All " in result.stdout
    assert all((tmp_path / "run" / name).is_file() for name in OUTPUTS)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["overall"]["n"] == 5


def test_confidence_figures_of_a_hand_made_case(tmp_path: Path) -> None:
    """Errors 1, 3, 5, 6 mm (landmark a of cases c0..c3) with known confidences: AUROC 0.75 above 4 mm,
    1.0 above 2 mm; half flagged, one of two failures caught; the radius covers half; landmark b is exact."""
    from landmark_lit.evaluation.compare import compare_runs

    names, cases = ["a", "b"], [f"c{i}" for i in range(4)]
    ref = LandmarkTable(names=names, coords={c: np.zeros((2, 2)) for c in cases})
    pred = LandmarkTable(
        names=names,
        coords={c: np.array([[e, 0.0], [0.0, 0.0]]) for c, e in zip(cases, [1, 3, 5, 6], strict=True)},
    )
    scores = {
        "confidence": {c: np.array([v, 0.99]) for c, v in zip(cases, [0.9, 0.4, 0.5, 0.1], strict=True)},
        "flagged": {c: np.array([v, False]) for c, v in zip(cases, [False, True, True, False], strict=True)},
        "radius_mm": {c: np.array([v, 1.0]) for c, v in zip(cases, [2.0, 2.0, 2.0, 7.0], strict=True)},
    }
    write_landmark_table(tmp_path / "ref.csv", ref)
    write_landmark_table(tmp_path / "pred.json", pred, extra=scores)
    summary = evaluate_predictions(
        tmp_path / "pred.json", tmp_path / "ref.csv", tmp_path / "out", report=True
    )
    a = summary["confidence"]["per_landmark"]["a"]
    assert a["auroc_4mm"] == pytest.approx(0.75) and a["auroc_2mm"] == pytest.approx(1.0)
    assert a["share_flagged"] == 0.5 and a["share_failures_caught"] == 0.5
    assert a["radius_coverage"] == 0.5 and a["radius_median_mm"] == 2.0
    overall = summary["confidence"]["overall"]
    assert overall["n"] == 8 and overall["failures"] == 2 and overall["share_flagged"] == 0.25
    assert overall["radius_coverage"] == 0.75  # b: error 0 within radius 1
    assert summary["confidence"]["per_landmark"]["b"]["auroc_4mm"] is None  # no failures: undefined
    assert (tmp_path / "out" / "confidence_curve.png").is_file()
    page = (tmp_path / "out" / "report.html").read_text()
    assert "AUROC &gt;4 mm" in page and page.count("data:image/png;base64,") >= 3
    assert "## Confidence" in (tmp_path / "out" / "summary.md").read_text()
    # landmark-compare: the same figures per run; a run without confidences has none
    write_landmark_table(tmp_path / "plain.csv", pred)
    result = compare_runs({"scored": tmp_path / "pred.json", "plain": tmp_path / "plain.csv"},
                          tmp_path / "ref.csv", tmp_path / "cmp")  # fmt: skip
    assert set(result["confidence"]) == {"scored"}
    assert result["confidence"]["scored"]["auroc_4mm"] == pytest.approx(overall["auroc_4mm"])
    assert "failures caught %" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_confidence_table_names_each_auroc_once() -> None:
    """A failure distance of 2 mm gives one AUROC column (the 2 mm one), 4 mm gives both, with their values."""
    from landmark_lit.evaluation.report import confidence_rows, confidence_summary

    errors = np.array([[1.0], [3.0], [5.0], [6.0]])
    scores = {"confidence": np.array([[0.9], [0.4], [0.5], [0.1]])}
    header2, rows2 = confidence_rows(confidence_summary(errors, ["a"], scores, 2.0))
    assert [h for h in header2 if h.startswith("AUROC")] == ["AUROC >2 mm"]
    assert rows2[-1][header2.index("AUROC >2 mm")] == "1.000"
    header4, rows4 = confidence_rows(confidence_summary(errors, ["a"], scores, 4.0))
    assert [h for h in header4 if h.startswith("AUROC")] == ["AUROC >2 mm", "AUROC >4 mm"]
    assert rows4[-1][header4.index("AUROC >4 mm")] == "0.750"
    assert len(rows4[-1]) == len(header4) and len(rows2[-1]) == len(header2)

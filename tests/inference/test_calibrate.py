"""Calibration belongs to the model: stored in checkpoints and bundles, read back, used at prediction time;
an uncalibrated model says so once; older bundles still load."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from helpers import NAMES, stage_description, write_checkpoint

from landmark_lit.confidence import Calibration
from landmark_lit.data.cases import Case
from landmark_lit.inference.calibrate import (
    calibrate_checkpoint,
    calibrate_local_stage,
    calibrate_predictor,
    calibration_source,
)
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.settings import RunSettings
from landmark_lit.inference.stages import load_bundle, load_stage, save_bundle


class RandomCases:
    """Annotated random images of the tiny test models (landmarks a, b)."""

    landmark_names = NAMES

    def __init__(self, n: int = 12, dims: int = 2, seed: int = 0) -> None:
        self.n, self.spatial_dims, self.seed = n, dims, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Case:
        rng = np.random.default_rng(self.seed * 1000 + i)
        image = rng.normal(size=(1, *[24] * self.spatial_dims)).astype(np.float32)
        affine = np.diag([1.2] * self.spatial_dims + [1.0])
        return Case(f"c{i}", image, affine, rng.uniform(6, 22, size=(2, self.spatial_dims)))


@pytest.fixture
def models(tmp_path):
    torch.manual_seed(0)
    g = write_checkpoint(tmp_path / "global.ckpt", stage_description("global", 2, 2.0, 16))
    loc = write_checkpoint(tmp_path / "local.ckpt", stage_description("local", 2, 1.0, 8))
    return g, loc


def test_end_of_training_calibration_is_stored_in_the_checkpoint(models, tmp_path):
    g, _ = models
    copy = tmp_path / "last.ckpt"
    copy.write_bytes(g.read_bytes())
    cal = calibrate_checkpoint(g, [copy], RandomCases(), {"failure_mm": 3.0, "goal": 0.7, "coverage": 0.8})
    for path in (g, copy):
        stored = load_stage(path).meta.calibration
        assert Calibration.from_dict(stored, str(path)) == cal
    assert cal.failure_mm == 3.0 and cal.goal == 0.7 and cal.coverage == 0.8
    assert cal.fitted_on["pipeline"] == {"local_stages": 0, "local_iterations": 0, "mirror": None}
    predictor = LandmarkPredictor.from_checkpoints(g)
    assert predictor.calibration == cal and predictor.confidence_threshold == cal.threshold
    case = RandomCases(seed=1)[0]
    p = predictor.predict(case.image, case.affine)
    np.testing.assert_allclose(p.confidence, cal.confidence(p.features, NAMES))
    np.testing.assert_array_equal(p.flagged, p.confidence < cal.threshold)
    np.testing.assert_allclose(p.radius_mm, cal.radius_mm(p.features, NAMES))
    assert np.all(p.radius_mm > 0)


def test_local_stage_is_calibrated_from_offset_starts(models):
    _, loc = models
    stage = load_stage(loc)
    cal = calibrate_local_stage(stage, RandomCases(), offset_sd_mm=1.5, iterations=2, seed=3)
    assert cal.fitted_on["pipeline"] == {"local_stages": 1, "local_iterations": 2, "mirror": None}
    assert cal.fitted_on["simulated_global_sd_mm"] == [1.5]
    assert "log_global_gap" in cal.features  # the start offsets vary; the simulated global cues do not
    assert "log_global_spread" not in cal.features and "logit_global_posterior" not in cal.features
    assert cal == calibrate_local_stage(stage, RandomCases(), offset_sd_mm=1.5, iterations=2, seed=3)


def test_bundle_stores_the_pipeline_calibration(models, tmp_path):
    g, loc = models
    predictor = LandmarkPredictor.from_checkpoints(g, loc, local_iterations=2)
    cal = calibrate_predictor(predictor, RandomCases(), failure_mm=2.5)
    assert cal.fitted_on["pipeline"] == {"local_stages": 1, "local_iterations": 2, "mirror": None}
    summary = save_bundle(tmp_path / "model.pt", g, [loc], RunSettings(local_iterations=2), cal)
    assert summary["version"] == 2 and summary["confidence_threshold"] is None
    bundle = load_bundle(tmp_path / "model.pt")
    assert bundle.calibration == cal
    bundled = LandmarkPredictor.from_bundle(tmp_path / "model.pt")
    assert bundled.confidence_threshold == cal.threshold
    case = RandomCases(seed=2)[0]
    a = bundled.predict(case.image, case.affine)
    b = LandmarkPredictor.from_checkpoints(g, loc, calibration=cal, local_iterations=2).predict(
        case.image, case.affine
    )
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.radius_mm, b.radius_mm)
    # an explicit threshold overrides the calibration's
    save_bundle(tmp_path / "strict.pt", g, [loc], RunSettings(2, confidence_threshold=1.01), cal)
    assert (
        LandmarkPredictor.from_bundle(tmp_path / "strict.pt").predict(case.image, case.affine).flagged.all()
    )


def test_uncalibrated_model_warns_once_and_flags_nothing(models, caplog):
    g, loc = models
    predictor = LandmarkPredictor.from_checkpoints(g, loc)
    case = RandomCases()[0]
    with caplog.at_level(logging.WARNING, logger="landmark_lit.inference.predictor"):
        first = predictor.predict(case.image, case.affine)
        predictor.predict(case.image, case.affine)
    warnings = [r for r in caplog.records if "without calibration" in r.getMessage()]
    assert len(warnings) == 1 and str(loc) in warnings[0].getMessage()
    assert predictor.confidence_threshold is None and not first.flagged.any()
    assert np.all(np.isnan(first.radius_mm)) and np.all((first.confidence >= 0) & (first.confidence <= 1))


def test_calibration_of_another_pipeline_warns(models, caplog):
    g, loc = models
    cal = calibrate_predictor(LandmarkPredictor.from_checkpoints(g, loc), RandomCases())
    predictor = LandmarkPredictor.from_checkpoints(g, loc, calibration=cal, local_iterations=2)
    case = RandomCases()[0]
    with caplog.at_level(logging.WARNING, logger="landmark_lit.inference.predictor"):
        predictor.predict(case.image, case.affine)
    assert any("calibration fitted on the pipeline" in r.getMessage() for r in caplog.records)


def test_version_1_bundle_keeps_its_threshold(models, tmp_path):
    g, loc = models
    save_bundle(tmp_path / "model.pt", g, [loc], RunSettings(confidence_threshold=0.3))
    data = torch.load(tmp_path / "model.pt", weights_only=True)
    data["version"] = 1
    del data["calibration"]
    for stage in data["stages"]:  # as version-1 bundles stored them
        stage["meta"] = {k: v for k, v in stage["meta"].items() if k != "calibration"} | {"format_version": 2}
    torch.save(data, tmp_path / "old.pt")
    predictor = LandmarkPredictor.from_bundle(tmp_path / "old.pt")
    assert predictor.calibration is None and predictor.confidence_threshold == 0.3
    p = predictor.predict(*(lambda c: (c.image, c.affine))(RandomCases()[0]))
    np.testing.assert_array_equal(p.flagged, p.confidence < 0.3)


def test_calibration_source_names_bad_choices():
    with pytest.raises(ValueError, match="either calibration_dataset"):
        calibration_source()
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        calibration_source("nope")
    source, failure, _ = calibration_source("synthetic2d", split="val")
    assert len(source) > 0 and failure is None


class Joined:
    """Two case sources as one."""

    landmark_names = NAMES
    spatial_dims = 2

    def __init__(self, a, b) -> None:
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int) -> Case:
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]


def test_cross_fitted_calibration_pools_every_folds_held_out_cases(models, tmp_path):
    from landmark_lit.inference.calibrate import calibrate_cross_fitted

    g, loc = models
    p = LandmarkPredictor.from_checkpoints(g, loc, local_iterations=2)
    folds = [(p, RandomCases(n=10, seed=4)), (p, RandomCases(n=14, seed=5))]
    cal = calibrate_cross_fitted(folds, failure_mm=2.5)
    pooled = calibrate_predictor(p, Joined(*[s for _, s in folds]), failure_mm=2.5)
    assert cal.fitted_on["cases"] == 24 and cal.fitted_on["cross_fitted_folds"] == 2
    assert cal.validation == pooled.validation and cal.validation["n_landmarks"] == 48
    assert cal.threshold == pooled.threshold and cal.features == pooled.features
    other = LandmarkPredictor.from_checkpoints(g, loc, local_iterations=1)
    with pytest.raises(ValueError, match="calibration fold 1 runs as"):
        calibrate_cross_fitted([folds[0], (other, RandomCases())])


def test_export_calibrates_on_cross_fitting_folds(models, tmp_path, monkeypatch):
    """landmark-export calibration_folds=[...]: fold k's bundle predicts fold k's held-out cases, run with
    the exported pipeline's settings; a bundle of another kind and a wrong split list are one-line errors."""
    from hydra import compose, initialize_config_dir

    import landmark_lit.inference.calibrate as calibrate_module
    from landmark_lit.cli.export import export
    from landmark_lit.config import CONFIG_DIR

    g, loc = models
    torch.manual_seed(1)
    bundles = []
    for k in range(2):  # the folds' own networks, one pass stored: the export's 2 passes must be used
        gk = write_checkpoint(tmp_path / f"g{k}.ckpt", stage_description("global", 2, 2.0, 16))
        lk = write_checkpoint(tmp_path / f"l{k}.ckpt", stage_description("local", 2, 1.0, 8))
        bundles.append(tmp_path / f"fold{k}.pt")
        save_bundle(bundles[-1], gk, [lk], RunSettings(local_iterations=1))
    calls = []

    def source(dataset, manifest, split, folds=0, fold=0):
        calls.append((dataset, manifest, split, folds, fold))
        return RandomCases(n=8, seed=10 + fold), 3.0, f"fold {fold}"

    monkeypatch.setattr(calibrate_module, "calibration_source", source)
    base = [f"global_checkpoint={g}", f"local_checkpoint={loc}", "local_iterations=2"]
    overrides = [*base, "calibration_dataset=stand_in", f"calibration_folds=[{bundles[0]},{bundles[1]}]",
                 f"output={tmp_path / 'm.pt'}"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export(compose("export", overrides=overrides))
    assert calls == [("stand_in", None, "val", 2, 0), ("stand_in", None, "val", 2, 1)]
    cal = load_bundle(tmp_path / "m.pt").calibration
    assert cal.fitted_on["cross_fitted_folds"] == 2 and cal.fitted_on["cases"] == 16
    assert cal.failure_mm == 3.0 and cal.fitted_on["pipeline"]["local_iterations"] == 2
    # the same as fitting on the two fold pipelines by hand, each with 2 passes
    from landmark_lit.inference.calibrate import calibrate_cross_fitted

    by_hand = []
    for k, b in enumerate(bundles):
        fold = LandmarkPredictor.from_bundle(b)
        fold.configure(RunSettings(local_iterations=2))
        by_hand.append((fold, RandomCases(n=8, seed=10 + k)))
    assert calibrate_cross_fitted(by_hand, failure_mm=3.0, failure_model="auto").validation == cal.validation
    # the scoring's choices reach the fit: the failures regressed themselves, the threshold from their count
    chosen = [*overrides, "calibration_failure_model=logistic", "calibration_threshold_from=counted"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export(compose("export", overrides=chosen))
    logistic = load_bundle(tmp_path / "m.pt").calibration
    assert logistic.failure_model == "logistic" and logistic.validation["threshold_from"] == "counted"
    assert logistic == calibrate_cross_fitted(
        by_hand, 3.0, description="fold 0; fold 1", failure_model="logistic", threshold_from="counted"
    )
    # two bundles of a five-fold split: folds 0 and 1 of 5 are their held-out cases
    calls.clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export(compose("export", overrides=[*overrides, "calibration_fold_count=5"]))
        assert calls == [("stand_in", None, "val", 5, 0), ("stand_in", None, "val", 5, 1)]
        with pytest.raises(ValueError, match="calibration_fold_count: 1 folds cannot hold 2 bundles"):
            export(compose("export", overrides=[*overrides, "calibration_fold_count=1"]))
    with pytest.raises(ValueError, match=r"calibration options \['forest'\] unknown"):
        calibrate_cross_fitted(by_hand, forest=1)
    coarse = tmp_path / "coarse.pt"
    lc = write_checkpoint(tmp_path / "lc.ckpt", stage_description("local", 2, 1.5, 8))
    save_bundle(coarse, g, [lc], RunSettings())
    wrong = [*base, "calibration_dataset=stand_in", f"calibration_folds=[{bundles[0]},{coarse}]"]
    manifest = [*base, "calibration_manifest=m.json", f"calibration_folds=[{bundles[0]},{bundles[1]}]"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(ValueError, match="coarse.pt is another kind of pipeline"):
            export(compose("export", overrides=wrong))
        with pytest.raises(ValueError, match="calibration_split must list one split per fold"):
            export(compose("export", overrides=manifest))

"""StageMeta: descriptions of trained stages, their validation and format versions; checkpoint and bundle files."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from helpers import compose_train, heatmap_meta, stage_description, tiny_overrides, write_checkpoint

from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import FORMAT_VERSION, CheckpointError, StageMeta, save_bundle
from landmark_lit.methods import get_method


def test_unsafe_or_foreign_model_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "landmark_lit.bundle", "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read model file safely"):
        LandmarkPredictor.from_bundle(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a landmark_lit model bundle"):
        LandmarkPredictor.from_bundle(other)
    future = tmp_path / "future.pt"
    torch.save({"format": "landmark_lit.bundle", "version": 99, "stages": []}, future)
    with pytest.raises(CheckpointError, match="bundle version 99"):
        LandmarkPredictor.from_bundle(future)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["net"].update(_target_="builtins.eval"), "unknown network 'builtins.eval'"),
        (lambda m: m["net"].update(evil="x"), "network argument 'evil' is not one of"),
        (lambda m: m["net"].update(stem_channels="4; rm -rf"), "must be integers or booleans"),
        (lambda m: m.update(spacing=float("nan")), "'spacing' must be a positive float"),
        (lambda m: m.update(landmark_names=["a"]), "1 landmark names for a network of 2"),
        (lambda m: m.update(intensity="magic"), "intensity must be one of"),
        (lambda m: m.update(decoder={"regression": "cubic"}), "invalid decoder"),
        (lambda m: m.update(decoder={"regression": "log", "top_k": 0}), "invalid decoder"),
        (lambda m: m.update(decoder={"regression": "log", "top_k": "9"}), "invalid decoder"),
        (
            lambda m: m.update(decoder={"regression": "log", "classification": False, "top_k": 9}),
            "invalid decoder",
        ),
        (lambda m: m.pop("spacing"), "lacks \\['spacing'\\]"),
        (lambda m: m.update(stage="local"), "cannot be a local stage"),
    ],
)
def test_model_descriptions_are_validated(change, message):
    meta = stage_description("global", 2, 1.0, 8)
    change(meta)
    with pytest.raises(CheckpointError, match=message):
        StageMeta.from_dict(meta, "model.pt")


def test_a_top_k_decoder_and_a_pyramid_network_are_valid_descriptions():
    meta = stage_description("global", 2, 1.0, 8)
    meta["decoder"] = {"regression": "log", "classification": True, "log_base": 10.0, "top_k": 9}
    meta["net"].update(pyramid_stride=None)
    assert StageMeta.from_dict(meta, "model.pt").decoder["top_k"] == 9


def test_bundle_refuses_stages_that_do_not_fit(tmp_path):
    g = write_checkpoint(tmp_path / "g.ckpt", stage_description("global", 2, 2.0, 16))
    loc3 = write_checkpoint(tmp_path / "l3.ckpt", stage_description("local", 3, 1.0, 8))
    with pytest.raises(CheckpointError, match="3D local model with a 2D global model"):
        save_bundle(tmp_path / "model.pt", g, [loc3])
    assert not (tmp_path / "model.pt").exists()


def test_heatmap_descriptions_are_validated():
    meta = heatmap_meta()
    assert StageMeta.from_dict(copy.deepcopy(meta), "x").method == "heatmap"
    bad = {
        "local stage": {"stage": "local"},
        "GlobalNet": {"net": {**meta["net"], "_target_": "landmark_lit.networks.GlobalNet"}},
        "unknown method": {"method": "svm"},
        "norm": {"net": {**meta["net"], "norm": "os.system"}},
        "displacement decoder": {"decoder": {"regression": "log", "classification": True}},
        "decoder mode": {"decoder": {**meta["decoder"], "mode": "median"}},
        "window": {"decoder": {**meta["decoder"], "window": 0.5}},
    }
    for what, change in bad.items():
        with pytest.raises(CheckpointError):
            StageMeta.from_dict({**copy.deepcopy(meta), **change}, what)
    # a HeatmapUNet without method=heatmap (a displacement description) is refused too
    with pytest.raises(CheckpointError, match="cannot be a global stage"):
        StageMeta.from_dict({k: v for k, v in meta.items() if k != "method"}, "x")


def test_descriptions_state_their_format_and_older_ones_still_load():
    old = stage_description("global", 2, 1.0, 8)  # format 1: no "method" key for the displacement method
    meta = StageMeta.from_dict(old, "old.ckpt")
    assert meta.method == "displacement" and meta.format_version == FORMAT_VERSION == 4
    assert meta.calibration is None  # formats 1 and 2 had none
    assert meta.antialias is True  # formats 1 to 3 were trained with it
    v3 = {**old, "method": "displacement", "format_version": 3}
    assert StageMeta.from_dict(v3, "v3.ckpt").preprocessing.antialias is True
    with pytest.raises(CheckpointError, match=r"v3\.ckpt: antialias must be true or false, got 'no'"):
        StageMeta.from_dict({**v3, "antialias": "no"}, "v3.ckpt")
    v2 = {**old, "method": "displacement", "format_version": 2}
    assert StageMeta.from_dict(v2, "v2.ckpt").calibration is None
    assert (
        StageMeta.from_dict({**old, "format_version": 1, "no_longer_used": 1}, "old.ckpt").stage == "global"
    )
    # what is written now says its format and method, and reads back equal
    stored = meta.to_dict()
    assert stored["format_version"] == 4 and stored["method"] == "displacement"
    assert StageMeta.from_dict(stored, "new.ckpt") == meta
    with pytest.raises(CheckpointError, match=r"new\.ckpt: unknown model description keys \['extra'\]"):
        StageMeta.from_dict({**stored, "extra": 1}, "new.ckpt")
    with pytest.raises(CheckpointError, match=r"new\.ckpt: calibration: calibration must be a mapping"):
        StageMeta.from_dict({**stored, "calibration": [1, 2]}, "new.ckpt")
    with pytest.raises(CheckpointError, match=r"new\.ckpt: model description lacks \['method'\]"):
        StageMeta.from_dict({k: v for k, v in stored.items() if k != "method"}, "new.ckpt")
    with pytest.raises(CheckpointError, match=r"future\.ckpt: written by a newer landmark_lit \(model format 5; "
                       r"this one reads formats 1 to 4\)"):  # fmt: skip
        StageMeta.from_dict({**stored, "format_version": 5}, "future.ckpt")
    with pytest.raises(CheckpointError, match="invalid format_version 'two'"):
        StageMeta.from_dict({**stored, "format_version": "two"}, "x.ckpt")


def test_descriptions_built_from_configs_round_trip(tmp_path):
    from hydra.utils import instantiate

    for overrides, method in (([], "displacement"), (["method=heatmap"], "heatmap")):
        cfg = compose_train([*tiny_overrides("synthetic2d", tmp_path), *overrides])
        decoder = instantiate(cfg.decoder)
        meta = StageMeta.from_config(cfg, ["a", "b", "c"], decoder)
        assert meta.method == method and meta.stage == "global" and meta.net["num_landmarks"] == 3
        assert meta.ablation == ("Rlog+C" if method == "displacement" else None)
        again = StageMeta.from_dict(meta.to_dict(), "x")
        assert again == meta and again.build_decoder() == decoder
        assert isinstance(again.build_network(), get_method(method).network_class("global"))
    with pytest.raises(ValueError, match="the heatmap method has no 'local' stage"):
        StageMeta.from_config(compose_train([*tiny_overrides("synthetic2d", tmp_path), "method=heatmap",
                                             "stage=global", "stage.name=local"]), ["a"], decoder)  # fmt: skip


def test_a_file_that_is_not_a_model_says_so(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3, loss 0.1\n")
    with pytest.raises(
        CheckpointError, match=r"notes\.ckpt: not a model file \(not a PyTorch file; expected"
    ):
        LandmarkPredictor.from_checkpoints(text)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a model file \(an empty file"):
        LandmarkPredictor.from_bundle(tmp_path / "empty.pt")

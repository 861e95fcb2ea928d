from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from landmark_lit.inference.export import (
    ExportFileError,
    OnnxNet,
    TorchScriptNet,
    export_onnx,
    export_torchscript,
    load_exported,
)
from landmark_lit.inference.predictor import LandmarkPredictor
from landmark_lit.inference.stages import Stage, StageMeta
from landmark_lit.networks import GlobalNet, LocalNet

NAMES = ["a", "b"]
DECODER = {"regression": "log", "classification": True, "log_base": 10.0}

# name -> (network config, export example shape, other input shapes the exports are run at)
CASES = {
    # example not a multiple of the stride (8); run at a multiple in one axis, and smaller than one cell
    "global2d": (
        dict(_target_="landmark_lit.networks.GlobalNet", spatial_dims=2, in_channels=1, num_landmarks=2,
             stem_channels=4, stage_channels=[4, 8], stage_blocks=[1, 1], pool_before=[True, True],
             head_channels=4),
        (1, 1, 70, 90),
        [(2, 1, 100, 64), (1, 1, 5, 17)],
    ),
    # example a multiple of the stride (4): the graph must still pad other sizes
    "global3d": (
        dict(_target_="landmark_lit.networks.GlobalNet", spatial_dims=3, in_channels=1, num_landmarks=2,
             stem_channels=4, stage_channels=[4, 4], stage_blocks=[1, 1], pool_before=[True, False],
             head_channels=4),
        (1, 1, 16, 20, 12),
        [(2, 1, 21, 18, 23)],
    ),
    # feature-pyramid head: output stride 4, inputs padded to the encoder's 16, output cropped to ceil(n / 4)
    "pyramid2d": (
        dict(_target_="landmark_lit.networks.GlobalNet", spatial_dims=2, in_channels=1, num_landmarks=2,
             stem_channels=4, stage_channels=[4, 8, 8], stage_blocks=[1, 1, 1], pool_before=[True, True, True],
             head_channels=4, pyramid_stride=4, pyramid_channels=4),
        (1, 1, 48, 37),
        [(2, 1, 61, 64), (1, 1, 5, 17)],
    ),
    "local2d": (
        dict(_target_="landmark_lit.networks.LocalNet", spatial_dims=2, in_channels=1, num_landmarks=2,
             channels=[4, 4], head_channels=4),
        (1, 2, 1, 16, 16),
        [(3, 2, 1, 13, 10)],
    ),
    # the shared (not specialised) local network reads output k from sub-image k
    "local3d": (
        dict(_target_="landmark_lit.networks.LocalNet", spatial_dims=3, in_channels=1, num_landmarks=2,
             channels=[4, 4], head_channels=4, specialised=False),
        (1, 2, 1, 8, 8, 8),
        [(2, 2, 1, 9, 7, 10)],
    ),
}  # fmt: skip
NETWORKS = {"landmark_lit.networks.GlobalNet": GlobalNet, "landmark_lit.networks.LocalNet": LocalNet}


def build(name: str) -> nn.Module:
    """Random weights, and batch-norm statistics and affine parameters that are not the identity."""
    torch.manual_seed(sorted(CASES).index(name))
    cfg = dict(CASES[name][0])
    net = NETWORKS[cfg.pop("_target_")](**cfg)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.7, 1.3)
            nn.init.normal_(m.bias, 0.0, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {name: build(name) for name in CASES}


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def exported(request, nets, tmp_path_factory) -> dict[str, nn.Module]:
    """Every network of CASES exported in one format and loaded back."""
    fmt = request.param
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp(fmt)
    loaded = {}
    for name, net in nets.items():
        example = torch.randn(CASES[name][1])
        meta = {"case": name, "crop_size": [8, 8]}
        if fmt == "onnx":
            path = export_onnx(net, folder / f"{name}.onnx", example, meta=meta)
            loaded[name] = OnnxNet(path)
        else:
            path = export_torchscript(net, folder / f"{name}.pt", example, meta=meta)
            loaded[name] = TorchScriptNet(path)
        assert load_exported(path).meta == meta
    return loaded


@pytest.mark.parametrize("name", list(CASES))
def test_exports_reproduce_the_network_at_other_input_sizes(exported, nets, name):
    net, ex = nets[name], exported[name]
    assert ex.eval() is ex
    assert (ex.stride, ex.spatial_dims, ex.num_landmarks) == (net.stride, net.spatial_dims, net.num_landmarks)
    assert ex.meta == {"case": name, "crop_size": [8, 8]}
    for shape in CASES[name][2]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref, out = net(x), ex(x)
        assert type(out).__name__ == "DisplacementOutput"
        for got, want in zip(out, ref, strict=True):
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        disp, logits = out
        assert disp.shape[1:3] == (2, net.spatial_dims) and logits.shape[1] == 2


def stage(net: nn.Module, name: str, kind: str, spacing: float, crop: list[int]) -> Stage:
    meta = {
        "net": CASES[name][0],
        "landmark_names": NAMES,
        "spatial_dims": net.spatial_dims,
        "spacing": spacing,
        "crop_size": crop,
        "intensity": "zscore",
        "decoder": DECODER,
        "stage": kind,
    }
    return Stage(net, StageMeta.from_dict(meta, name), f"{name}.{kind}")


@pytest.mark.parametrize("dims", [2, 3])
def test_the_predictor_finds_the_same_landmarks_with_exported_networks(exported, nets, dims):
    rng = np.random.default_rng(dims)
    image = rng.normal(size=(1, 45, 38) if dims == 2 else (1, 22, 19, 25)).astype(np.float32)
    affine = np.diag([0.9, 1.1, 1.0][:dims] + [1.0])
    g, loc = f"global{dims}d", f"local{dims}d"

    def predictor(source: dict[str, nn.Module]) -> LandmarkPredictor:
        return LandmarkPredictor(
            stage(source[g], g, "global", 1.0, [8] * dims),
            [
                stage(source[loc], loc, "local", 1.0, [9] * dims),
                stage(source[loc], loc, "local", 0.5, [8] * dims),
            ],
        )

    want = predictor(nets).predict(image, affine)
    got = predictor(exported).predict(image, affine)
    assert np.abs(got.voxel - want.voxel).max() < 1e-3
    assert np.abs(got.world - want.world).max() < 1e-3
    assert np.abs(got.global_estimate.world - want.global_estimate.world).max() < 1e-3
    assert (
        np.abs(want.world - want.global_estimate.world).max() > 0.01
    )  # the local stages moved the landmarks


def test_export_uses_running_statistics_and_keeps_the_training_mode(tmp_path):
    net = build("local2d").train()
    x = torch.randn(2, 2, 1, 12, 14)
    export_torchscript(net, tmp_path / "local.pt", torch.randn(1, 2, 1, 16, 16))
    assert net.training
    with torch.no_grad():
        torch.testing.assert_close(
            TorchScriptNet(tmp_path / "local.pt")(x), net.eval()(x), rtol=1e-4, atol=1e-4
        )


def test_inputs_of_the_wrong_shape_are_refused(exported):
    with pytest.raises(ValueError, match=r"expects input \(\*, 2, 1, \*, \*\), got \(1, 3, 1, 8, 8\)"):
        exported["local2d"](torch.zeros(1, 3, 1, 8, 8))


def test_files_that_are_not_landmark_lit_exports_are_refused(tmp_path):
    text, ckpt, plain = tmp_path / "notes.pt", tmp_path / "model.ckpt", tmp_path / "plain.pt"
    text.write_text("not a model")
    torch.save({"state_dict": build("local2d").state_dict()}, ckpt)
    torch.jit.save(torch.jit.trace(nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 2, 2)), plain)
    for path, why in [(text, "not a TorchScript file"), (ckpt, "not a TorchScript file"),
                      (plain, "not a landmark_lit export")]:  # fmt: skip
        with pytest.raises(ExportFileError, match=why) as info:
            TorchScriptNet(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ExportFileError, match="file not found"):
        load_exported(tmp_path / "missing.pt")


def test_onnx_files_that_are_not_landmark_lit_exports_are_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    text, plain = tmp_path / "notes.onnx", tmp_path / "plain.onnx"
    text.write_text("not a model")
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])],
        "identity",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9), plain)
    for path, why in [(text, "not a readable ONNX model"), (plain, "not a landmark_lit export")]:
        with pytest.raises(ExportFileError, match=why) as info:
            load_exported(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_missing_runtime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(
        RuntimeError, match=r"model\.onnx: .*needs onnxruntime: pip install 'landmark_lit\[export\]'"
    ):
        OnnxNet(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match=r"out\.onnx: .*needs onnx and onnxscript: pip install"):
        export_onnx(build("local2d"), tmp_path / "out.onnx", torch.zeros(1, 2, 1, 8, 8))
    assert not (tmp_path / "out.onnx").exists()

"""Export trained landmark networks to TorchScript and ONNX, and run the exported files like the networks.

Both formats take an input of any batch size and spatial size, like :class:`~landmark_lit.networks.GlobalNet`
and :class:`~landmark_lit.networks.LocalNet`: the exported graph pads the spatial axes to a multiple of the
network's stride itself (whatever the size of the example it was exported with) and keeps batch and spatial
axes dynamic. Each export is checked at a second input size before it is written (a different batch size
and a different remainder modulo the stride), and files are written atomically.

:class:`TorchScriptNet` and :class:`OnnxNet` load an export and behave like the PyTorch network for
:class:`~landmark_lit.inference.predictor.LandmarkPredictor`: called on a torch tensor they return a
:class:`~landmark_lit.networks.DisplacementOutput`, and they carry ``stride``, ``spatial_dims`` and
``num_landmarks`` (stored in the file: a JSON entry ``landmark_lit.json`` of the TorchScript archive, the
``landmark_lit`` entry of the ONNX model's ``metadata_props``). Example::

    export_onnx(stage.net, "global.onnx", torch.zeros(1, 1, 256, 256), meta=stage.meta.to_dict())
    net = OnnxNet("global.onnx")
    predictor = LandmarkPredictor(Stage(net, StageMeta.from_dict(net.meta, "global.onnx"), "global.onnx"))

ONNX needs the optional extra ``landmark_lit[export]`` (onnx and onnxscript to export, onnxruntime to run);
TorchScript needs nothing beyond torch. A TorchScript file holds code that is run when it is loaded: load
only files you trust. ONNX files hold no code.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark_lit.inference.passes import network_device
from landmark_lit.methods import method_of_network
from landmark_lit.networks import DisplacementOutput
from landmark_lit.utils import atomic_path, first_line

log = logging.getLogger(__name__)

FORMAT = "landmark_lit.inference.export"
FORMAT_VERSION = 1
METADATA_KEY = "landmark_lit"  # ONNX metadata_props key
EXTRA_FILE = "landmark_lit.json"  # TorchScript _extra_files entry
ONNX_OPSET = 18
INSTALL_HINT = "pip install 'landmark_lit[export]'"
OUTPUT_NAMES = ("displacement", "logits")


class ExportFileError(ValueError):
    """A file is missing, unreadable or not a landmark_lit export."""


class ExportCheckError(RuntimeError):
    """An exported graph does not reproduce the PyTorch network at a second input size."""


class _Exportable(nn.Module):
    """The network with its padding made unconditional, returning a plain tuple.

    The networks pad inside ``forward`` only when the size is not a multiple of the stride; a trace or
    ``torch.export`` of that branch at a size that happens to be a multiple would drop the padding for every
    size. Padding here always (by zero voxels at multiples, which is a no-op) makes the networks' own branch
    see multiples only, so the graph is right at every size.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.spatial_dims, self.stride = int(net.spatial_dims), int(net.stride)
        # a feature-pyramid global network pads to its deepest stride, a multiple of its output stride
        self.pad_multiple = int(getattr(net, "pad_multiple", net.stride))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pads: list[Any] = []
        for axis in range(x.ndim - 1, x.ndim - 1 - self.spatial_dims, -1):  # F.pad order: last axis first
            pads += [0, (-x.shape[axis]) % self.pad_multiple]
        out = self.net(F.pad(x, pads))
        if self.pad_multiple == self.stride:
            return out[0], out[1]
        # a feature-pyramid network's grid: ceil(size / stride) cells of the unpadded input
        s, d = self.stride, self.spatial_dims
        cells = [(x.shape[a] + s - 1) // s for a in range(x.ndim - d, x.ndim)]
        return out[0][(..., *[slice(0, c) for c in cells])], out[1][(..., *[slice(0, c) for c in cells])]


def export_torchscript(
    net: nn.Module, path: str | os.PathLike, example: Tensor, meta: dict | None = None
) -> Path:
    """Trace ``net`` on ``example`` and write a TorchScript file to ``path``; returns the path.

    ``example``: an input of the network, (B, C, *spatial) for a global network or (B, K, C, *crop) for a
    local one; the file accepts any batch and spatial size. ``meta``: JSON-serialisable data stored in the
    file and returned as ``.meta`` by :class:`TorchScriptNet` (e.g. the checkpoint's ``landmark_lit`` entry,
    which :class:`~landmark_lit.inference.stages.Stage` needs). The trace is checked at a second input size;
    :class:`ExportCheckError` if it differs from the network there.
    """
    info = _export_info(net, example, meta)
    other = _other_example(example, int(getattr(net, "pad_multiple", net.stride)), info["spatial_dims"])
    with _eval_mode(net), torch.no_grad():
        wrapped = _Exportable(net).eval()
        example = example.to(network_device(net))
        with warnings.catch_warnings():
            # the networks' own padding branch (`if any(pads)`) becomes a constant in the trace; it is
            # always False behind _Exportable, and the check at a second size (check_inputs) covers the rest
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            try:
                traced = torch.jit.trace(
                    wrapped, example, check_inputs=[(other.to(example.device),)], check_tolerance=1e-4
                )
            except torch.jit.TracingCheckError as exc:
                raise ExportCheckError(
                    f"{path}: the traced network differs from the PyTorch network at input size "
                    f"{tuple(other.shape)}: {first_line(exc)}"
                ) from exc
        with atomic_path(path) as tmp:
            torch.jit.save(traced, tmp, _extra_files={EXTRA_FILE: json.dumps(info)})
    return Path(path)


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    example: Tensor,
    meta: dict | None = None,
    opset_version: int = ONNX_OPSET,
    verify: bool = True,
) -> Path:
    """Export ``net`` to an ONNX file at ``path`` with dynamic batch and spatial axes; returns the path.

    Uses torch's ``torch.export``-based exporter (needs onnx and onnxscript). The input is named ``image``,
    the outputs ``displacement`` and ``logits``; the dynamic axes are named ``batch`` and ``spatial0``,
    ``spatial1``[, ``spatial2``]. ``example`` and ``meta`` as in :func:`export_torchscript`. With ``verify``
    (and onnxruntime installed) the file is run at a second input size and compared with the network before
    it is written (:class:`ExportCheckError` if it differs).
    """
    try:
        import onnx  # noqa: F401  (torch's exporter imports them lazily; fail early with a clear message)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{path}: exporting to ONNX needs onnx and onnxscript: {INSTALL_HINT}") from exc
    from torch.export import Dim

    info = _export_info(net, example, meta)
    d = info["spatial_dims"]
    spatial_axes = range(example.ndim - d, example.ndim)
    dynamic = {"x": {0: Dim.DYNAMIC, **{a: Dim.DYNAMIC for a in spatial_axes}}}
    with _eval_mode(net), torch.no_grad(), _quiet_onnx_exporter():
        example = example.to(network_device(net))
        program = torch.onnx.export(
            _Exportable(net).eval(),
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset_version,
            verbose=False,
        )
    image = program.model.graph.inputs[0]
    names = ["batch", *[f"spatial{i}" for i in range(d)]]
    axes = zip([0, *spatial_axes], names, strict=True)
    program.rename_axes({image.shape[a]: n for a, n in axes if not isinstance(image.shape[a], int)})
    program.model.metadata_props[METADATA_KEY] = json.dumps(info)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        if verify:
            _verify_onnx(
                net, tmp, path, _other_example(example, int(getattr(net, "pad_multiple", net.stride)), d)
            )
    return Path(path)


class TorchScriptNet(nn.Module):
    """A TorchScript file written by :func:`export_torchscript`, used like the network it came from.

    ``net(x)`` takes (B, C, *spatial) or (B, K, C, *crop) as the network did and returns a
    :class:`~landmark_lit.networks.DisplacementOutput`. Attributes: ``stride``, ``spatial_dims``,
    ``num_landmarks``, ``input_shape`` (None for dynamic axes), ``meta`` (what was given at export, or {}),
    ``info`` (all stored metadata), ``path``. Loaded on the CPU (``.to(device)`` moves it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = str(path)
        _require_file(self.path)
        files = {EXTRA_FILE: ""}
        try:
            module = torch.jit.load(self.path, map_location="cpu", _extra_files=files)
        except Exception as exc:
            raise ExportFileError(
                f"{self.path}: not a TorchScript file ({first_line(exc)}); "
                "expected a landmark_lit export (landmark_lit.inference.export.export_torchscript)"
            ) from exc
        _set_info(self, _parse_info(files[EXTRA_FILE], self.path, f"no {EXTRA_FILE} entry"))
        self.module = module.eval()

    def forward(self, x: Tensor) -> DisplacementOutput:
        _check_input(x, self.input_shape, self.path)
        disp, logits = self.module(x)
        return DisplacementOutput(disp, logits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_repr_info(self)})"


class OnnxNet(nn.Module):
    """An ONNX file written by :func:`export_onnx`, run with onnxruntime (CPU) like the network.

    ``net(x)`` takes a torch tensor as the network did and returns a
    :class:`~landmark_lit.networks.DisplacementOutput` on ``x``'s device. Attributes as :class:`TorchScriptNet`.
    ``num_threads``: onnxruntime's intra-op threads (default: ``torch.get_num_threads()`` at load time).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(
                f"{self.path}: running an ONNX export needs onnxruntime: {INSTALL_HINT}"
            ) from exc
        _require_file(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportFileError(
                f"{self.path}: not a readable ONNX model ({first_line(exc)}); "
                "expected a landmark_lit export (landmark_lit.inference.export.export_onnx)"
            ) from exc
        props = session.get_modelmeta().custom_metadata_map
        _set_info(self, _parse_info(props.get(METADATA_KEY, ""), self.path, f"no {METADATA_KEY!r} metadata"))
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: Tensor) -> DisplacementOutput:
        _check_input(x, self.input_shape, self.path)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        disp, logits = self.session.run(list(OUTPUT_NAMES), {self.input_name: array})
        return DisplacementOutput(torch.from_numpy(disp).to(x.device), torch.from_numpy(logits).to(x.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_repr_info(self)})"


def load_exported(path: str | os.PathLike) -> TorchScriptNet | OnnxNet:
    """:class:`OnnxNet` for a ``.onnx`` file, :class:`TorchScriptNet` otherwise."""
    return OnnxNet(path) if str(path).lower().endswith(".onnx") else TorchScriptNet(path)


# --- helpers ---------------------------------------------------------------------------------------


def _export_info(net: nn.Module, example: Tensor, meta: dict | None) -> dict:
    """The metadata stored in an export; checks that ``net`` and ``example`` fit together."""
    missing = [a for a in ("spatial_dims", "num_landmarks", "stride") if not hasattr(net, a)]
    if missing:
        raise ValueError(
            f"{type(net).__name__} is not a landmark network (no attribute {', '.join(missing)})"
        )
    try:
        method = method_of_network(net)
    except ValueError:  # not a registered method's network class (e.g. a wrapper): exported as it is
        method = None
    if method is not None and not method.exportable:
        raise ValueError(
            f"{type(net).__name__}: TorchScript / ONNX export of {method.name} networks is not supported"
        )
    d = int(net.spatial_dims)
    if not isinstance(example, Tensor) or not example.is_floating_point():
        raise ValueError(f"example must be a floating-point tensor, got {type(example).__name__}")
    if example.ndim not in (d + 2, d + 3):
        raise ValueError(
            f"example must be (B, C, *spatial) or (B, K, C, *crop) with {d} spatial dims, "
            f"got {tuple(example.shape)}"
        )
    fixed = list(example.shape[1 : example.ndim - d])
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "network": f"{type(net).__module__}.{type(net).__qualname__}",
        "spatial_dims": d,
        "num_landmarks": int(net.num_landmarks),
        "stride": int(net.stride),
        "input_shape": [None, *fixed, *([None] * d)],
        "outputs": list(OUTPUT_NAMES),
        "torch": torch.__version__,
        "meta": copy.deepcopy(meta) if meta is not None else {},
    }
    try:
        json.dumps(info)
    except TypeError as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    return info


def _other_example(example: Tensor, stride: int, spatial_dims: int) -> Tensor:
    """A random input of another batch size and other spatial sizes (another remainder modulo the stride)."""
    shape = list(example.shape)
    shape[0] += 1
    for a in range(len(shape) - spatial_dims, len(shape)):
        n = shape[a]
        shape[a] = n - stride - 1 if n > stride + 1 else n + stride + 1
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=example.dtype)


def _verify_onnx(net: nn.Module, file: str, path: str | os.PathLike, x: Tensor) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("%s: onnxruntime is not installed; the export is not verified (%s)", path, INSTALL_HINT)
        return
    session = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
    try:
        got = session.run(list(OUTPUT_NAMES), {session.get_inputs()[0].name: x.float().numpy()})
    except Exception as exc:  # e.g. an axis the exporter fixed to the example's size
        raise ExportCheckError(
            f"{path}: the ONNX model does not run at input size {tuple(x.shape)}: {first_line(exc)}"
        ) from exc
    with _eval_mode(net), torch.no_grad():
        ref = net(x.to(network_device(net)))
    for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=True):
        r = r.float().cpu()
        g = torch.from_numpy(g)
        if g.shape != r.shape or not torch.allclose(g, r, rtol=1e-3, atol=1e-4):
            err = (g - r).abs().max().item() if g.shape == r.shape else f"shape {tuple(g.shape)}"
            raise ExportCheckError(
                f"{path}: the ONNX model's {name} differs from the PyTorch network at input size "
                f"{tuple(x.shape)} (expected {tuple(r.shape)}, got {err})"
            )


def _parse_info(raw: str | bytes, path: str, missing: str) -> dict:
    hint = "not a landmark_lit export"
    if not raw:
        raise ExportFileError(f"{path}: {hint} ({missing})")
    try:
        info = json.loads(raw)
    except ValueError as exc:
        raise ExportFileError(f"{path}: {hint} (unreadable metadata: {exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ExportFileError(f"{path}: {hint} (metadata of another format)")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise ExportFileError(
            f"{path}: written by a newer landmark_lit (export format {info['version']}, this one reads "
            f"{FORMAT_VERSION})"
        )
    return info


def _set_info(net: nn.Module, info: dict) -> None:
    net.info = info
    net.spatial_dims, net.num_landmarks = int(info["spatial_dims"]), int(info["num_landmarks"])
    net.stride = int(info["stride"])
    net.input_shape = list(info["input_shape"])
    net.meta = info.get("meta") or {}


def _repr_info(net: nn.Module) -> str:
    return (
        f"path={net.path!r}, network={net.info['network']}, spatial_dims={net.spatial_dims}, "
        f"num_landmarks={net.num_landmarks}, stride={net.stride}"
    )


def _check_input(x: Tensor, input_shape: Sequence[int | None], path: str) -> None:
    if x.ndim != len(input_shape) or any(
        n is not None and n != s for n, s in zip(input_shape, x.shape, strict=True)
    ):
        want = ", ".join("*" if n is None else str(n) for n in input_shape)
        raise ValueError(f"{path}: expects input ({want}), got {tuple(x.shape)}")


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ExportFileError(f"{path}: file not found")


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Batch norm with running statistics while exporting; the network's mode is restored afterwards."""
    training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(training)


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Hide the exporter's notes that concern neither these networks nor the result.

    (``torchvision is not installed. Skipping torchvision::nms`` and the like, and a deprecation inside torch.)
    """
    # the registration notes, and onnx_ir's per-initializer INFO lines ("Replaced initializer ...")
    loggers = [logging.getLogger(n) for n in ("torch.onnx._internal.exporter._registration", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch's own pytree code, not ours: "`isinstance(treespec, LeafSpec)` is deprecated"
            warnings.filterwarnings("ignore", message=r".*treespec", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

"""Export PyTorch upscalers to ONNX and check that an ONNX model is servable by refscope.

Every served model maps a float32 tensor (N, 1, H, W) to (N, 1, S*H, S*W) with dynamic N, H and W.
:func:`export_torch_module` produces such a model as bytes together with its :class:`ModelManifest`;
:func:`check_onnx_model` vets bytes from anywhere (disk, network, another exporter) before the daemon
swaps them in.

Exporter choice: torch 2.13 offers the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``
with ``dynamic_axes``) and the dynamo exporter (``dynamo=True`` with ``dynamic_shapes``). The dynamo
exporter needs the separate ``onnxscript`` package, which refscope does not depend on, and it
specialises a dimension to a constant whenever the traced code branches on it. The TorchScript exporter
needs nothing extra, honours ``dynamic_axes`` for convolution / PixelShuffle networks (the output's H
and W come out as symbolic ``S*H``, ``S*W``), and stamps exactly the requested opset, so refscope uses it;
:func:`check_onnx_model` then verifies the dynamic axes and the scale on the result rather than trusting
either exporter.

This module is pure: bytes and arrays in, bytes and arrays out, no files. ONNX Runtime is imported
lazily (only :func:`check_onnx_model` and :func:`supported_opset_range` need it).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .errors import RefscopeModelError
from .manifest import ModelManifest, utc_now_iso
from .ort_import import import_onnxruntime
from .tiling import conv_workspace_bytes_per_px

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "OnnxModelError",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "MIN_ORT_OPSET",
    "export_torch_module",
    "check_onnx_model",
    "model_opset",
    "supported_opset_range",
]

#: Names given to the graph input and output by :func:`export_torch_module`.
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"

#: ONNX Runtime only guarantees support for ai.onnx opset 7 and above.
MIN_ORT_OPSET = 7

#: Side of the probe image :func:`check_onnx_model` runs through the model.
_PROBE_SIDE = 8


class OnnxModelError(RefscopeModelError):
    """An ONNX model cannot be served.

    Attributes
    ----------
    reason : str
        Machine-readable cause: ``"corrupt"``, ``"rank"``, ``"dtype"``, ``"static-shape"``, ``"opset"``,
        ``"load"``, ``"scale"`` or ``"export"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- helpers on ModelProto -------------------------------------------------------------------------------------


def model_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset a model imports, or ``None`` when it imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Dimensions of a tensor value: int (static), str (symbolic) or None (unknown); None when rank unknown."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (initializers listed as inputs by old IR versions excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
        raise OnnxModelError(
            f"expected the ONNX model as bytes, got {type(model_bytes).__name__}; read the file first",
            reason="corrupt",
        )
    data = bytes(model_bytes)
    if not data:
        raise OnnxModelError("the ONNX model is empty (0 bytes); re-export it", reason="corrupt")
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxModelError(
            f"corrupt ONNX model ({len(data)} bytes): {first_line}; re-export it or copy the file again",
            reason="corrupt",
        ) from None
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise OnnxModelError("corrupt ONNX model: the graph has no nodes or no outputs; re-export it", reason="corrupt")
    return model


def _check_structure(model: onnx.ModelProto) -> None:
    """Static checks: one float32 NCHW input with C = 1 and dynamic H, W; one 4-D output."""
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        names = [value.name for value in inputs]
        raise OnnxModelError(
            f"the model has {len(inputs)} inputs {names}; refscope needs exactly one (N, 1, H, W) float32 input",
            reason="rank",
        )
    value = inputs[0]
    elem_type = value.type.tensor_type.elem_type
    if elem_type != onnx.TensorProto.FLOAT:
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "not a tensor"
        raise OnnxModelError(
            f"input {value.name!r} has element type {type_name}; refscope feeds float32 (export with float32 weights)",
            reason="dtype",
        )
    dims = _dims(value)
    if dims is None or len(dims) != 4:
        got = "unknown rank" if dims is None else f"rank {len(dims)} {dims}"
        raise OnnxModelError(
            f"input {value.name!r} has {got}; refscope needs a 4-D NCHW input (N, 1, H, W)", reason="rank"
        )
    if isinstance(dims[1], int) and dims[1] != 1:
        raise OnnxModelError(
            f"input {value.name!r} has {dims[1]} channels (shape {dims}); refscope needs one grayscale channel",
            reason="rank",
        )
    static = [axis for axis, dim in zip("HW", dims[2:]) if isinstance(dim, int)]
    if static:
        raise OnnxModelError(
            f"input {value.name!r} has static {' and '.join(static)} (shape {dims}); export with dynamic H and W "
            f"axes (dynamic_axes in torch.onnx.export) so that any frame or tile size can be served",
            reason="static-shape",
        )
    out_dims = _dims(model.graph.output[0])
    if out_dims is not None and len(out_dims) != 4:
        raise OnnxModelError(
            f"output {model.graph.output[0].name!r} has rank {len(out_dims)}; refscope needs (N, 1, S*H, S*W)",
            reason="rank",
        )


# -- ONNX Runtime ------------------------------------------------------------------------------------------------


def _ort() -> Any:
    return import_onnxruntime()


def _identity_model(opset: int) -> bytes:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "opset_probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every supported onnxruntime
    return model.SerializeToString()


def _quiet_session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


@functools.lru_cache(maxsize=1)
def supported_opset_range() -> tuple[int, int]:
    """Inclusive (min, max) ai.onnx opset the installed ONNX Runtime accepts.

    ONNX Runtime has no public query for this, so the maximum is found by loading a one-node Identity
    model stamped with decreasing opsets until the runtime accepts one (it refuses opsets newer than its
    official support). The minimum is ONNX Runtime's documented floor, 7. Cached per process.
    """
    ort = _ort()
    options = _quiet_session_options(ort)
    top = max(onnx.defs.onnx_opset_version(), 17) + 3
    for opset in range(top, MIN_ORT_OPSET - 1, -1):
        try:
            ort.InferenceSession(_identity_model(opset), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception:
            continue
        return (MIN_ORT_OPSET, opset)
    raise OnnxModelError(  # pragma: no cover - a broken runtime
        "the installed ONNX Runtime refuses every opset; reinstall it", reason="opset"
    )


def _check_opset(model: onnx.ModelProto) -> int:
    opset = model_opset(model)
    if opset is None:
        raise OnnxModelError("the model imports no ai.onnx opset; re-export it", reason="opset")
    low, high = supported_opset_range()
    if not low <= opset <= high:
        ort = _ort()
        raise OnnxModelError(
            f"the model uses opset {opset} but the installed onnxruntime {ort.__version__} supports opsets "
            f"{low}..{high}; re-export with an opset in that range (export_torch_module(..., opset=17))",
            reason="opset",
        )
    return opset


def _check_scale(model_bytes: bytes, expected_scale: int) -> None:
    ort = _ort()
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=_quiet_session_options(ort), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise OnnxModelError(
            f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
            reason="load",
        ) from None
    input_name = session.get_inputs()[0].name
    probe = np.linspace(0.0, 1.0, _PROBE_SIDE * _PROBE_SIDE, dtype=np.float32).reshape(1, 1, _PROBE_SIDE, _PROBE_SIDE)
    try:
        (output,) = session.run([session.get_outputs()[0].name], {input_name: probe})
    except Exception as exc:
        raise OnnxModelError(
            f"the model fails on a 1x1x{_PROBE_SIDE}x{_PROBE_SIDE} input: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}; it must accept any H, W",
            reason="load",
        ) from None
    side = _PROBE_SIDE * int(expected_scale)
    expected = (1, 1, side, side)
    if tuple(output.shape) != expected:
        got = tuple(output.shape)
        hint = ""
        if len(got) == 4 and got[:2] == (1, 1) and got[2] == got[3] and got[2] % _PROBE_SIDE == 0:
            hint = f" (the model upscales x{got[2] // _PROBE_SIDE}; fix the manifest's scale or pick the right model)"
        raise OnnxModelError(
            f"scale mismatch: a 1x1x{_PROBE_SIDE}x{_PROBE_SIDE} input gave {got}, expected {expected} for "
            f"scale {expected_scale}{hint}",
            reason="scale",
        )


def check_onnx_model(model_bytes: bytes, *, expected_scale: int) -> None:
    """Raise :class:`OnnxModelError` unless ``model_bytes`` is a model refscope can serve at ``expected_scale``.

    Checks, in order: the bytes parse and pass ``onnx.checker`` (reason ``"corrupt"``); exactly one input
    (``"rank"``), float32 (``"dtype"``), 4-D with one channel (``"rank"``); dynamic H and W
    (``"static-shape"``); an ai.onnx opset the installed ONNX Runtime supports (``"opset"``); and, on the
    ONNX Runtime CPU provider, that a (1, 1, 8, 8) float32 input yields (1, 1, 8*S, 8*S) (``"scale"``;
    ``"load"`` if it cannot run at all).

    Parameters
    ----------
    model_bytes : bytes
        Serialized ``onnx.ModelProto``.
    expected_scale : int
        Upscaling factor S the manifest promises.
    """
    if not isinstance(expected_scale, (int, np.integer)) or isinstance(expected_scale, bool) or expected_scale < 1:
        raise ValueError(f"expected_scale must be a positive integer, got {expected_scale!r}")
    model = _parse(model_bytes)
    _check_structure(model)
    _check_opset(model)
    _check_scale(bytes(model_bytes), int(expected_scale))


# -- export ----------------------------------------------------------------------------------------------------


def export_torch_module(
    module: torch.nn.Module,
    *,
    scale: int,
    opset: int = 17,
    kind: str = "compact",
    input_offset: float = 0.0,
    input_scale: float = 1.0,
    library_size: int | None = None,
    version: str = "1",
    created: str | None = None,
    validation: Mapping[str, float] | tuple[tuple[str, float], ...] = (),
    sample_shape: tuple[int, int] = (16, 16),
    workspace_bytes_per_px: float | None = None,
    halo: int | None = None,
    align: int | None = None,
    max_ensemble: int | None = None,
) -> tuple[bytes, ModelManifest]:
    """Export a PyTorch upscaler to ONNX with dynamic N, H and W axes.

    Parameters
    ----------
    module : torch.nn.Module
        Maps float32 (N, 1, H, W) to (N, 1, S*H, S*W) in normalised units (see :class:`ModelManifest`).
        It is traced in eval mode on the device of its first parameter (CPU if it has none); its
        training flag is restored afterwards.
    scale : int
        Upscaling factor S; verified on the traced sample.
    opset : int
        ai.onnx opset to stamp (default 17, supported by every onnxruntime >= 1.14 and by TensorRT 8.6+).
    kind, input_offset, input_scale, library_size, version, created, validation
        Manifest fields, see :class:`ModelManifest`; ``created`` defaults to now (UTC).
    workspace_bytes_per_px : float, optional
        The module's peak inference memory per input pixel (manifest field); default: the module's own
        ``workspace_bytes_per_px`` attribute (a blend of networks has one), else the conservative
        :func:`refscope.models.tiling.conv_workspace_bytes_per_px` estimate from its layers.
    halo, align : int, optional
        The module's receptive radius and tile alignment, input px (manifest fields); default: the module's own
        ``halo`` / ``align`` attributes (every refscope network and the paired library have them), else unknown.
    max_ensemble : int, optional
        The most self-ensemble passes the model may be served with (manifest field; None: no limit recorded).
    sample_shape : tuple of int
        (H, W) of the tracing sample, in pixels. Any size the module accepts; avoid 1, which the
        tracer may treat as a broadcastable constant. The default 16 x 16 suits convolution networks.

    Returns
    -------
    model_bytes : bytes
        Serialized ONNX model with input ``"lr"`` (N, 1, H, W) and output ``"sr"`` (N, 1, S*H, S*W), float32.
    manifest : ModelManifest
        With ``opset`` set to the exported opset.

    Raises
    ------
    OnnxModelError
        ``reason="export"`` if tracing fails or the module does not upscale by ``scale``; ``"static-shape"``
        / ``"rank"`` if the exported graph lost the dynamic axes; ``"corrupt"`` if ``onnx.checker`` refuses it.
    """
    import torch

    manifest = ModelManifest(
        kind=kind,
        scale=scale,
        input_offset=input_offset,
        input_scale=input_scale,
        library_size=library_size,
        version=version,
        created=created if created is not None else utc_now_iso(),
        opset=opset,
        validation=validation,
        workspace_bytes_per_px=(workspace_bytes_per_px if workspace_bytes_per_px is not None
                                else getattr(module, "workspace_bytes_per_px", None)
                                or conv_workspace_bytes_per_px(module, scale)),
        halo=halo if halo is not None else getattr(module, "halo", None),
        align=align if align is not None else getattr(module, "align", None),
        max_ensemble=max_ensemble,
    )
    if not isinstance(module, torch.nn.Module):
        raise OnnxModelError(f"expected a torch.nn.Module, got {type(module).__name__}", reason="export")
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    height, width = int(sample_shape[0]), int(sample_shape[1])
    sample = torch.linspace(0.0, 1.0, height * width, dtype=torch.float32, device=device).reshape(1, 1, height, width)

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = module(sample)
        expected = (1, 1, manifest.scale * height, manifest.scale * width)
        if tuple(reference.shape) != expected:
            raise OnnxModelError(
                f"the module maps {tuple(sample.shape)} to {tuple(reference.shape)}, expected {expected} for "
                f"scale {manifest.scale}; fix scale= or the module",
                reason="export",
            )
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation; refscope pins torch < 2.14 where it exists.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # dynamic-shape Slice ops cannot be constant-folded; torch says so once per op, harmlessly
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                module,
                (sample,),
                buffer,
                dynamo=False,
                export_params=True,
                opset_version=manifest.opset,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
                },
            )
    except OnnxModelError:
        raise
    except Exception as exc:
        raise OnnxModelError(
            f"torch.onnx.export failed: {exc}; the module must be traceable with float32 (N, 1, H, W) input",
            reason="export",
        ) from exc
    finally:
        module.train(was_training)

    model_bytes = buffer.getvalue()
    model = _parse(model_bytes)  # runs onnx.checker.check_model
    _check_structure(model)
    stamped = model_opset(model)
    if stamped is not None and stamped != manifest.opset:  # pragma: no cover - exporter bumped the opset
        manifest = dataclasses.replace(manifest, opset=stamped)
    return model_bytes, manifest

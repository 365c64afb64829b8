"""ONNX export keeps dynamic N/H/W and matches PyTorch; check_onnx_model refuses unservable models."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from refscope.models.manifest import ManifestError, ModelManifest
from refscope.models.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxModelError,
    check_onnx_model,
    export_torch_module,
    model_opset,
    supported_opset_range,
)


class TinySR(torch.nn.Module):
    """Conv -> ReLU -> Conv -> PixelShuffle: (N, 1, H, W) -> (N, 1, S*H, S*W)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        torch.manual_seed(scale)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, scale * scale, 3, padding=1),
            torch.nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _torch_export(module: torch.nn.Module, sample: torch.Tensor, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), buffer, dynamo=False, input_names=["x"], output_names=["y"], **kwargs)
    return buffer.getvalue()


def _single_node_model(op: str, input_shape: list, output_shape: list, *, opset: int = 17, **attrs) -> bytes:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def exported() -> dict[int, tuple[bytes, ModelManifest, TinySR]]:
    out = {}
    for scale in (2, 3):
        module = TinySR(scale)
        model_bytes, manifest = export_torch_module(
            module, scale=scale, kind="compact", version="7", validation={"psnr_db": 30.5, "ssim": 0.9}
        )
        out[scale] = (model_bytes, manifest, module)
    return out


# -- export ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
def test_onnx_matches_torch_on_two_sizes(exported, scale: int) -> None:
    model_bytes, _, module = exported[scale]
    rng = np.random.default_rng(scale)
    for shape in [(1, 1, 23, 31), (2, 1, 40, 17)]:
        x = rng.random(shape, dtype=np.float32)
        got = _ort_run(model_bytes, x)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == (shape[0], 1, scale * shape[2], scale * shape[3])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_exported_graph_has_dynamic_axes_and_names(exported) -> None:
    model = onnx.load_model_from_string(exported[2][0])
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    in_dims = inp.type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in in_dims] == [True, False, True, True]
    assert in_dims[1].dim_value == 1
    assert all(d.HasField("dim_param") for i, d in enumerate(out.type.tensor_type.shape.dim) if i != 1)
    assert model_opset(model) == 17


def test_export_returns_matching_manifest(exported) -> None:
    model_bytes, manifest, _ = exported[3]
    assert (manifest.kind, manifest.scale, manifest.opset, manifest.version) == ("compact", 3, 17, "7")
    assert manifest.validation == (("psnr_db", 30.5), ("ssim", 0.9))
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    hash(manifest)
    check_onnx_model(model_bytes, expected_scale=3)


def test_export_keeps_training_flag_and_other_opset() -> None:
    module = TinySR(2).train()
    model_bytes, manifest = export_torch_module(module, scale=2, opset=13)
    assert module.training
    assert manifest.opset == 13 == model_opset(onnx.load_model_from_string(model_bytes))


def test_export_refuses_module_with_other_scale() -> None:
    with pytest.raises(OnnxModelError, match="expected") as info:
        export_torch_module(TinySR(2), scale=3)
    assert info.value.reason == "export"


# -- check_onnx_model --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"not an onnx model at all", bytes(range(256)) * 4, "a string"], ids=["empty", "text", "noise", "str"]
)
def test_check_refuses_corrupt_bytes(data) -> None:
    with pytest.raises(OnnxModelError, match="corrupt|bytes") as info:
        check_onnx_model(data, expected_scale=2)
    assert info.value.reason == "corrupt"


def test_check_refuses_truncated_model(exported) -> None:
    model_bytes = exported[2][0]
    with pytest.raises(OnnxModelError) as info:
        check_onnx_model(model_bytes[: len(model_bytes) // 2], expected_scale=2)
    assert info.value.reason == "corrupt"


def test_check_refuses_3d_input() -> None:
    model_bytes = _single_node_model("Relu", ["N", "H", "W"], ["N", "H", "W"])
    with pytest.raises(OnnxModelError, match="4-D NCHW") as info:
        check_onnx_model(model_bytes, expected_scale=1)
    assert info.value.reason == "rank"


def test_check_refuses_three_channels() -> None:
    model_bytes = _single_node_model("Relu", ["N", 3, "H", "W"], ["N", 3, "H", "W"])
    with pytest.raises(OnnxModelError, match="3 channels") as info:
        check_onnx_model(model_bytes, expected_scale=1)
    assert info.value.reason == "rank"


def test_check_refuses_static_hw() -> None:
    model_bytes = _torch_export(TinySR(2).eval(), torch.zeros(1, 1, 8, 8), opset_version=17)  # no dynamic_axes
    with pytest.raises(OnnxModelError, match="static H and W") as info:
        check_onnx_model(model_bytes, expected_scale=2)
    assert info.value.reason == "static-shape"


@pytest.mark.parametrize("have,claim", [(2, 3), (3, 2), (2, 1)])
def test_check_refuses_wrong_scale(exported, have: int, claim: int) -> None:
    with pytest.raises(OnnxModelError, match="scale mismatch") as info:
        check_onnx_model(exported[have][0], expected_scale=claim)
    assert info.value.reason == "scale"
    assert f"x{have}" in str(info.value)


def test_check_refuses_opset_outside_runtime_range() -> None:
    low, high = supported_opset_range()
    assert low == 7 and high >= 17
    too_old = _single_node_model("Relu", ["N", 1, "H", "W"], ["N", 1, "H", "W"], opset=6)
    with pytest.raises(OnnxModelError, match="opset 6") as info:
        check_onnx_model(too_old, expected_scale=1)
    assert info.value.reason == "opset"
    if high + 1 <= onnx.defs.onnx_opset_version():  # onnx knows an opset this onnxruntime does not
        too_new = _single_node_model("Relu", ["N", 1, "H", "W"], ["N", 1, "H", "W"], opset=high + 1)
        with pytest.raises(OnnxModelError, match=f"opset {high + 1}") as info:
            check_onnx_model(too_new, expected_scale=1)
        assert info.value.reason == "opset"


def test_check_accepts_hand_built_depth_to_space() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["x", "x", "x", "x"], ["c"], axis=1),
            helper.make_node("DepthToSpace", ["c"], ["y"], blocksize=2, mode="CRD"),
        ],
        "nearest2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    check_onnx_model(model.SerializeToString(), expected_scale=2)


# -- manifest ------------------------------------------------------------------------------------------------------


def test_manifest_json_round_trip_and_normalisation() -> None:
    manifest = ModelManifest(
        kind="paired-library", scale=4, input_offset=100.0, input_scale=0.01, library_size=5000,
        version="2026-11-22a", created="2026-11-22T07:00:00+00:00", opset=17, validation=[("ssim", 0.8)],
    )
    again = ModelManifest.from_json(manifest.to_json())
    assert again == manifest and hash(again) == hash(manifest)
    x = np.array([[100.0, 200.0]])
    np.testing.assert_allclose(manifest.normalise(x), [[0.0, 1.0]])
    np.testing.assert_allclose(manifest.denormalise(manifest.normalise(x)), x)


def test_manifest_records_tiling_and_reads_manifests_saved_before_it() -> None:
    """``halo``/``align`` round-trip; a manifest without them (saved before they existed) reads as unknown and
    writes back exactly as it was."""
    manifest = ModelManifest(kind="emsr", scale=2, halo=35, align=8, created="2026-11-22T07:00:00+00:00")
    again = ModelManifest.from_json(manifest.to_json())
    assert again == manifest and (again.halo, again.align) == (35, 8)
    old = {k: v for k, v in manifest.to_dict().items() if k not in ("halo", "align")}
    before = ModelManifest.from_dict(old)
    assert (before.halo, before.align) == (None, None) and before.to_dict() == old


def test_manifest_records_the_largest_self_ensemble_and_reads_manifests_saved_before_it() -> None:
    """``max_ensemble`` round-trips; a manifest without it reads as no limit and writes back as it was."""
    manifest = ModelManifest(kind="fullres", scale=2, max_ensemble=1, created="2026-12-05T07:00:00+00:00")
    again = ModelManifest.from_json(manifest.to_json())
    assert again == manifest and again.max_ensemble == 1
    old = {k: v for k, v in manifest.to_dict().items() if k != "max_ensemble"}
    before = ModelManifest.from_dict(old)
    assert before.max_ensemble is None and before.to_dict() == old
    _, exported = export_torch_module(TinySR(2), scale=2, max_ensemble=4)
    assert exported.max_ensemble == 4


def test_export_records_the_modules_halo_and_alignment() -> None:
    module = TinySR(2)
    module.halo, module.align = 2, 1
    _, manifest = export_torch_module(module, scale=2)
    assert (manifest.halo, manifest.align) == (2, 1)
    _, unknown = export_torch_module(TinySR(2), scale=2)  # a module that does not say: unknown, not guessed
    assert (unknown.halo, unknown.align) == (None, None) and "halo" not in unknown.to_dict()


@pytest.mark.parametrize(
    "edit,key",
    [
        ({"halo": -1}, "halo"),
        ({"align": 0}, "align"),
        ({"align": 2.5}, "align"),
        ({"max_ensemble": 3}, "max_ensemble"),
        ({"max_ensemble": 0}, "max_ensemble"),
        ({"scale": 0}, "scale"),
        ({"scale": 2.0}, "scale"),
        ({"kind": "Big Model"}, "kind"),
        ({"input_scale": 0}, "input_scale"),
        ({"created": "yesterday"}, "created"),
        ({"validation": {"psnr": "high"}}, "validation"),
        ({"library_size": -3}, "library_size"),
        ({"colour": "grey"}, "colour"),
        ({"schema": "other/9"}, "schema"),
    ],
)
def test_manifest_from_json_names_the_bad_key(edit: dict, key: str) -> None:
    data = json.loads(ModelManifest(kind="compact", scale=2).to_json())
    data.update(edit)
    with pytest.raises(ManifestError, match=f"^{key}"):
        ModelManifest.from_json(json.dumps(data))


def test_manifest_from_json_names_missing_key() -> None:
    data = json.loads(ModelManifest(kind="compact", scale=2).to_json())
    del data["opset"]
    with pytest.raises(ManifestError, match="^opset: required"):
        ModelManifest.from_json(json.dumps(data))
    with pytest.raises(ManifestError, match="not valid JSON"):
        ModelManifest.from_json("{")

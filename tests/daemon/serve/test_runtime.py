"""ONNX Runtime serving: provider choice and verification, normalisation, and safe hot swaps."""
from __future__ import annotations

import io
import logging
import sys
import threading
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from refscope.daemon.serve import runtime
from refscope.daemon.serve.runtime import (
    CPU,
    CUDA,
    ORT_MISSING_MESSAGE,
    TENSORRT,
    GpuProviderError,
    ModelSlot,
    NoModelError,
    OnnxModel,
    RuntimeConfig,
    choose_providers,
    import_onnxruntime,
    preload_gpu_libraries,
    verify_active_providers,
)
from refscope.models.manifest import ModelManifest
from refscope.models.onnx_export import export_torch_module


class Nearest(torch.nn.Module):
    """y = gain * nearest-neighbour upsampling by S (receptive field 0): easy to predict exactly."""

    def __init__(self, scale: int, gain: float = 1.0) -> None:
        super().__init__()
        self.shuffle = torch.nn.PixelShuffle(scale)
        self.scale = scale
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([x * self.gain] * (self.scale * self.scale), dim=1))


class TinySR(torch.nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, scale * scale, 3, padding=1),
            torch.nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _repeat(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, ModelManifest]]:
    return {
        "x2": export_torch_module(TinySR(2), scale=2, version="a"),
        "x3": export_torch_module(TinySR(3), scale=3, version="b"),
        "gain2": export_torch_module(Nearest(2, gain=2.0), scale=2, input_offset=100.0, input_scale=0.01),
    }


CPU_ONLY = RuntimeConfig(providers=(CPU,), intra_op_threads=1, warmup_shape=(16, 16))


# -- import guard ------------------------------------------------------------------------------------------


def test_import_onnxruntime_returns_module() -> None:
    assert import_onnxruntime() is ort


def test_missing_onnxruntime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError) as info:
        import_onnxruntime()
    assert str(info.value) == ORT_MISSING_MESSAGE
    assert "pip install 'refscope[cpu]'" in str(info.value) and "'refscope[gpu]'" in str(info.value)


def test_broken_onnxruntime_install_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", type(sys)("onnxruntime"))  # empty leftover package
    with pytest.raises(ImportError, match="broken"):
        import_onnxruntime()


# -- provider choice ---------------------------------------------------------------------------------------


def _names(chosen: list[tuple[str, dict]]) -> list[str]:
    return [name for name, _ in chosen]


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    available = ["AzureExecutionProvider", CPU, CUDA, TENSORRT]
    config = RuntimeConfig(trt_fp16=False, trt_cache_dir="/tmp/trt", device_id=1)
    chosen = dict(choose_providers(config, available))
    assert _names(choose_providers(config, available)) == [TENSORRT, CUDA, CPU]
    assert chosen[TENSORRT]["trt_fp16_enable"] is False
    assert chosen[TENSORRT]["trt_engine_cache_enable"] is True
    assert chosen[TENSORRT]["trt_engine_cache_path"] == "/tmp/trt"
    assert chosen[TENSORRT]["device_id"] == chosen[CUDA]["device_id"] == 1
    assert chosen[CPU] == {}
    no_cache = dict(choose_providers(RuntimeConfig(), available))[TENSORRT]
    assert no_cache["trt_fp16_enable"] is True and "trt_engine_cache_enable" not in no_cache


@pytest.mark.parametrize(
    "available,expected",
    [
        ([CUDA, CPU], [CUDA, CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        ([TENSORRT, CPU], [TENSORRT, CPU]),
        ([CPU, "ROCMExecutionProvider"], [CPU]),
    ],
)
def test_auto_uses_what_is_available(available: list[str], expected: list[str]) -> None:
    assert _names(choose_providers(RuntimeConfig(), available)) == expected


def test_require_gpu_without_gpu_provider_fails_before_loading() -> None:
    with pytest.raises(GpuProviderError, match="refscope\\[gpu\\]"):
        choose_providers(RuntimeConfig(require_gpu=True), ["AzureExecutionProvider", CPU])
    assert _names(choose_providers(RuntimeConfig(require_gpu=True), [CUDA, CPU])) == [CUDA, CPU]


def test_explicit_providers_must_be_available() -> None:
    config = RuntimeConfig(providers=(CUDA,))
    assert _names(choose_providers(config, [TENSORRT, CUDA, CPU])) == [CUDA, CPU]  # CPU appended as fallback
    with pytest.raises(GpuProviderError, match="CUDAExecutionProvider"):
        choose_providers(config, [CPU])


def test_verify_detects_silent_cpu_fallback(caplog: pytest.LogCaptureFixture) -> None:
    requested = [TENSORRT, CUDA, CPU]
    with pytest.raises(GpuProviderError, match="silently fell back"):
        verify_active_providers(requested, [CPU], RuntimeConfig(require_gpu=True))
    with pytest.raises(GpuProviderError, match="not active"):
        verify_active_providers([CUDA, CPU], [CPU], RuntimeConfig(providers=(CUDA, CPU)))
    verify_active_providers(requested, [CUDA, CPU], RuntimeConfig(require_gpu=True))  # TensorRT lost: CUDA will do
    with caplog.at_level(logging.WARNING, logger="refscope.daemon.serve.runtime"):
        verify_active_providers(requested, [CPU], RuntimeConfig())  # auto: allowed, but said out loud
    assert "did not activate" in caplog.text and TENSORRT in caplog.text


@pytest.mark.filterwarnings("ignore:Specified provider")
@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="premise: a CPU-only ONNX Runtime build")
def test_onnx_model_refuses_silent_fallback_of_real_session(monkeypatch, models) -> None:
    # Pretend this CPU build offers the GPU providers: onnxruntime then quietly builds a CPU-only session.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    model_bytes, manifest = models["x2"]
    with pytest.raises(GpuProviderError, match="silently fell back to \\['CPUExecutionProvider'\\]"):
        OnnxModel(model_bytes, manifest, RuntimeConfig(require_gpu=True, warmup_shape=(8, 8)))
    slot = ModelSlot(RuntimeConfig(require_gpu=True, warmup_shape=(8, 8)))
    assert not slot.try_load(model_bytes, manifest)
    assert "silently fell back" in slot.last_error


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_gpu_request_preloads_the_cuda_libraries_once_and_survives_a_failed_preload(monkeypatch, models,
                                                                                       caplog) -> None:
    # onnxruntime-gpu finds pip's CUDA/cuDNN only after preload_dlls(); without it the CUDA provider falls back.
    calls = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append("preload"), raising=False)
    preload_gpu_libraries.cache_clear()
    OnnxModel(*models["x2"], RuntimeConfig(warmup_shape=(8, 8)))
    OnnxModel(*models["x2"], RuntimeConfig(warmup_shape=(8, 8)))
    assert calls == ["preload"]                                  # once per process
    preload_gpu_libraries.cache_clear()
    OnnxModel(*models["x2"], CPU_ONLY)                           # a CPU session never asks
    assert calls == ["preload"]

    def broken() -> None:
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", broken, raising=False)
    preload_gpu_libraries.cache_clear()
    with caplog.at_level(logging.WARNING, logger="refscope.daemon.serve.runtime"):
        model = OnnxModel(*models["x2"], RuntimeConfig(warmup_shape=(8, 8)))
    assert "libcudnn.so.9" in caplog.text and CPU in model.providers
    preload_gpu_libraries.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a CUDA device")
def test_a_cuda_session_is_active_and_serves_the_cpu_pixels(models, rng) -> None:
    # The real GPU path: provider verified active, IO binding on the device, tiles as on the CPU.
    model = OnnxModel(*models["x3"], RuntimeConfig(providers=(CUDA, CPU), require_gpu=True, warmup_shape=(32, 32)))
    assert model.uses_gpu and model.providers[0] == CUDA
    image = rng.random((91, 70)).astype(np.float32)
    on_cpu = OnnxModel(*models["x3"], CPU_ONLY).run(image)
    for tile in (None, 32):
        out = model.run(image, tile=tile, halo=4)
        assert np.max(np.abs(out - on_cpu)) <= 1e-4 * np.max(np.abs(on_cpu))


# -- OnnxModel ---------------------------------------------------------------------------------------------


def test_onnx_model_on_cpu_logs_providers_and_applies_normalisation(models, caplog, rng) -> None:
    model_bytes, manifest = models["gain2"]
    with caplog.at_level(logging.INFO, logger="refscope.daemon.serve.runtime"):
        model = OnnxModel(model_bytes, manifest, CPU_ONLY)
    assert model.providers == (CPU,) and not model.uses_gpu
    assert "active ['CPUExecutionProvider']" in caplog.text
    image = rng.integers(0, 4096, size=(37, 29)).astype(np.uint16)
    out = model.run(image)
    # network: y_n = 2 x_n with x_n = (x - 100) * 0.01, so y = y_n / 0.01 + 100 = 2x - 100
    assert out.shape == (74, 58) and out.dtype == np.float32
    np.testing.assert_allclose(out, _repeat(2.0 * image - 100.0, 2), rtol=1e-5)


def test_onnx_model_tiled_run_equals_whole_frame(models, rng) -> None:
    model = OnnxModel(*models["x3"], CPU_ONLY)
    image = rng.random((91, 70)).astype(np.float32)
    whole = model.run(image)
    tiled = model.run(image, tile=32, halo=4)  # two 3x3 convs: receptive-field radius 2
    assert tiled.shape == whole.shape == (273, 210)
    assert np.max(np.abs(tiled - whole)) <= 1e-4 * np.max(np.abs(whole))


def test_onnx_model_loads_from_path_and_refuses_bad_frames(models, tmp_path) -> None:
    path = tmp_path / "x2.onnx"
    path.write_bytes(models["x2"][0])
    model = OnnxModel(path, models["x2"][1], CPU_ONLY)
    assert model.scale == 2 and model.source == str(path)
    with pytest.raises(ValueError, match="2-D"):
        model.run(np.zeros((2, 8, 8)))


def test_runtime_config_validation() -> None:
    with pytest.raises(ValueError):
        RuntimeConfig(providers=())
    with pytest.raises(ValueError):
        RuntimeConfig(providers="CUDAExecutionProvider")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RuntimeConfig(warmup_shape=(0, 8))
    assert RuntimeConfig(providers=[CPU]).providers == (CPU,)  # type: ignore[arg-type]


# -- ModelSlot ---------------------------------------------------------------------------------------------


def _static_model() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinySR(2).eval(), (torch.zeros(1, 1, 8, 8),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


def _rank3_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _old_opset_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    return model.SerializeToString()


def test_slot_without_model_says_so() -> None:
    slot = ModelSlot(CPU_ONLY)
    assert slot.model is None and slot.manifest is None and slot.last_error is None
    with pytest.raises(NoModelError):
        slot.run(np.zeros((8, 8)))


def test_slot_keeps_old_model_after_bad_loads(models, tmp_path, rng, caplog) -> None:
    slot = ModelSlot(CPU_ONLY)
    x2_bytes, x2_manifest = models["x2"]
    assert slot.try_load(x2_bytes, x2_manifest)
    good = slot.model
    image = rng.random((20, 24)).astype(np.float32)
    before = slot.run(image)

    bad_loads = [
        (tmp_path / "missing.onnx", x2_manifest, "does not exist"),
        (b"\x08\x07garbage-not-onnx", x2_manifest, "corrupt"),
        (x2_bytes[:100], x2_manifest, "corrupt"),
        (x2_bytes, ModelManifest(kind="compact", scale=3), "scale mismatch"),
        (_rank3_model(), ModelManifest(kind="compact", scale=1), "4-D NCHW"),
        (_static_model(), x2_manifest, "static H and W"),
        (_old_opset_model(), ModelManifest(kind="compact", scale=1, opset=6), "opset 6"),
        (x2_bytes, ModelManifest(kind="compact", scale=2, opset=13), "manifest says opset 13"),
    ]
    for source, manifest, reason in bad_loads:
        with caplog.at_level(logging.ERROR, logger="refscope.daemon.serve.runtime"):
            assert slot.try_load(source, manifest) is False, reason
        assert reason in slot.last_error
        assert reason in caplog.text and "still serving" in caplog.text
        caplog.clear()
        assert slot.model is good
        np.testing.assert_array_equal(slot.run(image), before)

    path = tmp_path / "x3.onnx"
    path.write_bytes(models["x3"][0])
    assert slot.try_load(path, models["x3"][1])
    assert slot.last_error is None and slot.manifest.scale == 3 and slot.model.source == str(path)
    assert slot.run(image).shape == (60, 72)


def test_slot_swap_is_safe_under_concurrent_runs(models, rng) -> None:
    slot = ModelSlot(CPU_ONLY)
    assert slot.try_load(*models["x2"])
    image = rng.random((16, 16)).astype(np.float32)
    shapes: set[tuple[int, ...]] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                shapes.add(slot.run(image).shape)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for name in ("x3", "x2", "x3"):
            assert slot.try_load(*models[name])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not errors
    assert shapes <= {(32, 32), (48, 48)}
    assert slot.manifest.scale == 3


def test_module_exports() -> None:
    assert set(runtime.__all__) >= {"RuntimeConfig", "OnnxModel", "ModelSlot", "import_onnxruntime"}

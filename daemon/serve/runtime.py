"""Serve ONNX upscalers through ONNX Runtime: provider choice, verified sessions and hot model swaps.

:class:`OnnxModel` wraps one ``onnxruntime.InferenceSession``. It picks execution providers
TensorRT -> CUDA -> CPU from what the installed runtime offers, then *checks* which providers the
session really uses: onnxruntime-gpu silently falls back to the CPU when CUDA, cuDNN or TensorRT
libraries fail to load, which would quietly turn a live microscope feed into a slide show.

:class:`ModelSlot` holds the model being served and swaps in new ones only after they pass
:func:`refscope.models.onnx_export.check_onnx_model`, load and warm up; on any failure it keeps serving
the previous model and records why in :attr:`ModelSlot.last_error`.

This module writes no files. (TensorRT writes its engine cache itself into ``trt_cache_dir``.)
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refscope.daemon.errors import RefscopeError
from refscope.models.errors import ImageError
from refscope.models.manifest import ModelManifest
from refscope.models.ort_import import ORT_MISSING_MESSAGE, import_onnxruntime
from refscope.models.tiling import process_tiled

__all__ = [
    "ORT_MISSING_MESSAGE",
    "TENSORRT",
    "CUDA",
    "CPU",
    "GPU_PROVIDERS",
    "GpuProviderError",
    "NoModelError",
    "RuntimeConfig",
    "OnnxModel",
    "ModelSlot",
    "import_onnxruntime",
    "check_model_bytes",
    "choose_providers",
    "verify_active_providers",
    "preload_gpu_libraries",
]

log = logging.getLogger(__name__)


TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Providers that run on the GPU, in order of preference.
GPU_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA)
_AUTO_ORDER: tuple[str, ...] = (TENSORRT, CUDA, CPU)

ModelSource = bytes | bytearray | str | os.PathLike


class GpuProviderError(RefscopeError, RuntimeError):
    """A GPU execution provider was required but the session does not use it."""


class NoModelError(RefscopeError, RuntimeError):
    """:meth:`ModelSlot.run` was called before any model was loaded successfully."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How ONNX Runtime sessions are created.

    Parameters
    ----------
    providers : tuple of str or None
        Execution providers in order of preference, e.g. ``("CUDAExecutionProvider", "CPUExecutionProvider")``.
        ``None`` (default) picks TensorRT -> CUDA -> CPU among those the installed runtime offers.
        An explicit list is a requirement: every GPU provider in it must be available and active.
    intra_op_threads : int
        Threads inside one operator; 0 lets ONNX Runtime choose (one per physical core).
    inter_op_threads : int
        Threads running independent operators in parallel; 1 = sequential execution.
    trt_fp16 : bool
        Let TensorRT use float16 kernels (about 2x faster; ~1e-3 relative error).
    trt_cache_dir : str or None
        Directory for TensorRT engine caches; ``None`` rebuilds engines at every start (minutes).
    warmup_shape : tuple of int
        (H, W) in input pixels of the warm-up run made on load. Use the serving tile shape so that
        TensorRT / cuDNN build for the real size before the first frame arrives.
    require_gpu : bool
        Refuse to serve unless TensorRT or CUDA is actually active.
    device_id : int
        CUDA device ordinal for the GPU providers.
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    trt_fp16: bool = True
    trt_cache_dir: str | None = None
    warmup_shape: tuple[int, int] = (64, 64)
    require_gpu: bool = False
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.providers is not None:
            if isinstance(self.providers, str) or not all(isinstance(p, str) for p in self.providers):
                raise ValueError(f"providers must be a tuple of provider names or None, got {self.providers!r}")
            if not self.providers:
                raise ValueError("providers must not be empty; use None for automatic choice")
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("intra_op_threads and inter_op_threads must be >= 0 (0 = ONNX Runtime default)")
        if len(self.warmup_shape) != 2 or min(self.warmup_shape) < 1:
            raise ValueError(f"warmup_shape must be (H, W) with H, W >= 1, got {self.warmup_shape!r}")
        object.__setattr__(self, "warmup_shape", (int(self.warmup_shape[0]), int(self.warmup_shape[1])))
        if self.device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {self.device_id}")


def _provider_options(name: str, config: RuntimeConfig) -> dict[str, Any]:
    if name == TENSORRT:
        options: dict[str, Any] = {
            "device_id": config.device_id,
            "trt_fp16_enable": bool(config.trt_fp16),
        }
        if config.trt_cache_dir is not None:
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(config.trt_cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(config.trt_cache_dir),
            )
        return options
    if name == CUDA:
        return {
            "device_id": config.device_id,
            "arena_extend_strategy": "kSameAsRequested",  # grow the arena only as needed, not by doubling
            "cudnn_conv_algo_search": "HEURISTIC",  # no per-shape benchmarking stall on a new tile size
            "do_copy_in_default_stream": True,
        }
    return {}


def choose_providers(config: RuntimeConfig, available: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Execution providers with options to request, most preferred first.

    Parameters
    ----------
    config : RuntimeConfig
    available : sequence of str
        ``onnxruntime.get_available_providers()``.

    Returns
    -------
    list of (name, options)
        Always ends with the CPU provider so that operators a GPU provider cannot run still execute.

    Raises
    ------
    GpuProviderError
        If ``config.require_gpu`` and no GPU provider is available, or an explicitly requested
        provider is not available.
    """
    available = list(available)
    if config.providers is None:
        names = [name for name in _AUTO_ORDER if name in available]
    else:
        missing = [name for name in config.providers if name not in available]
        if missing:
            raise GpuProviderError(
                f"requested execution provider(s) {missing} not offered by this ONNX Runtime (available: {available}); "
                + _gpu_install_hint()
            )
        names = list(config.providers)
    if config.require_gpu and not any(name in GPU_PROVIDERS for name in names):
        raise GpuProviderError(
            f"require_gpu is set but no GPU execution provider is available (available: {available}); "
            + _gpu_install_hint()
        )
    if CPU not in names:
        names.append(CPU)
    return [(name, _provider_options(name, config)) for name in names]


@functools.cache
def preload_gpu_libraries(ort: Any) -> bool:
    """Let onnxruntime-gpu find CUDA and cuDNN in pip's ``nvidia-*`` wheels (or PyTorch's copies), once per process.

    onnxruntime-gpu >= 1.21 looks there only when :func:`onnxruntime.preload_dlls` is called; otherwise the CUDA
    provider fails to load unless the libraries are on the system's library path, and the session falls back to
    the CPU. Returns whether the preload ran; a failure is logged (the provider check then reports what is
    missing) and never raised. Older runtimes without ``preload_dlls`` return False.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - a library that is not there is reported by the provider check
        log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system library path", exc)
        return False
    return True


def _gpu_install_hint() -> str:
    return (
        "install the GPU build with pip install 'refscope[gpu]' (onnxruntime-gpu, not together with onnxruntime) "
        "and check that the CUDA, cuDNN and TensorRT libraries it needs are on the library path"
    )


def verify_active_providers(
    requested: Sequence[str], active: Sequence[str], config: RuntimeConfig
) -> None:
    """Check the providers a session really uses against what was requested.

    Parameters
    ----------
    requested : sequence of str
        Provider names passed to the session, most preferred first.
    active : sequence of str
        ``session.get_providers()``.
    config : RuntimeConfig

    Raises
    ------
    GpuProviderError
        If ``config.require_gpu`` and no GPU provider is active, or a GPU provider named explicitly in
        ``config.providers`` is not active (onnxruntime-gpu fell back to the CPU silently).
    """
    active = list(active)
    dropped = [name for name in requested if name not in active]
    if config.require_gpu and not any(name in GPU_PROVIDERS for name in active):
        raise GpuProviderError(
            f"a GPU provider is required but ONNX Runtime silently fell back to {active} (requested {list(requested)}); "
            + _gpu_install_hint()
        )
    if config.providers is not None:
        lost = [name for name in config.providers if name in GPU_PROVIDERS and name not in active]
        if lost:
            raise GpuProviderError(
                f"GPU provider(s) {lost} were requested but are not active (session uses {active}); "
                + _gpu_install_hint()
            )
    if dropped:
        log.warning("ONNX Runtime did not activate %s; serving with %s", dropped, active)


def _read_source(source: ModelSource) -> tuple[bytes, str]:
    """Model bytes and a short description of where they came from (for messages)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), f"<{len(source)} bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file {path} does not exist; check the path or re-export the model") from None
    except OSError as exc:
        raise OSError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def check_model_bytes(model_bytes: bytes, manifest: ModelManifest) -> None:
    """Raise unless ``model_bytes`` is a model refscope can serve as ``manifest`` describes it
    (:func:`refscope.models.onnx_export.check_onnx_model`, and the opset the manifest names)."""
    from refscope.models.onnx_export import check_onnx_model  # imports onnx (~0.5 s): only when checking

    check_onnx_model(model_bytes, expected_scale=manifest.scale)
    opset = _opset_of(model_bytes)
    if opset != manifest.opset:
        raise ValueError(f"the manifest says opset {manifest.opset} but the model is stamped {opset}; "
                         "the manifest belongs to another model")


def _opset_of(model_bytes: bytes) -> int | None:
    """ai.onnx opset of serialized model bytes, ``None`` if they do not parse."""
    try:
        import onnx  # here: ~0.5 s to import (ml_dtypes); a model from refscope's checked export cache never needs it

        from refscope.models.onnx_export import model_opset

        return model_opset(onnx.load_model_from_string(model_bytes))
    except Exception:
        return None


class OnnxModel:
    """One ONNX Runtime session serving an upscaler described by a :class:`ModelManifest`.

    Parameters
    ----------
    source : bytes or path
        Serialized ONNX model or the path of a ``.onnx`` file.
    manifest : ModelManifest
        Gives the scale S and the input normalisation.
    config : RuntimeConfig, optional

    Raises
    ------
    GpuProviderError
        When a GPU provider is required (see :class:`RuntimeConfig`) but not active.
    ImageError
        If the warm-up run does not produce a finite (S*h, S*w) output.

    Notes
    -----
    ``run`` may be called from several threads at once (ONNX Runtime sessions are thread-safe).
    """

    def __init__(self, source: ModelSource, manifest: ModelManifest, config: RuntimeConfig | None = None) -> None:
        self.config = config if config is not None else RuntimeConfig()
        self.manifest = manifest
        model_bytes, self.source = _read_source(source)
        ort = import_onnxruntime()
        self._ort = ort

        requested = choose_providers(self.config, ort.get_available_providers())
        if any(name in GPU_PROVIDERS for name, _ in requested):
            preload_gpu_libraries(ort)
        if self.config.trt_cache_dir is not None and any(name == TENSORRT for name, _ in requested):
            os.makedirs(self.config.trt_cache_dir, exist_ok=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.config.intra_op_threads)
        options.inter_op_num_threads = int(self.config.inter_op_threads)
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.config.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            model_bytes,
            sess_options=options,
            providers=[name for name, _ in requested],
            provider_options=[opts for _, opts in requested],
        )
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        log.info(
            "model %s (%s, x%d, opset %s): requested providers %s, active %s",
            self.source,
            manifest.kind,
            manifest.scale,
            manifest.opset,  # the model's stamp: try_load checked they agree
            [name for name, _ in requested],
            list(self.providers),
        )
        verify_active_providers([name for name, _ in requested], self.providers, self.config)
        self._input_name = self.session.get_inputs()[0].name
        self._output_name = self.session.get_outputs()[0].name
        self.uses_gpu = any(name in GPU_PROVIDERS for name in self.providers)
        self._warm_up()

    @property
    def scale(self) -> int:
        """Upscaling factor S from the manifest."""
        return self.manifest.scale

    def _warm_up(self) -> None:
        height, width = self.config.warmup_shape
        ramp = np.add.outer(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32))
        out = self._infer(ramp / max(float(ramp.max()), 1.0))
        if not np.all(np.isfinite(out)):
            raise ImageError(f"model {self.source}: warm-up on a {height}x{width} ramp produced NaN/inf; re-export it")

    def _infer(self, normalised: np.ndarray) -> np.ndarray:
        """Run the network on a normalised float32 (h, w) array; returns (S*h, S*w) float32 in network units."""
        batch = np.ascontiguousarray(normalised, dtype=np.float32)[np.newaxis, np.newaxis]
        if self.uses_gpu:
            binding = self.session.io_binding()
            device = self._ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.config.device_id)
            binding.bind_ortvalue_input(self._input_name, device)
            binding.bind_output(self._output_name, "cuda", self.config.device_id)
            self.session.run_with_iobinding(binding)
            output = binding.copy_outputs_to_cpu()[0]
        else:
            output = self.session.run([self._output_name], {self._input_name: batch})[0]
        expected = (1, 1, self.scale * batch.shape[2], self.scale * batch.shape[3])
        if tuple(output.shape) != expected:
            raise ImageError(
                f"model {self.source} returned {tuple(output.shape)} for input {batch.shape}, expected {expected}; "
                f"its manifest scale {self.scale} is wrong"
            )
        return np.asarray(output[0, 0], dtype=np.float32)

    def _run_raw(self, image: np.ndarray) -> np.ndarray:
        return self.manifest.denormalise(self._infer(self.manifest.normalise(image)))

    def run(self, image: np.ndarray, *, tile: int | None = None, halo: int = 16, align: int = 1) -> np.ndarray:
        """Super-resolve one frame.

        Parameters
        ----------
        image : ndarray, shape (H, W)
            Raw intensities, any real dtype (the manifest's normalisation is applied here).
        tile : int, optional
            Process in ``tile``-pixel cores with :func:`refscope.models.tiling.process_tiled` to bound memory;
            ``None`` runs the whole frame at once.
        halo : int
            Context margin per tile in input pixels (>= the network's receptive-field radius).
        align : int
            Tile windows start at multiples of ``align`` input pixels (models with an origin-anchored grid).

        Returns
        -------
        ndarray, shape (S*H, S*W), float32
            In the same intensity units as ``image``.
        """
        frame = np.asarray(image)
        if frame.ndim != 2:
            raise ImageError(f"expected a 2-D (H, W) frame, got an array of shape {frame.shape}")
        if not np.issubdtype(frame.dtype, np.number) or np.iscomplexobj(frame):
            raise ImageError(f"expected real-valued pixels, got dtype {frame.dtype}")
        if tile is None:
            return self._run_raw(frame)
        return process_tiled(frame, self._run_raw, scale=self.scale, tile=tile, halo=halo, align=align)


class ModelSlot:
    """The model currently being served, swapped atomically and only for a model that works.

    Parameters
    ----------
    config : RuntimeConfig, optional
        Used for every model loaded into the slot.

    Notes
    -----
    Thread-safe: :meth:`run` takes a reference to the current model under a lock and runs outside it,
    so a swap never interrupts a frame in flight; concurrent :meth:`try_load` calls are serialised.
    """

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config if config is not None else RuntimeConfig()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._model: OnnxModel | None = None
        self._last_error: str | None = None

    @property
    def model(self) -> OnnxModel | None:
        """The model being served, or ``None`` before the first successful load."""
        with self._lock:
            return self._model

    @property
    def manifest(self) -> ModelManifest | None:
        """Manifest of the model being served, or ``None``."""
        model = self.model
        return None if model is None else model.manifest

    @property
    def last_error(self) -> str | None:
        """Why the most recent :meth:`try_load` failed; ``None`` if it succeeded or none was made."""
        with self._lock:
            return self._last_error

    def try_load(self, source: ModelSource, manifest: ModelManifest, *, checked: bool = False) -> bool:
        """Validate, load and warm up a new model; serve it only if all of that succeeds.

        Parameters
        ----------
        source : bytes or path
            Serialized ONNX model or the path of a ``.onnx`` file.
        manifest : ModelManifest
            Must match the model (scale, opset).
        checked : bool
            The bytes passed :func:`check_model_bytes` before (refscope's own export cache keeps only models that
            did): the static checks, and the import of the ``onnx`` package they need, are skipped; ONNX Runtime
            still parses the model and the warm-up still runs it.

        Returns
        -------
        bool
            ``True`` if the new model is now served. ``False`` on any failure (missing file, corrupt bytes,
            wrong scale, rank or opset, provider trouble, failed warm-up): the reason is logged and stored
            in :attr:`last_error`, and the previous model keeps being served.
        """
        with self._load_lock:
            description = f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
            try:
                if not isinstance(manifest, ModelManifest):
                    raise TypeError(f"manifest must be a ModelManifest, got {type(manifest).__name__}")
                model_bytes, description = _read_source(source)
                if not checked:
                    check_model_bytes(model_bytes, manifest)
                candidate = OnnxModel(model_bytes, manifest, self.config)
                candidate.source = description
            except Exception as exc:  # keep serving the old model whatever went wrong
                reason = f"{description}: {exc}"
                with self._lock:
                    self._last_error = reason
                    keeping = self._model
                log.error(
                    "refusing model %s; still serving %s",
                    reason,
                    "nothing" if keeping is None else f"{keeping.source} ({keeping.manifest.kind} v{keeping.manifest.version})",
                )
                return False
            with self._lock:
                previous, self._model = self._model, candidate
                self._last_error = None
            log.info(
                "now serving %s (%s v%s, x%d) on %s%s",
                description,
                manifest.kind,
                manifest.version,
                manifest.scale,
                list(candidate.providers),
                "" if previous is None else f", replacing {previous.source}",
            )
            return True

    def run(self, image: np.ndarray, *, tile: int | None = None, halo: int = 16, align: int = 1) -> np.ndarray:
        """:meth:`OnnxModel.run` on the current model; raises :class:`NoModelError` when none is loaded."""
        model = self.model
        if model is None:
            raise NoModelError(
                "no model loaded yet" + (f" (last load failed: {self.last_error})" if self.last_error else "")
            )
        return model.run(image, tile=tile, halo=halo, align=align)

"""The Dask side of ``refscope batch``: block graphs, the per-process model cache and the two schedulers.

Block graph of one slab
-----------------------
A slab is a (Z, H, W) stack of LR frames (one frame: Z = 1). :func:`slab_graph` chunks it (1, by, bx) -- z
chunk 1, (y, x) blocks of about ``block_px`` LR px -- and runs :func:`enhance_block` on every block with
``dask.array.map_overlap``: depth ``d`` LR px in y and x, where ``d`` is the model's receptive radius rounded
up to its tiling alignment (:attr:`ModelSpec.depth`), and ``boundary="none"``, so a block at the frame edge sees
the real frame edge, as a whole-frame call does, never padding. Each block function runs the model on its
overlapped window and keeps its core (``trim`` is done in the function because the output is S times larger).
Every window starts at a multiple of the model's alignment (block sizes and depth are multiples of it), so the
paired library's query lattice and a stride-2 network body see the same grid as an untiled call. The result
therefore equals the whole-frame serving result of ``refscope enhance`` up to float32 rounding, and in practice
bit for bit: with single-threaded ONNX Runtime sessions (as here) every pixel is identical to whole-frame
serving (:mod:`tests.daemon.test_batch`). Two ONNX Runtime effects reorder float32 sums: (1) on windows of at
most 64 LR px that touch the frame's far edge its kernels differ by an ulp, so :func:`axis_chunks` never leaves
an edge block under :data:`EDGE_MIN_PX` (a short last block is merged into the previous one); (2) a
multi-threaded session (``refscope enhance`` uses all cores) splits some small reductions differently, which
changes at most 2 ulp on about 0.05 % of the pixels of frames under about 200 x 200 px.

Models on workers
-----------------
A :class:`ModelSpec` carries the ONNX *bytes* (never a path, which may not exist on a remote worker). Each
process loads a model once into a small module-level cache keyed by the model checksum (:func:`install_model`):
the threads scheduler fills it in the calling process, a ``distributed`` cluster through :class:`ModelPlugin`
(a worker plugin sent once to every worker, including workers that join later). Sessions use one ONNX Runtime
thread each; parallelism comes from Dask (threads or worker processes).

Schedulers
----------
:class:`ThreadsRunner` (the local default: ONNX Runtime releases the GIL, so threads scale like processes without
their start-up and transfer costs; ``benchmarks/bench_batch.py``) computes slabs in waves of at most
:data:`WAVE_BYTES` of output, with ``dask.diagnostics.ProgressBar``. :class:`ClientRunner` streams slabs through
a ``distributed.Client`` (a ``LocalCluster`` or ``tcp://`` scheduler): inputs are scattered, at most
:data:`WAVE_BYTES` of output is in flight, and each slab is handed back as soon as it is done.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["ModelSpec", "model_key", "install_model", "cached_model", "ModelPlugin", "axis_chunks", "slab_graph",
           "enhance_block", "ThreadsRunner", "ClientRunner", "EDGE_MIN_PX", "WAVE_BYTES"]

EDGE_MIN_PX = 64
"""Smallest block at the frame edge, LR px (see the module docstring)."""
WAVE_BYTES = 256 * 2**20
"""Output bytes computed at once (threads) or in flight (cluster) before results are written."""
_CACHE_SIZE = 2  # models kept per process


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """Everything a worker needs to enhance blocks with one model.

    Attributes:
        key: checksum of the model (sha256 hex of the ONNX bytes and manifest; ``bicubic-x<S>`` for bicubic).
        method: ``"paired"``, ``"net"`` or ``"bicubic"``.
        scale: upscaling factor S.
        halo: receptive radius, LR px: an output pixel depends on LR pixels at most this far away.
        align: window starts must be multiples of this many LR px (the model's grid anchor).
        onnx_bytes: the serialized ONNX model; None for bicubic (computed with NumPy in float64).
        manifest: :meth:`ModelManifest.to_dict` of the ONNX model (scale and intensity map); None for bicubic.
        model_id: the saved model that serves, for the outputs' provenance (:func:`~refscope.daemon.state.provenance.model_id`).
    """

    key: str
    method: str
    scale: int
    halo: int
    align: int = 1
    onnx_bytes: bytes | None = field(default=None, repr=False)
    manifest: dict[str, Any] | None = None
    model_id: str | None = None

    @property
    def depth(self) -> int:
        """Overlap of each block, LR px: :attr:`halo` rounded up to a multiple of :attr:`align`."""
        return math.ceil(self.halo / self.align) * self.align

    @property
    def dtype(self) -> type:
        """Input dtype of the blocks: float32 for ONNX (what serving feeds it), float64 for bicubic."""
        return np.float64 if self.onnx_bytes is None else np.float32


def model_key(onnx_bytes: bytes, manifest: dict[str, Any], method: str) -> str:
    """sha256 hex of the ONNX bytes, the manifest (without its creation time) and the method."""
    digest = hashlib.sha256(onnx_bytes)
    stable = {k: v for k, v in manifest.items() if k != "created"}
    digest.update(json.dumps({"method": method, "manifest": stable}, sort_keys=True).encode())
    return digest.hexdigest()


_MODELS: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()


def install_model(spec: ModelSpec) -> None:
    """Load ``spec``'s ONNX model into this process's cache unless it is there (thread-safe, LRU of 2)."""
    if spec.onnx_bytes is None:
        return
    with _LOCK:
        if spec.key in _MODELS:
            _MODELS.move_to_end(spec.key)
            return
        from refscope.models.manifest import ModelManifest

        from ..serve.runtime import OnnxModel, RuntimeConfig

        model = OnnxModel(spec.onnx_bytes, ModelManifest.from_dict(spec.manifest or {}),
                          RuntimeConfig(intra_op_threads=1))
        _MODELS[spec.key] = model
        while len(_MODELS) > _CACHE_SIZE:
            _MODELS.popitem(last=False)


def cached_model(key: str) -> Any:
    """The :class:`~refscope.daemon.serve.runtime.OnnxModel` cached under ``key``; RuntimeError when absent."""
    with _LOCK:
        model = _MODELS.get(key)
    if model is None:
        raise RuntimeError(f"model {key[:12]} is not loaded in this worker process (its ModelPlugin did not run; "
                           "is refscope installed on every worker?)")
    return model


class ModelPlugin(WorkerPlugin):
    """``distributed`` worker plugin that loads one :class:`ModelSpec` into each worker's cache at setup."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.name = f"refscope-batch-model-{spec.key[:16]}"

    def setup(self, worker: Any) -> None:  # distributed's hook
        install_model(self.spec)


# ------------------------------------------------------------------------------------------------- graph


def axis_chunks(length: int, block: int, *, min_edge: int = EDGE_MIN_PX) -> tuple[int, ...]:
    """Chunk sizes (LR px) of an axis of ``length`` px: ``block``-sized, a short remainder merged into the last.

    The last chunk lies in ``[max(block // 2, min_edge), block + max(block // 2, min_edge))``; an axis shorter
    than one block plus that is a single chunk. Every chunk but the last is exactly ``block`` px.
    """
    if length < 1 or block < 1:
        raise ValueError(f"axis_chunks needs a positive length and block, got {length} and {block}")
    least = max(block // 2, min_edge)
    if length < block + least:
        return (int(length),)
    count, rest = divmod(int(length), int(block))
    chunks = [int(block)] * count
    if rest >= least:
        chunks.append(rest)
    else:
        chunks[-1] += rest
    return tuple(chunks)


def enhance_block(block: np.ndarray, *, key: str, scale: int, depth_yx: tuple[int, int],
                  cores: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], constant: dict[int, float],
                  bicubic: bool = False, block_id: tuple[int, int, int] | None = None) -> np.ndarray:
    """Enhance one overlapped (1, h + overlap, w + overlap) block and return its (1, S·h, S·w) float32 core.

    ``cores`` are the slab's chunks before overlap (z, y, x), ``depth_yx`` the overlap in LR px (0 on an axis
    with one chunk), ``constant`` maps z indices of constant frames to their value (served as that constant,
    as the daemon serves a beam-blanked frame).
    """
    iz, iy, ix = block_id if block_id is not None else (0, 0, 0)
    h, w = cores[1][iy], cores[2][ix]
    y0 = depth_yx[0] if iy > 0 else 0
    x0 = depth_yx[1] if ix > 0 else 0
    s = int(scale)
    out = np.empty((block.shape[0], s * h, s * w), dtype=np.float32)
    z_start = sum(cores[0][:iz])
    for k in range(block.shape[0]):
        z = z_start + k
        if z in constant:
            out[k] = np.float32(constant[z])
            continue
        if bicubic:
            from refscope.models.image_ops import upsample_bicubic

            full = upsample_bicubic(np.asarray(block[k], dtype=np.float64), s)
        else:
            full = cached_model(key).run(np.asarray(block[k], dtype=np.float32))
        out[k] = full[s * y0:s * (y0 + h), s * x0:s * (x0 + w)]
    return out


def slab_graph(source: da.Array, spec: ModelSpec, *, block_px: int, constant: dict[int, float]) -> da.Array:
    """The lazy (Z, S·H, S·W) float32 enhancement of the (Z, H, W) ``source`` (see the module docstring).

    ``block_px`` is rounded up to a multiple of the model's alignment and to at least twice the depth.
    """
    depth, align = spec.depth, spec.align
    block = max(int(block_px), 2 * depth)
    block = math.ceil(block / align) * align
    _, height, width = source.shape
    ys, xs = axis_chunks(height, block), axis_chunks(width, block)
    cores = ((1,) * source.shape[0], ys, xs)
    x = source.rechunk(cores)
    depth_yx = (depth if len(ys) > 1 else 0, depth if len(xs) > 1 else 0)
    s = spec.scale
    return x.map_overlap(enhance_block, depth={0: 0, 1: depth_yx[0], 2: depth_yx[1]}, boundary="none",
                         trim=False, allow_rechunk=False, dtype=np.float32,
                         meta=np.empty((0, 0, 0), dtype=np.float32),
                         chunks=(cores[0], tuple(s * c for c in ys), tuple(s * c for c in xs)),
                         key=spec.key, scale=s, depth_yx=depth_yx, cores=cores, constant=dict(constant),
                         bicubic=spec.onnx_bytes is None)


# ------------------------------------------------------------------------------------------------- runners

#: What a runner consumes: (tag, build) where ``build(runner)`` reads the input and returns the lazy result.
Item = tuple[Any, Callable[[Any], da.Array]]


class ThreadsRunner:
    """Local threads scheduler: ``workers`` threads, slabs computed in waves of :data:`WAVE_BYTES` of output."""

    streams = False  # results come per wave

    def __init__(self, workers: int, *, progress: bool = True, wave_bytes: int = WAVE_BYTES) -> None:
        self.workers = max(1, int(workers))
        self.progress = progress
        self.wave_bytes = int(wave_bytes)

    @property
    def description(self) -> str:
        return f"{self.workers} local thread(s)"

    def prepare(self, spec: ModelSpec) -> None:
        """Load the model in this process (the threads share one ONNX Runtime session)."""
        install_model(spec)

    def source(self, slab: np.ndarray) -> da.Array:
        return da.from_array(slab, chunks=slab.shape, name=False)  # a random name: no hashing of the pixels

    def results(self, items: Iterable[Item]) -> Iterator[tuple[Any, np.ndarray | BaseException]]:
        """(tag, result array or the exception that stopped it) per item, in order."""
        wave: list[tuple[Any, da.Array]] = []
        size = 0
        for tag, build in items:
            try:
                array = build(self)
            except Exception as exc:  # noqa: BLE001 - reported against this item, the others go on
                yield tag, exc
                continue
            wave.append((tag, array))
            size += array.nbytes
            if size >= self.wave_bytes:
                yield from self._compute(wave)
                wave, size = [], 0
        yield from self._compute(wave)

    def _compute(self, wave: list[tuple[Any, da.Array]]) -> Iterator[tuple[Any, np.ndarray | BaseException]]:
        if not wave:
            return
        try:
            with _progress_bar(self.progress):
                values = dask.compute(*(a for _, a in wave), scheduler="threads", num_workers=self.workers)
        except Exception:  # noqa: BLE001 - find out which slab failed: one by one
            for tag, array in wave:
                try:
                    yield tag, array.compute(scheduler="threads", num_workers=self.workers)
                except Exception as exc:  # noqa: BLE001
                    yield tag, exc
            return
        for (tag, _), value in zip(wave, values):
            yield tag, value


def _progress_bar(enabled: bool) -> Any:
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=1.0, out=sys.stderr)


class ClientRunner:
    """A ``distributed.Client`` (LocalCluster or remote scheduler): inputs scattered, results streamed back."""

    streams = True  # results come one slab at a time

    def __init__(self, client: Any, *, progress: bool = True, wave_bytes: int = WAVE_BYTES) -> None:
        self.client = client
        self.progress = progress
        self.wave_bytes = int(wave_bytes)

    @property
    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    @property
    def description(self) -> str:
        info = self.client.scheduler_info()
        return f"Dask scheduler {info.get('address', '?')}, {len(info.get('workers', {}))} worker(s)"

    def prepare(self, spec: ModelSpec) -> None:
        """Check the model loads here, then send it to every worker (now and joining later) as a plugin."""
        install_model(spec)
        if spec.onnx_bytes is not None:
            self.client.register_plugin(ModelPlugin(spec))

    def source(self, slab: np.ndarray) -> da.Array:
        future = self.client.scatter(slab)
        return da.from_delayed(dask.delayed(future), shape=slab.shape, dtype=slab.dtype)

    def results(self, items: Iterable[Item]) -> Iterator[tuple[Any, np.ndarray | BaseException]]:
        """(tag, result or exception) per item, in completion order; at most ``wave_bytes`` in flight."""
        from distributed import as_completed

        pending: dict[int, tuple[Any, int, Any]] = {}
        done = as_completed()
        in_flight = 0

        def collect() -> tuple[Any, np.ndarray | BaseException]:
            nonlocal in_flight
            future = next(done)
            tag, nbytes, _ = pending.pop(id(future))
            in_flight -= nbytes
            try:
                return tag, future.result()
            except Exception as exc:  # noqa: BLE001 - a failed slab is reported, the others go on
                return tag, exc

        for tag, build in items:
            try:
                array = build(self)
            except Exception as exc:  # noqa: BLE001 - reading failed: reported against this item
                yield tag, exc
                continue
            while pending and in_flight + array.nbytes > self.wave_bytes:
                yield collect()
            future = self.client.compute(array)
            pending[id(future)] = (tag, array.nbytes, future)  # identical slabs share a key, not a Future
            in_flight += array.nbytes
            done.add(future)
        while pending:
            yield collect()

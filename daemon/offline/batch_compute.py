"""The Dask side of ``refscope batch``: tile graphs, the per-process model cache and the two schedulers.

Tile graph of one slab
----------------------
A slab is a (Z, H, W) stack of LR frames (one frame: Z = 1), served by one
:class:`~refscope.daemon.serve.served_model.ServedModel`. :func:`slab_graph` cuts every frame of it exactly as
the daemon and ``refscope enhance`` cut a frame: :meth:`ServedModel.plan <refscope.daemon.serve.served_model.
ServedModel.plan>` (:func:`refscope.models.tiling.tile_plan` with the model's own halo -- its receptive radius --
and alignment) at a core size of about ``block_px`` LR px (:meth:`ServedModel.tile <refscope.daemon.serve.
served_model.ServedModel.tile>`: the fewest evenly spread cores of at most ``block_px``). One task per slice
and tile runs the model on the tile's window (:func:`enhance_window`) and keeps its core; the cores are stitched
with ``dask.array.block``. Every window starts at a multiple of the model's alignment and keeps at least its
halo of real context (or the real frame edge: windows are slid back inside the frame, never padded), and every
window of a frame has one shape, so the result equals the untiled output -- and the live and ``enhance``
output, which tile the same way with other tile sizes -- up to float32 rounding, and in practice bit for bit:
with single-threaded ONNX Runtime sessions (as here) every pixel is identical to whole-frame serving
(:mod:`tests.daemon.offline.test_batch`). A multi-threaded session (``refscope enhance`` uses all cores) may
split some small reductions differently, which changes at most a few ulp on a small share of the pixels.

Models on workers
-----------------
A :class:`~refscope.daemon.serve.served_model.ServedModel` carries the ONNX *bytes* (never a path, which may not
exist on a remote worker) and pickles without its session. Each process loads a model once into a small
module-level cache keyed by the model checksum (:func:`install_model`): the threads scheduler fills it in the
calling process, a ``distributed`` cluster through :class:`ModelPlugin` (a worker plugin sent once to every
worker, including workers that join later). Tasks name the model by its key only. Sessions use one ONNX Runtime
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

import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from ..serve.served_model import ServedModel

__all__ = ["install_model", "cached_model", "ModelPlugin", "block_tile", "slab_graph", "enhance_window",
           "ThreadsRunner", "ClientRunner", "WAVE_BYTES"]

WAVE_BYTES = 256 * 2**20
"""Output bytes computed at once (threads) or in flight (cluster) before results are written."""
_CACHE_SIZE = 2  # models kept per process


_MODELS: OrderedDict[str, ServedModel] = OrderedDict()
_LOCK = threading.Lock()


def install_model(model: ServedModel) -> None:
    """Load ``model`` (its ONNX session, one thread) into this process's cache unless it is there (thread-safe,
    LRU of 2)."""
    with _LOCK:
        if model.key in _MODELS:
            _MODELS.move_to_end(model.key)
            return
        from ..serve.runtime import RuntimeConfig

        _MODELS[model.key] = model.loaded(RuntimeConfig(intra_op_threads=1))
        while len(_MODELS) > _CACHE_SIZE:
            _MODELS.popitem(last=False)


def cached_model(key: str) -> ServedModel:
    """The loaded :class:`~refscope.daemon.serve.served_model.ServedModel` cached under ``key``; RuntimeError
    when absent."""
    with _LOCK:
        model = _MODELS.get(key)
    if model is None:
        raise RuntimeError(f"model {key[:12]} is not loaded in this worker process (its ModelPlugin did not run; "
                           "is refscope installed on every worker?)")
    return model


class ModelPlugin(WorkerPlugin):
    """``distributed`` worker plugin that loads one served model into each worker's cache at setup."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.name = f"refscope-batch-model-{model.key[:16]}"

    def setup(self, worker: Any) -> None:  # distributed's hook
        install_model(self.model)


# ------------------------------------------------------------------------------------------------- graph


def block_tile(shape: tuple[int, int], model: ServedModel, block_px: int) -> int:
    """The core size (LR px) of ``model``'s tiles on a frame of ``shape`` for ``--block block_px``: ``block_px``
    raised to twice the halo (so that context does not dominate) and rounded up to the alignment, then spread
    evenly over the frame (:meth:`ServedModel.tile <refscope.daemon.serve.served_model.ServedModel.tile>`)."""
    block = max(int(block_px), 2 * model.halo)
    block = math.ceil(block / model.align) * model.align
    return model.tile(shape, max_tile=block)


def enhance_window(window: np.ndarray, *, key: str, scale: int, crop: tuple[int, int, int, int],
                   constant: dict[int, float], ensemble: int = 1,
                   block_id: tuple[int, int, int] | None = None) -> np.ndarray:
    """Enhance one (1, h, w) window of slice ``block_id[0]`` and return its (1, S·ch, S·cw) float32 core.

    ``key`` names the cached session (one per model checksum, whatever the self-ensemble), ``ensemble`` the
    passes this batch averages (:attr:`ServedModel.ensemble <refscope.daemon.serve.served_model.ServedModel.ensemble>`).

    ``crop`` is the core inside the window, (y0, y1, x0, x1) LR px (:attr:`refscope.models.tiling.TileBox.crop`);
    ``constant`` maps z indices of constant frames to their value (served as that constant, as the daemon serves
    a beam-blanked frame).
    """
    z = block_id[0] if block_id is not None else 0
    s = int(scale)
    y0, y1, x0, x1 = crop
    if z in constant:
        return np.full((1, s * (y1 - y0), s * (x1 - x0)), constant[z], dtype=np.float32)
    frame = np.array(window[0], dtype=np.float32, order="C", copy=True)  # as process_tiled hands a window over
    full = replace(cached_model(key), ensemble=ensemble).run(frame)
    return np.asarray(full[s * y0:s * y1, s * x0:s * x1], dtype=np.float32)[np.newaxis]


def slab_graph(source: da.Array, model: ServedModel, *, block_px: int, constant: dict[int, float]) -> da.Array:
    """The lazy (Z, S·H, S·W) float32 enhancement of the (Z, H, W) ``source`` (see the module docstring)."""
    depth, height, width = source.shape
    x = source.rechunk((1, height, width))
    s = model.scale
    tile = block_tile((height, width), model, block_px)
    rows: dict[int, list[da.Array]] = {}
    for box in model.plan((height, width), tile=tile):
        wy0, wy1, wx0, wx1 = box.window
        cy0, cy1, cx0, cx1 = box.core
        core = x[:, wy0:wy1, wx0:wx1].map_blocks(
            enhance_window, dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32),
            chunks=((1,) * depth, (s * (cy1 - cy0),), (s * (cx1 - cx0),)),
            key=model.key, scale=s, crop=box.crop, constant=dict(constant), ensemble=model.ensemble)
        rows.setdefault(cy0, []).append(core)
    return da.block([rows[y] for y in sorted(rows)])


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

    def prepare(self, model: ServedModel) -> None:
        """Load the model in this process (the threads share one ONNX Runtime session)."""
        install_model(model)

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

    def prepare(self, model: ServedModel) -> None:
        """Check the model loads here, then send it to every worker (now and joining later) as a plugin."""
        install_model(model)
        self.client.register_plugin(ModelPlugin(model))

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

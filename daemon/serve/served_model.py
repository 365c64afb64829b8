"""One served model: what enhances a window, how the model must be tiled, and where it came from.

:class:`ServedModel` is what every enhancement path runs: the live daemon and ``refscope enhance`` through
:class:`~refscope.daemon.serve.engine.ServingEngine` (and :func:`refscope.daemon.offline.net.onnx_runner`),
``refscope batch`` on Dask workers (:mod:`refscope.daemon.offline.batch_compute`). It states

* what runs one window (:meth:`ServedModel.run`, (h, w) -> (S·h, S·w) float32 in the input's intensity units):
  an ONNX Runtime session fed through the manifest's intensity normalisation, the NumPy reference of a library
  method, or Keys bicubic;
* its scale S, its ``halo`` (receptive radius, LR px) and its ``align`` (tile windows start at multiples of it,
  LR px) -- the model's own: for ONNX models the ``halo`` / ``align`` the export recorded in the
  :class:`~refscope.models.manifest.ModelManifest` (:func:`refscope.models.onnx_export.export_torch_module`
  reads them off every network and the paired library), for the NumPy reference the library's
  (:meth:`refscope.models.pipeline.FittedModel.tiling`), for bicubic 3 and 1;
* its workspace per window px (the tile a memory budget holds) and its provenance (``model_id``, the saved model
  that serves, and ``key``, a checksum of what runs).

Every path cuts frames with :func:`refscope.models.tiling.tile_plan` at that halo and alignment (:meth:`plan`;
:meth:`enhance` runs it through :func:`~refscope.models.tiling.process_tiled`), so a tiled output equals the
untiled one and the paths agree pixel for pixel whatever tile size each one chooses.

A model exported before its manifest recorded ``halo`` / ``align`` is tiled with a ``fallback`` the caller gives
(:func:`onnx_model`): the live daemon's is ``serve.halo`` at even origins (what it always used for networks), the
offline commands read the saved network instead (:func:`refscope.daemon.offline.net.served_net`).

A served model pickles without its session: it carries ONNX *bytes* and the manifest, never a path, so a remote
Dask worker can load it (:meth:`ServedModel.loaded`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from refscope.models.image_ops import upsample_bicubic
from refscope.models.manifest import ModelManifest
from refscope.models.self_ensemble import ENSEMBLE_SIZES, ensemble_run
from refscope.models.tiling import (TileBox, balanced_tile, default_workspace_bytes_per_px, process_tiled,
                                    tile_for_budget, tile_plan, window_shape)

__all__ = ["ServedModel", "onnx_model", "bicubic_model", "baseline_model", "numpy_model", "model_key",
           "BICUBIC_HALO"]

BICUBIC_HALO = 3
"""Context of Keys bicubic upsampling, LR px (its support is 2 LR px)."""


def _bicubic_bytes_per_px(scale: int) -> float:
    """Workspace of :func:`upsample_bicubic` per window px, bytes: the float64 row pass (S) and output (S²),
    and its float32 copy, with a 1.5 margin."""
    return 1.5 * (8.0 * scale + 12.0 * scale ** 2)


def _numpy_bytes_per_px(scale: int, stride: int, patch_size: int) -> float:
    """Workspace of the NumPy library reconstruction per window px, bytes: six float64 S²-images and, per query
    (``(S / stride)²`` per px), a float64 patch of n² px plus four scalars, with a 1.5 margin."""
    queries = (scale / stride) ** 2
    return 1.5 * 8.0 * (6 * scale ** 2 + queries * (patch_size ** 2 + 4))


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A model as it is served (see the module docstring).

    Attributes:
        method: ``"paired"``, ``"net"``, ``"bicubic"``, ``"paired-faithful"`` or ``"original"``.
        scale: upscaling factor S.
        halo: receptive radius, LR px: an output pixel depends on LR pixels at most this far away.
        align: tile windows start at multiples of this many LR px (the model's grid anchor).
        workspace_bytes_per_px: peak working memory of one window, bytes per window px.
        key: checksum of what runs (:func:`model_key` of the ONNX bytes and manifest; ``bicubic-x<S>``), or None.
        onnx_bytes: the serialized ONNX model (shipped to Dask workers), or None (not ONNX, or not kept once
            loaded).
        manifest: the ONNX model's manifest (scale, intensity normalisation, provenance), or None.
        model_id: the saved model that serves, for the outputs' provenance
            (:func:`~refscope.daemon.state.provenance.model_id`), or None.
        session: the loaded :class:`~refscope.daemon.serve.runtime.OnnxModel` (never pickled), or None.
        fn: the NumPy window function of a non-ONNX model, ``(h, w) -> (S·h, S·w)``, or None.
        ensemble: passes over flipped and rotated copies of each window, averaged (1, 2, 4 or 8; geometric
            self-ensemble, :func:`refscope.models.self_ensemble.ensemble_run`, with the windows padded to
            :attr:`align` so that tiling stays exact).
    """

    method: str
    scale: int
    halo: int
    align: int
    workspace_bytes_per_px: float
    key: str | None = None
    onnx_bytes: bytes | None = field(default=None, repr=False)
    manifest: ModelManifest | None = None
    model_id: str | None = None
    session: Any = field(default=None, repr=False)
    fn: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    ensemble: int = 1

    def __post_init__(self) -> None:
        if int(self.halo) != self.halo or self.halo < 0 or int(self.align) != self.align or self.align < 1:
            raise ValueError(f"a served model needs halo >= 0 and align >= 1 (LR px), got {self.halo!r}, "
                             f"{self.align!r}")
        if self.ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"self-ensemble size must be one of {ENSEMBLE_SIZES}, got {self.ensemble!r}")
        object.__setattr__(self, "halo", int(self.halo))
        object.__setattr__(self, "align", int(self.align))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["session"] = None  # an ONNX Runtime session does not travel: loaded() again where it lands
        return state

    # ------------------------------------------------------------------------------------------ what it is
    @property
    def max_ensemble(self) -> int:
        """The most self-ensemble passes this model may run: its manifest's ``max_ensemble`` (a network fitted on
        the scan's own orientation: 1), else every size of :data:`ENSEMBLE_SIZES`."""
        recorded = self.manifest.max_ensemble if self.manifest is not None else None
        return ENSEMBLE_SIZES[-1] if recorded is None else int(recorded)

    def with_ensemble(self, n: int) -> ServedModel:
        """This model averaging ``n`` passes (one of :data:`ENSEMBLE_SIZES`), or :attr:`max_ensemble` when it
        allows fewer."""
        if n not in ENSEMBLE_SIZES:
            raise ValueError(f"self-ensemble size must be one of {ENSEMBLE_SIZES}, got {n!r}")
        return replace(self, ensemble=min(int(n), self.max_ensemble))

    def asked_ensemble(self, n: int, log: logging.Logger) -> ServedModel:
        """:meth:`with_ensemble` for an operator's explicit ``--self-ensemble n``, saying on ``log`` when the
        model allows fewer passes and why."""
        served = self.with_ensemble(n)
        if served.ensemble < n:
            log.info("the %s model serves in %d pass(es), not the %d asked: it was fitted on the scan's own "
                     "orientation, which flipped passes would undo", self.method, served.ensemble, n)
        return served

    @property
    def backend(self) -> str:
        """``"onnx"``, ``"numpy"`` or ``"bicubic"``."""
        if self.manifest is not None:
            return "onnx"
        return "bicubic" if self.method == "bicubic" else "numpy"

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime providers the loaded session uses (empty when none is loaded)."""
        return tuple(self.session.providers) if self.session is not None else ()

    def loaded(self, config: Any = None) -> ServedModel:
        """This model with its ONNX Runtime session loaded from :attr:`onnx_bytes` (``config``: a
        :class:`~refscope.daemon.serve.runtime.RuntimeConfig`); itself when there is nothing to load."""
        if self.backend != "onnx" or self.session is not None:
            return self
        if self.onnx_bytes is None:
            raise RuntimeError(f"{self.method} model {self.key or ''}: no ONNX bytes to load")
        from .runtime import OnnxModel

        assert self.manifest is not None
        return replace(self, session=OnnxModel(self.onnx_bytes, self.manifest, config))

    # ------------------------------------------------------------------------------------------ running
    def run(self, window: np.ndarray) -> np.ndarray:
        """Enhance one (h, w) window whole: (S·h, S·w), the input's intensity units (float32 for ONNX); with
        :attr:`ensemble` > 1 the average of that many passes over flipped and rotated copies."""
        if self.ensemble > 1:
            return ensemble_run(self._run_once, window, self.ensemble, align=self.align)
        return self._run_once(window)

    def _run_once(self, window: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(window)
        if self.fn is not None:
            return self.fn(window)
        raise RuntimeError(f"{self.method} model {self.key or ''}: its ONNX session is not loaded (loaded())")

    @property
    def window_bytes_per_px(self) -> float:
        """Working memory of one window per window px, bytes: the model's own and, for a self-ensemble, the
        float64 sum of the outputs, a transformed copy of the window and its padding (:attr:`align`)."""
        if self.ensemble == 1:
            return self.workspace_bytes_per_px
        return self.workspace_bytes_per_px + 8.0 * self.scale ** 2 + 8.0

    def tile(self, shape: tuple[int, int], *, max_tile: int, workspace_bytes: int | None = None) -> int:
        """Core size (LR px) for a frame of ``shape``: the largest that ``workspace_bytes`` holds for this model
        (:func:`~refscope.models.tiling.tile_for_budget`; no budget: ``max_tile``), at most ``max_tile``, spread
        evenly over the frame and rounded to :attr:`align` (:func:`~refscope.models.tiling.balanced_tile`)."""
        most = int(max_tile)
        if workspace_bytes is not None:
            most = tile_for_budget(int(workspace_bytes), workspace_bytes_per_px=self.window_bytes_per_px,
                                   scale=self.scale, halo=self.halo, align=self.align, max_tile=most)
        return balanced_tile(shape, most, align=self.align)

    def plan(self, shape: tuple[int, int], *, tile: int) -> list[TileBox]:
        """The tiles of a frame of ``shape`` at core size ``tile``, with this model's halo and alignment."""
        return tile_plan(shape, int(tile), self.halo, align=self.align)

    def window_shape(self, shape: tuple[int, int], *, tile: int) -> tuple[int, int]:
        """(h, w) of every window of :meth:`plan` (the shape to warm a session up on)."""
        return window_shape(shape, int(tile), self.halo, align=self.align)

    def enhance(self, frame: np.ndarray, *, tile: int) -> np.ndarray:
        """Enhance an (H, W) frame tile by tile (:meth:`plan` at ``tile``): (S·H, S·W) float32, equal to the
        untiled :meth:`run` up to float32 rounding."""
        return process_tiled(frame, self.run, scale=self.scale, tile=int(tile), halo=self.halo, align=self.align)


# ---------------------------------------------------------------------------------------------- building


def model_key(onnx_bytes: bytes, manifest: dict[str, Any], method: str) -> str:
    """sha256 hex of the ONNX bytes, the manifest (without its creation time) and the method."""
    digest = hashlib.sha256(onnx_bytes)
    stable = {k: v for k, v in manifest.items() if k != "created"}
    digest.update(json.dumps({"method": method, "manifest": stable}, sort_keys=True).encode())
    return digest.hexdigest()


def onnx_model(model_bytes: bytes, manifest: ModelManifest, *, method: str, session: Any = None,
               model_id: str | None = None, fallback: tuple[int, int] | None = None,
               keep_bytes: bool = True) -> ServedModel:
    """The ONNX model ``model_bytes`` described by ``manifest``, served as ``method`` (``"paired"``/``"net"``).

    Its halo and alignment are the manifest's; ``fallback`` = (halo, align) stands in for either when the
    manifest does not record it (exported before refscope recorded them; ValueError without one). ``session``:
    the model already loaded (e.g. by a :class:`~refscope.daemon.serve.runtime.ModelSlot`); ``keep_bytes``
    False drops the bytes (a loaded model that never travels).
    """
    halo, align = manifest.halo, manifest.align
    if halo is None or align is None:
        if fallback is None:
            raise ValueError(f"the {manifest.kind} model's manifest records no halo/align (exported by an older "
                             "refscope) and no fallback was given")
        halo = fallback[0] if halo is None else halo
        align = fallback[1] if align is None else align
    workspace = manifest.workspace_bytes_per_px or default_workspace_bytes_per_px(manifest.scale)
    return ServedModel(method=method, scale=manifest.scale, halo=halo, align=align,
                       workspace_bytes_per_px=workspace, key=model_key(model_bytes, manifest.to_dict(), method),
                       onnx_bytes=bytes(model_bytes) if keep_bytes else None, manifest=manifest,
                       model_id=model_id, session=session)


def bicubic_model(scale: int, *, model_id: str | None = None) -> ServedModel:
    """Keys bicubic upsampling by ``scale`` (exact with a halo of :data:`BICUBIC_HALO`, any origin)."""
    return ServedModel(method="bicubic", scale=int(scale), halo=BICUBIC_HALO, align=1,
                       workspace_bytes_per_px=_bicubic_bytes_per_px(int(scale)), key=f"bicubic-x{int(scale)}",
                       model_id=model_id, fn=functools.partial(upsample_bicubic, scale=int(scale)))


def baseline_model(scale: int, sigma_px: float) -> ServedModel:
    """The safe baseline (:mod:`refscope.models.baseline`): Keys bicubic upsampling by ``scale``, then a Gaussian
    of ``sigma_px`` output px; exact when tiled (halo: bicubic's plus the Gaussian's ``ceil(4σ / S)`` LR px)."""
    from refscope.models.baseline import TRUNCATE
    from refscope.models.peers import blur_predictor

    scale = int(scale)
    halo = BICUBIC_HALO + int(math.ceil(TRUNCATE * float(sigma_px) / scale))
    return ServedModel(method="baseline", scale=scale, halo=halo, align=1,
                       workspace_bytes_per_px=_bicubic_bytes_per_px(scale) + 1.5 * 8.0 * scale ** 2,
                       key=f"baseline-x{scale}-s{float(sigma_px):g}", fn=blur_predictor(float(sigma_px), scale))


def numpy_model(fitted: Any, method: str, sigma_n: float | None = None) -> ServedModel:
    """The NumPy reference of library ``method`` (``"paired"``, ``"paired-faithful"``, ``"original"``) of the
    :class:`~refscope.models.pipeline.FittedModel` ``fitted`` at filtering strength ``sigma_n``."""
    from refscope.models.pipeline import enhance

    halo, align = fitted.tiling(method)
    stride = fitted.paired.query_stride(fitted.scale) if method == "paired" else 1
    return ServedModel(method=method, scale=fitted.scale, halo=halo, align=align,
                       workspace_bytes_per_px=_numpy_bytes_per_px(fitted.scale, stride, fitted.library.patch_size),
                       fn=lambda window: enhance(window, fitted, method=method, sigma_n=sigma_n))

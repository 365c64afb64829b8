"""The model the daemon serves: enhance one LR frame with the current best model, swap models atomically.

:class:`ServingEngine` holds the *serving state* -- the fitted model (or none), its version, the method and the
filtering strength -- as one immutable snapshot behind a lock. :meth:`ServingEngine.enhance` takes the snapshot
and computes outside the lock, so a model swap (:meth:`~ServingEngine.set_model`, called from the learner's
thread) never waits for a frame in flight and never interrupts one: a frame is enhanced entirely by the model
that was current when it started.

What serves a frame:

* before any model is fitted (version 0), or with method ``"bicubic"``: Keys bicubic upsampling;
* method ``"paired"`` with a fitted model: the model exported to ONNX (:func:`refscope.models.paired_net.
  export_paired_model`) and run by ONNX Runtime (:class:`refscope.daemon.serve.runtime.ModelSlot`) -- or, when
  the export, the load or ONNX Runtime itself is unavailable, the NumPy reference
  :func:`refscope.models.pipeline.enhance` (the reason is logged and shown by :meth:`~ServingEngine.describe`);
* methods ``"paired-faithful"`` and ``"original"``: the NumPy reference (they have no ONNX form);
* method ``"net"``: the session-trained network promoted by the background trainer (:mod:`refscope.daemon.learn.trainer`), as ONNX
  (:meth:`~ServingEngine.set_net`); the paired library until one is promoted;
* method ``"best"`` (the default): the *champion*, i.e. whichever of library and network was promoted last --
  each promotion had to beat the model serving at the time, bicubic and the reference's safe baseline on held-out
  reference area;
* before any model, when the first reference's safe baseline (the tuned blur of bicubic) beat what was learned
  from it (:meth:`~ServingEngine.set_baseline`): that baseline, ``"baseline"``, instead of bicubic.

Every output of the library or the network is pulled toward the library's safe baseline where the model is not
trusted (``serve.safe_blend``; see :class:`ServingEngine`).

A constant frame (beam blanked) is upsampled bicubically whatever the method: every method maps a constant to
the same constant. Outputs are float32 (S·H, S·W) arrays in the input's intensity units.

Whatever serves is a :class:`~refscope.daemon.serve.served_model.ServedModel`, tiled with its own halo and
alignment (the receptive radius and grid anchor the export recorded in the manifest; ``serve.halo`` at even
origins only for a network exported before they were recorded) by the tile the memory budget holds for its
workspace (``serve.tile`` at most) -- exactly as ``refscope batch`` tiles it, so both give the untiled output.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.baseline import SafeBaseline
from refscope.models.confidence import DEFAULT_STRIDE, KeyIndex, SupportGrid, key_index
from refscope.models.nlm import check_sigma_n
from refscope.models.normalisation import Normalisation
from refscope.models.pipeline import FittedModel
from refscope.models.safe_blend import BlendSummary, SafeBlendConfig, blend_with_library
from refscope.models.self_ensemble import ensemble_size_for

from ..config import METHODS as CONFIG_METHODS
from ..config import ModelConfig, ServeConfig
from ..config.budget import MemoryBudget
from .served_model import ServedModel, baseline_model, bicubic_model, numpy_model, onnx_model

__all__ = ["EnhanceResult", "ServingEngine", "SERVING_LOGGER", "MIN_SIDE_PX", "SERVE_METHODS", "check_frame"]

SERVING_LOGGER = "refscope.serving"
_log = logging.getLogger(SERVING_LOGGER)

MIN_SIDE_PX = 8
"""Smallest LR frame side the engine accepts, pixels."""

SERVE_METHODS: tuple[str, ...] = CONFIG_METHODS
"""Methods the engine serves: the reconstruction methods plus the trained network (``"net"``) and the champion
(``"best"``)."""


@dataclass(frozen=True, eq=False)
class EnhanceResult:
    """One enhanced frame.

    Attributes:
        image: (S·H, S·W) float32, the input's intensity units.
        model_name: method that produced it (``"bicubic"``, ``"paired"``, ``"paired-faithful"``, ``"original"``,
            ``"net"``, or ``"baseline"``: the safe baseline, served while no model is, :meth:`ServingEngine.set_baseline`).
        version: version of the model that produced it (the library's, or the network's for ``"net"``); 0 = none
            (bicubic, before any model or by choice).
        seconds: wall time of the enhancement itself, seconds.
        backend: ``"bicubic"``, ``"onnx"`` or ``"numpy"``.
        ensemble: self-ensemble size of the network (passes averaged; 1 for every other method).
        safe_blend: what pulling the output toward the safe baseline did (:mod:`refscope.models.safe_blend`;
            ``seconds`` includes it), or None when it did not run (``serve.safe_blend`` off, bicubic, or a
            model without a safe baseline).
        support: the library support of the frame measured for the blend (reused by the quality monitor), or
            None.
        support_version: the version of the library ``support`` was measured with (0 without one).
    """

    image: np.ndarray
    model_name: str
    version: int
    seconds: float
    backend: str
    ensemble: int = 1
    safe_blend: BlendSummary | None = None
    support: SupportGrid | None = None
    support_version: int = 0


@dataclass(frozen=True, eq=False)
class _State:
    """One consistent serving state (replaced as a whole, never mutated)."""

    fitted: FittedModel | None
    version: int
    method: str
    sigma_n: float | None
    scale: int
    onnx: ServedModel | None = None  # `fitted` with `sigma_n` through ONNX Runtime (session loaded), or None
    onnx_note: str | None = None  # why ONNX is not used (None when it is, or not applicable)
    net: ServedModel | None = None  # the promoted network through ONNX Runtime (session loaded), or None
    net_version: int = 0
    champion: str = "paired"  # what "best" serves: "paired" (the library), "net" or "prior"
    keys: KeyIndex | None = None  # the library's keys for the support of the safe blend (None: no blend)
    baseline: SafeBaseline | None = None  # serves instead of bicubic while no model does (set_baseline)
    prior: ServedModel | None = None  # the shipped EM prior, served before anything is learned (set_prior)

    @property
    def library_method(self) -> str:
        """The reconstruction method used when the library serves (``"net"``/``"best"`` fall back to paired)."""
        return "paired" if self.method in ("net", "best") else self.method

    @property
    def serves_prior(self) -> bool:
        """True when the shipped prior serves frames in this state (method ``"best"``, nothing learned beat it)."""
        return self.prior is not None and self.method == "best" and self.champion == "prior"

    @property
    def serves_net(self) -> bool:
        """True when the promoted network serves frames in this state."""
        if self.net is None:
            return False
        return self.method == "net" or (self.method == "best" and self.champion == "net")


def _without_prior(state: _State) -> _State:
    """``state`` with the shipped prior retired (a safe baseline or another scale replaced it): what was its
    champion role falls to the library, or bicubic before one."""
    return replace(state, prior=None, champion="paired" if state.champion == "prior" else state.champion)


def check_frame(lr: np.ndarray) -> np.ndarray:
    """Validate an LR frame: 2-D, real, finite, at least :data:`MIN_SIDE_PX` per side (ValueError otherwise)."""
    array = np.asarray(lr)
    if array.ndim != 2:
        raise ValueError(f"an LR frame must be a 2-D (H, W) array, got shape {array.shape}")
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise ValueError(f"unsupported pixel type {array.dtype} (need a real-valued integer or float frame)")
    if min(array.shape) < MIN_SIDE_PX:
        raise ValueError(f"frame of shape {array.shape} is too small (at least {MIN_SIDE_PX} px per side)")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError("frame contains NaN or infinite pixels")
    return array


class ServingEngine:
    """Enhances LR frames with the current model (see the module docstring). Thread-safe.

    Args:
        model_config: ``scale``, ``method`` and ``sigma_n`` at start.
        serve_config: ONNX Runtime providers, threads, the largest tile, the halo of a network whose manifest
            records none (input px), and ``max_memory_mb``.
        use_onnx: serve ``"paired"`` models through ONNX Runtime when possible (default True); False: NumPy only.
        budget: the memory budget tiles are derived from (default: ``MemoryBudget.offline(serve.max_memory_mb)``,
            a one-shot command's; the daemon passes its own, with the trainer's and learner's shares reserved).
        export_in_child: export paired models to ONNX in a helper process (:mod:`refscope.daemon.serve.export`), so that this
            process never loads PyTorch (the daemon); False: in this process (one-shot commands, tests).
        onnx_cache_dir: a state folder whose ``onnx-cache/`` keeps exported models (:mod:`refscope.daemon.serve.onnx_cache`), so
            the same model is not exported again at the next start; None: export every time.
        support_stride: spacing of the patches whose library support drives the safe blend, output px (the
            daemon passes ``monitor.confidence_stride``, so the monitor reuses the measurement).

    Safe blend (``serve.safe_blend``): when the served library carries a safe baseline
    (:attr:`~refscope.models.pipeline.FittedModel.safe`, chosen by the learner), every output of the library or
    the network is pulled toward that baseline where the frame is unlike the references
    or where the output departs from its own input more than the noise allows
    (:func:`refscope.models.safe_blend.blend_toward_baseline`, in place, block by block).

    Memory: every method runs tile by tile; the tile side is derived per model and scale from the budget's
    workspace share and the model's own workspace estimate (the manifest's ``workspace_bytes_per_px``), so one
    inference holds at most ``budget.workspace_bytes`` besides the (S·H, S·W) float32 output it returns.
    """

    def __init__(self, model_config: ModelConfig, serve_config: ServeConfig, *, use_onnx: bool = True,
                 budget: MemoryBudget | None = None, export_in_child: bool = False,
                 onnx_cache_dir: Path | None = None, support_stride: int = DEFAULT_STRIDE) -> None:
        self.model_config = model_config
        self.serve_config = serve_config
        self.use_onnx = bool(use_onnx)
        self.budget = budget if budget is not None else MemoryBudget.offline(serve_config.max_memory_mb)
        self.export_in_child = bool(export_in_child)
        self.onnx_cache_dir = None if onnx_cache_dir is None else Path(onnx_cache_dir)
        self._warming = 0  # exports/loads in progress (guarded by _lock)
        self._lock = threading.Lock()  # guards _state
        self._swap_lock = threading.Lock()  # serialises set_model / set_method / set_sigma (exports are slow)
        self._state = _State(fitted=None, version=0, method=model_config.method, sigma_n=model_config.sigma_n,
                             scale=model_config.scale)
        self._slot: Any = None  # ModelSlot, created on first export
        self._last_shape: tuple[int, int] | None = None  # (H, W) of the latest frame, for warm-ups
        self._net_pass_s_per_px: float | None = None  # one network pass, seconds per output px (latest frames)
        self._last_ensemble = 1  # self-ensemble size of the latest frame the network served
        self.support_stride = int(support_stride)
        self._blend_config = SafeBlendConfig(serve_config.safe_blend_start, serve_config.safe_blend_stop,
                                             serve_config.safe_blend_rho_start, serve_config.safe_blend_rho_stop)
        self._last_blend: BlendSummary | None = None  # what the blend did on the latest frame

    # ------------------------------------------------------------------------------------------ properties

    @property
    def scale(self) -> int:
        """Output scale S."""
        return self._snapshot().scale

    @property
    def version(self) -> int:
        """Version of the model served; 0 before any model."""
        return self._snapshot().version

    @property
    def method(self) -> str:
        """Requested method (what serves it: see :meth:`describe`)."""
        return self._snapshot().method

    @property
    def has_model(self) -> bool:
        """True once a fitted model is loaded."""
        return self._snapshot().fitted is not None

    @property
    def fitted(self) -> FittedModel | None:
        """The fitted model served, or None."""
        return self._snapshot().fitted

    @property
    def warming(self) -> bool:
        """True while a new model is being exported, loaded and warmed up (the previous one keeps serving)."""
        with self._lock:
            return self._warming > 0

    @contextmanager
    def _warming_up(self) -> Iterator[None]:
        with self._lock:
            self._warming += 1
        try:
            yield
        finally:
            with self._lock:
                self._warming -= 1

    def _snapshot(self) -> _State:
        with self._lock:
            return self._state

    # ------------------------------------------------------------------------------------------ serving

    def enhance(self, lr: np.ndarray) -> EnhanceResult:
        """Enhance one (H, W) LR frame with the current model; returns an :class:`EnhanceResult`.

        Raises ValueError for a frame no method can use (not 2-D, complex/bool pixels, NaN/inf, under 8 px).
        A failure of the ONNX session on this frame falls back to the NumPy reference for this frame (logged).
        """
        state = self._snapshot()
        array = check_frame(lr)
        self._last_shape = (int(array.shape[0]), int(array.shape[1]))
        start = time.perf_counter()
        name, backend = self._served_by(state)
        if backend != "bicubic" and float(np.ptp(array)) == 0.0:
            name, backend = "bicubic", "bicubic"  # every method maps a constant frame to itself
        served = self._model(state, name, backend)
        if name == "net":  # the prior runs one pass: it serves while the session learns, and must leave it the CPU
            served = served.with_ensemble(self._ensemble_for(array.shape, served.scale))
        try:
            out = self._run_prior(served, array) if name == "prior" else self._run(served, array)
        except Exception as exc:  # noqa: BLE001 - one failed inference of the paired model: fall back for this frame
            if backend != "onnx" or name in ("net", "prior"):
                raise
            _log.error("ONNX inference failed (%s: %s); using the NumPy reference for this frame",
                       type(exc).__name__, exc)
            backend = "numpy"
            out = self._run(self._model(state, name, backend), array)
        image = np.asarray(out, dtype=np.float32)
        version = 0 if backend == "bicubic" else (state.net_version if name == "net" else state.version)
        if name == "net":
            self._note_net_pass((time.perf_counter() - start) / (served.ensemble * image.size), served.ensemble)
        image, grid, blend = self._safe_blend(state, backend, array, image)
        seconds = time.perf_counter() - start
        return EnhanceResult(image=image, model_name=name, version=version, seconds=seconds, backend=backend,
                             ensemble=served.ensemble if name == "net" else 1, safe_blend=blend, support=grid,
                             support_version=state.version if grid is not None else 0)

    def _safe_blend(self, state: _State, backend: str, array: np.ndarray, image: np.ndarray
                    ) -> tuple[np.ndarray, SupportGrid | None, BlendSummary | None]:
        """``image`` pulled toward the library's safe baseline (in place when writeable) where ``array`` is unlike
        its references, with the support measured and what the blend did; unchanged with None, None for bicubic,
        without ``serve.safe_blend`` or for a model without a safe baseline."""
        fitted = state.fitted
        if backend == "bicubic" or state.keys is None or fitted is None or fitted.safe is None:
            self._last_blend = None
            return image, None, None
        if not image.flags.writeable:
            image = np.array(image)
        try:
            grid, blend = blend_with_library(image, array, fitted, keys=state.keys, stride=self.support_stride,
                                             config=self._blend_config)
        except (ValueError, FloatingPointError, MemoryError) as exc:  # the model's output stands (blocks done
            _log.error("safe blend not applied to this frame (%s: %s)", type(exc).__name__, exc)  # are whole)
            self._last_blend = None
            return image, None, None
        self._last_blend = blend
        return image, grid, blend

    def _ensemble_for(self, shape: tuple[int, int], scale: int) -> int:
        """Self-ensemble size of the network on a frame of ``shape``: ``serve.self_ensemble`` when set, else the
        most passes that fit ``serve.frame_budget_s`` at the pass time of the latest frames (1 before any); the
        network's own :attr:`~.served_model.ServedModel.max_ensemble` caps either."""
        fixed = self.serve_config.self_ensemble
        if fixed:
            return fixed
        per_px = self._net_pass_s_per_px
        if per_px is None:
            return 1
        return ensemble_size_for(per_px * scale * scale * shape[0] * shape[1], self.serve_config.frame_budget_s)

    def _note_net_pass(self, seconds_per_px: float, ensemble: int) -> None:
        """Remember how long one network pass took per output px (mean with the previous frames' figure)."""
        previous = self._net_pass_s_per_px
        self._net_pass_s_per_px = seconds_per_px if previous is None else 0.5 * (previous + seconds_per_px)
        self._last_ensemble = ensemble

    @staticmethod
    def _served_by(state: _State) -> tuple[str, str]:
        """(method name, backend) that serves frames in ``state``."""
        if state.method == "bicubic":
            return "bicubic", "bicubic"
        if state.serves_prior:
            return "prior", "onnx"
        if state.serves_net:
            return "net", "onnx"
        if state.fitted is None:
            return ("baseline", "numpy") if state.baseline is not None else ("bicubic", "bicubic")
        if state.library_method == "paired" and state.onnx is not None:
            return "paired", "onnx"
        return state.library_method, "numpy"

    def served_model(self) -> ServedModel:
        """The :class:`ServedModel` that serves a (non-constant) frame now: its halo, alignment, scale,
        workspace and provenance."""
        state = self._snapshot()
        return self._model(state, *self._served_by(state))

    def tiling(self, shape: tuple[int, int]) -> tuple[int, int, int]:
        """(tile, halo, align) in input px with which a (non-constant) frame of ``shape`` is served now."""
        served = self.served_model()
        return self._tile(served, shape), served.halo, served.align

    def _model(self, state: _State, name: str, backend: str) -> ServedModel:
        """The :class:`ServedModel` that serves ``name`` on ``backend`` in ``state`` (see :meth:`_served_by`)."""
        if backend == "bicubic":
            return bicubic_model(state.scale)
        if name == "baseline":
            assert state.baseline is not None
            return baseline_model(state.scale, state.baseline.sigma_px)
        if name == "net":
            assert state.net is not None
            return state.net
        if name == "prior":
            assert state.prior is not None
            return state.prior
        if backend == "onnx":
            assert state.onnx is not None
            return state.onnx
        assert state.fitted is not None
        return numpy_model(state.fitted, state.library_method, state.sigma_n)

    def _tile(self, served: ServedModel, shape: tuple[int, int]) -> int:
        """Core size (input px) of ``served``'s tiles on a frame of ``shape``: the largest the budget's workspace
        share holds for the model's workspace and halo, ``serve.tile`` at most, spread evenly over the frame."""
        return served.tile(shape, max_tile=self.serve_config.tile, workspace_bytes=self.budget.workspace_bytes)

    def _run(self, served: ServedModel, array: np.ndarray) -> np.ndarray:
        """``served`` on ``array``, tiled inside the budget with the model's own halo and alignment (exact)."""
        return served.enhance(array, tile=self._tile(served, array.shape))

    def _run_prior(self, served: ServedModel, array: np.ndarray) -> np.ndarray:
        """The prior (identity normalisation) on ``array`` in the frame's own network units: its 0.5-99.5
        percentile range mapped onto [0, 1] before the network and back after it
        (:func:`refscope.models.prior.frame_normalisation`); a global affine map, so tiling stays exact."""
        norm = Normalisation.from_images([array])
        return norm.invert(self._run(served, norm.apply(array)))

    # ------------------------------------------------------------------------------------------ changes

    def set_model(self, fitted: FittedModel, version: int, *, champion: bool = True) -> None:
        """Serve ``fitted`` as model ``version`` (>= 1) from the next frame on; it becomes the champion.

        With ``champion=False`` a network (or the prior) that is the champion stays the champion: ``fitted``
        becomes the session's library (what method ``"paired"`` serves, the support and safe baseline of every
        blend) while ``"best"`` keeps serving the network (the library lost to it on its own reference's held-out
        area). A library that becomes the champion retires the prior.

        The model is exported to ONNX and loaded first when the method is ``"paired"`` (a second or two; the
        previous model keeps serving meanwhile); any failure there is logged and the NumPy reference serves
        it instead. Raises ValueError (nothing changes) when its scale differs from the engine's.
        """
        if not isinstance(fitted, FittedModel):
            raise TypeError(f"set_model needs a FittedModel, got {type(fitted).__name__}")
        if int(version) != version or version < 1:
            raise ValueError(f"model version must be an integer >= 1, got {version!r}")
        with self._swap_lock:
            current = self._snapshot()
            if fitted.scale != current.scale:
                raise ValueError(f"the model's scale x{fitted.scale} differs from the served scale x{current.scale}")
            keys = key_index(fitted) if self.serve_config.safe_blend and fitted.safe is not None else None
            kept = current.champion if not champion and (
                (current.champion == "net" and current.net is not None)
                or (current.champion == "prior" and current.prior is not None)) else None
            candidate = replace(current, fitted=fitted, version=int(version), onnx=None, onnx_note=None,
                                champion=kept or "paired", keys=keys, prior=current.prior if kept == "prior" else None)
            with self._warming_up():
                candidate = self._prepare(candidate)
            with self._lock:
                self._state = candidate
        name, backend = self._served_by(candidate)
        _log.info("serving model v%d (%s, %s backend, library %d pairs)", version, name, backend, len(fitted.library))

    def set_baseline(self, baseline: SafeBaseline) -> None:
        """Serve ``baseline`` (the tuned blur of bicubic, :mod:`refscope.models.baseline`) instead of bicubic from
        the next frame on while no model serves: the first reference's safe baseline beat what was learned from
        it. A model set later serves instead; method ``"bicubic"`` stays bicubic."""
        if not isinstance(baseline, SafeBaseline):
            raise TypeError(f"set_baseline needs a SafeBaseline, got {type(baseline).__name__}")
        with self._swap_lock:
            with self._lock:  # it beat what was learned and the prior (if one served) on the reference
                self._state = _without_prior(replace(self._state, baseline=baseline))
        _log.info("serving the safe baseline (blur of bicubic, sigma %.2f px) until a model is promoted",
                  baseline.sigma_px)

    def set_net(self, model_bytes: bytes, manifest: Any, version: int) -> None:
        """Serve the trained network (ONNX bytes + :class:`~refscope.models.manifest.ModelManifest`) as network
        ``version`` (>= 1) and make it the champion, from the next frame on.

        The network is loaded and warmed up first (the previous model keeps serving meanwhile). Raises
        ValueError (nothing changes) for a wrong scale or a model ONNX Runtime refuses.
        """
        if int(version) != version or version < 1:
            raise ValueError(f"network version must be an integer >= 1, got {version!r}")
        with self._swap_lock:
            current = self._snapshot()
            if int(manifest.scale) != current.scale:
                raise ValueError(f"the network's scale x{manifest.scale} differs from the served scale x{current.scale}")
            start = time.perf_counter()
            model = self._load_network(model_bytes, manifest, f"network v{version}")
            candidate = replace(current, net=model, net_version=int(version), champion="net", prior=None)
            with self._lock:
                self._state = candidate
                self._net_pass_s_per_px = None  # another network: its pass time is measured afresh
        _log.info("serving network v%d (%s, loaded in %.2f s, providers %s)", version, manifest.kind,
                  time.perf_counter() - start, list(model.providers))

    def _load_network(self, model_bytes: bytes, manifest: Any, what: str) -> ServedModel:
        """A network's ONNX bytes loaded (ONNX Runtime, the engine's providers) and warmed up while the current
        model keeps serving; ValueError naming ``what`` when ONNX Runtime refuses it."""
        from .runtime import ModelSlot

        with self._warming_up():
            slot = ModelSlot(self._runtime_config())
            if not slot.try_load(model_bytes, manifest):
                raise ValueError(f"{what} refused: {slot.last_error}")
            # a manifest from before refscope recorded the network's halo: serve.halo at even origins
            model = onnx_model(model_bytes, manifest, method="net", session=slot.model, keep_bytes=False,
                               fallback=(self.serve_config.halo, 2))
            self._warm_up(model)
        return model

    def champion_net(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The network method ``"best"`` serves now, as a predictor ``(h, w) LR -> (S·h, S·w) float32`` (one pass,
        tiled in the budget; no self-ensemble, no safe blend): what a new library must beat before it serves. The
        shipped prior while it serves (:meth:`set_prior`); None while the champion is not a network."""
        state = self._snapshot()
        if state.serves_prior:
            model, run = state.prior, self._run_prior
        elif state.champion == "net" and state.net is not None:
            model, run = state.net, self._run
        else:
            return None
        one_pass = replace(model, ensemble=1)
        return lambda lr: np.asarray(run(one_pass, check_frame(lr)), dtype=np.float32)

    def set_prior(self, model_bytes: bytes, manifest: Any) -> None:
        """Serve the pretrained EM prior shipped for this scale (ONNX bytes + manifest, identity normalisation: it
        runs in each frame's own units, :meth:`_run_prior`) as model ``"prior"`` v0 from the next frame on, while
        nothing has been learned: the first library, network or safe baseline that beats it on a reference's
        held-out area retires it (the learner measures it through :meth:`champion_net`).

        Raises ValueError (nothing changes) for a wrong scale, a model ONNX Runtime refuses, or when a library or
        network is already loaded (a session that has learned serves what it learned)."""
        with self._swap_lock:
            current = self._snapshot()
            if int(manifest.scale) != current.scale:
                raise ValueError(f"the prior's scale x{manifest.scale} differs from the served scale x{current.scale}")
            if current.fitted is not None or current.net is not None or current.baseline is not None:
                raise ValueError("the prior serves only before anything is learned; this session has a model")
            model = self._load_network(model_bytes, manifest, "the prior")
            with self._lock:
                self._state = replace(self._state, prior=model, champion="prior")
        _log.info("serving the shipped prior (%s x%d) until something learned from this session beats it",
                  manifest.kind, manifest.scale)

    def set_champion(self, champion: str) -> None:
        """Make ``"paired"`` (the library) or ``"net"`` the model that method ``"best"`` serves (ValueError when
        ``"net"`` is asked for and no network is loaded)."""
        if champion not in ("paired", "net"):
            raise ValueError(f"champion must be 'paired' or 'net', got {champion!r}")
        with self._swap_lock:
            current = self._snapshot()
            if champion == "net" and current.net is None:
                raise ValueError("no network is loaded")
            with self._lock:
                self._state = replace(current, champion=champion)

    def _runtime_config(self) -> Any:
        """ONNX Runtime settings of every model the engine loads (``serve`` providers and threads)."""
        from .runtime import RuntimeConfig

        tile = self.serve_config.tile
        return RuntimeConfig(providers=self.serve_config.providers,
                                  intra_op_threads=self.serve_config.intra_op_threads,
                                  warmup_shape=(min(tile, 64), min(tile, 64)))

    def set_method(self, name: str) -> None:
        """Use method ``name`` (one of ``SERVE_METHODS``) from the next frame on; ValueError for an unknown name."""
        if name not in SERVE_METHODS:
            raise ValueError(f"unknown method {name!r}; choose one of {', '.join(SERVE_METHODS)}")
        with self._swap_lock:
            current = self._snapshot()
            if current.method == name:
                return
            with self._warming_up():
                candidate = self._prepare(replace(current, method=name))
            with self._lock:
                self._state = candidate
        _log.info("method set to %s", name)

    def set_sigma(self, sigma_n: float | None) -> None:
        """Set the filtering strength (> 0; relative to the measured noise for ``"paired"``, library units for
        the NLM methods); None restores the method's default. ValueError for a bad value."""
        if sigma_n is not None:
            sigma_n = check_sigma_n(sigma_n)
        with self._swap_lock:
            current = self._snapshot()
            if current.sigma_n == sigma_n:
                return
            candidate = replace(current, sigma_n=sigma_n, onnx=None, onnx_note=None)
            with self._warming_up():
                candidate = self._prepare(candidate)
            with self._lock:
                self._state = candidate
        _log.info("sigma_n set to %s", "the method's default" if sigma_n is None else f"{sigma_n:g}")

    def set_scale(self, scale: int) -> None:
        """Change the output scale; refused (ValueError) while a model of another scale is loaded."""
        if int(scale) != scale or not 2 <= scale <= 8:
            raise ValueError(f"scale must be an integer from 2 to 8, got {scale!r}")
        with self._swap_lock:
            current = self._snapshot()
            if current.scale == scale:
                return
            if current.fitted is not None:
                raise ValueError(f"scale x{scale} refused: model v{current.version} serves x{current.scale}; "
                                 "a scale change needs a new session (another state folder)")
            with self._lock:  # a safe baseline was chosen at the old scale (its σ is in those output px)
                self._state = _without_prior(replace(current, scale=int(scale), baseline=None))
        _log.info("scale set to x%d", scale)

    def _prepare(self, state: _State) -> _State:
        """Load the ONNX form of ``state``'s model when it will be used and is not loaded yet."""
        if state.fitted is None or state.library_method != "paired" or state.onnx is not None:
            return state
        if not self.use_onnx:
            return replace(state, onnx_note="ONNX serving disabled")
        try:
            onnx_model = self._export_and_load(state)
        except Exception as exc:  # noqa: BLE001 - any failure: serve with the NumPy reference
            note = f"{type(exc).__name__}: {exc}"
            _log.warning("model v%d: ONNX serving unavailable (%s); serving with the NumPy reference",
                         state.version, note)
            return replace(state, onnx=None, onnx_note=note)
        return replace(state, onnx=onnx_model, onnx_note=None)

    def _export_and_load(self, state: _State) -> Any:
        from .runtime import ModelSlot

        assert state.fitted is not None
        fitted = state.fitted
        if state.sigma_n is not None:
            # sigma_n only sets the blend temperature: the (cached) regressors stay valid
            fitted.regressors  # noqa: B018 - fit them once on the original, so the copy shares them
            fitted = replace(fitted, paired=replace(fitted.paired, sigma_n=state.sigma_n))
        start = time.perf_counter()
        version = str(state.version)

        def export() -> tuple[bytes, Any]:
            if self.export_in_child:
                from .export import export_paired_in_child

                return export_paired_in_child(fitted, version=version)
            from refscope.models.paired_net import export_paired_model  # imports PyTorch

            return export_paired_model(fitted, version=version)

        if self.onnx_cache_dir is not None:
            from .runtime import check_model_bytes
            from .onnx_cache import cached_export

            # every cache entry passed check_model_bytes when it was stored: not checked again
            onnx_bytes, manifest = cached_export(self.onnx_cache_dir, fitted, version, export,
                                                 check=check_model_bytes)
            checked = True
        else:
            onnx_bytes, manifest = export()
            checked = False
        if self._slot is None:
            self._slot = ModelSlot(self._runtime_config())
        if not self._slot.try_load(onnx_bytes, manifest, checked=checked):
            raise RuntimeError(self._slot.last_error or "the ONNX model was refused")
        # a cached export from before refscope recorded the halo: the library's own receptive radius and lattice
        model = onnx_model(onnx_bytes, manifest, method="paired", session=self._slot.model, keep_bytes=False,
                           fallback=fitted.tiling("paired"))
        window = self._warm_up(model)
        _log.info("model v%d exported to ONNX, loaded and warmed up%s in %.2f s (providers %s)", state.version,
                  f" on one {window[0]}x{window[1]} px tile" if window else "", time.perf_counter() - start,
                  list(model.providers))
        return model

    def _warm_up(self, model: ServedModel) -> tuple[int, int] | None:
        """Run ``model`` once on one window of the shape the latest frame's tiles have (every window of a frame
        has that shape): the first run at a new input shape is slow, so it is paid here, not on a live frame.
        Returns the window shape, or None before any frame."""
        shape = self._last_shape
        if shape is None or model.manifest is None:
            return None
        window = model.window_shape(shape, tile=self._tile(model, shape))
        ramp = np.add.outer(np.linspace(0.0, 127.5, window[0]), np.linspace(0.0, 127.5, window[1]))
        model.run(model.manifest.denormalise(ramp))
        return window

    # ------------------------------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, Any]:
        """The serving state as a JSON-able dict: ``version``, ``method`` (requested), ``served_by`` (method
        actually used), ``backend``, ``scale``, ``sigma_n``, ``library_size``, ``providers`` (ONNX),
        ``onnx_note`` (why ONNX is not used, or None), ``net_version`` (0: no network), ``champion``, ``warming``
        (a new model is being exported and warmed up), ``max_memory_mb`` (the budget tiles come from) and
        ``self_ensemble`` (passes the network averaged on the latest frame it served)."""
        state = self._snapshot()
        name, backend = self._served_by(state)
        return {
            "version": state.version,
            "method": state.method,
            "served_by": name,
            "backend": backend,
            "scale": state.scale,
            "sigma_n": state.sigma_n,
            "library_size": len(state.fitted.library) if state.fitted is not None else 0,
            "providers": list(served.providers) if (served := {"net": state.net, "prior": state.prior}.get(
                name, state.onnx)) is not None else [],
            "onnx_note": state.onnx_note,
            "net_version": state.net_version,
            "champion": state.champion,
            "warming": self.warming,
            "max_memory_mb": self.budget.total_mb,
            "self_ensemble": self._last_ensemble,
            "safe_baseline_sigma_px": state.fitted.safe.sigma_px if state.keys is not None else None,  # keys: a safe one
            "safe_blend_share": self._last_blend.blended_share if self._last_blend is not None else None,
        }

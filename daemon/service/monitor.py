"""The daemon's quality monitor: drift signals per frame, confidence maps, and reference requests.

Wiring only; the measurements are :mod:`refscope.models.quality_monitor` and :mod:`refscope.models.confidence`.

* **Training profile.** When a model is promoted, the LR regions it learned from (the learner's
  :class:`~refscope.daemon.learn.learner.ReferenceOutcome`, the most recent :data:`MAX_REGIONS`) are measured with that
  model: their :class:`~refscope.models.quality_monitor.FrameStats` and support grids, and ``q_ref`` of the
  confidence map. A model loaded at start (its regions unknown) takes the first frame it serves as its profile.
* **Per frame** (:meth:`QualityMonitor.observe`, on the serve thread, ~0.1 s for a 256x320 frame): the frame's
  support grid, its confidence map, and the signals ``coverage``, ``texture``, ``intensity``, ``focus``; each signal's median
  over the last ``window`` frames goes through its hysteresis (:class:`~refscope.daemon.config.MonitorConfig`).
  The signal windows restart when the model changes.
* **Per reference** (:meth:`QualityMonitor.on_outcome`, on the learner thread): ``held_out`` becomes the serving
  model's held-out ΔPSNR on the new reference measured before learning from it, then the promoted model's own
  held-out score when the candidate wins.
* **Requests.** ``drift`` is any raised signal. A raised drift (``monitor.request_on_drift``), or frames served
  while no model exists (``monitor.request_without_model``), makes an automatic request: event
  ``reference_requested`` (recorded) with a region of ``region_fraction`` of each side of the field where the
  confidence is lowest, handed to the configured hook (:mod:`refscope.daemon.service.reference_hooks`) on the hook thread. Rate limit:
  while a request is outstanding -- until a reference has arrived *and* been processed by the learner, or
  ``request_timeout_s`` has passed -- and within ``request_interval_s`` of the previous automatic request, no
  new automatic request is made. The operator's ``request_reference`` is never held back (it becomes the
  outstanding request).
* **Events** (recorded and published): ``quality_drift`` when drift is raised (with the signals),
  ``quality_recovered`` when it clears, ``reference_received`` when an HR reference arrives,
  ``reference_requested``.

:meth:`QualityMonitor.status` is the ``quality`` dict of the daemon's status: every signal with its value,
thresholds and state, the drift flag, requests and the recent history.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refscope.models.confidence import KeyIndex, SupportGrid, confidence_map, key_index, reference_q, support_grid
from refscope.models.pipeline import FittedModel
from refscope.models.quality_monitor import (SIGNALS, FrameStats, Threshold, badness_on_lr_grid, drift_signals,
                                             frame_stats, hysteresis, region_shape, suggest_region)

from ..config import MonitorConfig
from ..frames import Frame
from ..learn.learner import ReferenceOutcome
from ..wire.status import DriftSignal, HookStatus, QualityStatus, ReferenceRequests
from .reference_hooks import MONITOR_LOGGER, HookRunner

__all__ = ["MAX_REGIONS", "HISTORY", "Observation", "QualityMonitor"]

_log = logging.getLogger(MONITOR_LOGGER)

MAX_REGIONS = 8
"""Training regions remembered for the profile (the newest)."""
HISTORY = 600
"""Frames whose signals :meth:`QualityMonitor.history` keeps."""
_STATUS_HISTORY = 60
FRAME_SIGNALS: tuple[str, ...] = SIGNALS + ("consistency",)
"""Signals measured on every served frame: the drift signals of the LR frame (:data:`SIGNALS`) and the data
consistency of its enhanced output (:func:`refscope.models.consistency.data_consistency`, measured by the server)."""

Emit = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, eq=False)
class Observation:
    """What the monitor made of one served frame.

    Attributes:
        confidence: (S·H, S·W) float32 confidence map in [0, 1], or None (no model, monitor off, or another scale).
        signals: the frame's own signal values (before the window median); empty without a model.
        drift: drift raised after this frame.
    """

    confidence: np.ndarray | None
    signals: Mapping[str, float | None]
    drift: bool


@dataclass(frozen=True, eq=False)
class _Profile:
    model: FittedModel
    version: int
    keys: KeyIndex
    stats: tuple[FrameStats, ...]  # empty: take the next frame as the baseline
    q_ref: float | None
    source: str  # "training regions" | "first frame"


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class QualityMonitor:
    """Quality signals, confidence maps and reference requests of one daemon (thread-safe).

    Args:
        config: the ``[monitor]`` section.
        emit: ``emit(type, payload)`` publishes and records an event (the daemon's).
        hooks: delivers requests (started and stopped by the owner), or None (events only).
        clock: unix time source (tests).
    """

    def __init__(self, config: MonitorConfig, *, emit: Emit, hooks: HookRunner | None = None,
                 clock: Callable[[], float] = time.time, model_pending: Callable[[], bool] | None = None) -> None:
        self.config = config
        self._model_pending = model_pending  # True while a reference is being learned or a model warms up
        self._emit = emit
        self._hooks = hooks
        self._clock = clock
        self._lock = threading.Lock()
        self._thresholds = {
            "coverage": Threshold(config.coverage_on, config.coverage_off),
            "texture": Threshold(config.texture_on, config.texture_off),
            "intensity": Threshold(config.intensity_on, config.intensity_off),
            "focus": Threshold(config.focus_on, config.focus_off),
            "consistency": Threshold(config.consistency_on, config.consistency_off),
            "held_out": Threshold(config.held_out_on_db, config.held_out_off_db, higher_is_worse=False),
        }
        self._profile: _Profile | None = None
        self._regions: deque[np.ndarray] = deque(maxlen=MAX_REGIONS)
        self._windows: dict[str, deque[float]] = {name: deque(maxlen=config.window) for name in FRAME_SIGNALS}
        self._values: dict[str, float | None] = {name: None for name in self._thresholds}
        self._raised: dict[str, bool] = {name: False for name in self._thresholds}
        self._drift = False
        self._frames = 0
        self._last_conf_mean: float | None = None
        self._last_consistency: float | None = None
        self._consistency_flagged = 0
        self._badness: tuple[tuple[int, int], np.ndarray] | None = None  # (LR shape, badness map) of the newest frame
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._ids = itertools.count(1)
        self._requests = 0
        self._by_reason: dict[str, int] = {}
        self._received = 0
        self._outstanding: dict[str, Any] | None = None
        self._last_auto_t: float | None = None
        self._last_request: dict[str, Any] | None = None
        self._timeouts = 0

    # ------------------------------------------------------------------------------------------ model

    def set_model(self, model: FittedModel | None, version: int, *, regions: Sequence[np.ndarray] | None = None) -> None:
        """Measure the training profile of ``model`` (None: no model) from ``regions`` (LR pixels it learned
        from; None: keep the regions known so far; none known: the next frame served becomes the baseline).
        Restarts the signal windows; raised signals stay raised until frames measured with the new model clear
        them (no model: every frame signal is cleared)."""
        if regions is not None:
            with self._lock:
                self._regions.clear()
                self._regions.extend(np.asarray(r, dtype=np.float64) for r in regions)
        profile = self._measure(model, version) if model is not None else None
        with self._lock:
            self._profile = profile
            changed = self._restart_windows(clear=profile is None)
        if changed is not None:
            self._emit_drift(changed)
        if profile is not None:
            _log.info("quality profile of model v%d: %s (q_ref %s)", version, profile.source,
                      "pending" if profile.q_ref is None else f"{profile.q_ref:.3f}")

    def reset(self) -> None:
        """Forget the model and its training regions (e.g. the learner restarted at another scale)."""
        with self._lock:
            self._regions.clear()
        self.set_model(None, 0)

    def _measure(self, model: FittedModel, version: int) -> _Profile:
        keys = key_index(model)
        with self._lock:
            regions = list(self._regions)
        grids, stats = [], []
        for region in regions:
            if min(region.shape) < 8:
                continue
            grid = support_grid(region, model, keys=keys, stride=self.config.confidence_stride)
            grids.append(grid)
            stats.append(frame_stats(region, support=grid))
        if not stats:
            return _Profile(model, version, keys, (), None, "first frame")
        return _Profile(model, version, keys, tuple(stats), reference_q(grids), "training regions")

    def _restart_windows(self, *, clear: bool) -> dict[str, Any] | None:
        """Empty the frame-signal windows (lock held); ``clear`` also lowers their flags. Returns the drift
        event payload when the drift flag changed."""
        for name in FRAME_SIGNALS:
            self._windows[name].clear()
            self._values[name] = None
            if clear:
                self._raised[name] = False
        return self._update_drift(None)

    # ------------------------------------------------------------------------------------------ frames

    def observe(self, frame: Frame, *, out_shape: tuple[int, int] | None = None,
                consistency: float | None = None, support: SupportGrid | None = None,
                support_version: int = 0) -> Observation:
        """Measure one served LR frame (serve thread); may make an automatic request. ``out_shape``: shape of its
        enhanced frame (the confidence map is returned only when it matches); ``consistency``: the data
        consistency ρ the server measured on that output (None: not measured); ``support``: the library support
        of this frame the server already measured (for its safe blend) with library ``support_version`` -- used
        instead of measuring it again when that is the monitor's model and the grid is this frame's."""
        with self._lock:
            profile = self._profile
        if profile is None:
            pending = self._model_pending is not None and self._model_pending()
            if self.config.request_without_model and not pending:  # a model on its way needs no new reference
                self._auto_request("no_model", "nothing learned from this session yet: the first HR reference "
                                   "builds a model", frame)
            return Observation(None, {}, self.drift)
        if not self.config.enabled:
            return Observation(None, {}, self.drift)
        data = np.asarray(frame.data, dtype=np.float64)
        scale = profile.model.scale
        if (support is not None and support_version == profile.version
                and support.out_shape == (scale * data.shape[0], scale * data.shape[1])):
            grid = support
        else:
            grid = support_grid(data, profile.model, keys=profile.keys, stride=self.config.confidence_stride)
        stats = frame_stats(data, support=grid)
        if not profile.stats:  # a model loaded at start: this first frame is its baseline
            profile = _Profile(profile.model, profile.version, profile.keys, (stats,), reference_q([grid]),
                               "first frame")
            with self._lock:
                if self._profile is not None and self._profile.model is profile.model:
                    self._profile = profile
        assert profile.q_ref is not None
        conf = confidence_map(grid, profile.q_ref)
        signals = {**drift_signals(stats, profile.stats), "consistency": consistency}
        badness = badness_on_lr_grid(conf, profile.model.scale)
        now = self._clock()
        with self._lock:
            if self._profile is not profile:  # the model changed meanwhile: this frame belongs to the old one
                return Observation(conf if out_shape == conf.shape else None, signals, self._drift)
            self._frames += 1
            self._last_conf_mean = float(conf.mean())
            if consistency is not None:
                self._last_consistency = float(consistency)
                self._consistency_flagged += int(consistency >= self.config.consistency_on)
            if badness.shape == frame.shape:
                self._badness = (frame.shape, badness)
            for name in FRAME_SIGNALS:
                value = signals.get(name)
                if value is not None and math.isfinite(value):
                    self._windows[name].append(float(value))
                window = self._windows[name]
                self._values[name] = float(np.median(window)) if window else None
                self._raised[name] = hysteresis(self._raised[name], self._values[name], self._thresholds[name])
            self._history.append({"t": now, "seq": frame.seq, "model_version": profile.version,
                                  **{k: _finite(v) for k, v in self._values.items()}, "confidence_mean":
                                  self._last_conf_mean})
            changed = self._update_drift(frame)
            drift = self._drift
        if changed is not None:
            self._emit_drift(changed)
        if drift and self.config.request_on_drift:
            self._auto_request("drift", self._drift_detail(), frame)
        return Observation(conf if out_shape in (None, conf.shape) else None, signals, drift)

    def _update_drift(self, frame: Frame | None) -> dict[str, Any] | None:
        """Recompute the drift flag (lock held); returns the event payload when it changed."""
        drift = any(self._raised.values())
        if drift == self._drift:
            return None
        self._drift = drift
        return {"drift": drift, "signals": self._signal_payload(), "frame": frame.source if frame else None}

    def _emit_drift(self, payload: Mapping[str, Any]) -> None:
        kind = "quality_drift" if payload["drift"] else "quality_recovered"
        _log.info("%s: %s", kind, ", ".join(f"{k} {v['value']:.2f}" for k, v in payload["signals"].items()
                                            if v["value"] is not None))
        self._emit(kind, payload)

    def _signal_payload(self, *, history: int = 0) -> dict[str, dict[str, Any]]:
        """Each signal: ``value`` (window median), ``on``/``off`` thresholds, ``raised``; the same as
        ``threshold`` (= on), ``direction`` (``"above"``: high is bad, ``"below"``) and ``over`` (= raised) for
        generic viewers; with ``history`` > 0 also the last values (lock held)."""
        out: dict[str, dict[str, Any]] = {}
        recent = list(self._history)[-history:] if history else []
        for name, t in self._thresholds.items():
            out[name] = {"value": _finite(self._values[name]), "on": t.on, "off": t.off,
                         "higher_is_worse": t.higher_is_worse, "raised": self._raised[name],
                         "threshold": t.on, "direction": "above" if t.higher_is_worse else "below",
                         "over": self._raised[name]}
            if history:
                out[name]["history"] = [h[name] for h in recent if h.get(name) is not None]
        return out

    def _drift_detail(self) -> str:
        with self._lock:
            parts = []
            for name, t in self._thresholds.items():
                if self._raised[name] and self._values[name] is not None:
                    op = ">=" if t.higher_is_worse else "<="
                    parts.append(f"{name} {self._values[name]:.2f} {op} {t.on:g}")
        return "; ".join(parts) or "drift"

    @property
    def drift(self) -> bool:
        """True while any signal is raised."""
        with self._lock:
            return self._drift

    # ------------------------------------------------------------------------------------------ references

    def reference_arrived(self, frame: Frame) -> None:
        """An HR reference was handed to the learner (ingest thread)."""
        with self._lock:
            self._received += 1
            outstanding = self._outstanding
            if outstanding is not None:
                outstanding["received"] = frame.source
        self._emit("reference_received", {"hr": frame.source, "request": outstanding["id"] if outstanding else None})

    def on_outcome(self, outcome: ReferenceOutcome, model: FittedModel | None) -> None:
        """The learner finished with a reference (learner thread): update ``held_out``, the profile on promotion,
        and resolve the outstanding request. ``model``: the model serving now."""
        if outcome.promoted and model is not None and outcome.lr_region is not None:
            with self._lock:
                self._regions.append(np.asarray(outcome.lr_region, dtype=np.float64))
            self.set_model(model, outcome.version)
        value = outcome.candidate_delta_db if outcome.promoted else outcome.serving_delta_db
        with self._lock:
            if outcome.serving_delta_db is not None or outcome.promoted:
                self._values["held_out"] = _finite(value)
                self._raised["held_out"] = hysteresis(self._raised["held_out"], self._values["held_out"],
                                                      self._thresholds["held_out"])
            self._history.append({"t": self._clock(), "reference": outcome.hr_source,
                                  "serving_delta_db": outcome.serving_delta_db,
                                  "candidate_delta_db": outcome.candidate_delta_db, "promoted": outcome.promoted,
                                  "model_version": outcome.version})
            self._outstanding = None
            changed = self._update_drift(None)
        if changed is not None:
            self._emit_drift(changed)

    def tick(self) -> None:
        """Expire an outstanding request older than ``request_timeout_s`` (any thread, cheap). A request that a
        reference answered is never expired: it is closed when the learner has finished with that reference
        (:meth:`on_outcome`), or, should that never come, closed as answered after the timeout."""
        with self._lock:
            outstanding = self._outstanding
            if outstanding is None or self._clock() - outstanding["t"] < self.config.request_timeout_s:
                return
            self._outstanding = None
            if outstanding.get("received") is None:
                self._timeouts += 1
        if outstanding.get("received") is not None:
            _log.info("reference request %s answered by %s; closed", outstanding["id"], outstanding["received"])
            return
        _log.warning("reference request %s unanswered after %g s; new requests may be made",
                     outstanding["id"], self.config.request_timeout_s)
        self._emit("reference_request_expired", {"id": outstanding["id"], "reason": outstanding["reason"]})

    def _auto_request(self, reason: str, detail: str, frame: Frame) -> None:
        self.tick()
        with self._lock:
            now = self._clock()
            if self._outstanding is not None:
                return
            if self._last_auto_t is not None and now - self._last_auto_t < self.config.request_interval_s:
                return
            self._last_auto_t = now
        self.request(reason=reason, frame=frame, detail=detail, automatic=True)

    def request(self, *, reason: str, frame: Frame | None, region: Sequence[float] | None = None,
                note: str | None = None, detail: str | None = None, automatic: bool = False) -> dict[str, Any]:
        """Make a reference request now (see the request format in :mod:`refscope.daemon.service.reference_hooks`); returns it.

        ``region``: the operator's [y0, x0, y1, x1] (LR px of ``frame``), or None. Automatic requests use the
        suggested region (worst support) as their region. The request becomes the outstanding one, is emitted as
        ``reference_requested`` and handed to the hook.
        """
        now = self._clock()
        with self._lock:
            request_id = f"{int(now * 1000)}-{next(self._ids)}"
            badness = self._badness
            signals = {name: _finite(v) for name, v in self._values.items()}
            scale = self._profile.model.scale if self._profile is not None else None
        payload: dict[str, Any] = {"id": request_id, "t": now, "reason": reason, "detail": detail,
                                   "signals": signals, "region": list(region) if region is not None else None,
                                   "suggested_region": None, "note": note,
                                   "frame": frame.source if frame is not None else None}
        if frame is not None:
            shape = frame.shape
            box = region_shape(shape, fraction=self.config.region_fraction)
            bad = badness[1] if badness is not None and badness[0] == shape else None
            suggested = [int(v) for v in suggest_region(bad, shape, box)]
            payload["suggested_region"] = suggested
            if automatic:
                payload["region"] = suggested
            chosen = payload["region"] if payload["region"] is not None else suggested
            payload.update({"frame_seq": frame.seq, "frame_shape": list(shape), "pixel_size_nm": frame.pixel_size_nm,
                            "stage_xy_m": list(frame.stage_xy_m) if frame.stage_xy_m is not None else None})
            if frame.pixel_size_nm is not None:
                px = frame.pixel_size_nm
                if payload["region"] is not None:
                    payload["region_nm"] = [v * px for v in payload["region"]]
                if scale is not None:
                    payload["hr_pixel_size_nm"] = px / scale
                if frame.stage_xy_m is not None:
                    cy, cx = (chosen[0] + chosen[2]) / 2, (chosen[1] + chosen[3]) / 2
                    payload["region_center_stage_xy_m"] = [frame.stage_xy_m[0] + (cx - shape[1] / 2) * px * 1e-9,
                                                           frame.stage_xy_m[1] + (cy - shape[0] / 2) * px * 1e-9]
        with self._lock:
            self._requests += 1
            self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
            self._outstanding = {"id": request_id, "t": now, "reason": reason, "received": None}
            self._last_request = payload
        self._emit("reference_requested", payload)
        _log.info("reference requested (%s%s): region %s of %s", reason, f": {detail}" if detail else "",
                  payload["region"] or payload["suggested_region"], payload["frame"])
        if self._hooks is not None:
            self._hooks.submit(payload)
        return payload

    # ------------------------------------------------------------------------------------------ reporting

    def history(self) -> list[dict[str, Any]]:
        """Signals of the recent frames and reference outcomes, oldest first (copies)."""
        with self._lock:
            return [dict(h) for h in self._history]

    def status(self) -> QualityStatus:
        """The ``quality`` part of the daemon's status."""
        hook = None
        if self._hooks is not None:
            hs = self._hooks.stats()
            hook = HookStatus(name=self._hooks.hook.name, delivered=hs.delivered, failed=hs.failed,
                              dropped=hs.dropped, last_error=hs.last_error)
        with self._lock:
            profile = self._profile
            outstanding = dict(self._outstanding) if self._outstanding is not None else None
            if outstanding is not None:
                outstanding["age_s"] = self._clock() - outstanding["t"]
            return QualityStatus(
                enabled=self.config.enabled,
                model_version=profile.version if profile is not None else 0,
                baseline=None if profile is None else (f"{len(profile.stats)} training region(s)"
                                                       if profile.source == "training regions" else "first frame"),
                signals={name: DriftSignal.from_dict(signal)
                         for name, signal in self._signal_payload(history=_STATUS_HISTORY).items()},
                drift=self._drift,
                frames_measured=self._frames,
                confidence_mean=self._last_conf_mean,
                consistency_last=self._last_consistency,
                consistency_flagged=self._consistency_flagged,
                window=self.config.window,
                requests=ReferenceRequests(made=self._requests, by_reason=dict(self._by_reason),
                                           received=self._received, expired=self._timeouts, outstanding=outstanding,
                                           last=self._last_request, hook=hook),
                history=tuple(dict(h) for h in list(self._history)[-_STATUS_HISTORY:]),
            )

"""The daemon's books: frames counted by what happened to them, errors by reason, latencies, events, and the
catalogue's verdict on a frame that is refused or quarantined.

One :class:`Tally` is shared by the daemon's collaborators (the ingest and serve loops, the stream output, the
operator controls, the status report). A problem with one frame is counted here and logged, and the daemon goes on;
nothing here raises for a frame's sake.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import RefscopeError

__all__ = ["Counters", "Tally", "LATENCY_WINDOW", "percentiles"]

LATENCY_WINDOW = 300
"""Frames over which latency percentiles are computed."""


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and mean of ``values`` (None each when there are none)."""
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Tally:
    """Counts, errors, latencies and events of one daemon (see the module docstring).

    ``counts``: frames in/out, ``written``, ``dropped.*``, ``skipped.*``...; ``errors``: per-frame problems by
    reason. The catalogue and the event publisher are attached once the daemon has opened them (:meth:`attach`);
    before that, events are not published and catalogue verdicts are not recorded.
    """

    def __init__(self, logger: logging.Logger, *, latency_window: int = LATENCY_WINDOW) -> None:
        self.log = logger
        self.counts = Counters()
        self.errors = Counters()
        self.last_error: str | None = None
        self.catalogue: Any = None
        self.events: Any = None
        self._lat_lock = threading.Lock()
        self._latency: deque[float] = deque(maxlen=latency_window)
        self._model_s: deque[float] = deque(maxlen=latency_window)
        self._processing_s: deque[float] = deque(maxlen=latency_window)

    def attach(self, *, catalogue: Any = None, events: Any = None) -> None:
        """The catalogue (verdicts, recorded events) and the event publisher, once open."""
        if catalogue is not None:
            self.catalogue = catalogue
        if events is not None:
            self.events = events

    # -------------------------------------------------------------------------------------------- errors
    def error(self, reason: str, message: str, *, level: int = logging.WARNING, exc_info: Any = None) -> None:
        """Count a per-frame problem under ``reason`` and log it; the daemon goes on."""
        self.errors.add(reason)
        self.last_error = message
        self.log.log(level, "%s: %s", reason, message, exc_info=exc_info)

    def count_failure(self, reason: str, message: str) -> None:
        """Count a failure :func:`~refscope.daemon.worker.supervised` already logged."""
        self.errors.add(reason)
        self.last_error = message

    def catalogue_call(self, action: Callable[[], Any], what: str) -> bool:
        """Run a catalogue write; a failure is counted (``catalogue_error``) and logged. True if it worked."""
        try:
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - StateError (disk full, locked) or a bug: counted, go on
            self.error("catalogue_error", f"{what}: {exc}", level=logging.ERROR)
            return False

    def reject(self, source: str, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        """A frame the daemon does not enhance: counted under ``reason``, logged, rejected in the catalogue (so that
        a restart does not try it again)."""
        self.error(reason, message, level=level)
        catalogue = self.catalogue
        if catalogue is not None:
            self.catalogue_call(lambda: catalogue.mark_rejected(source, f"{reason}: {message}"), source)

    def quarantine(self, source: str, message: str) -> None:
        """A frame a worker failed on: rejected in the catalogue, so a restart does not process it again (a
        reference is also marked learned, outcome ``quarantined``). A catalogue failure propagates (the
        supervising worker decides)."""
        catalogue = self.catalogue
        record = catalogue.frame(source) if catalogue is not None else None
        if record is None:
            return
        catalogue.mark_rejected(source, message)
        if record.role in ("hr", "both"):
            catalogue.mark_learned(source, size=record.size, mtime=record.mtime, outcome="quarantined")

    # -------------------------------------------------------------------------------------------- events
    def emit(self, type: str, payload: Mapping[str, Any], *, record: bool = False) -> None:
        """Publish an event (and, with ``record``, keep it in the catalogue); a failure is logged, never raised."""
        catalogue = self.catalogue
        if record and catalogue is not None:
            self.catalogue_call(lambda: catalogue.record_event(type, payload), f"event {type}")
        if self.events is not None:
            try:
                self.events.emit(type, payload)
            except (ValueError, RefscopeError) as exc:
                self.log.warning("event %s not published: %s", type, exc)

    # ------------------------------------------------------------------------------------------ latency
    def record_latency(self, latency_s: float, model_s: float, processing_s: float) -> None:
        """One published frame: input closed -> published, the model's own time, ingested -> published (s)."""
        with self._lat_lock:
            self._latency.append(latency_s)
            self._model_s.append(model_s)
            self._processing_s.append(processing_s)

    def latency_summary(self) -> tuple[int, dict[str, float | None], dict[str, float | None],
                                       dict[str, float | None]]:
        """(frames in the window, end-to-end, model, processing) percentiles of the latency window."""
        with self._lat_lock:
            return (len(self._latency), percentiles(self._latency), percentiles(self._model_s),
                    percentiles(self._processing_s))

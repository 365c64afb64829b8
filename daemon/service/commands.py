"""The daemon's control commands: pause/resume, reference requests, settings and snapshots.

One of the :class:`~refscope.daemon.service.daemon.Daemon`'s collaborators: :meth:`OperatorControls.handlers` maps the
control protocol's commands (:mod:`refscope.daemon.wire.control`) to these methods; each returns the JSON-able reply
or raises ValueError with a message for the operator.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..images import write_tiff
from ..learn.learner import Learner
from ..publish import output_stem
from ..serve.engine import ServingEngine
from ..wire.status import DaemonStatus
from .frame_path import LearnerSlot, NewestFrame
from .monitor import QualityMonitor
from .tally import Tally

__all__ = ["OperatorControls"]

_log = logging.getLogger("refscope.daemon")

SNAPSHOT_MIN_INTERVAL_S = 1.0
"""Snapshots come at most this often, seconds (a client in a loop wrote 272 MB in 1.6 s: issue 13.7)."""
SNAPSHOT_QUOTA_MB = 2048
"""The snapshots folder may hold at most this many MB; a snapshot that would exceed it is refused (never deleted:
old snapshots are the operator's to move or delete)."""


class OperatorControls:
    """The operator's commands to a running daemon.

    Args:
        engine: the serving engine (method, sigma, scale).
        monitor: the quality monitor (reference requests; reset at a change of scale).
        learners: the current learner, replaced at a change of scale by ``make_learner(model, version, scale)``.
        newest: the newest enhanced frame (snapshots, reference regions).
        paused: set while paused (frames recorded and learned from, not enhanced).
        status: the daemon's status report.
        state_dir: where ``snapshots/`` are written.
        tally: events (``paused``, ``settings_changed``...).
    """

    def __init__(self, *, engine: ServingEngine, monitor: QualityMonitor, learners: LearnerSlot,
                 make_learner: Callable[[Any, int, int], Learner], newest: NewestFrame, paused: threading.Event,
                 status: Callable[[], DaemonStatus], state_dir: Path, tally: Tally) -> None:
        self.engine = engine
        self.monitor = monitor
        self.learners = learners
        self._make_learner = make_learner
        self.newest = newest
        self._paused = paused
        self._status = status
        self.state_dir = Path(state_dir)
        self._tally = tally
        self._last_snapshot: float | None = None  # time.monotonic() of the latest snapshot

    def handlers(self) -> dict[str, Any]:
        """The control protocol's commands, by name."""
        return {
            "ping": lambda: {"pong": True, "t": time.time()},
            "status": lambda: {"status": self._status().to_dict()},
            "pause": self.pause,
            "resume": self.resume,
            "request_reference": self.request_reference,
            "set": self.set_options,
            "snapshot": self.snapshot,
        }

    def pause(self) -> dict[str, Any]:
        """Stop enhancing/publishing (inputs are still recorded and learned from)."""
        if not self._paused.is_set():
            self._paused.set()
            _log.info("paused: frames are recorded but not enhanced or published")
            self._tally.emit("paused", {"paused": True}, record=True)
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        """Enhance and publish again from the next frame on."""
        if self._paused.is_set():
            self._paused.clear()
            _log.info("resumed")
            self._tally.emit("resumed", {"paused": False}, record=True)
        return {"paused": False}

    def request_reference(self, region: list[float] | None = None, note: str | None = None) -> dict[str, Any]:
        """Ask the operator for an HR reference scan: emits (and records) a ``reference_requested`` event.

        ``region``: [y0, x0, y1, x1] in LR pixels of the newest frame, or None (anywhere).
        """
        held = self.newest.get()
        newest = held[0] if held is not None else None
        if region is not None and newest is not None:
            height, width = newest.shape
            if region[2] > height or region[3] > width:
                raise ValueError(f"region {region} lies outside the newest frame ({height}x{width} px)")
        payload = self.monitor.request(reason="operator", frame=newest, region=region, note=note,
                                       detail="requested by the operator")
        return {"requested": payload}

    def set_options(self, method: str | None = None, sigma_n: Any = ..., scale: int | None = None) -> dict[str, Any]:
        """Change ``method``, ``sigma_n`` (None: the method's default) and/or ``scale`` (only while no model of
        another scale is loaded; the learner restarts at the new scale). Returns the serving state."""
        if scale is not None and scale != self.engine.scale:
            self._set_scale(int(scale))
        if method is not None:
            self.engine.set_method(method)
        if sigma_n is not ...:
            self.engine.set_sigma(sigma_n)
        state = self.engine.describe()
        self._tally.emit("settings_changed", state, record=True)
        return {"model": state}

    def _set_scale(self, scale: int) -> None:
        with self.learners.lock:
            if self.engine.has_model:
                raise ValueError(f"scale x{scale} refused: model v{self.engine.version} serves x{self.engine.scale}; "
                                 "a new scale needs another state folder")
            old = self.learners.current
            if old is not None:
                status = old.status()
                if status.busy or status.queued:
                    raise ValueError(f"scale x{scale} refused: the learner is working on a reference; try again")
            self.engine.set_scale(scale)
            learner = self._make_learner(None, 0, scale)
            if old is not None:
                old.stop(timeout=30.0)
            self.monitor.reset()
            learner.start()
            self.learners.current = learner

    def snapshot(self) -> dict[str, Any]:
        """Write the newest frame (raw) and its enhancement as TIFFs into ``<state_dir>/snapshots/``."""
        newest = self.newest.get()
        if newest is None:
            raise ValueError("no frame has been enhanced yet")
        frame, result = newest
        folder = self.state_dir / "snapshots"
        now = time.monotonic()
        last = self._last_snapshot
        if last is not None and now - last < SNAPSHOT_MIN_INTERVAL_S:
            raise ValueError(f"refused: the previous snapshot was taken {now - last:.2f} s ago; at most one per "
                             f"{SNAPSHOT_MIN_INTERVAL_S:g} s")
        held = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
        needed = frame.data.size * 4 + result.image.nbytes  # raw (as float32 at most) and enhanced TIFFs
        if held + needed > SNAPSHOT_QUOTA_MB * 2**20:
            raise ValueError(f"refused: {folder} holds {held / 2**20:.0f} MB of snapshots and this one needs "
                             f"{needed / 2**20:.0f} MB more, beyond the {SNAPSHOT_QUOTA_MB} MB quota; move or delete "
                             "old snapshots")
        self._last_snapshot = now
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        stem = f"{output_stem(frame.source)}_{stamp}"
        raw_path, enhanced_path = folder / f"{stem}_raw.tif", folder / f"{stem}_enhanced.tif"
        scale = result.image.shape[0] // max(1, frame.shape[0])
        meta = {"source": frame.source, "source_t": frame.t, "model": result.model_name,
                "model_version": result.version, "kind": "snapshot"}
        raw = np.asarray(frame.data)
        if raw.dtype not in (np.uint8, np.uint16, np.float32):
            raw = raw.astype(np.float32)
        write_tiff(raw_path, raw, pixel_size_nm=frame.pixel_size_nm, metadata={**meta, "image": "raw"})
        write_tiff(enhanced_path, result.image,
                   pixel_size_nm=frame.pixel_size_nm / scale if frame.pixel_size_nm else None,
                   metadata={**meta, "image": "enhanced", "scale": scale})
        _log.info("snapshot written: %s, %s", raw_path, enhanced_path)
        return {"raw": str(raw_path), "enhanced": str(enhanced_path)}

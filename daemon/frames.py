"""The unit of ingest: one 2-D image with its provenance, and the interface every frame source implements.

A :class:`Frame` is what a source hands to the rest of the daemon, whatever it came from (a TIFF in the
acquisition folder, a ZMQ message, an in-memory list). Units: pixel size in nanometres, stage position in
metres, time in unix seconds.

A :class:`FrameSource` is a stoppable worker: ``start()`` it, call ``poll(timeout)`` in a loop on the owning
thread, ``stop()`` it. A source never raises because of bad *input* (a garbage file, a malformed message):
it counts the rejection by reason (see :class:`IngestStats`), logs it on the ``refscope.ingest`` logger and
keeps going. Only a failure of the source itself (a bug, the socket cannot bind) is raised, on the owner's
thread.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Frame",
    "FrameRole",
    "FRAME_ROLES",
    "FrameSource",
    "IngestStats",
    "IngestCounters",
    "INGEST_LOGGER",
    "get_until_stopped",
    "PIXEL_SIZE_RANGE_NM",
    "pixel_size_problem",
]

FrameRole = Literal["lr", "hr", "auto"]
FRAME_ROLES: tuple[str, ...] = ("lr", "hr", "auto")
"""``"lr"``: a live low-resolution frame; ``"hr"``: a high-resolution reference scan; ``"auto"``: let the
daemon decide (e.g. from the pixel size)."""

INGEST_LOGGER = "refscope.ingest"

PIXEL_SIZE_RANGE_NM = (1e-3, 1e6)
"""Physical pixel sizes, nm: 1 pm (finer than any electron microscope samples) to 1 mm (coarser than any SEM
field of a few thousand pixels). A value outside it is a unit mistake or garbage, and is refused where it enters
(file metadata, sidecar, ZMQ header, configuration): an absurd size would make the HR/LR factor, and the
arrays the registration allocates from it, absurd too."""


def pixel_size_problem(value_nm: float) -> str | None:
    """Why ``value_nm`` (nm) is not a physical pixel size (see :data:`PIXEL_SIZE_RANGE_NM`), or None if it is."""
    low, high = PIXEL_SIZE_RANGE_NM
    try:
        value = float(value_nm)
    except (TypeError, ValueError):
        return f"pixel size must be a number of nm, got {value_nm!r}"
    if math.isfinite(value) and low <= value <= high:
        return None
    problem = f"pixel size {value:.4g} nm is outside the physical range {low:g} nm (1 pm) to {high:g} nm (1 mm)"
    if math.isfinite(value) and 1e-12 <= value < low:
        problem += f"; it looks like a length in metres ({value * 1e9:.4g} nm?)"
    return problem

_log = logging.getLogger(INGEST_LOGGER)


@dataclass(frozen=True, eq=False)
class Frame:
    """One grayscale image as received, with where and when it came from.

    ``data`` is an (H, W) array in the dtype it arrived in; the frame holds a read-only view of it (copy it
    before changing pixels). Frames compare by identity.

    Attributes:
        data: (H, W) pixels, original dtype, read-only.
        pixel_size_nm: pixel edge length in nanometres, or None when unknown.
        role: ``"lr"``, ``"hr"`` or ``"auto"`` (see :data:`FRAME_ROLES`).
        source: where it came from: a file path, or ``"zmq:<endpoint>#<seq>"``.
        seq: sequence number (the sender's for ZMQ, the delivery order for files), >= 0.
        t: acquisition time, unix seconds (file modification time when the file does not say).
        stage_xy_m: stage position (x, y) in metres, or None.
        field_of_view_nm: extent (y, x) of ``data`` in nanometres (H and W times the pixel size), or None.
        metadata: anything else known about the frame (read-only mapping).
    """

    data: np.ndarray
    pixel_size_nm: float | None
    role: FrameRole
    source: str
    seq: int
    t: float
    stage_xy_m: tuple[float, float] | None = None
    field_of_view_nm: tuple[float, float] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.data)
        if array.ndim != 2:
            raise ValueError(f"{self.source}: a frame must be a 2-D (H, W) array, got shape {array.shape}")
        if array.flags.writeable:
            array = array.view()
            array.flags.writeable = False
        object.__setattr__(self, "data", array)
        if self.role not in FRAME_ROLES:
            raise ValueError(f"{self.source}: role must be one of {FRAME_ROLES}, got {self.role!r}")
        if self.pixel_size_nm is not None:
            problem = pixel_size_problem(self.pixel_size_nm)
            if problem is not None:
                raise ValueError(f"{self.source}: {problem}")
            object.__setattr__(self, "pixel_size_nm", float(self.pixel_size_nm))
        if isinstance(self.seq, bool) or int(self.seq) != self.seq or self.seq < 0:
            raise ValueError(f"{self.source}: seq must be an integer >= 0, got {self.seq!r}")
        object.__setattr__(self, "seq", int(self.seq))
        object.__setattr__(self, "t", float(self.t))
        if self.stage_xy_m is not None:
            object.__setattr__(self, "stage_xy_m", _pair(self.stage_xy_m, "stage_xy_m", self.source))
        if self.field_of_view_nm is not None:
            object.__setattr__(self, "field_of_view_nm", _pair(self.field_of_view_nm, "field_of_view_nm", self.source))
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))


def _pair(value: Any, name: str, source: str) -> tuple[float, float]:
    try:
        first, second = value
        return (float(first), float(second))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {name} must be a pair of numbers, got {value!r}") from None


@dataclass(frozen=True)
class IngestStats:
    """Counters of one source since it started.

    Attributes:
        received: frames accepted and handed on to the consumer (or queued for it).
        rejected: inputs (files, messages) refused; each is also logged once.
        rejected_by_reason: ``rejected`` split by a short reason slug (e.g. ``"bad_json"``, ``"unreadable"``);
            a copy, safe to keep.
        last_error: the message of the most recent rejection, or None.
        recent: the last :data:`RECENT_INPUTS` inputs, oldest first, one line each naming the input and what
            became of it (``"<file>: ingested"``, ``"<file>: refused (<reason>): <why>"``).
    """

    received: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    recent: tuple[str, ...] = ()


RECENT_INPUTS = 100
"""Inputs named in :attr:`IngestStats.recent` (and so in the daemon's status)."""


class IngestCounters:
    """Thread-safe accumulator behind :meth:`FrameSource.stats`; logs each rejection on ``refscope.ingest``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._rejected = 0
        self._by_reason: dict[str, int] = {}
        self._last_error: str | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT_INPUTS)
        self._log = logger if logger is not None else _log

    def accept(self) -> None:
        """Count one frame handed on."""
        with self._lock:
            self._received += 1

    def note_input(self, line: str) -> None:
        """Name one input and what became of it in ``recent`` (e.g. ``"<file>: ingested (91 frames)"``)."""
        with self._lock:
            self._recent.append(line)

    def reject(self, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        """Count one rejected input under ``reason`` and log ``message`` (which names the input)."""
        with self._lock:
            self._rejected += 1
            self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
            self._last_error = message
            name, _, why = message.partition(": ")
            self._recent.append(f"{name}: refused ({reason}): {why}" if why else f"refused ({reason}): {message}")
        self._log.log(level, "rejected (%s): %s", reason, message)

    def note_error(self, message: str) -> None:
        """Record a problem that is not a rejected input (e.g. the watched folder vanished) as ``last_error``."""
        with self._lock:
            self._last_error = message

    def snapshot(self) -> IngestStats:
        """The current counts as an immutable :class:`IngestStats`."""
        with self._lock:
            return IngestStats(self._received, self._rejected, dict(self._by_reason), self._last_error,
                               tuple(self._recent))


@runtime_checkable
class FrameSource(Protocol):
    """Anything that delivers :class:`Frame` objects: a stoppable worker polled by its owner.

    ``start()`` begins receiving (and raises if that is impossible, e.g. the endpoint cannot be bound);
    ``poll(timeout)`` waits at most ``timeout`` seconds and returns the next frame or None; it re-raises on the
    caller's thread any failure of the source's own worker. ``stop()`` is idempotent and releases everything.
    ``stats()`` may be called from any thread.
    """

    def start(self) -> None: ...

    def poll(self, timeout: float) -> Frame | None: ...

    def stop(self) -> None: ...

    def stats(self) -> IngestStats: ...


def get_until_stopped(items: queue.Queue[Frame], timeout: float, stop: threading.Event, *, slice_s: float = 0.05) -> Frame | None:
    """``items.get`` waiting at most ``timeout`` seconds, returning None early (within ``slice_s``) once ``stop`` is set.

    Lets a source's ``stop()`` from another thread release an owner blocked in ``poll``.
    """
    try:
        if timeout <= 0:
            return items.get_nowait()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                return items.get(timeout=min(slice_s, remaining))
            except queue.Empty:
                if stop.is_set():
                    return None
    except queue.Empty:
        return None

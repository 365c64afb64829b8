"""The output-folder writer: :class:`FolderPublisher`, lossless, with its bounded queue and write-error counters.

Overflow policy, output names and the no-overwrite rule are described in :mod:`refscope.daemon.publish`.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RefscopeError
from .names import PUBLISH_LOGGER, _is_own, output_names, output_stem
from .spill import Spilled, SpillQueue
from ..images import write_tiff
from ..worker import Worker, supervised

__all__ = ["PublishedFile", "PublishStats", "FolderPublisher"]

_log = logging.getLogger(PUBLISH_LOGGER)

_MAX_NAME_TRIES = 1000


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG)
_RETRIED = ("disk_full", "permission", "os_error")
"""Reasons of failed writes that are retried (the folder may come back); the others are the frame's own."""


def _error_reason(exc: BaseException) -> str:
    """Reason code of a failed write (the whole chain of causes is looked at: a library may wrap ENOSPC)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in _FULL or "No space left on device" in str(link):
            return "disk_full"
        link = link.__cause__ or link.__context__
    if isinstance(exc, OSError):
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "permission"
        return "os_error"
    if isinstance(exc, ValueError):
        return "invalid_image"
    return "unexpected"


# ------------------------------------------------------------------------------------------- folder output


@dataclass(frozen=True)
class PublishedFile:
    """One enhanced frame written to the output folder (passed to ``on_written``).

    Attributes:
        source: the input frame's source (file path or ``zmq:...``).
        path: the enhanced TIFF written.
        confidence_path: the confidence TIFF, or None (not requested, or its write failed).
        replaced: True when an earlier output of the same frame was replaced.
    """

    source: str
    path: Path
    confidence_path: Path | None
    replaced: bool


@dataclass(frozen=True)
class PublishStats:
    """Counters of a :class:`FolderPublisher` since it started.

    Attributes:
        written: frames written (their enhanced image at least).
        replaced: of those, frames that replaced an earlier output of the same frame.
        dropped: frames not written because the queue stayed full (or :meth:`FolderPublisher.stop` without
            draining); by reason in ``dropped_by_reason`` (``"queue_full"``, ``"stopped"``).
        errors: failed writes; by reason in ``errors_by_reason`` (``"disk_full"``, ``"permission"``,
            ``"os_error"``, ``"invalid_image"``, ``"name_conflict"``).
        queue_depth: frames waiting now.
        last_error: message of the latest failure, or None.
        retry_waiting: frames whose write failed (disk full, permission, I/O error) waiting to be retried.
        retried: frames written by a retry after a failed write.
    """

    written: int
    replaced: int
    dropped: int
    errors: int
    queue_depth: int
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None
    retry_waiting: int = 0
    retried: int = 0


@dataclass(frozen=True, eq=False)
class _Job:
    image: np.ndarray
    source: str
    t: float
    scale: int
    pixel_size_nm: float | None
    stem: str
    confidence: np.ndarray | None
    metadata: Mapping[str, Any]


_STOP = object()


class FolderPublisher(Worker):
    """Writes enhanced frames as TIFFs in ``out_dir`` on a worker thread (lossless; see :mod:`~refscope.daemon.publish`).

    Args:
        out_dir: output folder, created (with parents) if missing.
        queue_limit: frames waiting to be written before :meth:`submit` blocks, >= 1.
        block_s: how long :meth:`submit` waits on a full queue before dropping the frame, seconds.
        on_written: called on the worker thread with a :class:`PublishedFile` after each write (e.g. to mark
            the frame enhanced in the catalogue). An exception from it stops the worker and is re-raised on the
            owner's thread by the next :meth:`submit`, :meth:`check` or :meth:`stop`.
        poll_interval_s: how often, at most, the idle worker checks for stop, seconds.

    Use: ``start()``, ``submit(...)`` per frame, ``stop(drain=True)`` (or as a context manager).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        queue_limit: int = 64,
        block_s: float = 5.0,
        on_written: Callable[[PublishedFile], None] | None = None,
        poll_interval_s: float = 0.1,
        spill_dir: str | os.PathLike[str] | None = None,
        spill_limit: int = 256,
        retry_first_s: float = 0.5,
        retry_max_s: float = 8.0,
    ) -> None:
        if int(queue_limit) != queue_limit or queue_limit < 1:
            raise ValueError(f"folder publisher {out_dir}: queue_limit must be an integer >= 1, got {queue_limit!r}")
        if not block_s >= 0 or not poll_interval_s > 0:
            raise ValueError(f"folder publisher {out_dir}: block_s must be >= 0 and poll_interval_s > 0")
        self.out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
        self.queue_limit = int(queue_limit)
        self.block_s = float(block_s)
        self._on_written = on_written
        self._poll_s = float(poll_interval_s)
        super().__init__(f"refscope-publish {self.out_dir}", poll_interval_s=self._poll_s)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.queue_limit)
        self._lock = threading.Lock()
        self._written = 0
        self._replaced = 0
        self._dropped: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._last_error: str | None = None
        self._abandon = threading.Event()
        self._spill = SpillQueue(Path(spill_dir) if spill_dir is not None else None, limit=spill_limit,
                                 memory_limit=self.queue_limit, first_s=retry_first_s, max_s=retry_max_s)
        self._retried = 0

    # ------------------------------------------------------------------------------------------ public API

    def start(self) -> None:
        """Create ``out_dir`` and start the writer thread. Raises RefscopeError naming the folder if it cannot
        be created."""
        if self._thread is not None:
            raise RefscopeError(f"folder publisher {self.out_dir}: already started")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RefscopeError(f"{self.out_dir}: cannot create the output folder ({exc.strerror or exc})") from exc
        if not os.access(self.out_dir, os.W_OK):
            raise RefscopeError(f"{self.out_dir}: output folder is not writable")
        self._abandon.clear()
        self._spill.restore()
        super().start()
        _log.info("writing enhanced frames to %s (queue limit %d)", self.out_dir, self.queue_limit)

    def submit(
        self,
        image: np.ndarray,
        *,
        source: str,
        t: float,
        scale: int,
        pixel_size_nm: float | None,
        confidence: np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
        stem: str | None = None,
        timeout: float | None = None,
        max_pending: int | None = None,
    ) -> bool:
        """Queue one enhanced frame for writing; return True if queued, False if dropped.

        Args:
            image: (H, W) enhanced pixels (uint8, uint16 or real; written as float32 unless 8/16-bit).
            source: the input frame's source (``Frame.source``), recorded in the output's metadata.
            t: the input frame's acquisition time (``Frame.t``), unix seconds; with ``source`` it identifies
                the frame (see the no-overwrite rule).
            scale: output scale S, used in the name ``<stem>_x{S}.tif``.
            pixel_size_nm: output pixel size in nm (input pixel size / S), or None if unknown.
            confidence: optional (H, W) confidence map, written as ``<stem>_x{S}_confidence.tif``.
            metadata: extra JSON-serialisable provenance (model, method...) stored in the TIFF.
            stem: output name stem; default :func:`output_stem` of ``source`` (give one for ZMQ frames).
            timeout: seconds to wait while the queue is full; default ``block_s``.
            max_pending: a tighter queue limit for this frame (>= 1), e.g. what the memory budget allows for
                frames of its size (:meth:`MemoryBudget.plan_frame`); waits like a full queue while that many
                frames are waiting.

        Blocks at most ``timeout`` seconds. The arrays are queued without copying: do not modify them after
        submitting. Re-raises a failure of the worker thread.
        """
        self.check()
        if self._thread is None:
            raise RefscopeError(f"folder publisher {self.out_dir}: not started")
        if self._stop.is_set():
            raise RefscopeError(f"folder publisher {self.out_dir}: stopped")
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"{source}: an enhanced frame must be a 2-D (H, W) array, got shape {image.shape}")
        if confidence is not None:
            confidence = np.asarray(confidence)
            if confidence.ndim != 2:
                raise ValueError(f"{source}: a confidence map must be a 2-D (H, W) array, got shape {confidence.shape}")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"{source}: scale must be an integer >= 1, got {scale!r}")
        job = _Job(image=image, source=str(source), t=float(t), scale=int(scale), pixel_size_nm=pixel_size_nm,
                   stem=stem if stem else output_stem(str(source)), confidence=confidence,
                   metadata=dict(metadata or {}))
        wait = self.block_s if timeout is None else max(0.0, float(timeout))
        if max_pending is not None and max_pending < self.queue_limit:
            deadline = time.monotonic() + wait
            while self._queue.qsize() >= max(1, int(max_pending)):
                if time.monotonic() >= deadline:
                    self._count_drop("queue_full", f"{source}: {max_pending} frame(s) of this size still waiting "
                                     f"after {wait:g} s (the memory budget allows no more); enhanced frame not "
                                     f"written to {self.out_dir}")
                    return False
                self.check()
                time.sleep(0.01)
            wait = max(0.0, deadline - time.monotonic())
        try:
            if wait > 0:
                self._queue.put(job, timeout=wait)
            else:
                self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._count_drop("queue_full", f"{source}: output queue still full ({self.queue_limit} frames) after {wait:g} s; "
                             f"enhanced frame not written to {self.out_dir}")
            return False

    def stats(self) -> PublishStats:
        """Current counters (any thread)."""
        with self._lock:
            return PublishStats(
                written=self._written,
                replaced=self._replaced,
                dropped=sum(self._dropped.values()),
                errors=sum(self._errors.values()),
                queue_depth=self._queue.qsize(),
                dropped_by_reason=dict(self._dropped),
                errors_by_reason=dict(self._errors),
                last_error=self._last_error,
                retry_waiting=len(self._spill),
                retried=self._retried,
            )

    def stop(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop the worker. With ``drain`` it first writes every queued frame; otherwise queued frames are
        dropped (counted under ``"stopped"``). Waits up to ``timeout`` seconds (None: as long as draining
        takes), then re-raises a failure of the worker. Idempotent; returns whether the thread ended."""
        if not drain:
            self._abandon.set()
        return super().stop(timeout)

    # ------------------------------------------------------------------------------------------ internals

    def _count_drop(self, reason: str, message: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            total = sum(self._dropped.values())
            self._last_error = message
        _log.warning("dropped (%s, %d so far): %s", reason, total, message)

    def _retry_failed(self, reason: str, message: str) -> None:
        with self._lock:
            self._last_error = message
        _log.warning("retry failed (%s): %s", reason, message)

    def _count_error(self, reason: str, message: str) -> None:
        with self._lock:
            self._errors[reason] = self._errors.get(reason, 0) + 1
            self._last_error = message
        _log.error("write failed (%s): %s", reason, message)

    def poll_once(self, timeout: float) -> None:
        """One turn: retry the spilled output that is due, or write the next queued frame (waiting at most
        ``timeout`` s, less when a spilled output falls due sooner)."""
        now = time.monotonic()
        spilled = self._spill.take_due(now)
        if spilled is not None:
            supervised(lambda: self._retry(spilled), worker="output writer", item=spilled.source,
                       count=self._count_error, quarantine=lambda *_: self._spill.done(spilled),
                       reason="unexpected", logger=_log)
            return
        next_due = self._spill.next_due()
        wait = timeout if next_due is None else min(timeout, max(0.001, next_due - now))
        try:
            job = self._queue.get(timeout=wait)
        except queue.Empty:
            return
        self._write_job(job)

    def on_stop(self) -> None:
        """Stopping: without ``drain`` the queued frames are dropped (counted); with it each is written, then every
        waiting output is tried once more (:meth:`_last_tries`)."""
        if self._abandon.is_set():
            self._discard_queue()
            return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._write_job(job)
        self._last_tries()

    def _write_job(self, job: _Job) -> None:
        supervised(lambda: self._write_or_spill(job), worker="output writer", item=job.source,
                   count=self._count_error, reason="unexpected", logger=_log)

    def _write_or_spill(self, job: _Job) -> None:
        """Write ``job``; when the folder refused it for a reason that may pass, keep it for a retry."""
        reason = self._write(job)
        if reason not in _RETRIED:
            return
        arrays = {"image": job.image} if job.confidence is None else {"image": job.image, "confidence": job.confidence}
        info = {"source": job.source, "t": job.t, "scale": job.scale, "pixel_size_nm": job.pixel_size_nm,
                "stem": job.stem, "metadata": dict(job.metadata)}
        refused = self._spill.add(arrays, info)
        if refused is not None:
            self._count_drop(refused, f"{job.source}: enhanced frame not written ({reason}) and no room to keep it "
                             f"for a retry ({len(self._spill)} waiting); it is enhanced again after a restart")
        else:
            _log.warning("%s: output kept for a retry (%d waiting)", job.source, len(self._spill))

    def _retry(self, item: Spilled) -> None:
        """Try a spilled output again: written -> forgotten; failed again -> the next try later."""
        try:
            arrays, info = self._spill.load(item)
            job = _Job(image=arrays["image"], source=str(info["source"]), t=float(info["t"]), scale=int(info["scale"]),
                       pixel_size_nm=info.get("pixel_size_nm"), stem=str(info["stem"]),
                       confidence=arrays.get("confidence"), metadata=dict(info.get("metadata") or {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._count_error("spill_unreadable", f"{item.path}: spilled output unreadable ({exc}); dropped")
            self._spill.done(item)
            return
        reason = self._write(job, first=False)
        if reason in _RETRIED:
            self._spill.again(item)
            return
        self._spill.done(item)
        if reason is None:  # counted as retried by _write, together with written
            _log.info("%s: written after %d failed tries", job.source, item.tries)

    def _last_tries(self) -> None:
        """Stopping: every waiting output is tried once more; what still fails stays in the spill folder for the
        next run (or, held in memory, is counted as dropped)."""
        for item in self._spill.items():
            self._retry(item)
            if item in self._spill.items():  # failed again
                self._spill.forget(item)
                if item.path is None:
                    self._count_drop("stopped", f"{item.source}: output folder still failing at stop; not written")

    def _discard_queue(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            self._count_drop("stopped", f"{job.source}: publisher stopped before the enhanced frame was written")

    def _choose(self, job: _Job) -> tuple[Path, Path, bool] | None:
        """(image path, confidence path, replaces own) of the first usable name, or None."""
        for attempt in range(1, _MAX_NAME_TRIES + 1):
            name, conf_name = output_names(job.stem, job.scale, attempt)
            path, conf_path = self.out_dir / name, self.out_dir / conf_name
            taken = [p for p in (path, conf_path) if os.path.lexists(p)]
            if not taken:
                return path, conf_path, False
            if all(p.is_file() and not p.is_symlink() and _is_own(p, job.source, job.t) for p in taken):
                return path, conf_path, True
        return None

    def _write(self, job: _Job, *, first: bool = True) -> str | None:
        """Write one output; None when written, else the failure's reason (counted on the first try only: a retry
        that fails again is logged, the frame was counted once)."""
        fail = self._count_error if first else self._retry_failed
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)  # recreated if someone removed it
            chosen = self._choose(job)
        except OSError as exc:
            reason = _error_reason(exc)
            fail(reason, f"{self.out_dir}: cannot prepare output for {job.source} ({exc})")
            return reason
        if chosen is None:
            self._count_error("name_conflict", f"{job.source}: {_MAX_NAME_TRIES} names for {job.stem}_x{job.scale}.tif "
                                               f"in {self.out_dir} are taken by other files")
            return "name_conflict"
        path, conf_path, replaced = chosen
        meta: dict[str, Any] = {**job.metadata, "source": job.source, "source_t": job.t, "scale": job.scale}
        try:
            write_tiff(path, job.image, pixel_size_nm=job.pixel_size_nm, metadata={**meta, "kind": "enhanced"})
        except (OSError, ValueError) as exc:
            reason = _error_reason(exc)
            fail(reason, f"{path}: enhanced frame of {job.source} not written ({exc})")
            return reason
        written_conf: Path | None = None
        if job.confidence is not None:
            try:
                write_tiff(conf_path, job.confidence, pixel_size_nm=job.pixel_size_nm,
                           metadata={**meta, "kind": "confidence"})
                written_conf = conf_path
            except (OSError, ValueError) as exc:
                self._count_error(_error_reason(exc), f"{conf_path}: confidence map of {job.source} not written ({exc})")
        with self._lock:  # one update: a reader never sees it written but not yet counted as retried
            self._written += 1
            self._retried += int(not first)
            self._replaced += int(replaced)
        _log.debug("wrote %s%s", path, " (replaced)" if replaced else "")
        if self._on_written is not None:
            self._on_written(PublishedFile(source=job.source, path=path, confidence_path=written_conf, replaced=replaced))
        return None

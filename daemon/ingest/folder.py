"""Frames from image files appearing in an acquisition folder (any format refscope reads: TIFF, PNG, DM3/DM4, EMD,
TIA SER, MRC, as written by the microscope).

No file is skipped silently: every file that appears (hidden and temporary names aside, which are files still
being written) is either ingested -- every image of a stack or series, in order -- or refused with its reason,
logged and counted (``"not_matched"``: its name matches none of ``patterns``; ``"companion"``: a TIA ``.emi`` or
a sidecar JSON, read with its image; the read errors below), and remembered by the ``ledger``. The last inputs
and what became of them are named in :attr:`~refscope.daemon.frames.IngestStats.recent` (the daemon's status).

How a new file is noticed (event mode, the default):

* ``FileClosedEvent`` (a file opened for writing was closed, inotify) or ``FileMovedEvent`` (renamed into the
  folder): the file is complete; it is read at once.
* ``FileCreatedEvent`` / ``FileModifiedEvent`` (platforms without close events, or files copied in from
  outside): the file is read once its size and modification time have stayed the same over ``stable_checks``
  checks ``poll_interval_s`` apart.
* A full rescan every ``rescan_s`` catches anything the event stream missed.

Polling mode (``use_polling=True``, for network mounts where inotify sees nothing): the folder is scanned every
``poll_interval_s`` and a file is read once its size and modification time are stable over ``stable_checks``
scans. If the native observer cannot start (e.g. the inotify watch limit), the source falls back to polling.

Each version of a file, identified by (path, size, mtime), is delivered at most once. A file that fails to
read (it may still be being written) is retried every ``retry_s`` up to ``max_retries`` times, then reported
once (logged and counted under ``"incomplete"``, ``"unreadable"`` or ``"unexpected"``) and skipped until it
changes. Hidden and temporary files (``.name``, ``~name``, ``*.tmp``, ``*.part``...) and files in hidden
folders are ignored. Nothing in the watched folder is ever written, moved or deleted. If the folder disappears
the source logs it and waits for it to come back (or to be created, if it is missing at start).

Links: a symbolic link (or a path through a linked sub-folder) is read only when its resolved target lies inside
the watched folder; one that leads out of it is never opened, but refused (``"symlink_outside"``). Sub-folders
reached through links are not walked.

A refused file is reported by its name and the reason only: its content (e.g. the first bytes of a text file
that is not an image) never reaches the log, the counters' ``last_error`` or anything else. A refusal that
re-reading cannot change (``"symlink_outside"``, ``"bad_image"``, a file that is not an image, truncated for
good or too large...; not a failure to open it) is handed to the ``ledger`` (the daemon's catalogue, see
:class:`RefusalLedger`) when one is given: after a restart, a file the ledger says was refused in this version
(same size and mtime) is not read again.

Overflow policy: decoded frames wait in a bounded queue (``queue_size``). When it is full the worker blocks for
up to ``queue_block_s`` seconds (the watchdog thread never blocks: it only records paths); if the consumer
still has not caught up, the frame is dropped, logged and counted under ``"queue_full"``.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import os
import queue
import re
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from ..errors import IncompleteFileError, InputFileError, MissingReaderError, RefscopeError
from ..frames import FRAME_ROLES, INGEST_LOGGER, Frame, FrameRole, IngestCounters, IngestStats, get_until_stopped
from ..images.readers import DEFAULT_PATTERNS, companion_reason, read_frames
from ..images import LoadedImage
from ..worker import Worker, is_state_failure, supervised

__all__ = [
    "FolderSourceConfig",
    "FolderFrameSource",
    "RefusalLedger",
    "image_to_frame",
    "is_ignored_name",
    "list_image_files",
    "natural_key",
]

_log = logging.getLogger(INGEST_LOGGER)

_EVERY_FILE = ("*",)  # what the source looks at: every file, so that none is skipped silently
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")

Signature = tuple[int, int]
"""(size in bytes, mtime in ns) of one version of a file."""

_BYTES_LITERAL = re.compile(r"""(?<![A-Za-z0-9_])[bB](?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_CONTENT_HIDDEN = "<content not shown>"


class RefusalLedger(Protocol):
    """Where permanent refusals are kept across restarts (the daemon's
    :class:`~refscope.daemon.state.catalogue.Catalogue`); ``size`` in bytes, ``mtime`` in unix seconds."""

    def refused(self, source: str, size: int | None, mtime: float | None) -> str | None:
        """The reason code this version of ``source`` was refused with, or None."""
        ...

    def record_refused(self, source: str, *, size: int | None, mtime: float | None, reason: str, error: str) -> None:
        """Remember that this version of ``source`` was refused (``reason`` code, ``error`` message)."""
        ...


@dataclass(frozen=True)
class FolderSourceConfig:
    """Where and how to watch for new image files.

    Attributes:
        path: the acquisition folder (never modified).
        recursive: also watch sub-folders.
        patterns: file name patterns to read (case-insensitive ``fnmatch``); a file matching none is refused
            (``"not_matched"``, logged), never skipped silently.
        use_polling: scan the folder instead of using native events (network mounts).
        poll_interval_s: time between stability checks / scans, seconds.
        stable_checks: consecutive unchanged checks (size and mtime) before a file without a close/rename
            event is read.
        retry_s: delay before re-reading a file that failed to read, seconds.
        max_retries: re-reads of a failing file before it is reported and skipped.
        pixel_size_nm: pixel size to use for every file (overrides the files' metadata), nm; None: from files.
        include_existing: also deliver files already in the folder at start (in acquisition order: modification
            time, then name -- a restart re-reads a zoom series in the order the operator took it, so the roles
            follow the magnification as they did).
        role: role given to every frame (``"lr"``, ``"hr"`` or ``"auto"``).
        queue_size: frames read ahead of the consumer.
        queue_block_s: how long the worker waits on a full queue before dropping a frame, seconds.
        rescan_s: full rescan period in event mode, seconds (None: never).
        require_pixel_size: refuse (``"no_pixel_size"``) a file whose pixel size neither its metadata, a sidecar
            JSON nor ``pixel_size_nm`` gives (the daemon's rule: a frame of unknown scale can be neither paired
            nor published with a calibration).
    """

    path: Path
    recursive: bool = True
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    use_polling: bool = False
    poll_interval_s: float = 0.5
    stable_checks: int = 2
    retry_s: float = 1.0
    max_retries: int = 5
    pixel_size_nm: float | None = None
    include_existing: bool = False
    role: FrameRole = "auto"
    queue_size: int = 32
    queue_block_s: float = 5.0
    rescan_s: float | None = 30.0
    require_pixel_size: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        where = f"folder source {self.path}"
        if isinstance(self.patterns, str):
            raise ValueError(f"{where}: patterns must be a tuple of patterns, not the string {self.patterns!r}")
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if not self.poll_interval_s > 0 or self.retry_s < 0 or self.queue_block_s < 0:
            raise ValueError(f"{where}: poll_interval_s must be > 0, retry_s and queue_block_s >= 0")
        if self.stable_checks < 1 or self.max_retries < 0 or self.queue_size < 1:
            raise ValueError(f"{where}: stable_checks and queue_size must be >= 1, max_retries >= 0")
        if self.rescan_s is not None and not self.rescan_s > 0:
            raise ValueError(f"{where}: rescan_s must be > 0 or None, got {self.rescan_s!r}")
        if self.pixel_size_nm is not None and not (math.isfinite(self.pixel_size_nm) and self.pixel_size_nm > 0):
            raise ValueError(f"{where}: pixel_size_nm must be a positive finite number of nm, got {self.pixel_size_nm!r}")
        if self.role not in FRAME_ROLES:
            raise ValueError(f"{where}: role must be one of {FRAME_ROLES}, got {self.role!r}")


# --------------------------------------------------------------------------------------------- file helpers


def is_ignored_name(name: str) -> bool:
    """True for hidden and temporary file names (``.x``, ``~x``, ``x.tmp``, ``x.part``, ``x~``...)."""
    lower = name.lower()
    return name.startswith((".", "~")) or lower.endswith(_TEMP_SUFFIXES)


def _refusal_text(path: str, exc: BaseException) -> str:
    """The message reporting that ``path`` failed with ``exc``: starts with the path, and any bytes the reader
    quoted from the file (``b'...'``) are left out -- a refused file's content is never echoed."""
    text = str(exc) or type(exc).__name__
    detail = text[len(path):].lstrip(": ") if text.startswith(path) else text
    return f"{path}: {_BYTES_LITERAL.sub(_CONTENT_HIDDEN, detail)}"


def _is_permanent(exc: BaseException) -> bool:
    """True when re-reading the same version of the file cannot succeed: an image problem (not an image, truncated,
    too large, unusable pixels...), not a failure to open it (permissions, I/O) or a bug."""
    if not isinstance(exc, InputFileError) or isinstance(exc, MissingReaderError):
        return False  # a missing optional reader is fixed by installing it, not by changing the file
    return not isinstance(exc.__cause__, OSError)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, pattern.lower()) for pattern in patterns)


def natural_key(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """Sort key ordering ``frame_2`` before ``frame_10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", os.fspath(path)))


def _walk(root: str, recursive: bool, patterns: tuple[str, ...]) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (path, stat) of wanted regular files under ``root``; unreadable folders are skipped."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_ignored_name(entry.name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if recursive:
                                stack.append(entry.path)
                        elif _matches(entry.name, patterns):
                            info = entry.stat()
                            if stat.S_ISREG(info.st_mode):
                                yield entry.path, info
                    except OSError:
                        continue  # vanished between listing and stat
        except OSError:
            continue  # folder vanished or unreadable


def list_image_files(
    path: str | os.PathLike[str],
    *,
    recursive: bool = True,
    patterns: tuple[str, ...] = DEFAULT_PATTERNS,
) -> list[Path]:
    """Wanted image files now in ``path`` (hidden/temporary ones excluded), in natural name order."""
    return [Path(p) for p in sorted((p for p, _ in _walk(os.fspath(path), recursive, patterns)), key=natural_key)]


def image_to_frame(image: LoadedImage, *, seq: int, role: FrameRole, file_stat: os.stat_result | None = None) -> Frame:
    """Wrap a :class:`~refscope.daemon.images.LoadedImage` as a :class:`Frame`.

    ``t`` is the acquisition time from the file's metadata (naive times are taken as local time), else the
    file's modification time. An image of a stack or series is the source ``<file>#<index>`` (0-based). ``metadata`` holds the file's :class:`ImageMetadata` fields plus
    ``file_size_bytes`` and ``file_mtime`` (unix seconds).
    """
    meta = image.metadata
    info = file_stat if file_stat is not None else os.stat(image.path)
    t = info.st_mtime
    if meta.acquired_at is not None:
        try:
            t = meta.acquired_at.timestamp()
        except (OverflowError, OSError, ValueError):
            pass
    metadata: dict[str, Any] = {f.name: getattr(meta, f.name) for f in fields(meta)}
    metadata.update(file_size_bytes=info.st_size, file_mtime=info.st_mtime)
    return Frame(
        data=image.data,
        pixel_size_nm=image.pixel_size_nm,
        role=role,
        source=str(image.path) if meta.frame is None else f"{image.path}#{meta.frame}",
        seq=seq,
        t=t,
        stage_xy_m=meta.stage_xy_m,
        field_of_view_nm=meta.field_of_view_nm,
        metadata=metadata,
    )


# ------------------------------------------------------------------------------------------ event plumbing

_READY, _CHANGED, _GONE, _SCAN = "ready", "changed", "gone", "scan"


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: only records which paths to look at; never blocks, never reads."""

    def __init__(self, note: Callable[[str, str], None]) -> None:
        self._note = note

    def on_closed(self, event: FileClosedEvent) -> None:
        self._note(os.fsdecode(event.src_path), _READY)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self._note(os.fsdecode(event.dest_path), _SCAN)
        else:
            if event.src_path:
                self._note(os.fsdecode(event.src_path), _GONE)
            if event.dest_path:
                self._note(os.fsdecode(event.dest_path), _READY)

    def on_created(self, event: FileSystemEvent) -> None:
        self._note(os.fsdecode(event.src_path), _SCAN if event.is_directory else _CHANGED)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._note(os.fsdecode(event.src_path), _CHANGED)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._note(os.fsdecode(event.src_path), _GONE)


_EVENT_FILTER = [
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


@dataclass
class _Pending:
    """A file waiting to be read (worker thread only)."""

    sig: Signature | None = None  # last observed (size, mtime_ns); None: not looked at yet
    stable: int = 0  # consecutive checks with an unchanged signature
    ready: bool = False  # complete (close/rename event, or stable): read when due
    failures: int = 0  # failed reads of this signature
    due: float = 0.0  # time.monotonic() of the next look


# ------------------------------------------------------------------------------------------------ the source


def _acquisition_order(path: str) -> tuple[int, Any]:
    """Sort key of files due for reading: modification time (ns), then the natural name order."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = 0
    return mtime, natural_key(path)


class FolderFrameSource(Worker):
    """A :class:`~refscope.daemon.frames.FrameSource` delivering new image files of a folder (see module doc)."""

    def __init__(self, config: FolderSourceConfig,
                 *, reader: Callable[..., LoadedImage | list[LoadedImage]] = read_frames,
                 ledger: RefusalLedger | None = None) -> None:
        """Args:
            config: what to watch.
            reader: reads one file, ``reader(path, pixel_size_nm=...)``: its images in order (default
                :func:`~refscope.daemon.images.readers.read_frames`) or one image (e.g. :func:`~refscope.daemon.images.read_image`).
            ledger: keeps permanent refusals across restarts (the daemon's catalogue); None: kept in memory only.
        """
        self.config = config
        self._root = os.path.normpath(os.path.abspath(config.path))
        self._real_root = os.path.realpath(self._root)
        self._read = reader
        self._ledger = ledger
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=config.queue_size)
        super().__init__(f"refscope-folder-ingest {self._root}", poll_interval_s=config.poll_interval_s)
        self._wake = threading.Event()
        self._hints_lock = threading.Lock()
        self._hints: dict[str, str] = {}
        self._counters = IngestCounters(_log)
        # worker-owned state (set up in start() before the thread runs)
        self._observer: Any = None
        self._polling = config.use_polling
        self._root_id: tuple[int, int] | None = None
        self._root_missing_logged = False
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, Signature] = {}
        self._seq = 0
        self._next_scan = 0.0

    # ------------------------------------------------------------------------------------------ public API

    @property
    def polling(self) -> bool:
        """True when the folder is scanned rather than watched with native events."""
        return self._polling

    def start(self) -> None:
        """Start watching. Files present now are skipped unless ``include_existing``.

        A missing folder is not an error: it is logged and waited for.
        """
        if self._thread is not None:
            raise RefscopeError(f"folder source {self._root}: already started")
        self._stop.clear()
        self._check_root()
        if not self.config.include_existing and self._root_id is not None:
            for path, info in _walk(self._root, self.config.recursive, _EVERY_FILE):
                self._seen[path] = (info.st_size, info.st_mtime_ns)
            self._next_scan = self._scan_period() + time.monotonic()
        super().start()
        _log.info("folder source: watching %s (%s)", self._root, "polling" if self._polling else "native events")

    def poll(self, timeout: float) -> Frame | None:
        """Wait at most ``timeout`` seconds for the next frame; None if none came.

        Re-raises, on the caller's thread, any exception that stopped the worker.
        """
        self.check()
        frame = get_until_stopped(self._queue, timeout, self._stop)
        if frame is None:
            self.check()
        return frame

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the worker and the file-system observer (waiting up to ``timeout`` s; default: 5 s or 4 poll
        intervals), then re-raise a failure of the worker. Idempotent; returns whether the thread ended."""
        self._stop.set()
        self._wake.set()
        try:
            return super().stop(max(5.0, 4 * self.config.poll_interval_s) if timeout is None else timeout)
        finally:
            self._stop_observer()

    def stats(self) -> IngestStats:
        """Frames delivered and files rejected (by reason) so far."""
        return self._counters.snapshot()

    # ------------------------------------------------------------------------------------------ internals

    def _scan_period(self) -> float:
        if self._polling:
            return self.config.poll_interval_s
        return self.config.rescan_s if self.config.rescan_s is not None else math.inf

    def _note(self, path: str, kind: str) -> None:
        """Record a hint from the watchdog thread (latest wins, except that "changed" never demotes "ready")."""
        path = os.path.normpath(path)
        with self._hints_lock:
            if not (kind == _CHANGED and self._hints.get(path) == _READY):
                self._hints[path] = kind
        self._wake.set()

    def _start_observer(self) -> None:
        if self._polling:
            return
        observer = Observer()
        try:
            observer.schedule(_Handler(self._note), self._root, recursive=self.config.recursive, event_filter=_EVENT_FILTER)
            observer.start()
        except OSError as exc:
            _log.warning(
                "folder source %s: native file events unavailable (%s); falling back to polling every %.2g s",
                self._root, exc, self.config.poll_interval_s,
            )
            self._polling = True
            self._next_scan = 0.0
            try:
                observer.stop()
            except Exception:  # pragma: no cover - best effort cleanup
                pass
            return
        self._observer = observer

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5.0)
            except Exception:  # pragma: no cover - best effort: the watch may already be gone with its folder
                _log.debug("folder source %s: error stopping observer", self._root, exc_info=True)

    def _check_root(self) -> None:
        """Notice the folder vanishing, (re)appearing or being replaced; (re)start the observer accordingly."""
        try:
            info = os.stat(self._root)
            present = stat.S_ISDIR(info.st_mode)
        except OSError:
            present = False
        if not present:
            if self._root_id is not None or not self._root_missing_logged:
                message = f"{self._root}: watched folder is missing; waiting for it to (re)appear"
                _log.warning("folder source: %s", message)
                self._counters.note_error(message)
                self._root_missing_logged = True
            self._root_id = None
            self._stop_observer()
            return
        ident = (info.st_dev, info.st_ino)
        if ident == self._root_id:
            return
        if self._root_missing_logged:
            _log.warning("folder source: %s: watched folder is back", self._root)
        elif self._root_id is not None:
            _log.warning("folder source: %s: watched folder was replaced; watching the new one", self._root)
        self._root_missing_logged = False
        self._root_id = ident
        self._real_root = os.path.realpath(self._root)
        self._stop_observer()
        self._start_observer()
        self._next_scan = 0.0  # look at everything in the (new) folder now

    def _wanted(self, path: str) -> bool:
        rel = os.path.relpath(path, self._root)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            return False
        parts = rel.split(os.sep)
        if not self.config.recursive and len(parts) > 1:
            return False
        return not any(is_ignored_name(part) for part in parts)  # every file: read, or refused with its reason

    def _drain_hints(self, now: float) -> None:
        with self._hints_lock:
            hints, self._hints = self._hints, {}
        for path, kind in hints.items():
            if kind == _SCAN:  # a folder created or moved in: look inside (it may be moved *out*, too)
                inside = os.path.commonpath([self._root, path]) == self._root
                if self.config.recursive and inside and path != self._root:
                    self._scan(path, now)
                continue
            if kind == _GONE:
                self._pending.pop(path, None)
                continue
            if not self._wanted(path):
                continue
            pending = self._pending.setdefault(path, _Pending(due=now))
            if kind == _READY:
                pending.ready, pending.sig, pending.due = True, None, now
            else:
                pending.due = min(pending.due, now + self.config.poll_interval_s) if pending.sig is not None else now

    def _scan(self, folder: str, now: float) -> None:
        for path, info in _walk(folder, self.config.recursive, _EVERY_FILE):
            path = os.path.normpath(path)
            if path in self._pending or self._seen.get(path) == (info.st_size, info.st_mtime_ns):
                continue
            if self._wanted(path):
                self._pending[path] = _Pending(due=now)

    def poll_once(self, timeout: float) -> None:
        """One turn: notice the folder, take the observer's hints, scan when due, deliver the files that are
        ready, then sleep until the next is due (at most ``timeout`` s) or a hint wakes it."""
        self._check_root()
        now = time.monotonic()
        self._drain_hints(now)
        if self._root_id is not None and now >= self._next_scan:
            self._scan(self._root, now)
            self._next_scan = now + self._scan_period()
        self._process_due()
        wake_at = min([p.due for p in self._pending.values()] + [self._next_scan])
        if self._wake.wait(min(max(0.0, wake_at - time.monotonic()), timeout)):
            self._wake.clear()

    def on_stop(self) -> None:
        self._stop_observer()

    def _process_due(self) -> None:
        now = time.monotonic()
        due = sorted((path for path, p in self._pending.items() if p.due <= now), key=_acquisition_order)
        for path in due:
            if self._stop.is_set():
                return
            pending = self._pending[path]
            if supervised(lambda: self._look(path, pending) or True, worker="folder ingest", item=path,
                          count=self._counters.reject, reason="unexpected") is None:
                self._pending.pop(path, None)  # quarantined: not looked at again until the file changes
                if pending.sig is not None:
                    self._seen[path] = pending.sig

    def _look(self, path: str, pending: _Pending) -> None:
        """Check one pending file; read and deliver it when it is complete."""
        cfg = self.config
        now = time.monotonic()
        try:
            info = os.stat(path)  # follows a link: its target's version
        except OSError:
            del self._pending[path]  # gone (deleted, renamed away, folder vanished, a dangling link)
            return
        sig = (info.st_size, info.st_mtime_ns)
        if self._seen.get(path) == sig:
            del self._pending[path]
            return
        if sig != pending.sig and self._refused_before(path, sig):
            return
        if stat.S_ISDIR(info.st_mode):  # a folder (or a link to one) is not a file: sub-folders are walked, not read
            del self._pending[path]
            return
        if self._leads_outside(path):
            self._refuse_outside(path, sig)
            return
        if not stat.S_ISREG(info.st_mode):
            del self._pending[path]
            return
        if pending.sig is None:
            pending.sig, pending.stable = sig, 0
        elif sig != pending.sig:  # still being written
            pending.sig, pending.stable, pending.ready, pending.failures = sig, 0, False, 0
        elif not pending.ready:
            pending.stable += 1
        if not pending.ready and pending.stable >= cfg.stable_checks:
            pending.ready = True
        if not pending.ready:
            pending.due = now + cfg.poll_interval_s
            return

        name = os.path.basename(path)
        if not _matches(name, cfg.patterns):
            reason = companion_reason(path)
            if reason is not None:
                self._refuse(path, sig, "companion", f"{path}: {reason}", permanent=True, level=logging.INFO)
            else:
                self._refuse(path, sig, "not_matched", f"{path}: its name matches none of the patterns read "
                             f"({', '.join(cfg.patterns)}; ingest.patterns); not ingested", permanent=True)
            return
        try:
            read = self._read(path, pixel_size_nm=cfg.pixel_size_nm)
        except Exception as exc:  # noqa: BLE001 - every failure of one file is that file's problem
            self._failed(path, pending, sig, exc)
            return
        images = read if isinstance(read, (list, tuple)) else [read]
        if cfg.require_pixel_size and any(image.pixel_size_nm is None for image in images):
            note = dict(images[0].metadata.extra).get("calibration_note") or "no calibration in the file"
            self._refuse(path, sig, "no_pixel_size", f"{path}: pixel size unknown ({note}); set ingest.pixel_size_nm "
                         f"or put a sidecar {os.path.basename(path)}.json holding {{\"pixel_size_nm\": ...}} beside it",
                         permanent=True)
            return
        try:
            after = os.stat(path)
        except OSError:
            del self._pending[path]
            return
        if (after.st_size, after.st_mtime_ns) != sig:  # changed while we read it: wait for it to settle
            pending.sig, pending.stable, pending.ready, pending.failures = None, 0, False, 0
            pending.due = now + cfg.poll_interval_s
            return
        if self._leads_outside(path):  # re-pointed out of the folder while we read it: what was read is dropped
            self._refuse_outside(path, sig)
            return
        try:
            frames = [image_to_frame(image, seq=self._seq + i, role=cfg.role, file_stat=after)
                      for i, image in enumerate(images)]
        except (ValueError, TypeError) as exc:
            self._refuse(path, sig, "bad_image", f"{_refusal_text(path, exc)} (cannot be used as a frame)",
                         permanent=True)
            return
        del self._pending[path]
        self._seen[path] = sig
        delivered = 0
        for frame in frames:
            if self._stop.is_set():
                break
            delivered += self._deliver(replace(frame, seq=self._seq))
        count = f" ({delivered} of {len(frames)} frames)" if len(frames) > 1 or delivered < len(frames) else ""
        self._counters.note_input(f"{path}: ingested{count}")
        _log.info("folder source: %s: ingested%s", path, count)

    def _leads_outside(self, path: str) -> bool:
        """True when ``path`` resolves (through a link, or a linked folder on the way) to a place outside the
        watched folder."""
        real = os.path.realpath(path)
        try:
            return os.path.commonpath([self._real_root, real]) != self._real_root
        except ValueError:  # another drive (Windows)
            return True

    def _refuse_outside(self, path: str, sig: Signature) -> None:
        self._refuse(path, sig, "symlink_outside", f"{path}: a symbolic link leads out of the watched folder "
                     f"{self._root}; not followed", permanent=True)

    def _refused_before(self, path: str, sig: Signature) -> bool:
        """True (and the file skipped until it changes) when the ledger says this version was refused before a
        restart."""
        if self._ledger is None:
            return False
        try:
            reason = self._ledger.refused(path, sig[0], sig[1] / 1e9)
        except Exception as exc:  # noqa: BLE001 - a lookup hiccup: reading the file again is the safe side
            if is_state_failure(exc):
                raise
            _log.warning("folder source: %s: cannot look up earlier refusals (%s); reading it", path, exc)
            return False
        if reason is None:
            return False
        self._pending.pop(path, None)
        self._seen[path] = sig
        _log.debug("folder source: %s was refused before (%s); not read again until it changes", path, reason)
        return True

    def _refuse(self, path: str, sig: Signature, reason: str, message: str, *, permanent: bool,
                level: int = logging.WARNING) -> None:
        """Count and log a refused file (``message`` names it and never quotes its content); skip this version
        from now on and, when re-reading cannot change the outcome (``permanent``), after a restart too."""
        self._pending.pop(path, None)
        self._seen[path] = sig
        self._counters.reject(reason, message, level=level)
        if not permanent or self._ledger is None:
            return
        try:
            self._ledger.record_refused(path, size=sig[0], mtime=sig[1] / 1e9, reason=reason, error=message)
        except Exception as exc:  # noqa: BLE001 - not fatal: the file is refused again after a restart
            if is_state_failure(exc):
                raise
            _log.warning("folder source: %s: refusal not recorded (%s); it is read again after a restart", path, exc)

    def _failed(self, path: str, pending: _Pending, sig: Signature, exc: Exception) -> None:
        pending.failures += 1
        if pending.failures <= self.config.max_retries:
            _log.debug("folder source: %s failed to read (attempt %d), retrying: %s", path, pending.failures,
                       _refusal_text(path, exc))
            pending.due = time.monotonic() + self.config.retry_s
            return
        if isinstance(exc, IncompleteFileError):
            reason = "incomplete"
        elif isinstance(exc, (InputFileError, OSError)):
            reason = "unreadable"
        else:
            reason = "unexpected"
            trace = "".join(traceback.format_exception(exc))
            _log.error("folder source: unexpected error reading %s\n%s", path,
                       _BYTES_LITERAL.sub(_CONTENT_HIDDEN, trace.rstrip()))
        # reported once; skipped until the file changes (after a restart too, when re-reading cannot help)
        self._refuse(path, sig, reason, f"{_refusal_text(path, exc)} (gave up after {pending.failures} attempts)",
                     permanent=_is_permanent(exc))

    def _deliver(self, frame: Frame) -> bool:
        """Queue ``frame`` (waiting up to ``queue_block_s``); False when it was dropped or the source stopped."""
        deadline = time.monotonic() + self.config.queue_block_s
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Full:
                if time.monotonic() < deadline:
                    continue
                self._counters.reject(
                    "queue_full",
                    f"{frame.source}: dropped, the consumer did not take a frame for {self.config.queue_block_s:g} s "
                    f"({self.config.queue_size} frames waiting)",
                )
                return False
            self._seq += 1
            self._counters.accept()
            return True
        return False

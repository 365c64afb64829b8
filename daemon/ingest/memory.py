"""Frame sources without a microscope: an in-memory list (tests) and a replay of a folder's files (offline runs).

Both implement :class:`~refscope.daemon.frames.FrameSource` and run on the caller's thread (no worker). Once
everything has been delivered, :attr:`exhausted` is True and ``poll(timeout)`` waits ``timeout`` seconds (or
until ``stop()``) and returns None, so a polling loop does not spin.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from ..frames import INGEST_LOGGER, Frame, FrameRole, IngestCounters, IngestStats
from .folder import image_to_frame, list_image_files
from ..images import read_image

__all__ = ["MemoryFrameSource", "FolderReplaySource"]

_log = logging.getLogger(INGEST_LOGGER)


class MemoryFrameSource:
    """Delivers the given frames in order, one per ``poll``, then nothing."""

    def __init__(self, frames: Iterable[Frame]) -> None:
        self._frames: deque[Frame] = deque(frames)
        self._stop = threading.Event()
        self._started = False
        self._counters = IngestCounters(_log)

    @property
    def exhausted(self) -> bool:
        """True once every frame has been delivered."""
        return not self._frames

    def start(self) -> None:
        """Begin delivering (frames are only handed out after start)."""
        self._started = True
        self._stop.clear()

    def poll(self, timeout: float) -> Frame | None:
        """The next frame at once, or None after waiting ``timeout`` seconds when none is left or stopped."""
        if self._started and not self._stop.is_set() and self._frames:
            self._counters.accept()
            return self._frames.popleft()
        if timeout > 0:
            self._stop.wait(timeout)
        return None

    def stop(self) -> None:
        """Stop delivering; a waiting ``poll`` returns at once. Idempotent."""
        self._stop.set()

    def stats(self) -> IngestStats:
        """Frames delivered so far (this source rejects nothing)."""
        return self._counters.snapshot()


class FolderReplaySource:
    """Replays the image files already in a folder, in natural name order, one every ``interval_s`` seconds.

    Files are read lazily with :func:`~refscope.daemon.images.read_image`; one that cannot be read is logged,
    counted (``"unreadable"``) and skipped. Frames are numbered 0, 1, 2... in delivery order; ``t`` is the
    file's acquisition time (else its modification time). Nothing in the folder is modified.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval_s: float = 0.0,
        recursive: bool = False,
        patterns: tuple[str, ...] = ("*.tif", "*.tiff", "*.png"),
        pixel_size_nm: float | None = None,
        role: FrameRole = "auto",
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"replay of {path}: interval_s must be >= 0, got {interval_s!r}")
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.recursive = recursive
        self.patterns = tuple(patterns)
        self.pixel_size_nm = pixel_size_nm
        self.role: FrameRole = role
        self._files: deque[Path] = deque()
        self._stop = threading.Event()
        self._started = False
        self._next_at = 0.0
        self._seq = 0
        self._counters = IngestCounters(_log)

    @property
    def exhausted(self) -> bool:
        """True once every file has been delivered or skipped."""
        return self._started and not self._files

    def start(self) -> None:
        """List the folder's files now (later arrivals are not replayed)."""
        if not self.path.is_dir():
            _log.warning("replay: %s is not a folder; nothing to replay", self.path)
            self._counters.note_error(f"{self.path}: is not a folder")
        self._files = deque(list_image_files(self.path, recursive=self.recursive, patterns=self.patterns))
        self._started = True
        self._stop.clear()
        self._next_at = time.monotonic()
        _log.info("replay: %d file(s) from %s, one every %.3g s", len(self._files), self.path, self.interval_s)

    def poll(self, timeout: float) -> Frame | None:
        """The next readable file as a frame once its turn has come (waiting at most ``timeout`` seconds)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self._started and self._files and not self._stop.is_set():
            wait = self._next_at - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    self._stop.wait(max(0.0, deadline - time.monotonic()))
                    return None
                if self._stop.wait(wait):
                    return None
            path = self._files.popleft()
            try:
                image = read_image(path, pixel_size_nm=self.pixel_size_nm)
                frame = image_to_frame(image, seq=self._seq, role=self.role)
            except Exception as exc:  # noqa: BLE001 - InputFileError or anything else wrong with this one file
                text = str(exc)
                self._counters.reject("unreadable", text if text.startswith(str(path)) else f"{path}: {text}")
                continue
            self._seq += 1
            self._next_at = time.monotonic() + self.interval_s
            self._counters.accept()
            return frame
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._stop.wait(remaining)
        return None

    def stop(self) -> None:
        """Stop replaying; a waiting ``poll`` returns at once. Idempotent."""
        self._stop.set()

    def stats(self) -> IngestStats:
        """Files delivered and skipped so far."""
        return self._counters.snapshot()

"""Outputs whose write failed, kept until the output folder takes them: a bounded spill queue with back-off.

When writing an enhanced frame fails for a reason that may pass (disk full, permission denied, I/O error), the
frame is *spilled*: saved atomically as ``<spill_dir>/<n>.npz`` (pixels, confidence map and the output's
description) -- in the daemon's state folder, never in the watched folder -- and retried with exponential
back-off (``first_s``, doubling, at most ``max_s`` seconds between tries) for as long as the daemon runs. A
spill file left by a daemon that stopped or was killed is retried by the next one. When the spill folder itself
cannot be written (its disk is full too) the frame is held in memory instead, at most ``memory_limit`` of them.
At most ``limit`` frames wait; beyond that a frame is refused (the caller counts it as dropped, never silently).
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import TEMP_MARKER, atomic_write_bytes, to_jsonable
from .names import PUBLISH_LOGGER

__all__ = ["SpillQueue", "Spilled", "SPILL_DIR"]

SPILL_DIR = "spill"
"""Sub-folder of the state folder holding outputs waiting to be written."""

_log = logging.getLogger(PUBLISH_LOGGER)


@dataclass(eq=False)
class Spilled:
    """One output waiting for a retry: on disk (``path``) or, when the spill folder failed, in memory."""

    source: str
    due: float  # time.monotonic() of the next try
    tries: int = 1
    path: Path | None = None
    held: tuple[dict[str, np.ndarray], dict[str, Any]] | None = field(default=None, repr=False)


class SpillQueue:
    """The bounded spill queue (see the module docstring). Thread-safe.

    Args:
        folder: where spilled outputs are saved (created when needed); None: memory only.
        limit: frames waiting at most (>= 1).
        memory_limit: of those, frames held in memory when the folder cannot be written (>= 0).
        first_s: delay before the first retry, seconds; each failed retry doubles it.
        max_s: longest delay between retries, seconds.
    """

    def __init__(self, folder: Path | None, *, limit: int = 256, memory_limit: int = 8, first_s: float = 0.5,
                 max_s: float = 8.0) -> None:
        if limit < 1 or memory_limit < 0 or not 0 < first_s <= max_s:
            raise ValueError(f"spill queue: need limit >= 1, memory_limit >= 0, 0 < first_s <= max_s; got {limit}, "
                             f"{memory_limit}, {first_s}, {max_s}")
        self.folder = folder
        self.limit, self.memory_limit = int(limit), int(memory_limit)
        self.first_s, self.max_s = float(first_s), float(max_s)
        self._lock = threading.Lock()
        self._items: list[Spilled] = []
        self._n = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def restore(self) -> int:
        """Queue the spill files a previous daemon left (due now); returns how many."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        found = []
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if entry.name.endswith(".npz") and TEMP_MARKER not in entry.name and entry.is_file(follow_symlinks=False):
                found.append(Spilled(source=entry.name, due=time.monotonic(), tries=0, path=Path(entry.path)))
                try:
                    self._n = max(self._n, int(entry.name.split(".")[0]))
                except ValueError:
                    pass
        with self._lock:
            self._items.extend(found)
        if found:
            _log.info("%d output(s) left in %s by the previous run: retrying them", len(found), self.folder)
        return len(found)

    def add(self, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> str | None:
        """Keep one output for a retry; returns None when kept, else why not (``"spill_full"``, ``"spill_failed"``)."""
        source = str(info.get("source"))
        with self._lock:
            if len(self._items) >= self.limit:
                return "spill_full"
            self._n += 1
            n = self._n
        item = Spilled(source=source, due=time.monotonic() + self.first_s)
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                np.savez(buffer, **arrays, info=np.frombuffer(
                    json.dumps(info, default=to_jsonable, allow_nan=False).encode("utf-8"), dtype=np.uint8))
                path = self.folder / f"{n:09d}.npz"
                atomic_write_bytes(path, buffer.getvalue())
                item.path = path
            except (OSError, ValueError, TypeError) as exc:
                _log.warning("%s: cannot spill the output to %s (%s); holding it in memory", source, self.folder, exc)
        if item.path is None:
            with self._lock:
                if sum(1 for i in self._items if i.held is not None) >= self.memory_limit:
                    return "spill_failed"
            item.held = (arrays, info)
        with self._lock:
            self._items.append(item)
        return None

    def next_due(self) -> float | None:
        """time.monotonic() of the earliest retry, None when nothing waits."""
        with self._lock:
            return min((i.due for i in self._items), default=None)

    def take_due(self, now: float) -> Spilled | None:
        """The earliest item due by ``now`` (it stays queued until :meth:`done` or :meth:`again`)."""
        with self._lock:
            due = [i for i in self._items if i.due <= now]
            return min(due, key=lambda i: i.due) if due else None

    def load(self, item: Spilled) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and description of ``item`` (OSError/ValueError when its file is unreadable)."""
        if item.held is not None:
            return item.held
        assert item.path is not None
        with np.load(item.path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files if k != "info"}
            info = json.loads(bytes(data["info"]).decode("utf-8"))
        item.source = str(info.get("source", item.source))
        return arrays, info

    def done(self, item: Spilled) -> None:
        """Written (or given up): forget it and delete its file."""
        with self._lock:
            if item in self._items:
                self._items.remove(item)
        if item.path is not None:
            try:
                item.path.unlink(missing_ok=True)
            except OSError as exc:
                _log.warning("cannot remove spilled output %s: %s", item.path, exc)

    def items(self) -> list[Spilled]:
        """The waiting items (a copy)."""
        with self._lock:
            return list(self._items)

    def forget(self, item: Spilled) -> None:
        """Stop tracking ``item`` but keep its file (stopping: the next run retries it)."""
        with self._lock:
            if item in self._items:
                self._items.remove(item)

    def again(self, item: Spilled) -> None:
        """Failed again: the next try after the doubled delay."""
        item.tries += 1
        item.due = time.monotonic() + min(self.max_s, self.first_s * 2 ** max(0, item.tries - 1))

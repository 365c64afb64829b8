"""A :class:`~refscope.daemon.frames.FrameSource` the test feeds frame by frame (``source.items.put(frame)``), for
daemon round trips that interleave frames with checks (:class:`refscope.daemon.ingest.memory.MemoryFrameSource`
takes its frames up front)."""
from __future__ import annotations

import queue
import threading

from refscope.daemon.frames import Frame, IngestCounters, IngestStats


class QueueSource:
    """Delivers the frames put on ``items``, in order; ``stop`` ends delivery."""

    def __init__(self) -> None:
        self.items: queue.Queue[Frame] = queue.Queue()
        self._counters = IngestCounters()
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()

    def poll(self, timeout: float) -> Frame | None:
        try:
            frame = self.items.get(timeout=max(timeout, 0.001)) if not self._stop.is_set() else None
        except queue.Empty:
            return None
        if frame is not None:
            self._counters.accept()
        return frame

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> IngestStats:
        return self._counters.snapshot()

"""What the TUI reads from the daemon's PUB stream: one tolerant decoder for every frame role, and a
newest-only slot.

The stream carries two-part v1 messages ``[JSON header, pixel buffer]`` (:mod:`refscope.daemon.wire.protocol`);
the header's ``role`` says what the frame is:

``"lr"``          the raw live frame (``encode_frame`` fields: ``seq``, ``pixel_size_m``, ``t``);
``"enhanced"``    the enhanced frame (``encode_enhanced`` fields: ``model``, ``model_version``,
                  ``latency_s``, ``source_seq``);
``"confidence"``  a float32 [0, 1] map at enhanced resolution (``source_seq``).

A stream with only enhanced frames (older daemons) is fine: the raw pane then waits. Unknown roles are
decoded too (and ignored by the view). Nothing here copies the pixel buffer.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refscope.daemon.wire.protocol import DEFAULT_LIMITS, DTYPES, ProtocolError, ProtocolLimits, parse_header

__all__ = ["ROLES", "StreamFrame", "decode_stream_message", "NewestSlot"]

ROLES = ("lr", "enhanced", "confidence")
"""Frame roles the live view shows."""


@dataclass(frozen=True, eq=False)
class StreamFrame:
    """One decoded stream message.

    Attributes:
        role: header ``role`` (see the module docstring).
        seq: the sender's counter for this role.
        source_seq: ``seq`` of the raw frame it derives from (``seq`` itself for a raw frame).
        data: (H, W) read-only pixels.
        header: the decoded header.
        received: ``time.monotonic()`` at decoding, seconds.
    """

    role: str
    seq: int
    source_seq: int
    data: np.ndarray
    header: Mapping[str, Any] = field(default_factory=dict)
    received: float = 0.0


def _int(header: Mapping[str, Any], name: str, origin: str, default: int | None = None) -> int:
    value = header.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("bad_type" if name in header else "missing_field",
                            f"{origin}: {name!r} must be an integer >= 0, got {value!r}")
    return value


def decode_stream_message(parts: Sequence[Any], *, source: str = "stream",
                          limits: ProtocolLimits = DEFAULT_LIMITS) -> StreamFrame:
    """Decode a stream message of any role without copying the pixels.

    Checks the part count, header size, ``v``, ``role``, ``seq``, ``dtype``, ``shape`` and the buffer length;
    other fields are kept in ``header`` unchecked (the view only displays them). Raises
    :class:`~refscope.daemon.wire.protocol.ProtocolError`.
    """
    header = parse_header(parts, origin=source, limits=limits)
    if header.get("v") != 1:
        raise ProtocolError("bad_version", f"{source}: protocol version {header.get('v')!r} is not 1")
    role = header.get("role")
    if not isinstance(role, str):
        raise ProtocolError("missing_field", f"{source}: header lacks a string 'role'")
    seq = _int(header, "seq", source)
    source_seq = _int(header, "source_seq", source, default=seq)
    dtype = DTYPES.get(header.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ProtocolError("bad_dtype", f"{source}: dtype {header.get('dtype')!r} is not one of {sorted(DTYPES)}")
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and not isinstance(s, bool)
                                                                and 1 <= s <= limits.max_side for s in shape)):
        raise ProtocolError("bad_shape", f"{source}: shape {shape!r} is not [H, W] within 1..{limits.max_side}")
    if shape[0] * shape[1] > limits.max_pixels:
        raise ProtocolError("too_many_pixels", f"{source}: shape {shape} has too many pixels")
    try:
        buffer = memoryview(parts[1])
    except TypeError:
        raise ProtocolError("buffer_size", f"{source}: pixel part is not a byte buffer") from None
    expected = shape[0] * shape[1] * dtype.itemsize
    if buffer.nbytes != expected:
        raise ProtocolError("buffer_size", f"{source}: pixel buffer is {buffer.nbytes} bytes, expected {expected}")
    data = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    data.flags.writeable = False
    return StreamFrame(role, seq, source_seq, data, header, time.monotonic())


class NewestSlot:
    """Holds the newest item per key; older ones are dropped, never queued (thread-safe).

    :meth:`put` from any thread; :meth:`wait` blocks until something changed (or ``timeout`` seconds);
    :meth:`poke` wakes the waiter without a new item (e.g. the view was resized).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        self._fresh: set[str] = set()
        self._changed = threading.Event()
        self.dropped = 0

    def put(self, key: str, item: Any) -> None:
        with self._lock:
            if key in self._fresh:  # the previous one was never taken
                self.dropped += 1
            self._items[key] = item
            self._fresh.add(key)
        self._changed.set()

    def poke(self) -> None:
        self._changed.set()

    def wait(self, timeout: float) -> bool:
        """True when something changed since the last :meth:`take` (the flag is cleared)."""
        if self._changed.wait(timeout):
            self._changed.clear()
            return True
        return False

    def take(self) -> tuple[dict[str, Any], set[str]]:
        """(newest item per key, keys that got a new item since the last take)."""
        with self._lock:
            fresh, self._fresh = self._fresh, set()
            return dict(self._items), fresh

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._fresh = set()
        self._changed.set()

"""The PUB-socket publishers: :class:`StreamPublisher` (enhanced frames for viewers) and :class:`EventPublisher`
(JSON events), both non-blocking with counted drops.

Their drop policy is described in :mod:`refscope.daemon.publish`.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from ..atomic import to_jsonable
from ..errors import RefscopeError
from ..wire.status import StreamStats
from ..wire.sockets import open_socket
from ..wire.protocol import OutputFields, encode_enhanced
from .names import PUBLISH_LOGGER

__all__ = ["EVENT_TYPES", "StreamStats", "StreamPublisher", "EventPublisher"]

_log = logging.getLogger(PUBLISH_LOGGER)

EVENT_TYPES: tuple[str, ...] = (
    "frame_enhanced",
    "pair_learned",
    "pair_rejected",
    "model_promoted",
    "model_serving",
    "model_rejected",
    "reference_requested",
    "output_dropped",
    "frame_role",
    "error",
)
"""Event types the daemon emits. Other names matching ``[a-z][a-z0-9_]*`` are allowed too."""

_EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class _PubSocket:
    """A bound PUB socket with a send high-water mark that reports (rather than hides) drops."""

    def __init__(self, endpoint: str, *, hwm: int, what: str, context: zmq.Context | None) -> None:
        if int(hwm) != hwm or hwm < 1:
            raise ValueError(f"{what} {endpoint}: hwm must be an integer >= 1, got {hwm!r}")
        self.endpoint = endpoint
        self.hwm = int(hwm)
        self._what = what
        self._own_context = context is None
        self._context = context
        self._socket: zmq.Socket | None = None
        self._bound = endpoint
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port after ``:*``)."""
        return self._bound

    def start(self) -> None:
        """Create and bind the socket; RefscopeError naming the endpoint if it cannot be bound."""
        if self._socket is not None:
            raise RefscopeError(f"{self._what} {self.endpoint}: already started")
        if self._context is None:
            self._context = zmq.Context()
        try:
            # XPUB_NODROP: report a full subscriber queue as zmq.Again instead of hiding it
            sock, self._bound = open_socket(self._context, zmq.PUB, self.endpoint, what=self._what,
                                            options={zmq.SNDHWM: self.hwm, zmq.XPUB_NODROP: 1})
        except RefscopeError:
            self._release_context()
            raise
        self._socket = sock
        _log.info("%s bound to %s (hwm %d)", self._what, self._bound, self.hwm)

    def send(self, parts: list[bytes]) -> bool:
        """Send without blocking; False (and counted) when a subscriber is ``hwm`` messages behind."""
        with self._lock:
            if self._socket is None:
                raise RefscopeError(f"{self._what} {self.endpoint}: not started")
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
            except zmq.Again:
                self._dropped += 1
                return False
            self._sent += 1
            return True

    def stats(self) -> StreamStats:
        with self._lock:
            return StreamStats(sent=self._sent, dropped=self._dropped)

    def stop(self) -> None:
        """Close the socket (linger 0) and terminate the context if it is ours. Idempotent."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
        self._release_context()

    def _release_context(self) -> None:
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None


class StreamPublisher:
    """Streams enhanced frames to viewers on a PUB socket (lossy by design; see :mod:`~refscope.daemon.publish`).

    Args:
        endpoint: endpoint to bind, e.g. ``"tcp://127.0.0.1:5561"`` or ``"tcp://127.0.0.1:*"``.
        hwm: frames queued per subscriber (``SNDHWM``) before new frames are dropped, >= 1.
        context: a shared ``zmq.Context`` (not terminated by :meth:`stop`); default: an own one.

    Thread-safe: :meth:`publish` may be called from any thread.
    """

    def __init__(self, endpoint: str, *, hwm: int = 4, context: zmq.Context | None = None) -> None:
        self._pub = _PubSocket(endpoint, hwm=hwm, what="enhanced-frame stream", context=context)

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port after ``:*``)."""
        return self._pub.bound_endpoint

    def start(self) -> None:
        """Bind the PUB socket (RefscopeError naming the endpoint if impossible)."""
        self._pub.start()

    def publish(self, data: np.ndarray, fields: OutputFields, *, confidence: str | None = None,
                consistency: float | None = None) -> bool:
        """Send one enhanced frame (as :func:`~refscope.daemon.wire.protocol.encode_enhanced`: the output header's
        ``fields``, an optional ``confidence`` flag and data ``consistency``) without blocking.

        Returns True if queued for sending, False if dropped because a viewer is ``hwm`` frames behind
        (counted in :meth:`stats`). Raises ProtocolError for values the wire format refuses.
        """
        parts = encode_enhanced(data, fields, confidence=confidence, consistency=consistency, copy=False)
        return self._pub.send(parts)  # zero-copy: libzmq holds the frame itself until it is sent

    def stats(self) -> StreamStats:
        """Frames sent and dropped so far."""
        return self._pub.stats()

    def stop(self) -> None:
        """Close the socket. Idempotent."""
        self._pub.stop()

    def __enter__(self) -> StreamPublisher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EventPublisher:
    """Publishes JSON events ``[b"event", {"type", "t", "payload"}]`` on a PUB socket for the TUI and scripts.

    Args:
        endpoint: endpoint to bind, e.g. ``"tcp://127.0.0.1:5562"`` or ``"tcp://127.0.0.1:*"``.
        hwm: events queued per subscriber before new ones are dropped (counted), >= 1.
        context: a shared ``zmq.Context`` (not terminated by :meth:`stop`); default: an own one.

    Thread-safe: :meth:`emit` may be called from any thread.
    """

    TOPIC = b"event"

    def __init__(self, endpoint: str, *, hwm: int = 1000, context: zmq.Context | None = None) -> None:
        self._pub = _PubSocket(endpoint, hwm=hwm, what="event feed", context=context)

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port after ``:*``)."""
        return self._pub.bound_endpoint

    def start(self) -> None:
        """Bind the PUB socket (RefscopeError naming the endpoint if impossible)."""
        self._pub.start()

    @staticmethod
    def encode(type: str, payload: Mapping[str, Any] | None = None, *, t: float | None = None) -> list[bytes]:
        """The two message parts of an event (see the class docstring); ValueError for a bad type or payload."""
        if not isinstance(type, str) or not _EVENT_TYPE_RE.match(type):
            raise ValueError(f"event type must match [a-z][a-z0-9_]* (e.g. {EVENT_TYPES[1]!r}), got {type!r}")
        document = {"type": type, "t": time.time() if t is None else float(t), "payload": dict(payload or {})}
        try:
            body = json.dumps(document, allow_nan=False, default=to_jsonable, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event {type!r}: payload is not JSON-serialisable ({exc})") from exc
        return [EventPublisher.TOPIC, body.encode("utf-8")]

    def emit(self, type: str, payload: Mapping[str, Any] | None = None, *, t: float | None = None) -> bool:
        """Publish one event (``t``: unix seconds, default now) without blocking; False if dropped."""
        return self._pub.send(self.encode(type, payload, t=t))

    def stats(self) -> StreamStats:
        """Events sent and dropped so far."""
        return self._pub.stats()

    def stop(self) -> None:
        """Close the socket. Idempotent."""
        self._pub.stop()

    def __enter__(self) -> EventPublisher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

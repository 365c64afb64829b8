"""Frames from a ZMQ socket (PULL or SUB) in the v1 wire format of :mod:`refscope.daemon.wire.protocol`.

A worker thread owns the socket: it waits with ``zmq.Poller`` (never a blocking receive), decodes each
message and puts the frame in a bounded queue that :meth:`ZmqFrameSource.poll` reads. Malformed messages are
counted by reason code, logged on ``refscope.ingest`` and dropped; they never stop the stream.

Overflow policy: when the consumer falls behind and the internal queue is full, the worker waits (checking
for stop) instead of dropping, so the backlog moves into libzmq's receive queue (``rcvhwm`` messages). With
PULL the sender then blocks or queues (lossless); with SUB, libzmq drops new messages at the high-water mark
(the usual PUB/SUB semantics: a live view prefers fresh frames). Messages with a part larger than
``max_message_bytes`` are refused by libzmq itself (``ZMQ_MAXMSGSIZE``: the peer is disconnected) before any
memory is allocated; such messages cannot be counted.
"""
from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import zmq

from ..errors import RefscopeError
from ..wire.sockets import open_socket
from ..frames import INGEST_LOGGER, Frame, IngestCounters, IngestStats, get_until_stopped
from ..wire.protocol import ProtocolError, ProtocolLimits, decode_frame
from ..worker import Worker, supervised

__all__ = ["ZmqSourceConfig", "ZmqFrameSource"]

_log = logging.getLogger(INGEST_LOGGER)


@dataclass(frozen=True)
class ZmqSourceConfig:
    """How to receive frames over ZMQ.

    Attributes:
        endpoint: ZMQ endpoint, e.g. ``"tcp://*:5555"`` or ``"tcp://127.0.0.1:*"`` (ephemeral port; read
            :attr:`ZmqFrameSource.endpoint` after start).
        pattern: ``"pull"`` (lossless, one sender or many PUSH senders) or ``"sub"`` (subscribes to everything).
        bind: bind the endpoint (True) or connect to it (False).
        rcvhwm: receive high-water mark, messages queued inside libzmq.
        max_message_bytes: largest accepted message part, bytes (``ZMQ_MAXMSGSIZE``). The default, 1 GiB,
            admits a 16384 x 16384 float32 frame; raise it for larger float64 frames.
        limits: header/shape limits applied by the decoder.
        queue_size: frames decoded ahead of the consumer.
        poll_interval_s: how often, at most, the worker checks for stop, seconds.
    """

    endpoint: str
    pattern: Literal["pull", "sub"] = "pull"
    bind: bool = True
    rcvhwm: int = 100
    max_message_bytes: int = 1 << 30
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)
    queue_size: int = 16
    poll_interval_s: float = 0.1

    def __post_init__(self) -> None:
        if self.pattern not in ("pull", "sub"):
            raise ValueError(f"ZMQ source {self.endpoint}: pattern must be 'pull' or 'sub', got {self.pattern!r}")
        if self.rcvhwm < 0 or self.max_message_bytes <= 0 or self.queue_size <= 0 or self.poll_interval_s <= 0:
            raise ValueError(f"ZMQ source {self.endpoint}: rcvhwm, max_message_bytes, queue_size, poll_interval_s must be positive")


class ZmqFrameSource(Worker):
    """A :class:`~refscope.daemon.frames.FrameSource` reading v1 frame messages from a PULL or SUB socket.

    Pass ``context`` to share a ``zmq.Context`` (it is then not terminated by :meth:`stop`); otherwise the
    source creates and terminates its own. Sockets close with linger 0. The receiving thread is a
    :class:`~refscope.daemon.worker.Worker` (one turn: wait for messages, take what has arrived); what stops it is
    re-raised by :meth:`poll` and :meth:`stop`.
    """

    def __init__(self, config: ZmqSourceConfig, *, context: zmq.Context | None = None) -> None:
        super().__init__(f"refscope-zmq-ingest {config.endpoint}", poll_interval_s=config.poll_interval_s)
        self.config = config
        self._own_context = context is None
        self._context = context
        self._socket: zmq.Socket | None = None
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=config.queue_size)
        self._counters = IngestCounters(_log)
        self._endpoint = config.endpoint

    # ------------------------------------------------------------------------------------------ public API

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound or connected (``LAST_ENDPOINT``: the real port after ``:*``)."""
        return self._endpoint

    def start(self) -> None:
        """Open, configure and bind/connect the socket, then start the receiving thread.

        Raises :class:`~refscope.daemon.errors.RefscopeError` naming the endpoint if it cannot be used.
        """
        if self._thread is not None:
            raise RefscopeError(f"ZMQ source {self.config.endpoint}: already started")
        cfg = self.config
        if self._context is None:
            self._context = zmq.Context()
        options: dict[int, object] = {zmq.RCVHWM: cfg.rcvhwm, zmq.MAXMSGSIZE: cfg.max_message_bytes}
        if cfg.pattern == "sub":
            options[zmq.SUBSCRIBE] = b""
        try:
            sock, self._endpoint = open_socket(self._context, zmq.PULL if cfg.pattern == "pull" else zmq.SUB,
                                               cfg.endpoint, options=options, bind=cfg.bind,
                                               what=f"ZMQ source ({cfg.pattern})")
        except RefscopeError:
            self._release_context()
            raise
        self._socket = sock
        self.name = f"refscope-zmq-ingest {self._endpoint}"
        super().start()
        _log.info("ZMQ source %s %s on %s", cfg.pattern.upper(), "bound" if cfg.bind else "connected", self._endpoint)

    def poll(self, timeout: float) -> Frame | None:
        """Wait at most ``timeout`` seconds for the next frame; None if none came.

        Re-raises, on the caller's thread, any exception that stopped the receiving thread.
        """
        self.check()
        frame = get_until_stopped(self._queue, timeout, self._stop)
        if frame is None:
            self.check()
        return frame

    def stop(self) -> None:
        """Stop the thread, close the socket (linger 0) and terminate the context if it is ours; re-raise what
        stopped the thread (if anything). Idempotent."""
        ended = False
        try:
            ended = super().stop(timeout=max(5.0, 10 * self.config.poll_interval_s))
        finally:
            if not ended and self._error is None:  # pragma: no cover - the loop wakes every poll_interval_s
                _log.error("ZMQ source %s: receiving thread did not stop", self._endpoint)
            else:
                self.on_stop()  # the thread never ran: its socket is still open
                self._release_context()

    def stats(self) -> IngestStats:
        """Frames received and messages rejected (by reason code) so far."""
        return self._counters.snapshot()

    # ------------------------------------------------------------------------------------------ internals

    def _release_context(self) -> None:
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    def poll_once(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for messages and take every one that has arrived (worker thread)."""
        sock = self._socket
        assert sock is not None
        if not sock.poll(max(1, int(timeout * 1000)), zmq.POLLIN):
            return
        label = f"zmq:{self._endpoint}"
        while not self.stopping:
            try:
                parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            received_at = time.time()
            supervised(lambda: self._take(parts, label, received_at), worker="zmq ingest",
                       item=f"{label} message", count=self._counters.reject, reason="unexpected")

    def on_stop(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _take(self, parts: list[Any], label: str, received_at: float) -> None:
        """Decode one message and queue its frame; a refused message is counted by its reason."""
        try:
            frame = decode_frame(parts, source=label, limits=self.config.limits, received_at=received_at)
        except ProtocolError as exc:
            self._counters.reject(exc.reason_code, str(exc))
            return
        if self._put(frame):
            self._counters.accept()

    def _put(self, frame: Frame) -> bool:
        """Queue a frame, waiting (stop-aware) while the consumer is behind; False if stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=self.config.poll_interval_s)
                return True
            except queue.Full:
                continue
        return False

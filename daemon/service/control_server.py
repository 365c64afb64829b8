"""The daemon's control endpoint: a ZMQ REP socket answering the control commands on its own thread.

The commands, their arguments and the reply format are the wire room's (:mod:`refscope.daemon.wire.control`):
requests are validated there (:func:`~refscope.daemon.wire.control.validate_request`) and replies encoded there
(:func:`~refscope.daemon.wire.control.encode_reply`); this module owns the serving side only.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from ..errors import RefscopeError
from ..wire.control import CONTROL_LOGGER, COMMANDS, ControlError, encode_reply, validate_request
from ..wire.sockets import open_socket
from ..wire.status import ControlStats
from ..worker import Worker, supervised

__all__ = ["ControlStats", "ControlServer"]

_log = logging.getLogger(CONTROL_LOGGER)
# ------------------------------------------------------------------------------------------------ server


Handler = Callable[..., Mapping[str, Any] | None]


class ControlServer(Worker):
    """A REP endpoint answering :data:`COMMANDS` with ``handlers`` on its own thread.

    Args:
        endpoint: endpoint to bind (``"tcp://127.0.0.1:5560"``, or ``:*`` for a free port: read
            :attr:`bound_endpoint`).
        handlers: command name -> callable taking the validated arguments as keywords and returning the
            result mapping (merged into ``{"ok": true, ...}``). Raise ControlError/ValueError/RefscopeError to
            refuse with that message; any other exception is logged with its traceback and answered
            ``internal error``. Commands without a handler are answered ``not supported``.
        context: shared ``zmq.Context`` (not terminated by :meth:`stop`); default: an own one.
        max_request_bytes: largest request answered, bytes.
        poll_interval_s: how often, at most, the thread checks for stop, seconds.

    A :class:`~refscope.daemon.worker.Worker`: each turn answers at most one request; a failure of the thread
    itself is handed back by :meth:`check` and :meth:`stop`.
    """

    def __init__(
        self,
        endpoint: str,
        handlers: Mapping[str, Handler],
        *,
        context: zmq.Context | None = None,
        max_request_bytes: int = 64 * 1024,
        poll_interval_s: float = 0.1,
    ) -> None:
        unknown = sorted(set(handlers) - set(COMMANDS))
        if unknown:
            raise ValueError(f"control server: handlers for unknown commands {unknown}")
        if max_request_bytes < 64 or not poll_interval_s > 0:
            raise ValueError("control server: max_request_bytes must be >= 64 and poll_interval_s > 0")
        super().__init__(f"refscope-control {endpoint}", poll_interval_s=poll_interval_s)
        self.endpoint = endpoint
        self._handlers = dict(handlers)
        self._own_context = context is None
        self._context = context
        self.max_request_bytes = int(max_request_bytes)
        self._socket: zmq.Socket | None = None
        self._bound = endpoint
        self._lock = threading.Lock()
        self._requests = 0
        self._refused: dict[str, int] = {}

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port after ``:*``)."""
        return self._bound

    def start(self) -> None:
        """Bind the REP socket and start answering. RefscopeError naming the endpoint if it cannot bind."""
        if self._thread is not None:
            raise RefscopeError(f"control endpoint {self.endpoint}: already started")
        if self._context is None:
            self._context = zmq.Context()
        try:
            sock, self._bound = open_socket(self._context, zmq.REP, self.endpoint, what="control endpoint",
                                            options={zmq.MAXMSGSIZE: 16 * self.max_request_bytes})
        except RefscopeError:
            self._release_context()
            raise
        self._socket = sock
        self.name = f"refscope-control {self._bound}"
        super().start()
        _log.info("control endpoint (REP) bound to %s", self._bound)

    def stop(self) -> None:
        """Stop answering and close the socket; re-raise what stopped the thread (if anything). Idempotent."""
        ended = False
        try:
            ended = super().stop(timeout=5.0 + self.poll_interval_s)
        finally:
            if not ended and self._error is None:  # pragma: no cover - a handler hangs: leave its socket alone
                _log.error("control endpoint %s: thread did not stop (a command handler hangs?)", self._bound)
            else:
                self._release_context()

    def stats(self) -> ControlStats:
        """Requests answered and refused so far (any thread)."""
        with self._lock:
            return ControlStats(self._requests, sum(self._refused.values()), dict(self._refused))

    def _release_context(self) -> None:
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # ------------------------------------------------------------------------------------------ internals

    def _count(self, refused_reason: str | None) -> None:
        with self._lock:
            self._requests += 1
            if refused_reason is not None:
                self._refused[refused_reason] = self._refused.get(refused_reason, 0) + 1

    def poll_once(self, timeout: float) -> None:
        """Answer the next request, waiting at most ``timeout`` seconds for one (worker thread)."""
        sock = self._socket
        assert sock is not None
        if not sock.poll(max(1, int(timeout * 1000)), zmq.POLLIN):
            return
        try:
            parts = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        reply = supervised(lambda: self.handle(parts), worker="control endpoint", item="a control request",
                           count=lambda reason, _: self._count(reason), reason="control_failed") or encode_reply(
            {"ok": False, "error": "internal error"})
        try:
            sock.send(reply, flags=zmq.NOBLOCK)
        except zmq.Again:  # the requester vanished; REP is ready for the next request anyway
            _log.debug("control endpoint: reply could not be sent (requester gone)")

    def on_stop(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def handle(self, parts: list[bytes]) -> bytes:
        """Answer one request message (list of parts) with the encoded reply. Never raises."""
        reason: str | None = None
        try:
            if len(parts) != 1:
                reason = "bad_request"
                raise ControlError(f"a request is one JSON message part, got {len(parts)} parts")
            if len(parts[0]) > self.max_request_bytes:
                reason = "too_large"
                raise ControlError(f"request of {len(parts[0])} bytes refused (at most {self.max_request_bytes})")
            try:
                document = json.loads(parts[0].decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                reason = "bad_json"
                raise ControlError(f"request is not UTF-8 JSON ({str(exc).splitlines()[0][:100]})") from None
            try:
                cmd, args = validate_request(document)
            except ControlError:
                reason = "invalid"
                raise
            handler = self._handlers.get(cmd)
            if handler is None:
                reason = "unsupported"
                raise ControlError(f"{cmd}: not supported by this daemon")
            try:
                result = handler(**args)
            except (RefscopeError, ValueError) as exc:
                reason = "refused"
                raise ControlError(f"{cmd}: {' '.join(str(exc).split())}") from None
            reply = {"ok": True, **dict(result or {})}
            encoded = encode_reply(reply)
            self._count(None)
            return encoded
        except ControlError as exc:
            self._count(reason or "refused")
            _log.info("control request refused: %s", exc)
            return encode_reply({"ok": False, "error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - never let one request stop the endpoint
            self._count("internal")
            _log.exception("control request failed")
            return encode_reply({"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"})



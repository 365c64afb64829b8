"""The daemon's control endpoint: JSON commands over a ZMQ REP socket, and the client that sends them.

Wire format: one request is a single-part message holding a UTF-8 JSON object ``{"cmd": "<name>", ...args}``
(at most ``max_request_bytes``, default 64 KiB); the reply is a JSON object ``{"ok": true, ...result}`` or
``{"ok": false, "error": "<one line>"}``. Non-finite numbers in results are sent as ``null``.

Commands (:data:`COMMANDS`; unknown commands, unknown or ill-typed arguments get ``ok: false``):

``ping``
    ``{"pong": true, "t": <unix s>}``: the daemon is alive.
``status``
    ``{"status": {...}}``: counters, latencies, queue depths, model, learner, ingest (see ``Daemon.status``).
``pause`` / ``resume``
    ``{"paused": bool}``. Paused: frames are still received, recorded in the catalogue and learned from,
    but not enhanced, written or streamed (they are counted under ``skipped.paused``).
``request_reference``
    args ``region`` (optional ``[y0, x0, y1, x1]`` in LR pixels of the newest frame) and ``note`` (optional
    text): emits a ``reference_requested`` event with reason ``"operator"``.
``set``
    args ``method`` (one of the methods), ``sigma_n`` (a number in 0.01..100, or null for the default), ``scale``
    (2..8; refused while a model of another scale is loaded); at least one. Replies with the new settings.
``snapshot``
    writes the raw and enhanced newest frame as TIFFs into ``<state_dir>/snapshots/`` (atomically) and
    replies ``{"raw": path, "enhanced": path}``.

The server thread polls with a timeout (stop-aware), answers every request (a handler's exception becomes
``ok: false``; it never stops the thread), and binds 127.0.0.1 unless told otherwise. Requests larger than
``max_request_bytes`` are answered ``ok: false``; much larger ones (16x) are cut off by libzmq
(``ZMQ_MAXMSGSIZE``) before they are read, and their sender gets no reply.

:class:`ControlClient` is the REQ side used by the CLI, the TUI and the tests: one request at a time, a
timeout on every request, and a fresh socket after a timeout (a REQ socket that missed its reply is stuck).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from refscope.models.nlm import SIGMA_N_RANGE

from ..atomic import to_jsonable
from .schema import METHODS
from .curve import CurveClientKeys
from ..errors import RefscopeError
from .sockets import open_socket

__all__ = [
    "CONTROL_LOGGER",
    "Arg",
    "COMMANDS",
    "ControlError",
    "ControlTimeout",
    "validate_request",
    "encode_reply",
    "ControlClient",
    "wait_for_daemon",
]

CONTROL_LOGGER = "refscope.control"
_log = logging.getLogger(CONTROL_LOGGER)


class ControlError(RefscopeError):
    """A control request is invalid, or the daemon refused it (the message is sent back as ``error``)."""


class ControlTimeout(RefscopeError, TimeoutError):
    """No reply from the control endpoint within the timeout."""


# ------------------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    Attributes:
        kind: ``"str"``, ``"int"``, ``"number"`` (finite int or float) or ``"region"`` ([y0, x0, y1, x1]).
        nullable: ``null`` is accepted (passed on as None).
        choices: allowed values (for ``"str"``), or None.
        minimum, maximum: inclusive bounds for numbers; ``positive`` requires > 0.
        max_chars: longest accepted string.
    """

    kind: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    max_chars: int = 1000


COMMANDS: Mapping[str, Mapping[str, Arg]] = {
    "ping": {},
    "status": {},
    "pause": {},
    "resume": {},
    "request_reference": {"region": Arg("region", nullable=True), "note": Arg("str", nullable=True)},
    "set": {
        "method": Arg("str", choices=tuple(METHODS)),
        "sigma_n": Arg("number", nullable=True, minimum=SIGMA_N_RANGE[0], maximum=SIGMA_N_RANGE[1]),
        "scale": Arg("int", minimum=2, maximum=8),
    },
    "snapshot": {},
}
"""Command name -> its arguments (all optional; ``set`` needs at least one)."""

_REQUIRE_ONE = {"set"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_arg(cmd: str, name: str, spec: Arg, value: Any) -> Any:
    where = f"{cmd}: argument {name!r}"
    if value is None:
        if spec.nullable:
            return None
        raise ControlError(f"{where} must not be null")
    if spec.kind == "str":
        if not isinstance(value, str):
            raise ControlError(f"{where} must be a string, got {type(value).__name__}")
        if len(value) > spec.max_chars:
            raise ControlError(f"{where} is longer than {spec.max_chars} characters")
        if spec.choices is not None and value not in spec.choices:
            raise ControlError(f"{where} must be one of {', '.join(spec.choices)}; got {value[:80]!r}")
        return value
    if spec.kind in ("int", "number"):
        if spec.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ControlError(f"{where} must be an integer, got {json.dumps(value)[:80]}")
        if not _is_number(value):
            raise ControlError(f"{where} must be a finite number, got {json.dumps(value)[:80]}")
        if spec.positive and not value > 0:
            raise ControlError(f"{where} must be > 0, got {value!r}")
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            raise ControlError(f"{where} must lie in {spec.minimum:g}..{spec.maximum:g}, got {value!r}")
        return value
    if spec.kind == "region":
        if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
            raise ControlError(f"{where} must be [y0, x0, y1, x1] (4 numbers, LR pixels)")
        y0, x0, y1, x1 = (float(v) for v in value)
        if not (y1 > y0 and x1 > x0 and y0 >= 0 and x0 >= 0):
            raise ControlError(f"{where} must have 0 <= y0 < y1 and 0 <= x0 < x1, got {value!r}")
        return [y0, x0, y1, x1]
    raise AssertionError(f"unknown argument kind {spec.kind!r}")  # pragma: no cover - schema bug


def validate_request(document: Any) -> tuple[str, dict[str, Any]]:
    """Check a decoded request against :data:`COMMANDS`; return ``(cmd, args)`` or raise :class:`ControlError`."""
    if not isinstance(document, dict):
        raise ControlError(f"a request must be a JSON object {{\"cmd\": ...}}, got {type(document).__name__}")
    cmd = document.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError("a request needs a string \"cmd\"; commands: " + ", ".join(COMMANDS))
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd[:60]!r}; commands: {', '.join(COMMANDS)}")
    schema = COMMANDS[cmd]
    args: dict[str, Any] = {}
    for name, value in document.items():
        if name == "cmd":
            continue
        if name not in schema:
            allowed = ", ".join(schema) or "none"
            raise ControlError(f"{cmd}: unknown argument {str(name)[:60]!r} (allowed: {allowed})")
        args[name] = _check_arg(cmd, name, schema[name], value)
    if cmd in _REQUIRE_ONE and not args:
        raise ControlError(f"{cmd}: give at least one of {', '.join(schema)}")
    return cmd, args


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, mappings/sequences recursed, numpy/paths via to_jsonable."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    try:
        return _clean(to_jsonable(obj))
    except TypeError:
        return str(obj)


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """A reply as UTF-8 JSON (non-finite numbers as null, odd objects as strings)."""
    return json.dumps(_clean(dict(reply)), allow_nan=False, separators=(",", ":")).encode("utf-8")


# ------------------------------------------------------------------------------------------------ client


class ControlClient:
    """Sends commands to a daemon's control endpoint (REQ socket; one request at a time; not thread-safe).

    Args:
        endpoint: the daemon's control endpoint, e.g. ``"tcp://127.0.0.1:5560"``.
        timeout_s: default seconds to wait for a reply.
        context: shared ``zmq.Context``; default: an own one (terminated by :meth:`close`).
        curve: CURVE client keys (:func:`~refscope.daemon.wire.curve.load_client_keys`) for a daemon with ``security.curve_dir``;
            None: plain (or whatever the context's default socket options say, see :func:`~refscope.daemon.wire.curve.client_context`).

    Use: ``with ControlClient(ep) as c: c.request("status")``.
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, context: zmq.Context | None = None,
                 curve: CurveClientKeys | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_s = float(timeout_s)
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket | None = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            if self._context is None:
                raise RefscopeError(f"control client {self.endpoint}: closed")
            try:
                sock, _ = open_socket(self._context, zmq.REQ, self.endpoint, options={}, bind=False,
                                      what="control client", curve=self.curve)
            except RefscopeError as exc:  # a malformed endpoint: a refusal like any other, never a crash
                raise ControlError(str(exc)) from None
            self._socket = sock
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def send_raw(self, parts: list[bytes], *, timeout: float | None = None) -> dict[str, Any]:
        """Send a raw request message (for tests of malformed requests); returns the decoded reply."""
        sock = self._connect()
        wait = self.timeout_s if timeout is None else float(timeout)
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            raise ControlTimeout(f"control endpoint {self.endpoint}: cannot send (no daemon there?)") from None
        if not sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
            self._reset()  # a REQ socket that missed its reply cannot send again
            raise ControlTimeout(f"control endpoint {self.endpoint}: no reply within {wait:g} s (is the daemon running?)")
        raw = sock.recv()
        try:
            reply = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise ControlError(f"control endpoint {self.endpoint}: reply is not JSON ({exc})") from None
        if not isinstance(reply, dict):
            raise ControlError(f"control endpoint {self.endpoint}: reply is not a JSON object")
        return reply

    def request(self, cmd: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply dict (``ok`` true or false).

        Raises :class:`ControlTimeout` when no reply comes within ``timeout`` seconds (default
        ``timeout_s``); the socket is then replaced, so the client stays usable.
        """
        body = json.dumps({"cmd": cmd, **args}, allow_nan=False, default=to_jsonable).encode("utf-8")
        return self.send_raw([body], timeout=timeout)

    def call(self, cmd: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Like :meth:`request`, but raises :class:`ControlError` with the daemon's message when ``ok`` is false."""
        reply = self.request(cmd, timeout=timeout, **args)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error") or "request refused"))
        return reply

    def close(self) -> None:
        """Close the socket (and the context if it is ours). Idempotent."""
        self._reset()
        if self._own_context and self._context is not None:
            self._context.term()
        self._context = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_for_daemon(endpoint: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Ping ``endpoint`` until it answers (or ``timeout_s`` seconds pass: ControlTimeout); returns the reply."""
    deadline = time.monotonic() + timeout_s
    with ControlClient(endpoint, timeout_s=0.5) as client:
        while True:
            try:
                return client.request("ping")
            except ControlTimeout:
                if time.monotonic() >= deadline:
                    raise

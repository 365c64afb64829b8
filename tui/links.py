"""The TUI's network loops: status polling over the control endpoint, and the stream + event subscriptions.

Each loop runs on a worker thread of the app (``@work(thread=True)``), never on the UI thread; every wait is a
``poll`` with a short timeout that checks ``stop``; every socket is created, used and closed on the loop's own
thread. Results go out through callbacks (the app posts them as messages).

* :func:`poll_status` asks ``status`` every ``interval_s`` with a ``timeout_s`` per request; a timeout reports
  the daemon as down, and :class:`~refscope.daemon.wire.control.ControlClient` replaces its REQ socket, so the next
  request reaches a restarted daemon.
* :func:`subscribe` follows the endpoints it is given (they can change when the daemon restarts on ephemeral
  ports): SUB sockets reconnect by themselves while the endpoint stays the same. Per wake-up it drains what has
  arrived and hands on only the newest frame of each role (older ones are dropped, never queued).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from refscope.daemon.wire.control import ControlClient, ControlError, ControlTimeout
from refscope.daemon.errors import RefscopeError
from refscope.daemon.wire.protocol import ProtocolError
from refscope.daemon.wire.status import DaemonStatus

from .events import LogEntry, decode_event
from .stream import StreamFrame, decode_stream_message

__all__ = ["poll_status", "subscribe", "send_command", "TUI_LOGGER"]

TUI_LOGGER = "refscope.tui"
_log = logging.getLogger(TUI_LOGGER)

_STREAM_HWM = 4  # frames queued per subscription (older ones are dropped by libzmq, newest win)
_MAX_DRAIN = 64  # messages read per wake-up before handing on


def poll_status(context: zmq.Context, endpoint: str, *, stop: threading.Event,
                on_status: Callable[[DaemonStatus], None], on_down: Callable[[str], None],
                interval_s: float = 1.0, timeout_s: float = 1.0) -> None:
    """Ask ``status`` every ``interval_s`` seconds until ``stop`` is set.

    ``on_status(status)`` after every answer (the reply read with :meth:`DaemonStatus.from_dict`, which
    tolerates the keys an older daemon does not send); ``on_down(reason)`` after every timeout or refusal.
    """
    client = ControlClient(endpoint, timeout_s=timeout_s, context=context)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = client.request("status")
                if reply.get("ok") and isinstance(reply.get("status"), dict):
                    on_status(DaemonStatus.from_dict(reply["status"]))
                else:
                    on_down(f"status refused: {reply.get('error', 'no status in the reply')}")
            except (ControlTimeout, ControlError) as exc:
                on_down(str(exc))
            except zmq.ZMQError as exc:  # e.g. the context is being closed
                if stop.is_set():
                    return
                on_down(f"control endpoint {endpoint}: {exc}")
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        client.close()


def send_command(context: zmq.Context, endpoint: str, cmd: str, args: dict[str, Any], *,
                 timeout_s: float = 3.0) -> dict[str, Any]:
    """One control request on a fresh REQ socket: the reply dict, or ``{"ok": False, "error": ...}`` when
    there is no answer (never raises for network trouble)."""
    client = ControlClient(endpoint, timeout_s=timeout_s, context=context)
    try:
        return client.request(cmd, **args)
    except (ControlTimeout, ControlError, RefscopeError) as exc:
        return {"ok": False, "error": str(exc)}
    except zmq.ZMQError as exc:
        return {"ok": False, "error": f"control endpoint {endpoint}: {exc}"}
    finally:
        client.close()


class _Sub:
    """One SUB socket that follows a (possibly changing) endpoint."""

    def __init__(self, context: zmq.Context, topic: bytes, hwm: int) -> None:
        self.context, self.topic, self.hwm = context, topic, hwm
        self.endpoint: str | None = None
        self.socket: zmq.Socket | None = None

    def follow(self, endpoint: str | None) -> bool:
        """Point at ``endpoint``; True when the socket changed."""
        if endpoint == self.endpoint:
            return False
        self.close()
        self.endpoint = endpoint
        if endpoint:
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            sock.setsockopt(zmq.SUBSCRIBE, self.topic)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                _log.warning("cannot subscribe to %s: %s", endpoint, exc)
                return True
            self.socket = sock
        return True

    def drain(self) -> list[list[bytes]]:
        messages = []
        while self.socket is not None and len(messages) < _MAX_DRAIN:
            try:
                messages.append(self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
        return messages

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        self.endpoint = None


def subscribe(context: zmq.Context, endpoints: Callable[[], tuple[str | None, str | None]], *,
              stop: threading.Event, on_frames: Callable[[list[StreamFrame], dict[str, int]], None],
              on_events: Callable[[list[LogEntry]], None], on_bad: Callable[[str], None] | None = None,
              poll_ms: int = 100) -> None:
    """Receive frames and events until ``stop`` is set.

    ``endpoints()`` returns the current (stream, events) endpoints (None: not known yet) and is asked every
    wake-up. ``on_frames(newest, received)`` gets the newest frame of each role per wake-up and how many of each
    role were received (the others are dropped); ``on_events`` the decoded events in
    arrival order; ``on_bad(reason)`` each undecodable stream message.
    """
    stream, events = _Sub(context, b"", _STREAM_HWM), _Sub(context, b"event", 1000)
    try:
        while not stop.is_set():
            stream_ep, events_ep = endpoints()
            if stream.follow(stream_ep):
                _log.info("stream: subscribed to %s", stream_ep)
            if events.follow(events_ep):
                _log.info("events: subscribed to %s", events_ep)
            sockets = [s.socket for s in (stream, events) if s.socket is not None]
            if not sockets:
                stop.wait(poll_ms / 1000)
                continue
            poller = zmq.Poller()
            for sock in sockets:
                poller.register(sock, zmq.POLLIN)
            ready = dict(poller.poll(poll_ms))
            if stream.socket is not None and ready.get(stream.socket):
                newest: dict[str, StreamFrame] = {}
                received: dict[str, int] = {}
                for parts in stream.drain():
                    try:
                        frame = decode_stream_message(parts, source=stream_ep or "stream")
                    except ProtocolError as exc:
                        if on_bad is not None:
                            on_bad(exc.reason_code)
                        continue
                    newest[frame.role] = frame
                    received[frame.role] = received.get(frame.role, 0) + 1
                if newest:
                    on_frames(list(newest.values()), received)
            if events.socket is not None and ready.get(events.socket):
                entries = [e for e in (decode_event(parts) for parts in events.drain()) if e is not None]
                if entries:
                    on_events(entries)
    finally:
        stream.close()
        events.close()

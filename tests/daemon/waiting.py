"""Polling helper shared by the daemon tests (imported as ``from waiting import wait_for``)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the condition",
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy (returned) or ``timeout``
    seconds have passed (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


PROBE = b"probe"
"""First part of the stream probes :func:`stream_joined` publishes (no real stream message starts with it)."""


def subscribed(sub: Any, send_probe: Callable[[int], Any], probe_number: Callable[[list[bytes]], int | None],
               timeout: float = 10.0, what: str = "the subscription") -> None:
    """Wait until the SUB socket ``sub`` receives what its publisher sends from now on.

    PUB/SUB joins late: a subscriber gets only what is published after its subscription reached the publisher.
    ``send_probe(n)`` publishes probe number ``n`` (1, 2, ...) and ``probe_number(parts)`` tells a probe's number
    (None for anything else); probes are sent until one arrives, then every message is read up to the last probe
    sent (the subscription was in place for all probes after the first that arrived, so it arrives too). When this
    returns the probes are consumed and every later message reaches ``sub``."""
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        sent += 1
        send_probe(sent)
        if sub.poll(50):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    while probe_number(sub.recv_multipart()) != sent:
        if not sub.poll(max(1, int(1000 * (deadline - time.monotonic())))):
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (probe {sent})")


def stream_joined(sub: Any, daemon: Any, timeout: float = 10.0) -> None:
    """:func:`subscribed` on the daemon's frame stream (``daemon.stream``), with probes ``[b"probe", b"<n>"]``."""
    subscribed(sub, lambda n: daemon.stream.send_parts([PROBE, str(n).encode()]),
               lambda parts: int(parts[1]) if parts[0] == PROBE else None, timeout, "the stream subscription")


def events_joined(sub: Any, daemon: Any, timeout: float = 10.0) -> None:
    """:func:`subscribed` on the daemon's event feed (``daemon.events``), with ``probe`` events."""
    def number(parts: list[bytes]) -> int | None:
        document = json.loads(parts[1])
        return document["payload"]["n"] if document.get("type") == "probe" else None

    subscribed(sub, lambda n: daemon.events.emit("probe", {"n": n}), number, timeout, "the event subscription")

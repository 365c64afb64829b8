"""Helpers of the TUI tests: build the app against a fake daemon, wait for it, read its screen.

(pytest runs the tests without an asyncio plugin: :func:`pilot_test` runs an ``async def`` test in its own
event loop.)
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

from refscope.tui.app import RefscopeApp
from refscope.tui.simulator import FakeDaemon

APP_OPTIONS = {"status_interval_s": 0.15, "request_timeout_s": 0.4, "action_timeout_s": 2.0}


def pilot_test(fn):
    """Run an ``async def`` test (taking fixtures as usual) with ``asyncio.run``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(fake: FakeDaemon | str) -> RefscopeApp:
    endpoint = fake if isinstance(fake, str) else fake.endpoints["control"]
    return RefscopeApp(endpoint, **APP_OPTIONS)


async def wait_until(pilot, condition: Callable[[], object], timeout: float = 8.0, *,
                     tick: Callable[[], object] | None = None, what: str = "") -> None:
    """Let the app run until ``condition()`` is true (calling ``tick()`` each round, e.g. to publish a frame)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}\n--- screen ---\n{screen_text(pilot.app)}")
        if tick is not None:
            tick()
        await pilot.pause(0.05)


async def events_flowing(pilot, fake: FakeDaemon) -> None:
    """Wait until the app's event subscription receives (PUB/SUB joins asynchronously: early events are lost)."""
    from refscope.tui.event_log import EventLog

    log = pilot.app.query_one(EventLog)
    await wait_until(pilot, lambda: any(e.type == "probe" for e in log.entries),
                     tick=lambda: fake.emit("probe", {"n": 1}), what="event subscription")


def screen_text(app) -> str:
    """The screen as plain text, one line per row (what a terminal would show, without colours)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())

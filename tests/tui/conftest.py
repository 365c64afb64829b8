"""Fixtures of the TUI tests: a fake daemon built from the daemon's own endpoint classes on ephemeral ports
(helpers: ``tui_harness.py``)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from refscope.tui.simulator import FakeDaemon


@pytest.fixture()
def fake() -> Iterator[FakeDaemon]:
    daemon = FakeDaemon().start()
    try:
        yield daemon
    finally:
        daemon.stop()

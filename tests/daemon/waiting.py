"""Polling helper shared by the daemon tests (imported as ``from waiting import wait_for``)."""
from __future__ import annotations

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

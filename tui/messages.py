"""Messages the worker threads post into the UI (``App.post_message`` is thread-safe)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from textual.css.query import NoMatches
from textual.message import Message

from refscope.daemon.wire.status import DaemonStatus

from .events import LogEntry

__all__ = ["StatusUpdate", "DaemonDown", "EventsArrived", "ActionDone", "late_safe"]

F = TypeVar("F", bound=Callable[..., Any])


def late_safe(handler: F) -> F:
    """Decorate a handler of worker messages: a message that arrives while the UI is being torn down (its
    widgets already removed, so a query finds nothing) is ignored instead of failing the app."""
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except NoMatches:
            return None
    return wrapper  # type: ignore[return-value]


class StatusUpdate(Message):
    """A ``status`` reply arrived (``status``: the reply's status, typed)."""

    def __init__(self, status: DaemonStatus) -> None:
        super().__init__()
        self.status = status


class DaemonDown(Message):
    """The control endpoint did not answer (``reason``: one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class EventsArrived(Message):
    """Daemon events, oldest first."""

    def __init__(self, entries: list[LogEntry]) -> None:
        super().__init__()
        self.entries = entries


class ActionDone(Message):
    """The daemon answered an operator action (``reply``: the reply dict, ``ok`` true or false)."""

    def __init__(self, label: str, cmd: str, args: dict[str, Any], reply: dict[str, Any]) -> None:
        super().__init__()
        self.label = label
        self.cmd = cmd
        self.args = args
        self.reply = reply

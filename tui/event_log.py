"""The event log: daemon events and the TUI's own notes, newest first, scrollable, filtered by an Input."""
from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Input, Static

from .events import TYPE_STYLES, LogEntry

__all__ = ["EventLog"]


class EventLog(Vertical):
    """Newest-first event lines; the ``filter`` (case-insensitive text, matched on type and text) narrows them.

    Keeps the latest ``limit`` entries.
    """

    filter: reactive[str] = reactive("")

    def __init__(self, *, limit: int = 500, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entries: deque[LogEntry] = deque(maxlen=limit)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter by type or text ( / )", id="event-filter")
        with VerticalScroll(id="event-scroll", can_focus=False):
            yield Static("", id="event-lines")

    def on_mount(self) -> None:
        self.border_title = "events"

    def add(self, entries: list[LogEntry]) -> None:
        """Append entries (oldest first, as they arrived)."""
        self.entries.extend(entries)
        self._redraw()

    def shown(self) -> list[LogEntry]:
        """The entries on display, newest first."""
        return [e for e in reversed(self.entries) if e.matches(self.filter)]

    @on(Input.Changed, "#event-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value

    def watch_filter(self) -> None:
        self._redraw()

    def scroll_page(self, direction: int) -> None:
        scroll = self.query_one("#event-scroll", VerticalScroll)
        scroll.scroll_relative(y=direction * max(1, scroll.size.height - 1), animate=False)

    def _redraw(self) -> None:
        shown = self.shown()
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, entry in enumerate(shown):
            if i:
                text.append("\n")
            text.append(entry.clock() + " ", style="dim")
            text.append(entry.text, style=TYPE_STYLES.get(entry.type, ""))
        self.query_one("#event-lines", Static).update(text)
        total = len(self.entries)
        self.border_title = f"events {len(shown)}/{total}" if self.filter else f"events ({total})"

"""Numbers at a glance: frames, rates, latency, queues, drops, errors, library and model (from ``status``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from refscope.daemon.wire.status import DaemonStatus

from .status import summary_lines

__all__ = ["StatsPanel"]

_LABEL_WIDTH = 8


class StatsPanel(Static):
    """A block of ``label  value`` rows, redrawn on every status poll; dimmed while disconnected."""

    stale: reactive[bool] = reactive(True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("waiting for the daemon…", id=id)
        self.rows: list[tuple[str, str]] = []

    def on_mount(self) -> None:
        self.border_title = "numbers"

    def show_status(self, status: DaemonStatus, rates: Mapping[str, float | None],
                    tui: Mapping[str, Any]) -> None:
        self.rows = summary_lines(status, rates, tui)
        self.stale = False
        self._redraw()

    def watch_stale(self, stale: bool) -> None:
        self.set_class(stale, "-stale")
        if self.rows:
            self._redraw()

    def _redraw(self) -> None:
        text = Text()
        for i, (label, value) in enumerate(self.rows):
            if i:
                text.append("\n")
            text.append(f"{label:<{_LABEL_WIDTH}}", style="bold")
            bad = label in ("drops", "errors") and not value.startswith("0")
            text.append(value, style="red" if bad and not self.stale else "")
        self.update(text)

"""Drift signals against their thresholds: one label and one :class:`~textual.widgets.Sparkline` per signal.

The daemon's ``status["quality"]`` gives each signal's latest value and threshold
(:func:`~refscope.tui.status.drift_signals`); the panel keeps the recent values (or uses the daemon's own
``history``) and plots them relative to the threshold (1.0 = at the threshold). A signal past its threshold
turns red (CSS class ``-over``).
"""
from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Label, Sparkline, Static

from .messages import late_safe
from .status import History, Signal

__all__ = ["DriftPanel"]


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


class DriftPanel(Grid):
    """Rows of ``name value/threshold`` + sparkline; a note when the daemon reports no drift signals."""

    def __init__(self, *, history: int = 60, id: str | None = None) -> None:
        super().__init__(id=id)
        self._history = History(history)
        self.names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("no drift signals reported", id="drift-none")

    def on_mount(self) -> None:
        self.border_title = "drift"

    def show_signals(self, signals: dict[str, Signal]) -> None:
        self.query_one("#drift-none").display = not signals and not self.names
        for name, signal in signals.items():
            slug = _slug(name)
            if name not in self.names:
                self.names.append(name)
                self.mount(Label(id=f"drift-label-{slug}", classes="drift-label"),
                           Sparkline([], id=f"drift-spark-{slug}", classes="drift-spark"))
                self.call_after_refresh(self._fill, name, signal)
            else:
                self._fill(name, signal)

    @late_safe
    def _fill(self, name: str, signal: Signal) -> None:
        slug = _slug(name)
        label = self.query_one(f"#drift-label-{slug}", Label)
        spark = self.query_one(f"#drift-spark-{slug}", Sparkline)
        values = list(signal.history) if signal.history else self._history.add(name, signal.value)
        scale = abs(signal.threshold) if signal.threshold else None
        spark.data = [v / scale for v in values] if scale else values
        label.update(f"{name} {_fmt(signal.value)}/{_fmt(signal.threshold)}")
        for widget in (label, spark):
            widget.set_class(signal.over, "-over")

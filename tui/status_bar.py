"""The top line: connection state, daemon state (paused, method, σ_n) and the latest action's answer."""
from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

__all__ = ["StatusBar"]


class StatusBar(Static):
    """One line; every attribute is reactive and redraws it.

    ``connected``: None (not yet known), True or False; ``endpoint``: the control endpoint; ``detail``: why
    disconnected; ``paused``/``method``/``sigma``: the daemon's settings; ``drift``: signals past their
    threshold; ``message``: latest action result.
    """

    connected: reactive[bool | None] = reactive(None)
    endpoint: reactive[str] = reactive("")
    detail: reactive[str] = reactive("")
    paused: reactive[bool | None] = reactive(None)
    method: reactive[str] = reactive("")
    sigma: reactive[str] = reactive("")
    message: reactive[str] = reactive("")
    drift: reactive[str] = reactive("")

    def watch_connected(self, connected: bool | None) -> None:
        self.set_class(connected is False, "-disconnected")

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.connected is None:
            text.append("◌ connecting", style="yellow")
        elif self.connected:
            text.append("● connected", style="bold green")
        else:
            text.append("○ disconnected", style="bold red")
        if self.connected is not True or self.size.width >= 100:
            text.append(" " + self.endpoint, style="dim")
        if self.connected is False and self.detail:
            text.append(" — retrying", style="dim")
        if self.connected:
            text.append(" │ ")
            text.append("paused" if self.paused else "running", style="bold magenta" if self.paused else "green")
            if self.drift:
                text.append(" │ ")
                text.append(self.drift, style="bold red" if self.drift.startswith("drift:") else "dim green")
            if self.method:
                text.append(f" │ {self.method}")
            if self.sigma:
                text.append(f" σ_n {self.sigma}")
        if self.message:
            text.append(" │ ")
            text.append(self.message, style="red" if self.message.startswith("✗") else "cyan")
        return text

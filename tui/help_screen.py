"""The help screen (``?`` or F1): every key binding of the app, and where the numbers come from."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpScreen"]


class HelpScreen(ModalScreen[None]):
    """A modal table of ``(keys, action)``; any of Esc, ?, F1, q closes it."""

    BINDINGS = [Binding("escape,question_mark,f1,q", "dismiss", "close")]

    def __init__(self, bindings: list[tuple[str, str]], about: str) -> None:
        super().__init__()
        self.rows = bindings
        self.about = about

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for keys, description in self.rows:
            table.add_row(keys, description)
        with Vertical(id="help-box"):
            yield Static(table, id="help-keys")
            yield Static(self.about, id="help-about")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "refscope tui — keys"
        self.query_one("#help-box").border_subtitle = "Esc / ? closes"

"""One image pane of the live view: shows pre-rendered half-block lines (rendering happens off the UI thread,
in :class:`~refscope.tui.live_view.LiveView`)."""
from __future__ import annotations

from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from .render import Window, message_lines

__all__ = ["FrameView"]


class FrameView(Widget):
    """A pane that draws the strips it is given (Line API: one :class:`Strip` per row).

    Attributes:
        frames_shown: renders displayed so far (tests and the pane title use it).
        window: the sampling of the frame shown (see :func:`~refscope.tui.render.view_window`), or None.
        shape: (H, W) of the frame shown, or None.
    """

    can_focus = False
    frames_shown: reactive[int] = reactive(0, layout=False, repaint=False)
    px_per_cell: tuple[int, int] = (2, 1)
    """(height, width) display pixels per character cell: 2 x 1 for half blocks; a picture pane's cell size."""

    class Picked(Message):
        """The operator clicked a pane: ``center`` is the frame position there, normalised (y, x)."""

        def __init__(self, pane: str, center: tuple[float, float]) -> None:
            super().__init__()
            self.pane, self.center = pane, center

    def __init__(self, waiting: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.waiting = waiting
        self._strips: list[Strip] | None = None
        self.window: Window | None = None
        self.shape: tuple[int, int] | None = None

    def show(self, strips: list[Strip], window: Window, shape: tuple[int, int], title: str, subtitle: str) -> None:
        """Display a render (UI thread)."""
        self._strips, self.window, self.shape = strips, window, shape
        self.border_title, self.border_subtitle = title, subtitle
        self.frames_shown += 1
        self.refresh()

    def show_message(self, text: str, title: str | None = None) -> None:
        """Replace the image by a centred line of text (UI thread)."""
        self._strips, self.window, self.shape = None, None, None
        self.waiting = text
        if title is not None:
            self.border_title = title
        self.border_subtitle = ""
        self.refresh()

    def on_click(self, event: events.Click) -> None:
        """Pick the region to look at: the clicked frame position becomes the view's centre (LiveView)."""
        position = self.frame_position(event.x, event.y)
        if position is not None:
            self.post_message(self.Picked(self.id or "", position))

    def frame_position(self, x: int, y: int) -> tuple[float, float] | None:
        """The normalised (y, x) frame position under content cell (``x``, ``y``), or None off the frame."""
        window, shape = self.window, self.shape
        if window is None or shape is None:
            return None
        per_y, per_x = self.px_per_cell
        row = int(y * per_y + per_y // 2) - window.pad_top
        col = int(x * per_x + per_x // 2) - window.pad_left
        if not (0 <= row < len(window.rows) and 0 <= col < len(window.cols)):
            return None
        return ((window.rows[row] + 0.5) / shape[0], (window.cols[col] + 0.5) / shape[1])

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._strips is None:
            lines = message_lines(self.waiting, width, height)
            return lines[y] if y < len(lines) else Strip.blank(width)
        strip = self._strips[y] if y < len(self._strips) else Strip.blank(width)
        return strip.crop_extend(0, width, None)

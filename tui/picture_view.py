"""An image pane that shows real pixels through a terminal image protocol (Kitty graphics or Sixel, drawn by
``textual-image``); the half-block :class:`~refscope.tui.frame_view.FrameView` is the fallback elsewhere."""
from __future__ import annotations

from typing import Any

from textual.app import ComposeResult

from .frame_view import FrameView
from .render import Window

__all__ = ["PictureView", "image_widget_class"]


def image_widget_class(protocol: str) -> type:
    """textual-image's widget for ``protocol`` (``"kitty"``: Kitty's graphics protocol, ``"sixel"``)."""
    from textual_image.widget import SixelImage, TGPImage

    try:
        return {"kitty": TGPImage, "sixel": SixelImage}[protocol]
    except KeyError:
        raise ValueError(f"no image widget for {protocol!r}; one of kitty, sixel") from None


class PictureView(FrameView):
    """A :class:`FrameView` whose frames are pictures at the pane's pixel resolution (one image widget inside).

    Attributes:
        protocol: ``"kitty"`` or ``"sixel"``.
        picture: the PIL image shown (its size is the pane's content size in screen pixels), or None.
    """

    def __init__(self, waiting: str, *, protocol: str, id: str | None = None) -> None:
        super().__init__(waiting, id=id)
        self.protocol = protocol
        self.picture: Any = None
        self._widget_class = image_widget_class(protocol)

    def compose(self) -> ComposeResult:
        image = self._widget_class(id=f"{self.id}-picture" if self.id else None)
        image.display = False
        yield image

    @property
    def image_widget(self) -> Any:
        return self.query_one(self._widget_class)

    def show_picture(self, picture: Any, window: Window, shape: tuple[int, int], title: str, subtitle: str) -> None:
        """Display a picture (UI thread)."""
        self.picture = picture
        widget = self.image_widget
        widget.image = picture
        widget.display = True
        self.show([], window, shape, title, subtitle)

    def show_message(self, text: str, title: str | None = None) -> None:
        self.picture = None
        if self.is_mounted:
            self.image_widget.display = False
        super().show_message(text, title)

"""The live view: the raw LR frame and its enhancement side by side, with zoom, pan and the confidence map.

The stream subscriber hands frames to :meth:`LiveView.submit` from its thread; a single render worker
(``@work(thread=True)``) wakes up, takes only the newest frame of each role (older ones are dropped, so there
is never a backlog), renders the panes whose frame, size or view changed with
:func:`~refscope.tui.render.render_halfblock`, and posts the lines to the UI thread.

In a terminal with an image protocol (``graphics`` ``"kitty"`` or ``"sixel"``, :mod:`.graphics`) the panes are
:class:`~refscope.tui.picture_view.PictureView` and get pictures at their real pixel resolution instead
(:func:`~refscope.tui.graphics.frame_picture`, with a scale bar from the stream's pixel size). Both panes always
show the same region: click a pane to centre the view there, ``1`` zooms the enhanced frame to one frame pixel
per screen pixel (the raw frame beside it shows the same region, its pixels S times larger).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.worker import get_current_worker

from .frame_view import FrameView
from .graphics import cell_pixels, frame_picture, scale_bar
from .messages import late_safe
from .picture_view import PictureView
from .render import Window, clamp_center, render_halfblock
from .stream import NewestSlot, StreamFrame

__all__ = ["LiveView"]

ZOOM_STEP = 1.5
MAX_ZOOM = 64.0
PAN_STEP = 0.15  # of the visible width/height per key press


@dataclass(frozen=True)
class _Job:
    key: str
    frame: StreamFrame | None
    size: tuple[int, int]
    zoom: float
    center: tuple[float, float]


class LiveView(Horizontal):
    """Raw (left) and enhanced or confidence (right) panes.

    Reactive attributes (any change re-renders): ``zoom`` (>= 1), ``center`` (normalised (y, x)),
    ``show_confidence``.
    """

    zoom: reactive[float] = reactive(1.0)
    center: reactive[tuple[float, float]] = reactive((0.5, 0.5))
    show_confidence: reactive[bool] = reactive(False)

    class Rendered(Message):
        def __init__(self, pane: str, strips: list[Strip] | None, window: Window | None,
                     frame: StreamFrame | None, text: str, picture: object = None, bar: str = "") -> None:
            super().__init__()
            self.pane, self.strips, self.window, self.frame, self.text = pane, strips, window, frame, text
            self.picture, self.bar = picture, bar

    def __init__(self, *, graphics: str = "halfblock", id: str | None = None) -> None:
        super().__init__(id=id)
        self.graphics = graphics
        self._slot = NewestSlot()
        self._stop = threading.Event()
        self._cell_px = cell_pixels() if graphics in ("kitty", "sixel") else (2, 1)

    def compose(self) -> ComposeResult:
        for pane, waiting in (("raw", "waiting for raw frames…"), ("enhanced", "waiting for enhanced frames…")):
            if self.graphics in ("kitty", "sixel"):
                view: FrameView = PictureView(waiting, protocol=self.graphics, id=pane)
                view.px_per_cell = self._cell_px
            else:
                view = FrameView(waiting, id=pane)
            yield view

    def on_mount(self) -> None:
        self.query_one("#raw", FrameView).border_title = "raw LR"
        self.query_one("#enhanced", FrameView).border_title = "enhanced"
        self._render_worker()

    def on_unmount(self) -> None:
        self._stop.set()
        self._slot.poke()

    # ------------------------------------------------------------------------------------ thread-safe input

    def submit(self, frame: StreamFrame) -> None:
        """Offer a frame (any thread); only the newest per role is ever rendered."""
        self._slot.put(frame.role, frame)

    def forget(self) -> None:
        """Drop the frames held (e.g. the daemon restarted); the panes keep showing the last render."""
        self._slot.clear()

    # ------------------------------------------------------------------------------------ view control

    def zoom_by(self, factor: float) -> None:
        self.zoom = float(min(MAX_ZOOM, max(1.0, self.zoom * factor)))

    def pan(self, dy: float, dx: float) -> None:
        step = PAN_STEP / self.zoom
        self.center = clamp_center((self.center[0] + dy * step, self.center[1] + dx * step), self.zoom)

    def reset_view(self) -> None:
        self.zoom, self.center = 1.0, (0.5, 0.5)

    def one_to_one_zoom(self) -> float | None:
        """The zoom at which the enhanced pane shows one frame pixel per display pixel (a screen pixel with an image
        protocol, half a cell with half blocks); None before a frame. Never below 1 (a frame smaller than the pane)."""
        view = self.query_one("#enhanced", FrameView)
        if view.shape is None:
            view = self.query_one("#raw", FrameView)
        if view.shape is None:
            return None
        per_y, per_x = view.px_per_cell
        height, width = view.size.height * per_y, view.size.width * per_x
        fit = min(width / view.shape[1], height / view.shape[0])
        return max(1.0, 1.0 / fit) if fit > 0 else None

    def toggle_one_to_one(self) -> None:
        """Zoom to 1:1 at the current centre (pick it by clicking a pane or panning); again: back to the whole frame."""
        target = self.one_to_one_zoom()
        if target is None:
            return
        self.zoom = 1.0 if abs(self.zoom - target) < 1e-6 * target else float(min(MAX_ZOOM, target))

    @on(FrameView.Picked)
    def _picked(self, message: FrameView.Picked) -> None:
        # kept as picked (the renders clamp it to the frame), so that the next zoom (``1``, ``z``) centres there
        self.center = (min(max(message.center[0], 0.0), 1.0), min(max(message.center[1], 0.0), 1.0))

    def visible_region(self) -> list[float] | None:
        """The raw frame's visible part ``[y0, x0, y1, x1]`` in LR pixels when zoomed in, else None."""
        raw = self.query_one("#raw", FrameView)
        if raw.window is None or self.zoom <= 1.0:
            return None
        y0, x0, y1, x1 = raw.window.region
        return [float(np.floor(y0)), float(np.floor(x0)), float(np.ceil(y1)), float(np.ceil(x1))]

    def watch_zoom(self) -> None:
        self.center = clamp_center(self.center, self.zoom)
        self._slot.poke()

    def watch_center(self) -> None:
        self._slot.poke()

    def watch_show_confidence(self) -> None:
        self._slot.poke()

    def on_resize(self) -> None:
        self._slot.poke()

    # ------------------------------------------------------------------------------------ rendering

    @work(thread=True, exclusive=True, group="render", exit_on_error=False)
    def _render_worker(self) -> None:
        worker = get_current_worker()
        raw, enhanced = self.query_one("#raw", FrameView), self.query_one("#enhanced", FrameView)
        done: dict[str, tuple] = {}
        while not worker.is_cancelled and not self._stop.is_set():
            if not self._slot.wait(0.1):
                continue
            items, _ = self._slot.take()
            right = "confidence" if self.show_confidence else "enhanced"
            for pane, view, key in (("raw", raw, "lr"), ("enhanced", enhanced, right)):
                size = (view.size.width, view.size.height)
                job = _Job(key, items.get(key), size, self.zoom, self.center)
                signature = (key, id(job.frame), size, job.zoom, job.center)
                if done.get(pane) == signature or min(size) < 1:
                    continue
                done[pane] = signature
                self.post_message(self.Rendered(pane, *self._render_job(job)))

    def _render_job(self, job: _Job) -> tuple[list[Strip] | None, Window | None, StreamFrame | None, str, object, str]:
        frame = job.frame
        if frame is None:
            text = {"lr": "waiting for raw frames…", "enhanced": "waiting for enhanced frames…",
                    "confidence": "no confidence map in the stream"}[job.key]
            return None, None, None, text, None, ""
        confidence = job.key == "confidence"
        limits, palette = ((0.0, 1.0), "confidence") if confidence else (None, "gray")
        pixel_m = frame.header.get("pixel_size_m")
        pixel_nm = float(pixel_m) * 1e9 if isinstance(pixel_m, (int, float)) and pixel_m > 0 else None
        if self.graphics in ("kitty", "sixel"):  # real pixels: a picture of the pane's size in screen pixels
            per_y, per_x = self._cell_px
            picture, window, label = frame_picture(frame.data, job.size[1] * per_y, job.size[0] * per_x,
                                                   zoom=job.zoom, center=job.center, limits=limits, palette=palette,
                                                   pixel_size_nm=pixel_nm)
            return [], window, frame, "", picture, label or ""
        strips, window = render_halfblock(frame.data, *job.size, zoom=job.zoom, center=job.center, limits=limits,
                                          palette=palette)
        bar = scale_bar(pixel_nm / window.scale, job.size[0] // 2) if pixel_nm else None
        text = f"{'━' * bar[0]} {bar[1]}" if bar is not None and bar[0] <= job.size[0] // 2 else ""
        return strips, window, frame, "", None, text

    @on(Rendered)
    @late_safe
    def _show(self, message: Rendered) -> None:
        view = self.query_one(f"#{message.pane}", FrameView)
        frame = message.frame
        if frame is None or message.strips is None or message.window is None:
            view.show_message(message.text, "enhanced" if message.pane == "enhanced" else "raw LR")
            return
        h, w = frame.data.shape
        head = frame.header
        if frame.role == "lr":
            title = f"raw LR #{frame.seq}  {w}×{h}"
        elif frame.role == "confidence":
            title = f"confidence ← LR #{frame.source_seq}  {w}×{h}"
        else:
            model = f"{head.get('model', '?')} v{head.get('model_version', '?')}"
            flag = f"  [{head['confidence']}]" if head.get("confidence") else ""
            rho = head.get("consistency")  # data consistency: the output degraded vs its LR, in noise units
            rho = f"  ρ {rho:.2f}" if isinstance(rho, (int, float)) else ""
            title = f"enhanced #{frame.seq} ← LR #{frame.source_seq}  {w}×{h}  {model}{rho}{flag}"
        zoom = f"zoom ×{self.zoom:.3g}" if self.zoom > 1 else ""
        subtitle = "  ".join(part for part in (message.bar, zoom) if part)
        if message.picture is not None and isinstance(view, PictureView):
            view.show_picture(message.picture, message.window, (h, w), title, subtitle)
        else:
            view.show(message.strips, message.window, (h, w), title, subtitle)

"""The live view: the raw LR frame and its enhancement side by side, with zoom, pan and the confidence map.

The stream subscriber hands frames to :meth:`LiveView.submit` from its thread; a single render worker
(``@work(thread=True)``) wakes up, takes only the newest frame of each role (older ones are dropped, so there
is never a backlog), renders the panes whose frame, size or view changed with
:func:`~refscope.tui.render.render_halfblock`, and posts the lines to the UI thread.
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
from .messages import late_safe
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
                     frame: StreamFrame | None, text: str) -> None:
            super().__init__()
            self.pane, self.strips, self.window, self.frame, self.text = pane, strips, window, frame, text

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._slot = NewestSlot()
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield FrameView("waiting for raw frames…", id="raw")
        yield FrameView("waiting for enhanced frames…", id="enhanced")

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

    @staticmethod
    def _render_job(job: _Job) -> tuple[list[Strip] | None, Window | None, StreamFrame | None, str]:
        frame = job.frame
        if frame is None:
            text = {"lr": "waiting for raw frames…", "enhanced": "waiting for enhanced frames…",
                    "confidence": "no confidence map in the stream"}[job.key]
            return None, None, None, text
        confidence = job.key == "confidence"
        strips, window = render_halfblock(frame.data, *job.size, zoom=job.zoom, center=job.center,
                                          limits=(0.0, 1.0) if confidence else None,
                                          palette="confidence" if confidence else "gray")
        return strips, window, frame, ""

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
        subtitle = f"zoom ×{self.zoom:.3g}" if self.zoom > 1 else ""
        view.show(message.strips, message.window, (h, w), title, subtitle)

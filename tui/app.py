"""``refscope tui``: the operator's terminal UI, a thin shell over the daemon's published protocol.

Layout (``refscope.tcss``)::

    status bar: connection, paused/running, method, σ_n, latest action answer
    live view:  raw LR | enhanced (or confidence map)
    numbers | drift sparklines | event log (filter input on top)
    footer: main keys

Threads: three background workers do all the networking -- the status poller (control endpoint, ``status``
every ``status_interval_s``), the subscriber (stream + events PUB sockets) and one short worker per operator
action -- plus the live view's render worker. They talk to the UI only through ``post_message`` and the live
view's newest-only slot; the UI thread never touches a socket. The stream and event endpoints come from the
daemon's ``status["endpoints"]`` (so a daemon restarted on other ports is followed) unless given explicitly.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Input

from refscope.daemon.wire.control import COMMANDS
from refscope.daemon.wire.curve import CurveClientKeys, client_context
from refscope.daemon.wire.status import DaemonStatus

from .drift_panel import DriftPanel
from .event_log import EventLog
from .events import local_entry
from .help_screen import HelpScreen
from .links import TUI_LOGGER, poll_status, send_command, subscribe
from .live_view import ZOOM_STEP, LiveView
from .messages import ActionDone, DaemonDown, EventsArrived, StatusUpdate, late_safe
from .stats_panel import StatsPanel
from .status import RateMeter, drift_signals
from .status_bar import StatusBar
from .stream import StreamFrame

__all__ = ["RefscopeApp", "run_tui", "DEFAULT_CONTROL", "METHOD_CYCLE", "SIGMA_STEP"]

DEFAULT_CONTROL = "tcp://127.0.0.1:5560"
METHOD_CYCLE: tuple[str, ...] = tuple(COMMANDS["set"]["method"].choices or ())
"""Methods ``m`` cycles through (the control protocol's choices: best, paired, net, paired-faithful, original, bicubic)."""
SIGMA_STEP = 1.25
"""``+``/``-`` multiply/divide σ_n by this."""

_log = logging.getLogger(TUI_LOGGER)

_ABOUT = ("Numbers: the daemon's status, polled every second (fps over the last 5 s). Drift: each signal "
          "relative to its threshold, red when past it. Every action goes to the control endpoint; its answer "
          "shows in the top line.")


def _reachable(endpoint: Any, control: str) -> str | None:
    """An endpoint the TUI can connect to: a wildcard bind address is replaced by the control endpoint's host."""
    if not isinstance(endpoint, str) or not endpoint:
        return None
    if endpoint.startswith("tcp://") and endpoint[6:].rsplit(":", 1)[0] in ("*", "0.0.0.0", "[::]", "::"):
        host = urlsplit(control).hostname or "127.0.0.1"
        return f"tcp://{host}:{endpoint.rsplit(':', 1)[-1]}"
    return endpoint


class RefscopeApp(App[None]):
    """The operator's UI for one daemon.

    Args:
        control: the daemon's control endpoint.
        stream, events: PUB endpoints of the frame stream and the event feed; None: as the daemon's status says.
        status_interval_s: seconds between ``status`` polls.
        request_timeout_s: seconds a ``status`` request may take before the daemon counts as disconnected.
        action_timeout_s: seconds an operator action waits for its answer.
        curve: CURVE client keys for a daemon that requires them (``security.curve_dir``); None: plain.
    """

    CSS_PATH = "refscope.tcss"
    TITLE = "refscope"
    AUTO_FOCUS = None  # keys drive the view; the filter input takes focus only with "/"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark,f1", "help", "help"),
        Binding("r", "request_reference", "reference"),
        Binding("p", "toggle_pause", "pause/resume"),
        Binding("m", "cycle_method", "method"),
        Binding("plus,equals_sign", f"sigma({SIGMA_STEP})", "σ_n+"),
        Binding("minus", f"sigma({1 / SIGMA_STEP})", "σ_n-"),
        Binding("s", "snapshot", "snapshot"),
        Binding("c", "toggle_confidence", "confidence"),
        Binding("z", f"zoom({ZOOM_STEP})", "zoom in", show=False),
        Binding("Z", f"zoom({1 / ZOOM_STEP})", "zoom out", show=False),
        Binding("0", "reset_view", "reset view", show=False),
        Binding("1", "one_to_one", "1:1 zoom", show=False),
        Binding("up,k", "pan(-1, 0)", "pan up", show=False),
        Binding("down,j", "pan(1, 0)", "pan down", show=False),
        Binding("left,h", "pan(0, -1)", "pan left", show=False),
        Binding("right,l", "pan(0, 1)", "pan right", show=False),
        Binding("slash", "focus_filter", "filter events", show=False),
        Binding("escape", "leave_filter", "leave the filter", show=False),
        Binding("pageup", "scroll_events(-1)", "events: page up", show=False),
        Binding("pagedown", "scroll_events(1)", "events: page down", show=False),
    ]
    HELP_ROWS = [
        ("r", "request a reference scan (of the view when zoomed)"),
        ("p", "pause / resume enhancement"),
        ("m", "method → " + ", ".join(METHOD_CYCLE)),
        ("+ (=) / -", f"σ_n × / ÷ {SIGMA_STEP}"),
        ("s", "snapshot (raw + enhanced TIFF, daemon state dir)"),
        ("c", "confidence map instead of the enhanced frame"),
        ("z / Z", "zoom in / out"),
        ("0", "reset zoom and pan"),
        ("←↑↓→ / h k j l", "pan"),
        ("click / 1", "centre the view on the clicked point / 1:1 zoom there (again: whole frame)"),
        ("/", "filter the event log (Esc leaves the filter)"),
        ("PgUp / PgDn", "scroll the event log"),
        ("? / F1", "this help"),
        ("q", "quit"),
    ]

    def __init__(self, control: str = DEFAULT_CONTROL, *, stream: str | None = None, events: str | None = None,
                 status_interval_s: float = 1.0, request_timeout_s: float = 1.0,
                 action_timeout_s: float = 3.0, curve: CurveClientKeys | None = None,
                 graphics: str = "halfblock") -> None:
        super().__init__()
        self.graphics = graphics  # "kitty" / "sixel": real pixels (tui/graphics.py); "halfblock" elsewhere
        self.control_endpoint = control
        self._fixed = {"pub": stream, "events": events}
        self._endpoints: dict[str, str | None] = {"pub": stream, "events": events}
        self.status_interval_s = status_interval_s
        self.request_timeout_s = request_timeout_s
        self.action_timeout_s = action_timeout_s
        self._zmq = client_context(curve)  # every socket of the TUI is a CURVE client when keys are given
        self._stop = threading.Event()
        self._rates = RateMeter()
        self._counts_lock = threading.Lock()
        self.stream_counts: dict[str, int] = {"bad": 0}  # stream messages received, by role
        self.status: DaemonStatus | None = None
        self.connected: bool | None = None
        self.actions_sent: list[tuple[str, dict[str, Any]]] = []
        self._sigma: float | None = None
        self._method: str | None = None
        self._paused: bool | None = None

    # ------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status-bar")
        yield LiveView(graphics=self.graphics, id="live")
        with Horizontal(id="bottom"):
            yield StatsPanel(id="stats")
            yield DriftPanel(id="drift")
            yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StatusBar).endpoint = self.control_endpoint
        self._status_worker()
        self._subscriber_worker()

    def on_unmount(self) -> None:
        self._stop.set()
        # the workers close their sockets within one poll; terminate the context off the UI thread
        threading.Thread(target=self._zmq.term, name="refscope-tui-zmq-term", daemon=True).start()

    # ------------------------------------------------------------------------------------ workers

    @work(thread=True, group="status", exit_on_error=False)
    def _status_worker(self) -> None:
        poll_status(self._zmq, self.control_endpoint, stop=self._stop,
                    on_status=lambda s: self.post_message(StatusUpdate(s)),
                    on_down=lambda reason: self.post_message(DaemonDown(reason)),
                    interval_s=self.status_interval_s, timeout_s=self.request_timeout_s)

    @work(thread=True, group="subscriber", exit_on_error=False)
    def _subscriber_worker(self) -> None:
        live = self.query_one(LiveView)

        def on_frames(frames: list[StreamFrame], received: dict[str, int]) -> None:
            with self._counts_lock:
                for role, n in received.items():
                    self.stream_counts[role] = self.stream_counts.get(role, 0) + n
            for frame in frames:
                live.submit(frame)

        def on_bad(reason: str) -> None:
            with self._counts_lock:
                self.stream_counts["bad"] += 1
            _log.debug("undecodable stream message (%s)", reason)

        subscribe(self._zmq, lambda: (self._endpoints["pub"], self._endpoints["events"]), stop=self._stop,
                  on_frames=on_frames, on_events=lambda entries: self.post_message(EventsArrived(entries)),
                  on_bad=on_bad)

    @work(thread=True, group="actions", exit_on_error=False)
    def _action_worker(self, label: str, cmd: str, args: dict[str, Any]) -> None:
        reply = send_command(self._zmq, self.control_endpoint, cmd, args, timeout_s=self.action_timeout_s)
        self.post_message(ActionDone(label, cmd, args, reply))

    # ------------------------------------------------------------------------------------ worker messages

    @on(StatusUpdate)
    @late_safe
    def _on_status(self, message: StatusUpdate) -> None:
        status = message.status
        self.status = status
        self._set_connected(True, "")
        for key in ("pub", "events"):
            if self._fixed[key] is None:
                found = _reachable(status.endpoints.get(key), self.control_endpoint)
                if found is not None:
                    self._endpoints[key] = found
        self._rates.update("in", status.frames.in_)
        self._rates.update("out", status.frames.out)
        with self._counts_lock:
            counts = dict(self.stream_counts)
        self.query_one(StatsPanel).show_status(status, self._rates.rates, counts)
        signals = drift_signals(status)
        self.query_one(DriftPanel).show_signals(signals)
        self._paused = status.paused
        self._method = status.model.method or status.method
        sigma = status.model.sigma_n
        self._sigma = float(sigma) if isinstance(sigma, (int, float)) else None
        bar = self.query_one(StatusBar)
        bar.paused, bar.method = self._paused, self._method or ""
        bar.sigma = "default" if self._sigma is None else f"{self._sigma:.3g}"
        over = [name for name, signal in signals.items() if signal.over]
        bar.drift = ("drift: " + ", ".join(over)) if over else ("drift ok" if signals else "")

    @on(DaemonDown)
    @late_safe
    def _on_down(self, message: DaemonDown) -> None:
        self._set_connected(False, message.reason)

    def _set_connected(self, connected: bool, reason: str) -> None:
        bar = self.query_one(StatusBar)
        bar.detail = reason
        if connected == self.connected:
            return
        self.connected = connected
        bar.connected = connected
        self.query_one(StatsPanel).stale = not connected
        if connected:
            self._log_local("connection", f"connected to {self.control_endpoint}")
        else:
            self._log_local("connection", f"disconnected: {reason}")

    @on(EventsArrived)
    @late_safe
    def _on_events(self, message: EventsArrived) -> None:
        self.query_one(EventLog).add(message.entries)

    @on(ActionDone)
    @late_safe
    def _on_action_done(self, message: ActionDone) -> None:
        reply = message.reply
        bar = self.query_one(StatusBar)
        if not reply.get("ok"):
            error = str(reply.get("error") or "refused")
            bar.message = f"✗ {message.label}: {error}"
            self.notify(error, title=f"{message.label} failed", severity="error")
            self._log_local("action_failed", f"{message.label} failed: {error}")
            return
        text = _acknowledgement(message.cmd, reply)
        bar.message = f"✓ {text}"
        self.notify(text, title=message.label)
        self._log_local("action", text)
        if "paused" in reply:
            self._paused = bool(reply["paused"])
            bar.paused = self._paused
        model = reply.get("model")
        if isinstance(model, Mapping):
            self._method = model.get("method") or self._method
            sigma = model.get("sigma_n")
            self._sigma = float(sigma) if isinstance(sigma, (int, float)) else None
            bar.method = self._method or ""
            bar.sigma = "default" if self._sigma is None else f"{self._sigma:.3g}"

    def _log_local(self, type: str, text: str) -> None:
        self.query_one(EventLog).add([local_entry(type, text)])

    # ------------------------------------------------------------------------------------ actions

    def command(self, label: str, cmd: str, **args: Any) -> None:
        """Send ``cmd`` to the daemon in a worker; its answer arrives as :class:`ActionDone`. While the daemon
        is known to be down, the action is refused at once (no request is queued behind a dead endpoint)."""
        if self.connected is False:
            self.post_message(ActionDone(label, cmd, args, {"ok": False, "error": "not connected to the daemon"}))
            return
        self.actions_sent.append((cmd, args))
        self.query_one(StatusBar).message = f"{label}…"
        self._action_worker(label, cmd, args)

    def action_request_reference(self) -> None:
        region = self.query_one(LiveView).visible_region()
        self.command("reference request", "request_reference", **({"region": region} if region else {}))

    def action_toggle_pause(self) -> None:
        if self._paused:
            self.command("resume", "resume")
        else:
            self.command("pause", "pause")

    def action_cycle_method(self) -> None:
        current = self._method if self._method in METHOD_CYCLE else METHOD_CYCLE[-1]
        following = METHOD_CYCLE[(METHOD_CYCLE.index(current) + 1) % len(METHOD_CYCLE)]
        self._method = following  # so that quick presses keep cycling before the next status
        self.command(f"method {following}", "set", method=following)

    def action_sigma(self, factor: float) -> None:
        value = round((self._sigma or 1.0) * float(factor), 4)
        self._sigma = value
        self.command(f"σ_n {value:g}", "set", sigma_n=value)

    def action_snapshot(self) -> None:
        self.command("snapshot", "snapshot")

    def action_toggle_confidence(self) -> None:
        live = self.query_one(LiveView)
        live.show_confidence = not live.show_confidence

    def action_zoom(self, factor: float) -> None:
        self.query_one(LiveView).zoom_by(float(factor))

    def action_pan(self, dy: int, dx: int) -> None:
        self.query_one(LiveView).pan(dy, dx)

    def action_reset_view(self) -> None:
        self.query_one(LiveView).reset_view()

    def action_one_to_one(self) -> None:
        self.query_one(LiveView).toggle_one_to_one()

    def action_focus_filter(self) -> None:
        self.query_one("#event-filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.set_focus(None)

    def action_scroll_events(self, direction: int) -> None:
        self.query_one(EventLog).scroll_page(direction)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.HELP_ROWS, _ABOUT))


def _acknowledgement(cmd: str, reply: Mapping[str, Any]) -> str:
    """One line saying what the daemon did."""
    if cmd in ("pause", "resume"):
        return "paused" if reply.get("paused") else "resumed"
    if cmd == "request_reference":
        requested = reply.get("requested") if isinstance(reply.get("requested"), Mapping) else {}
        region, suggested = requested.get("region"), requested.get("suggested_region")
        where = ("[" + ", ".join(f"{v:.0f}" for v in region) + "]" if isinstance(region, list) else
                 "anywhere; suggested [" + ", ".join(f"{v:.0f}" for v in suggested) + "]"
                 if isinstance(suggested, list) else "anywhere")
        return f"reference requested ({where})"
    if cmd == "set":
        model = reply.get("model") if isinstance(reply.get("model"), Mapping) else {}
        sigma = model.get("sigma_n")
        return f"method {model.get('method', '?')}, σ_n {'default' if sigma is None else f'{sigma:g}'}"
    if cmd == "snapshot":
        names = [Path(str(reply[k])).name for k in ("raw", "enhanced") if reply.get(k)]
        return "snapshot saved: " + ", ".join(names) if names else "snapshot saved"
    return f"{cmd}: ok"


def run_tui(control: str = DEFAULT_CONTROL, *, stream: str | None = None, events: str | None = None,
            log_file: str | Path | None = None, curve: CurveClientKeys | None = None) -> int:
    """Run the app in this terminal until the operator quits; returns the exit code.

    While it runs, logging goes to ``log_file`` (or nowhere), never to the terminal it draws on; warnings are
    routed into logging; the level is the one already configured (``refscope -v``). The previous logging
    set-up is restored afterwards.
    """
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.handlers = [handler]
    logging.captureWarnings(True)
    try:
        from .graphics import detect_graphics

        graphics = detect_graphics()  # asks the terminal, before textual takes it over
        logging.getLogger("refscope.tui").info("image display: %s", graphics)
        RefscopeApp(control, stream=stream, events=events, curve=curve, graphics=graphics).run()
    finally:
        logging.captureWarnings(False)
        root.handlers = saved_handlers
        handler.close()
    return 0


"""``refscope demo`` (live): the daemon beside a simulated microscope, on a temporary folder, no set-up.

What runs (all in this process, on ephemeral 127.0.0.1 ports)::

    SimulatedMicroscope --frame_*_LR.tif--> <dir>/acquisition --watch--> Daemon --PUB--> (TUI)
            ^                                                               |
            +--<dir>/requests/reference-request-*.json <-- file hook -------+  (reference_requested)
            +--reference_*_HR.tif --> <dir>/acquisition (answered requests)

The microscope shows one specimen (particles), then at ``scene_change_s`` moves to another (cells). What a
newcomer sees within two minutes: enhanced frames from the first seconds; a reference requested as soon as
frames arrive (no model yet), answered, learned (model v1); the quality monitor raising drift after the scene
change, a reference requested where support is worst, answered, learned (model v2), quality recovering.

With a TUI (``tui``: a ``run_tui`` the command line hands in, called with the control endpoint -- as ``connect=``
when it takes that keyword -- and ``stream=``/``events=`` when it takes those) and a terminal, it is shown until the
operator quits; otherwise a line of status is printed every few seconds for ``duration_s``. ``headless`` prints only progress lines and, at the end, the timeline and
figures; ``json_path`` receives :meth:`LiveDemo.summary` (frames_in, frames_out, references_requested,
references_received, models_promoted, the quality signals over time, the timeline, ...).
"""
from __future__ import annotations

import inspect
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zmq

from refscope.models.simulator import Optics, Session

from ..atomic import atomic_write_json
from ..config import load_config
from ..wire.control import ControlClient, ControlTimeout
from ..wire.status import DaemonStatus, LearnerStatus, QualityStatus
from ..worker import Worker
from .simulate import HR_PATTERN, LR_PATTERN, SimulatedMicroscope, SimulatorConfig

__all__ = ["LiveDemoSettings", "LiveDemo", "run_live_demo", "format_timeline"]

_log = logging.getLogger("refscope.demo")

_SHOWN_EVENTS = ("reference_requested", "reference_received", "pair_learned", "pair_rejected", "model_promoted",
                 "model_serving", "model_rejected", "quality_drift", "quality_recovered", "reference_request_expired", "error")


@dataclass(frozen=True)
class LiveDemoSettings:
    """Knobs of the live demo (the defaults run comfortably on 2 CPU cores).

    Attributes:
        duration_s: run time, seconds (None: until Ctrl-C or the TUI is closed).
        lr_shape: LR frame (H, W), px.
        frame_interval_s: seconds between LR frames.
        scene_change_s: when the microscope moves to the second specimen; None: 40 % of ``duration_s`` (at
            least 12 s), or 40 s without a duration.
        hr_delay_s: seconds the simulated microscope takes to answer a request.
        library_size: patch pairs kept in the learned library (small: fast learning).
        request_interval_s: least seconds between automatic requests.
        seed: seed of the simulated specimen and noise.
        workdir: folder for everything (default: a new temporary folder, kept).
        sample_s: how often the daemon's status is sampled, seconds.
        train_round_s: training seconds per round of the background network trainer (short: a demo).
    """

    duration_s: float | None = 60.0
    lr_shape: tuple[int, int] = (256, 320)
    frame_interval_s: float = 0.5
    scene_change_s: float | None = None
    hr_delay_s: float = 1.0
    library_size: int = 2000
    request_interval_s: float = 5.0
    seed: int = 0
    workdir: Path | None = None
    sample_s: float = 1.0
    train_round_s: float = 15.0

    @property
    def scene_change_at(self) -> float:
        if self.scene_change_s is not None:
            return float(self.scene_change_s)
        return 40.0 if self.duration_s is None else max(12.0, 0.4 * float(self.duration_s))


def _short(kind: str, payload: dict[str, Any]) -> str:
    """One line about an event."""
    if kind == "reference_requested":
        return f"({payload.get('reason')}) region {payload.get('region') or payload.get('suggested_region')}" + (
            f" -- {payload['detail']}" if payload.get("detail") else "")
    if kind == "reference_received":
        return Path(str(payload.get("hr"))).name
    if kind == "pair_learned":
        ncc = payload.get("ncc")
        return f"{Path(str(payload.get('hr'))).name} paired, NCC {ncc:.3f}" if ncc is not None else "paired"
    if kind == "net_round":
        return (f"network round {payload.get('round')} {payload.get('status')}: {payload.get('reason')}")
    if kind == "model_promoted":
        before = payload.get("serving_delta_db")
        return (f"{'network ' if payload.get('kind') == 'net' else ''}v{payload.get('version')}: held-out {_db(payload.get('held_out_delta_db'))} over bicubic"
                + (f" (the model serving before scored {_db(before)} on this reference)" if before is not None else ""))
    if kind == "model_serving":
        return (f"{'network ' if payload.get('kind') == 'net' else ''}v{payload.get('version')} serving "
                f"({payload.get('promotion_to_serving_s')} s after its promotion)")
    if kind == "model_rejected":
        return str(payload.get("reason"))
    if kind in ("quality_drift", "quality_recovered"):
        signals = payload.get("signals") or {}
        return ", ".join(f"{k} {v['value']:.2f}{' (raised)' if v.get('raised') else ''}" for k, v in signals.items()
                         if v.get("value") is not None)
    if kind == "pair_rejected":
        return f"{payload.get('reason')}: {payload.get('message')}"
    return json.dumps(payload)[:120]


def format_timeline(timeline: list[dict[str, Any]]) -> str:
    """The timeline as aligned text lines ``t (s)  who  what``."""
    lines = ["  t (s)  who         event"]
    for entry in timeline:
        lines.append(f"{entry['t']:7.1f}  {entry['who']:<10}  {entry['event']}  {entry.get('detail', '')}".rstrip())
    return "\n".join(lines)


class _EventFeed(Worker):
    """Watches the daemon's event feed; each event's type and payload go to ``on_event`` (the demo's timeline)."""

    def __init__(self, endpoint: str, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        super().__init__("refscope-demo-events", poll_interval_s=0.1)
        self.endpoint = endpoint
        self._on_event = on_event
        self._sock: Any = None

    def on_start(self) -> None:
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"event")
        self._sock.connect(self.endpoint)

    def poll_once(self, timeout: float) -> None:
        if not self._sock.poll(int(timeout * 1000)):
            return
        try:
            document = json.loads(self._sock.recv_multipart()[-1])
        except (ValueError, IndexError):
            return
        self._on_event(document.get("type"), document.get("payload") or {})

    def on_stop(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)


class _StatusSampler(Worker):
    """Asks the daemon for its status every ``every_s`` seconds; each reply goes to ``record``. A failed sample is
    logged and the next one comes as planned (the daemon reports its own problems)."""

    def __init__(self, endpoint: str, every_s: float, record: Callable[[DaemonStatus], None]) -> None:
        super().__init__("refscope-demo-sampler", poll_interval_s=every_s)
        self.endpoint = endpoint
        self._record = record
        self._client: ControlClient | None = None

    def on_start(self) -> None:
        self._client = ControlClient(self.endpoint, timeout_s=10.0)

    def poll_once(self, timeout: float) -> None:
        if self._stop.wait(timeout):
            return
        assert self._client is not None
        try:
            self._record(DaemonStatus.from_dict(self._client.call("status")["status"]))
        except Exception as exc:  # noqa: BLE001 - keep sampling; the daemon reports its own problems
            _log.warning("status not sampled: %s", exc)

    def on_stop(self) -> None:
        if self._client is not None:
            self._client.close()


class LiveDemo:
    """The daemon, the simulated microscope and an observer of both (``start()``, ``sample()``, ``stop()``)."""

    def __init__(self, settings: LiveDemoSettings = LiveDemoSettings()) -> None:
        self.settings = settings
        self.folder = Path(settings.workdir) if settings.workdir is not None else Path(
            tempfile.mkdtemp(prefix="refscope-live-demo-"))
        self.daemon: Any = None
        self.microscope: SimulatedMicroscope | None = None
        self._t0 = 0.0
        self._events: list[dict[str, Any]] = []
        self._series: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._observers: list[Worker] = []
        self._client: ControlClient | None = None
        self._last_status: DaemonStatus | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the folders, start the daemon, the observer threads and the microscope."""
        from ..service.daemon import Daemon  # heavy imports only when running

        s = self.settings
        acquisition, requests, state = self.folder / "acquisition", self.folder / "requests", self.folder / "state"
        for folder in (acquisition, requests):
            folder.mkdir(parents=True, exist_ok=True)
        config = load_config(None, {
            "ingest.watch": str(acquisition), "ingest.hr_filename_pattern": HR_PATTERN,
            "ingest.lr_filename_pattern": LR_PATTERN, "state_dir": str(state),
            "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
            "publish.pub_endpoint": "tcp://127.0.0.1:*", "model.library_size": str(s.library_size),
            "monitor.hook": "file", "monitor.hook_dir": str(requests),
            "monitor.request_interval_s": str(s.request_interval_s), "log_level": "WARNING",
            "trainer.round_s": str(s.train_round_s),
        })
        self._t0 = time.monotonic()
        self.daemon = Daemon(config, folder_options={"poll_interval_s": 0.1, "retry_s": 0.2})
        self.daemon.start()
        self._client = ControlClient(self.daemon.endpoints["control"], timeout_s=10.0)
        events = _EventFeed(self.daemon.endpoints["events"], self._on_event)
        sampler = _StatusSampler(self.daemon.endpoints["control"], s.sample_s, self._record)
        self._observers = [events, sampler]
        events.start()
        time.sleep(0.2)  # PUB/SUB: let the subscription reach the event feed before anything happens
        optics = replace(Optics(), lr_shape=s.lr_shape)
        session = replace(Session(), scene_change_s=s.scene_change_at)
        self.microscope = SimulatedMicroscope(SimulatorConfig(
            optics=optics, session=session, frame_interval_s=s.frame_interval_s, hr_delay_s=s.hr_delay_s,
            seed=s.seed, out_dir=acquisition, requests_dir=requests))
        self.microscope.start()
        sampler.start()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        """Stop the microscope, take a last sample, stop the observers and the daemon. Idempotent."""
        if self.microscope is not None:
            self.microscope.stop()
        for observer in self._observers:
            observer.stop(timeout=10.0)
        self._observers = []
        if self.daemon is not None:
            try:
                self.sample()
            except ControlTimeout:
                pass
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.daemon is not None:
            self.daemon.stop()

    # ------------------------------------------------------------------------------------------ observing

    def _on_event(self, kind: str | None, payload: dict[str, Any]) -> None:
        """An event of the daemon's feed: the ones the demo shows go on its timeline."""
        if kind in _SHOWN_EVENTS:
            with self._lock:
                self._events.append({"t": round(self.elapsed(), 2), "who": "daemon", "event": kind,
                                     "detail": _short(kind, payload), "payload": payload})

    def sample(self) -> DaemonStatus:
        """Ask the daemon for its status now and record it; returns it."""
        assert self._client is not None
        status = DaemonStatus.from_dict(self._client.call("status")["status"])
        self._record(status)
        return status

    def _record(self, status: DaemonStatus) -> None:
        quality = status.quality or QualityStatus()
        point = {"t": round(self.elapsed(), 2), "frames_in": status.frames.in_, "frames_out": status.frames.out,
                 "model_version": status.model_version, "drift": quality.drift,
                 "confidence_mean": quality.confidence_mean,
                 **{name: signal.value for name, signal in quality.signals.items()}}
        with self._lock:
            self._series.append(point)
            self._last_status = status

    def status_line(self) -> str:
        """One line of where things stand (the newest sample)."""
        with self._lock:
            status = self._last_status
            point = self._series[-1] if self._series else None
        if status is None or point is None:
            return f"{self.elapsed():6.1f} s  starting..."
        requests = (status.quality or QualityStatus()).requests
        held = (status.learner or LearnerStatus()).held_out_delta_db
        signals = ", ".join(f"{k} {point[k]:.2f}" for k in ("coverage", "texture", "intensity", "focus")
                            if point.get(k) is not None) or "signals n/a (no model yet)"
        return (f"{point['t']:6.1f} s  frames {point['frames_in']} in / {point['frames_out']} enhanced  model v"
                f"{point['model_version']}{f' ({held:+.2f} dB held-out)' if held is not None and point['model_version'] else ''}"
                f"  {signals}  drift {'YES' if point['drift'] else 'no'}  references {requests.received}/"
                f"{requests.made} requested")

    # ------------------------------------------------------------------------------------------ results

    def timeline(self) -> list[dict[str, Any]]:
        """Daemon events and microscope events, in time order (seconds since the demo started)."""
        offset = (self.microscope._t0 - self._t0) if self.microscope is not None else 0.0
        entries: list[dict[str, Any]] = []
        if self.microscope is not None:
            for e in self.microscope.timeline():
                detail = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("t", "event"))
                entries.append({"t": round(e["t"] + offset, 2), "who": "microscope", "event": e["event"],
                                "detail": detail})
        with self._lock:
            entries += [{k: v for k, v in e.items() if k != "payload"} for e in self._events]
        return sorted(entries, key=lambda e: e["t"])

    def _catalogue_counts(self) -> Any:
        """Frames by status in the daemon's catalogue (None while it cannot be opened)."""
        from ..state.catalogue import Catalogue

        try:
            with Catalogue.in_state_dir(self.folder / "state") as catalogue:
                return catalogue.counts()
        except Exception as exc:  # noqa: BLE001 - a summary without these figures is still a summary
            _log.warning("catalogue counts unavailable: %s", exc)
            return None

    def summary(self) -> dict[str, Any]:
        """Figures of the run (JSON-able); see the module docstring."""
        with self._lock:
            status = self._last_status or DaemonStatus()
            series = list(self._series)
            events = list(self._events)
        quality = status.quality or QualityStatus()
        requests, learner = quality.requests, status.learner or LearnerStatus()
        frames, trainer = status.frames, status.trainer
        scene = self.settings.scene_change_at
        drift_t = [e["t"] for e in events if e["event"] == "quality_drift"]
        recovered_t = [e["t"] for e in events if e["event"] == "quality_recovered"]
        promoted = [e for e in events if e["event"] == "model_promoted"]
        serving = {(e["payload"].get("kind", "paired"), e["payload"].get("version")): e["t"]
                   for e in events if e["event"] == "model_serving"}
        counted = self._catalogue_counts()
        after = [t for t in recovered_t if drift_t and t > drift_t[-1]]
        return {
            "folder": str(self.folder),
            "duration_s": round(self.elapsed(), 2),
            "frame_shape": list(self.settings.lr_shape),
            "frame_interval_s": self.settings.frame_interval_s,
            "scene_change_s": scene,
            "frames_in": frames.in_,
            "frames_in_lr": frames.in_lr,
            "frames_out": frames.out,
            # from the catalogue once the daemon stopped (the last status polled can be a frame or two behind)
            "frames_enhanced": counted.frames.get("enhanced") if counted is not None else frames.written,
            "frames_rejected": counted.frames.get("rejected") if counted is not None else None,
            "frames_dropped": frames.dropped,
            "references_requested": requests.made,
            "requests_by_reason": dict(requests.by_reason),
            "references_received": requests.received,
            "models_promoted": learner.models_promoted,
            "models_rejected": learner.models_rejected,
            "model_version": status.model_version,
            "served_by": status.model.served_by,
            "net_rounds": trainer.rounds,
            "net_promotions": trainer.promotions,
            "net_failures": trainer.failures,
            "held_out_delta_db": learner.held_out_delta_db,
            "last_reference_delta_db": learner.last_reference_delta_db,
            "promotions": [{"t": e["t"], "version": e["payload"].get("version"),
                            "serving_t": serving.get((e["payload"].get("kind", "paired"), e["payload"].get("version"))),
                            "held_out_delta_db": e["payload"].get("held_out_delta_db")} for e in promoted],
            "drift_raised_s": drift_t,
            "drift_cleared_s": recovered_t,
            "drift_detected_after_scene_change_s": next((round(t - scene, 2) for t in drift_t if t >= scene), None),
            "recovered": bool(after) and not quality.drift,
            "final_signals": {k: v.value for k, v in quality.signals.items()},
            "thresholds": {k: {"on": v.on, "off": v.off} for k, v in quality.signals.items()},
            "latency_p50_s": status.latency.p50_s,
            "errors_by_reason": dict(status.errors_by_reason),
            "quality": series,
            "timeline": self.timeline(),
        }


def _run_tui(tui: Callable[..., Any], endpoints: dict[str, Any]) -> None:
    """Call ``run_tui`` with the daemon's endpoints: ``connect=`` when it takes that keyword, else the control
    endpoint first, plus ``stream=`` / ``events=`` when accepted."""
    try:
        params = inspect.signature(tui).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {k: endpoints[v] for k, v in (("stream", "pub"), ("events", "events")) if k in params}
    if "connect" in params:
        tui(connect=endpoints["control"], **extra)
    else:
        tui(endpoints["control"], **extra)


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} dB"


def _print_report(summary: dict[str, Any]) -> None:
    print("\ntimeline")
    print(format_timeline(summary["timeline"]))
    print("\nquality over time (every ~5 s: the frame signals, drift, model)")
    last = -1e9
    for point in summary["quality"]:
        if point["t"] - last < 5.0:
            continue
        last = point["t"]
        sig = "  ".join(f"{k} {point[k]:5.2f}" if point.get(k) is not None else f"{k}   n/a"
                        for k in ("coverage", "texture", "intensity", "focus"))
        print(f"{point['t']:7.1f} s  {sig}  drift {'YES' if point['drift'] else 'no '}  model v{point['model_version']}"
              f"  frames out {point['frames_out']}")
    print(f"\nframes: {summary['frames_in']} in ({summary['frames_in_lr']} LR), {summary['frames_enhanced']} enhanced "
          f"(catalogue), {summary['frames_out']} streamed, {summary['frames_dropped']} dropped; latency p50 "
          f"{summary['latency_p50_s'] or 0:.2f} s")
    print(f"references: {summary['references_requested']} requested {summary['requests_by_reason']}, "
          f"{summary['references_received']} received; libraries: {summary['models_promoted']} promoted, "
          f"{summary['models_rejected']} rejected; library v{summary['model_version']} "
          f"(held-out {_db(summary['held_out_delta_db'])} over bicubic)")
    print(f"background network: {summary['net_rounds']} training round(s), {summary['net_promotions']} promoted, "
          f"{summary['net_failures']} failed; serving now: {summary['served_by']}")
    detected = summary["drift_detected_after_scene_change_s"]
    print(f"out-of-sample: the serving model scored {_db(summary['last_reference_delta_db'])} on the newest reference "
          f"before learning from it; the newest library scores {_db(summary['held_out_delta_db'])} on its held-out area")
    print(f"scene change at {summary['scene_change_s']:.0f} s: drift "
          f"{'detected %.1f s later' % detected if detected is not None else 'not detected'}; quality "
          f"{'recovered' if summary['recovered'] else 'not recovered (yet)'}")
    print(f"files in {summary['folder']}")


def run_live_demo(*, headless: bool = False, duration_s: float | None = None, json_path: str | None = None,
                  workdir: str | None = None, seed: int = 0, small: bool = False,
                  interval_s: float | None = None, tui: Callable[..., Any] | None = None) -> int:
    """Run the live demo (see the module docstring); returns 0, or 1 when nothing was learned. ``tui``: the TUI's
    ``run_tui`` to show it in (None: status lines); ignored when ``headless``."""
    tui = None if headless else tui
    if duration_s is None and tui is None:
        duration_s = 60.0 if headless else 90.0
    settings = LiveDemoSettings(duration_s=duration_s, lr_shape=(128, 160) if small else (256, 320),
                                seed=seed, workdir=Path(workdir) if workdir else None,
                                frame_interval_s=interval_s if interval_s is not None else (0.3 if small else 0.5))
    demo = LiveDemo(settings)
    print(f"refscope live demo in {demo.folder}: a simulated microscope scans {settings.lr_shape[1]}x"
          f"{settings.lr_shape[0]} px frames every {settings.frame_interval_s:g} s; the specimen changes at "
          f"{settings.scene_change_at:.0f} s" + (f"; {duration_s:.0f} s in all (Ctrl-C stops early)" if duration_s
                                                  else ""), flush=True)
    demo.start()
    try:
        if tui is not None:
            _run_tui(tui, demo.daemon.endpoints)
        else:
            deadline = time.monotonic() + (duration_s or 0.0)
            next_line = time.monotonic() + (5.0 if headless else 3.0)
            while time.monotonic() < deadline:
                time.sleep(0.2)
                demo.daemon.check()
                if demo.microscope is not None:
                    demo.microscope.check()
                if time.monotonic() >= next_line:
                    print(demo.status_line(), flush=True)
                    next_line += 5.0 if headless else 3.0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", flush=True)
    finally:
        demo.stop()
    summary = demo.summary()
    _print_report(summary)
    if json_path:
        atomic_write_json(Path(json_path), summary)
        print(f"wrote {json_path}")
    return 0 if summary["models_promoted"] >= 1 else 1

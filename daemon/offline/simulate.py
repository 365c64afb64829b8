"""``refscope simulate``: a simulated SEM that streams LR frames and answers reference requests.

::

    refscope simulate (--out DIR | --zmq EP) [--requests-dir DIR | --events EP] [--size WxH] [--pixel-size NM]
                      [--interval S] [--scene-change S] [--contrast-change T] [--focus-change T]
                      [--kinds A,B] [--specimen HR.tif] [--duration S] [--seed N]

The physics is :mod:`refscope.models.simulator`: two specimen areas (``--kinds``, default particles then cells;
``--specimen`` replaces the first by a real HR image), a field that drifts, dose-dependent Poisson-Gaussian
noise, probe blur, line jitter, optional contrast and focus changes, and a scene change (the stage moves to the
second area) at ``--scene-change`` seconds.

Frames go either into a folder (``--out``) as calibrated TIFFs written atomically -- ``frame_<seq>_LR.tif`` and
``reference_<n>_HR.tif``, with pixel size, stage position, time, dwell and detector in their metadata
(:func:`~refscope.daemon.images.write_tiff`) -- or over ZMQ (``--zmq``: a PUSH socket connected to the daemon's
ingest endpoint, :func:`~refscope.daemon.wire.protocol.encode_frame`, roles ``"lr"`` and ``"hr"``).

Reference requests (:mod:`refscope.daemon.service.reference_hooks` format) are read from a folder the daemon's file hook writes
(``--requests-dir``: every new ``*.json``) or from the daemon's event feed (``--events``: ``reference_requested``
events). Each is answered, ``hr_delay_s`` later, by an HR scan at ``hr_factor`` times the LR sampling of the
requested region (its stage position when the request has one).

:class:`SimulatedMicroscope` is the same simulator as a stoppable worker thread (the live demo and the tests use it).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from refscope.models.simulator import (Area, Event, Optics, Session, State, make_areas, scan_hr, scan_lr,
                                       specimen_from_image, state_at)
from refscope.models.synthetic import KINDS

from ..worker import Worker
from ..errors import RefscopeError
from ..wire.protocol import encode_frame
from ..images import read_image, write_tiff

__all__ = ["SIMULATOR_LOGGER", "LR_PATTERN", "HR_PATTERN", "SimulatorConfig", "SimulatorStats",
           "SimulatedMicroscope", "add_simulate_parser", "run_simulate"]

SIMULATOR_LOGGER = "refscope.simulate"
_log = logging.getLogger(SIMULATOR_LOGGER)

LR_PATTERN = "*_LR.tif"
"""File names of the simulator's LR frames (``ingest.lr_filename_pattern``)."""
HR_PATTERN = "*_HR.tif"
"""File names of the simulator's HR references (``ingest.hr_filename_pattern``)."""


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulated microscope shows and where it sends it.

    Attributes:
        optics: frame size, pixel size, doses, probe, jitter (:class:`~refscope.models.simulator.Optics`).
        session: drift, scene change, contrast/focus events (:class:`~refscope.models.simulator.Session`).
        kinds: specimen kind of each area (two areas: before and after the scene change).
        specimen_image: an HR image replacing the first area, or None.
        frame_interval_s: seconds between LR frames (> 0).
        hr_delay_s: seconds between a request and its HR reference (the slow scan), >= 0.
        seed: seed of the specimen and the noise.
        out_dir: folder receiving the TIFFs, or None.
        push_endpoint: daemon ingest endpoint to PUSH frames to, or None (exactly one of the two).
        requests_dir: folder of request JSON files to answer, or None.
        events_endpoint: daemon event feed to answer ``reference_requested`` events from, or None.
    """

    optics: Optics = field(default_factory=Optics)
    session: Session = field(default_factory=Session)
    kinds: tuple[str, ...] = ("particles", "cells")
    specimen_image: Path | None = None
    frame_interval_s: float = 1.0
    hr_delay_s: float = 1.0
    seed: int = 0
    out_dir: Path | None = None
    push_endpoint: str | None = None
    requests_dir: Path | None = None
    events_endpoint: str | None = None

    def __post_init__(self) -> None:
        if (self.out_dir is None) == (self.push_endpoint is None):
            raise ValueError("simulator: give exactly one of out_dir (a folder) and push_endpoint (ZMQ)")
        if not self.frame_interval_s > 0 or self.hr_delay_s < 0:
            raise ValueError("simulator: frame_interval_s must be > 0 and hr_delay_s >= 0 seconds")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"simulator: kinds must be names from {KINDS}, got {list(self.kinds)}")


@dataclass(frozen=True)
class SimulatorStats:
    """Counters: ``frames`` sent, ``references`` sent, ``requests`` seen, ``errors``; ``last_error``."""

    frames: int
    references: int
    requests: int
    errors: int
    last_error: str | None


class SimulatedMicroscope(Worker):
    """The simulator as a worker thread: ``start()``, ``timeline()`` / ``stats()`` any time, ``stop()``.

    Rendering the specimen happens in :meth:`start` (about a second for 256x320 frames).
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._areas: list[Area] = []
        self._rng = np.random.default_rng(config.seed + 1)
        super().__init__("refscope-simulator", poll_interval_s=0.05)
        self._lock = threading.Lock()
        self._timeline: list[dict[str, Any]] = []
        self._frames = self._references = self._requests = self._errors = 0
        self._last_error: str | None = None
        self._seq = 0
        self._t0 = 0.0
        self._context: zmq.Context | None = None
        self._push: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._seen_requests: set[str] = set()
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._state: State | None = None
        self._session = config.session

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def areas(self) -> list[Area]:
        """The specimen areas (after :meth:`start`)."""
        return self._areas

    def start(self) -> None:
        """Render the specimen, connect the sockets, start the thread (RefscopeError when already started)."""
        if self._thread is not None:
            raise RefscopeError("simulator: already started")
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        kinds = list(cfg.kinds)
        areas = make_areas(kinds, cfg.optics, rng=rng)
        if cfg.specimen_image is not None:
            image = read_image(cfg.specimen_image).data
            areas[0] = specimen_from_image(image, cfg.optics, name=Path(cfg.specimen_image).name)
        self._areas = areas
        if cfg.out_dir is not None:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.push_endpoint is not None or cfg.events_endpoint is not None:
            self._context = zmq.Context()
        if cfg.push_endpoint is not None:
            self._push = self._context.socket(zmq.PUSH)
            self._push.setsockopt(zmq.LINGER, 2000)
            self._push.setsockopt(zmq.SNDHWM, 64)
            self._push.connect(cfg.push_endpoint)
        if cfg.events_endpoint is not None:
            self._sub = self._context.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"event")
            self._sub.connect(cfg.events_endpoint)
        if cfg.requests_dir is not None:
            cfg.requests_dir.mkdir(parents=True, exist_ok=True)
            self._seen_requests = {p.name for p in cfg.requests_dir.glob("*.json")}  # old requests are not ours
        self._t0 = self._next_frame = time.monotonic()
        super().start()
        self._note("started", areas=[a.name for a in areas], frame_shape=list(cfg.optics.lr_shape),
                   pixel_nm=cfg.optics.lr_pixel_nm)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the thread and close the sockets; re-raises a failure of the thread. Idempotent; returns whether
        the thread ended."""
        try:
            return super().stop(timeout)
        finally:
            for sock in (self._push, self._sub):
                if sock is not None:
                    sock.close()
            self._push = self._sub = None
            if self._context is not None:
                self._context.term()
                self._context = None

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._t0

    def change_scene_now(self) -> None:
        """Move to the second specimen area now (instead of at ``session.scene_change_s``)."""
        self._session = replace(self._session, scene_change_s=self.elapsed())

    def timeline(self) -> list[dict[str, Any]]:
        """What happened, oldest first: ``{"t": s since start, "event": ..., ...}`` (started, scene_change,
        contrast_change, focus_change, request_received, reference_sent, error)."""
        with self._lock:
            return [dict(e) for e in self._timeline]

    def stats(self) -> SimulatorStats:
        with self._lock:
            return SimulatorStats(self._frames, self._references, self._requests, self._errors, self._last_error)

    # ------------------------------------------------------------------------------------------ worker

    def _note(self, event: str, **details: Any) -> None:
        entry = {"t": round(self.elapsed(), 3), "event": event, **details}
        with self._lock:
            self._timeline.append(entry)
        _log.info("simulator %.1f s: %s %s", entry["t"], event, details or "")

    def _fail(self, message: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = message
        _log.error("simulator: %s", message)

    def poll_once(self, timeout: float) -> None:
        """One turn: answer the reference requests that are due, scan a frame when one is due, then sleep until
        the next is due (at most ``timeout`` s)."""
        self._collect_requests()
        now = time.monotonic()
        due = [r for r in self._pending if r[0] <= now]
        self._pending = [r for r in self._pending if r[0] > now]
        for _, request in due:
            self._answer(request)
        if now >= self._next_frame:
            self._acquire()
            self._next_frame = max(self._next_frame + self.config.frame_interval_s, time.monotonic())
        wake = min([self._next_frame] + [r[0] for r in self._pending])
        self._stop.wait(min(timeout, max(0.0, wake - time.monotonic())))

    def _state_now(self) -> State:
        state = state_at(self.elapsed(), self._areas, self.config.optics, self._session)
        previous, self._state = self._state, state
        if previous is not None:
            if state.area != previous.area:
                self._note("scene_change", area=self._areas[state.area].name,
                           stage_xy_m=[round(v, 9) for v in state.stage_xy_m])
            if (state.gain, state.offset) != (previous.gain, previous.offset):
                self._note("contrast_change", gain=state.gain, offset=state.offset)
            if state.blur_px != previous.blur_px:
                self._note("focus_change", blur_px=state.blur_px)
        return state

    def _acquire(self) -> None:
        state = self._state_now()
        image = scan_lr(self._areas, state, self.config.optics, self._rng)
        self._seq += 1
        name = f"frame_{self._seq:06d}_LR.tif"
        if self._send(image, role="lr", name=name, pixel_nm=self.config.optics.lr_pixel_nm, stage=state.stage_xy_m):
            with self._lock:
                self._frames += 1

    def _send(self, image: np.ndarray, *, role: str, name: str, pixel_nm: float, stage: tuple[float, float]) -> bool:
        cfg = self.config
        try:
            if cfg.out_dir is not None:
                meta = {"stage_xy_m": list(stage), "acquired_at": datetime.now().isoformat(timespec="milliseconds"),
                        "dwell_s": 1e-6 if role == "lr" else 4e-6, "detector": "ETD (simulated)",
                        "simulated": True, "role": role}
                write_tiff(cfg.out_dir / name, image, pixel_size_nm=pixel_nm, metadata=meta)
            else:
                assert self._push is not None
                parts = encode_frame(image, seq=self._seq, pixel_size_m=pixel_nm * 1e-9, role=role, stage_xy_m=stage,
                                     t=time.time())
                if not self._push.poll(1000, zmq.POLLOUT):
                    self._fail(f"{name}: the daemon does not take frames at {cfg.push_endpoint}; frame dropped")
                    return False
                self._push.send_multipart(parts, flags=zmq.NOBLOCK)
            return True
        except (OSError, ValueError, zmq.ZMQError, RefscopeError) as exc:
            self._fail(f"{name}: not sent ({exc})")
            return False

    # ------------------------------------------------------------------------------------------ requests

    def _collect_requests(self) -> None:
        found: list[dict[str, Any]] = []
        if self._sub is not None:
            while self._sub.poll(0):
                try:
                    document = json.loads(self._sub.recv_multipart()[-1])
                except (ValueError, IndexError):
                    continue
                if isinstance(document, dict) and document.get("type") == "reference_requested":
                    found.append(document.get("payload") or {})
        folder = self.config.requests_dir
        if folder is not None:
            try:
                names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
            except OSError:
                names = []
            for name in names:
                if name in self._seen_requests:
                    continue
                self._seen_requests.add(name)
                try:
                    document = json.loads((folder / name).read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    self._fail(f"request {name}: unreadable ({exc})")
                    continue
                if isinstance(document, dict):
                    found.append(document)
        for request in found:
            with self._lock:
                self._requests += 1
            self._note("request_received", id=request.get("id"), reason=request.get("reason"),
                       region=request.get("region") or request.get("suggested_region"))
            self._pending.append((time.monotonic() + self.config.hr_delay_s, request))

    def _answer(self, request: Mapping[str, Any]) -> None:
        optics = self.config.optics
        state = self._state_now()
        height, width = optics.lr_shape
        region = request.get("region") or request.get("suggested_region")
        if not (isinstance(region, list) and len(region) == 4):
            bh, bw = height // 2, width // 2
            region = [(height - bh) // 2, (width - bw) // 2, (height - bh) // 2 + bh, (width - bw) // 2 + bw]
        y0, x0, y1, x1 = (float(v) for v in region)
        box = (max(8, int(round(y1 - y0))), max(8, int(round(x1 - x0))))
        centre = request.get("region_center_stage_xy_m")
        if not (isinstance(centre, list) and len(centre) == 2):
            px = optics.lr_pixel_nm * 1e-9
            centre = [state.stage_xy_m[0] + ((x0 + x1) / 2 - width / 2) * px,
                      state.stage_xy_m[1] + ((y0 + y1) / 2 - height / 2) * px]
        try:
            image = scan_hr(self._areas, state, optics, self._rng, centre_xy_m=centre, lr_box_shape=box)
        except ValueError as exc:
            self._fail(f"request {request.get('id')}: cannot scan the region ({exc})")
            return
        with self._lock:
            self._references += 1
            n = self._references
        self._seq += 1
        name = f"reference_{n:03d}_HR.tif"
        if self._send(image, role="hr", name=name, pixel_nm=optics.lr_pixel_nm / optics.hr_factor,
                      stage=(float(centre[0]), float(centre[1]))):
            self._note("reference_sent", id=request.get("id"), file=name, shape=list(image.shape),
                       area=self._areas[state.area].name)


# ------------------------------------------------------------------------------------------------ command


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in LR pixels, e.g. 320x256, got {text!r}") from None
    if min(width, height) < 32:
        raise argparse.ArgumentTypeError(f"frame size {text} is too small (at least 32x32)")
    return height, width


def _seconds_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "never", "off"):
        return None
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 or 'none', got {text!r}")
    return value


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand (handler :func:`run_simulate`) to ``subparsers``."""
    p = subparsers.add_parser(
        "simulate", help="a simulated SEM: LR frames into a folder or over ZMQ, answering reference requests",
        description="Simulate an SEM session: LR frames of a drifting field (noise, probe blur, line jitter, "
        "optional contrast/focus changes, a scene change), written as calibrated TIFFs (--out) or pushed over ZMQ "
        "(--zmq); reference requests (--requests-dir or --events) are answered with HR scans of the region.")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", type=Path, help="folder to write frame_*_LR.tif / reference_*_HR.tif to")
    target.add_argument("--zmq", metavar="EP", help="daemon ingest endpoint to PUSH frames to")
    requests = p.add_mutually_exclusive_group()
    requests.add_argument("--requests-dir", metavar="DIR", type=Path, help="answer request JSON files in DIR")
    requests.add_argument("--events", metavar="EP", help="answer reference_requested events of this event feed")
    p.add_argument("--size", type=_size, default=(256, 320), metavar="WxH", help="LR frame size (default 320x256)")
    p.add_argument("--pixel-size", type=float, default=10.0, metavar="NM", help="LR pixel size in nm (default 10)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between frames (default 1)")
    p.add_argument("--scene-change", type=_seconds_or_none, default=30.0, metavar="S",
                   help="move to the second specimen area after S seconds (default 30; 'none': never)")
    p.add_argument("--contrast-change", type=_seconds_or_none, default=None, metavar="T",
                   help="raise the detector gain by 40%% for 10 s from T seconds")
    p.add_argument("--focus-change", type=_seconds_or_none, default=None, metavar="T",
                   help="defocus (probe blur +1 LR px) for 10 s from T seconds")
    p.add_argument("--kinds", default="particles,cells", metavar="A,B", help=f"specimen kinds from {', '.join(KINDS)}")
    p.add_argument("--specimen", type=Path, metavar="HR.tif", help="an HR image used as the first specimen area")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of specimen and noise (default 0)")
    p.set_defaults(handler=run_simulate)
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The :class:`SimulatorConfig` of parsed ``refscope simulate`` arguments (ValueError for bad values)."""
    events = []
    if args.contrast_change is not None:
        events.append(Event("contrast", args.contrast_change, 10.0, gain=1.4))
    if args.focus_change is not None:
        events.append(Event("focus", args.focus_change, 10.0, blur_px=1.0))
    optics = replace(Optics(), lr_shape=args.size, lr_pixel_nm=args.pixel_size)
    session = replace(Session(), scene_change_s=args.scene_change, events=tuple(events))
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    return SimulatorConfig(optics=optics, session=session, kinds=kinds, specimen_image=args.specimen,
                           frame_interval_s=args.interval, seed=args.seed, out_dir=args.out, push_endpoint=args.zmq,
                           requests_dir=args.requests_dir, events_endpoint=args.events)


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``refscope simulate`` in the foreground until ``--duration`` or Ctrl-C; prints what happens."""
    config = config_from_args(args)
    sim = SimulatedMicroscope(config)
    sim.start()
    where = config.out_dir if config.out_dir is not None else config.push_endpoint
    print(f"simulating {config.optics.lr_shape[1]}x{config.optics.lr_shape[0]} px frames at "
          f"{config.optics.lr_pixel_nm:g} nm every {config.frame_interval_s:g} s -> {where}", flush=True)
    shown = 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
            sim.check()
            events = sim.timeline()
            for entry in events[shown:]:
                details = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("t", "event"))
                print(f"{entry['t']:7.1f} s  {entry['event']}  {details}", flush=True)
            shown = len(events)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    stats = sim.stats()
    print(f"{stats.frames} frames, {stats.references} references for {stats.requests} requests, {stats.errors} errors")
    return 0 if stats.errors == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m refscope.daemon.offline.simulate [options]``: the ``simulate`` subcommand on its own."""
    import sys

    parser = argparse.ArgumentParser(prog="refscope")
    sub = parser.add_subparsers(dest="command")
    add_simulate_parser(sub)
    try:
        args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run_simulate(args)


if __name__ == "__main__":
    raise SystemExit(main())

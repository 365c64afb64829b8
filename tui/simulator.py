"""A stand-in daemon for the TUI, made of the daemon's own endpoint classes: for tests, demos and screenshots.

:class:`FakeDaemon` binds a :class:`~refscope.daemon.service.control_server.ControlServer` (every command recorded in
:attr:`FakeDaemon.calls` and answered like the real daemon), a PUB socket sending v1 stream messages (raw
``"lr"`` frames via :func:`~refscope.daemon.wire.protocol.encode_frame`, ``"enhanced"`` via
:func:`~refscope.daemon.wire.protocol.encode_enhanced`, and ``"confidence"`` maps) and an
:class:`~refscope.daemon.publish.EventPublisher`. Its ``status`` reply has the real daemon's keys, with numbers
that change on every frame, plus a ``quality`` dict of drift signals.

Run ``python -m refscope.tui.simulator [--control EP] [--fps F]`` to serve synthetic frames until Ctrl-C, then
``refscope tui --connect EP``.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from refscope.daemon.service.control_server import ControlServer
from refscope.daemon.wire.protocol import OutputFields, encode_enhanced, encode_frame
from refscope.daemon.publish import EventPublisher

__all__ = ["FakeDaemon", "synthetic_frame", "main"]


def synthetic_frame(shape: tuple[int, int], seq: int, *, seed: int = 0) -> np.ndarray:
    """An SEM-like (H, W) float32 image in [0, 1]: bright particles on a gradient, drifting slowly with ``seq``."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 0.15 + 0.25 * xx / max(1, w - 1)
    for _ in range(12):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.04, 0.12) * min(h, w)
        cx = (cx + 0.7 * seq * w / 200) % w
        image += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    noise = np.random.default_rng(seed + seq + 1).normal(0, 0.03, shape)
    return np.clip(image + noise, 0, 1).astype(np.float32)


class FakeDaemon:
    """Control, stream and event endpoints answering like ``refscope daemon`` (see the module docstring).

    Args:
        control, pub, events: endpoints to bind (``:*`` picks a free port; see :attr:`endpoints`).
        shape: LR frame shape (H, W); the enhanced frame and confidence map are ``scale`` times larger.
        roles: stream roles to publish per frame (drop ``"lr"``/``"confidence"`` to imitate an older daemon).
        quality: include ``status["quality"]`` drift signals.
    """

    def __init__(self, control: str = "tcp://127.0.0.1:*", *, pub: str = "tcp://127.0.0.1:*",
                 events: str = "tcp://127.0.0.1:*", shape: tuple[int, int] = (48, 64), scale: int = 2,
                 roles: Sequence[str] = ("lr", "enhanced", "confidence"), quality: bool = True) -> None:
        self._control_ep, self._pub_ep, self._events_ep = control, pub, events
        self.shape, self.scale, self.roles, self.quality = tuple(shape), int(scale), tuple(roles), quality
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.paused = False
        self.method = "best"
        self.sigma_n: float | None = 1.0
        self.seq = 0
        self.status_calls = 0
        self._lock = threading.Lock()
        self._context = zmq.Context()
        self.control = ControlServer(control, self._handlers(), context=self._context, poll_interval_s=0.02)
        self.events = EventPublisher(events, context=self._context)
        self._pub: zmq.Socket | None = None
        self._pub_bound = pub
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def endpoints(self) -> dict[str, str | None]:
        return {"control": self.control.bound_endpoint, "events": self.events.bound_endpoint,
                "pub": self._pub_bound, "zmq_ingest": None}

    def start(self) -> FakeDaemon:
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 8)
        sock.bind(self._pub_ep)
        self._pub_bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._pub = sock
        self.events.start()
        self.control.start()
        return self

    def run(self, fps: float = 5.0, *, event_every_s: float = 4.0) -> None:
        """Publish frames at ``fps`` (and a learner event now and then) on a thread until :meth:`stop`."""
        def loop() -> None:
            next_event = time.monotonic() + 1.0
            while not self._stop.wait(1.0 / fps):
                self.publish_frame()
                if time.monotonic() >= next_event:
                    next_event += event_every_s
                    self.emit_learner_event()
        self._thread = threading.Thread(target=loop, name="fake-daemon-frames", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.control.stop()
        self.events.stop()
        with self._lock:
            if self._pub is not None:
                self._pub.close(linger=0)
                self._pub = None
        self._context.term()

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ publishing

    def publish_frame(self) -> int:
        """Send one frame in every role of :attr:`roles`; returns its seq."""
        with self._lock:
            self.seq += 1
            seq = self.seq
            pub = self._pub
            if pub is None:
                return seq
            lr = synthetic_frame(self.shape, seq)
            t = time.time()
            big = (self.shape[0] * self.scale, self.shape[1] * self.scale)
            messages = []
            if "lr" in self.roles:
                messages.append(encode_frame((lr * 4000).astype(np.uint16), seq=seq, pixel_size_m=5e-9, role="lr",
                                             t=t))
            if "enhanced" in self.roles:
                enhanced = np.kron(lr, np.ones((self.scale, self.scale), np.float32))
                messages.append(encode_enhanced(enhanced * 4000, OutputFields(seq=seq, pixel_size_m=5e-9 / self.scale, model=self._served_by(), model_version="3", latency_s=0.12, source_seq=seq, t=t), consistency=1.0 + 0.05 * (seq % 5)))
            if "confidence" in self.roles:
                yy, xx = np.mgrid[0:big[0], 0:big[1]]
                conf = (0.5 + 0.5 * np.cos(xx / big[1] * np.pi) * np.cos(yy / big[0] * np.pi)).astype(np.float32)
                header = {"v": 1, "seq": seq, "dtype": "float32", "shape": list(big), "pixel_size_m": 5e-9 / self.scale,
                          "role": "confidence", "model": self._served_by(), "model_version": "3", "latency_s": 0.12,
                          "source_seq": seq, "t": t}
                messages.append([json.dumps(header).encode(), conf.tobytes()])
            for parts in messages:
                try:
                    pub.send_multipart(parts, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
        return seq

    def emit(self, type: str, payload: dict[str, Any] | None = None) -> bool:
        return self.events.emit(type, payload or {})

    def emit_learner_event(self) -> None:
        """A pair learned followed by a promotion or rejection (alternating)."""
        n = self.seq
        self.emit("pair_learned", {"hr": f"/acq/ref_{n:03d}_HR.tif", "lr": f"/acq/frame_{n:03d}.tif", "ncc": 0.91,
                                   "rotation": 0.2, "offset": [10.0, 12.5], "factor": [2.0, 2.0]})
        if n % 2:
            self.emit("model_promoted", {"version": 3, "held_out_delta_db": 0.84, "library_size": 8000,
                                         "reason": "candidate +0.84 dB beats champion +0.61 dB by > 0.10 dB"})
        else:
            self.emit("model_rejected", {"version": 3, "candidate_delta_db": 0.55, "held_out_delta_db": 0.84,
                                         "reason": "candidate +0.55 dB does not beat champion +0.84 dB"})

    # ------------------------------------------------------------------------------------ control

    def _record(self, cmd: str, **args: Any) -> None:
        with self._lock:
            self.calls.append((cmd, args))

    def _handlers(self) -> dict[str, Any]:
        def status() -> dict[str, Any]:
            with self._lock:
                self.status_calls += 1
            return {"status": self.status()}

        def pause() -> dict[str, Any]:
            self._record("pause")
            self.paused = True
            self.emit("paused", {"paused": True})
            return {"paused": True}

        def resume() -> dict[str, Any]:
            self._record("resume")
            self.paused = False
            self.emit("resumed", {"paused": False})
            return {"paused": False}

        def request_reference(region: list[float] | None = None, note: str | None = None) -> dict[str, Any]:
            self._record("request_reference", region=region, note=note)
            payload = {"reason": "operator", "region": region, "note": note, "frame": f"frame#{self.seq}"}
            self.emit("reference_requested", payload)
            return {"requested": payload}

        def set_(method: str | None = None, sigma_n: Any = ..., scale: int | None = None) -> dict[str, Any]:
            args: dict[str, Any] = {} if method is None else {"method": method}
            if sigma_n is not ...:
                args["sigma_n"] = sigma_n
            if scale is not None:
                args["scale"] = scale
            self._record("set", **args)
            if method is not None:
                self.method = method
            if sigma_n is not ...:
                self.sigma_n = sigma_n
            state = self._model()
            self.emit("settings_changed", state)
            return {"model": state}

        def snapshot() -> dict[str, Any]:
            self._record("snapshot")
            if self.seq == 0:
                raise ValueError("no frame has been enhanced yet")
            return {"raw": f"/state/snapshots/frame_{self.seq:03d}_raw.tif",
                    "enhanced": f"/state/snapshots/frame_{self.seq:03d}_enhanced.tif"}

        return {"ping": lambda: {"pong": True, "t": time.time()}, "status": status, "pause": pause,
                "resume": resume, "request_reference": request_reference, "set": set_, "snapshot": snapshot}

    def _served_by(self) -> str:
        """What serves frames: the library is the champion, so "best" and "net" are served by it."""
        return "paired" if self.method in ("best", "net") else self.method

    def _model(self) -> dict[str, Any]:
        return {"version": 3, "method": self.method, "served_by": self._served_by(), "backend": "onnx", "scale": self.scale,
                "sigma_n": self.sigma_n, "library_size": 8000, "providers": ["CPUExecutionProvider"],
                "onnx_note": None, "net_version": 0, "champion": "paired"}

    def status(self) -> dict[str, Any]:
        """A status dict with the real daemon's keys; counters follow :attr:`seq`."""
        n = self.seq
        model = {**self._model(), "validation_delta_db": 0.84}
        status: dict[str, Any] = {
            "running": True, "paused": self.paused, "uptime_s": 12.0 + n,
            "frames": {"in": n + n // 10, "in_lr": n, "in_hr": n // 10, "out": n, "written": n,
                       "dropped": 1 if n > 5 else 0, "dropped_by_reason": {"serve_queue_full": 1} if n > 5 else {},
                       "skipped": {}, "errors": 0, "errors_by_reason": {}},
            "errors_by_reason": {}, "last_error": None,
            "latency": {"window": n, "p50_s": 0.11 + 0.001 * (n % 7), "p99_s": 0.31 + 0.002 * (n % 5)},
            "queues": {"serve": n % 3, "serve_limit": 8, "output": 0, "output_limit": 32, "learner": 0},
            "model": model, "library_size": 8000, "model_version": 3, "method": self.method,
            "validation_delta_db": 0.84, "endpoints": self.endpoints,
        }
        if self.quality:  # the shape of QualityMonitor.status() (refscope.daemon.service.monitor)
            wobble = float(np.sin(n / 3.0))
            signals = {}
            for name, value, on, off, worse_high in (("coverage", 0.8 - 0.05 * wobble, 0.6, 0.7, False),
                                                     ("intensity", 1.0 + 0.3 * wobble, 1.2, 1.1, True),
                                                     ("focus", 0.9 + 0.1 * wobble, 0.5, 0.6, False)):
                raised = value > on if worse_high else value < on
                history = [round(value - 0.02 * float(np.sin((n - k) / 2.0)), 4) for k in range(min(n, 30), 0, -1)]
                signals[name] = {"value": round(value, 4), "on": on, "off": off, "higher_is_worse": worse_high,
                                 "raised": raised, "threshold": on, "direction": "above" if worse_high else "below",
                                 "over": raised, "history": history}
            status["quality"] = {"enabled": True, "model_version": 3, "signals": signals,
                                 "drift": any(v["raised"] for v in signals.values()), "frames_measured": n,
                                 "confidence_mean": 0.81}
        return status


def main(argv: list[str] | None = None) -> int:
    """Serve synthetic frames on the given endpoints until Ctrl-C (prints the endpoints)."""
    parser = argparse.ArgumentParser(prog="python -m refscope.tui.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--control", default="tcp://127.0.0.1:5560")
    parser.add_argument("--pub", default="tcp://127.0.0.1:*")
    parser.add_argument("--events", default="tcp://127.0.0.1:*")
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    args = parser.parse_args(argv)
    fake = FakeDaemon(args.control, pub=args.pub, events=args.events, shape=tuple(args.size)).start()
    for name, endpoint in fake.endpoints.items():
        print(name, endpoint, flush=True)
    fake.run(args.fps)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

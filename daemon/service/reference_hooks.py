"""How a reference request reaches the microscope: a small hooks object, chosen by ``monitor.hook``.

A *request* is a JSON object (built by :mod:`refscope.daemon.service.monitor`)::

    {"id": "1718000000123-3",           # unique id (unix ms - counter)
     "t": 1718000000.12,                 # when it was made, unix s
     "reason": "drift",                  # "drift" | "no_model" | "operator"
     "detail": "coverage 1.82 >= 1.5",   # why, for people
     "signals": {"coverage": 1.82, ...}, # the quality signals then (None: not measured)
     "region": [y0, x0, y1, x1],         # LR pixels of the newest frame, half-open: where to scan (None: anywhere)
     "suggested_region": [...],          # where support is worst (same units; = region for automatic requests)
     "region_nm": [...],                 # region in nm from the frame's top-left corner (when the pixel size is known)
     "region_center_stage_xy_m": [x, y], # stage position of the region's centre (when the frame has one)
     "frame": "/acq/frame_0042_LR.tif", "frame_seq": 42, "frame_shape": [H, W],
     "pixel_size_nm": 10.0, "stage_xy_m": [x, y],
     "hr_pixel_size_nm": 5.0,            # the finest pixel the model needs (LR pixel / model.scale)
     "note": null}                       # the operator's note

Hooks (each a class with ``deliver(request)`` that raises on failure and ``close()``):

* :class:`LogHook` -- logs the request (``refscope.monitor``); the event feed carries it anyway.
* :class:`FileHook` -- writes ``reference-request-<id>.json`` atomically into a folder (a microscope-side script
  watching it never sees a partial file).
* :class:`ZmqPushHook` -- sends the JSON as one message on a PUSH socket connected to an endpoint; fails when
  nobody takes it within ``timeout_s``.
* :class:`ScriptHook` -- runs a command with the JSON on stdin; fails on a non-zero exit or after ``timeout_s``.

:class:`HookRunner` delivers requests on its own stoppable thread, so a slow hook never holds up serving;
its queue keeps the newest ``queue_size`` requests (older waiting ones are dropped, counted and logged).
"""
from __future__ import annotations

import json
import logging
import queue
import re
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq

from ..atomic import atomic_write_json, to_jsonable
from ..config import MonitorConfig
from ..errors import RefscopeError
from ..worker import Worker

__all__ = ["MONITOR_LOGGER", "ReferenceHook", "LogHook", "FileHook", "ZmqPushHook", "ScriptHook", "HookStats",
           "HookRunner", "make_hook", "request_file_name"]

MONITOR_LOGGER = "refscope.monitor"
_log = logging.getLogger(MONITOR_LOGGER)


def _dumps(request: Mapping[str, Any]) -> str:
    return json.dumps(dict(request), allow_nan=False, default=to_jsonable, separators=(",", ":"))


def request_file_name(request: Mapping[str, Any]) -> str:
    """``reference-request-<id>.json`` (the id made file-name safe)."""
    return f"reference-request-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(request.get('id', 'x')))}.json"


class ReferenceHook(Protocol):
    """Site-specific delivery of a reference request (see the module docstring)."""

    name: str

    def deliver(self, request: Mapping[str, Any]) -> None:
        """Hand ``request`` to the microscope side; raise (any exception) when that failed."""

    def close(self) -> None:
        """Release sockets or other resources. Idempotent."""


class LogHook:
    """Logs each request on ``refscope.monitor`` (level INFO)."""

    name = "log"

    def deliver(self, request: Mapping[str, Any]) -> None:
        _log.info("reference requested (%s): region %s of %s%s", request.get("reason"), request.get("region"),
                  request.get("frame"), f" -- {request['detail']}" if request.get("detail") else "")

    def close(self) -> None:
        pass


class FileHook:
    """Writes each request as ``<folder>/reference-request-<id>.json``, atomically (folder created if missing)."""

    name = "file"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def deliver(self, request: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / request_file_name(request), json.loads(_dumps(request)))

    def close(self) -> None:
        pass


class ZmqPushHook:
    """Sends each request as one JSON message on a PUSH socket connected to ``endpoint``.

    Args:
        endpoint: where the microscope side binds a PULL socket.
        timeout_s: how long a request may wait for a peer, seconds (then the delivery fails).
        context: shared ``zmq.Context`` (not terminated by :meth:`close`); default: an own one.
    """

    name = "zmq"

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self._own = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket | None = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 16)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a connected peer: no peer -> the delivery fails
        self._socket.connect(endpoint)

    def deliver(self, request: Mapping[str, Any]) -> None:
        if self._socket is None:
            raise RefscopeError(f"reference hook {self.endpoint}: closed")
        if not self._socket.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
            raise RefscopeError(f"reference hook: nobody took the request at {self.endpoint} within "
                                f"{self.timeout_s:g} s (is the microscope-side PULL socket bound?)")
        self._socket.send(_dumps(request).encode("utf-8"), flags=zmq.NOBLOCK)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._own and self._context is not None:
            self._context.term()
            self._context = None


class ScriptHook:
    """Runs ``command`` (an argv list, no shell) with the request JSON on stdin.

    Fails (raises RefscopeError with the end of its stderr) on a non-zero exit, or when it runs longer than
    ``timeout_s`` seconds (it is then killed).
    """

    name = "script"

    def __init__(self, command: Sequence[str], *, timeout_s: float = 30.0) -> None:
        if not command:
            raise ValueError("script hook: the command is empty")
        self.command = [str(c) for c in command]
        self.timeout_s = float(timeout_s)

    def deliver(self, request: Mapping[str, Any]) -> None:
        try:
            done = subprocess.run(self.command, input=_dumps(request), text=True, capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RefscopeError(f"reference hook {self.command[0]}: still running after {self.timeout_s:g} s; "
                                "killed") from None
        except OSError as exc:
            raise RefscopeError(f"reference hook {self.command[0]}: cannot run ({exc.strerror or exc})") from exc
        if done.returncode != 0:
            tail = " ".join((done.stderr or "").split())[-300:]
            raise RefscopeError(f"reference hook {self.command[0]}: exit code {done.returncode}"
                                f"{f': {tail}' if tail else ''}")

    def close(self) -> None:
        pass


def make_hook(config: MonitorConfig, *, context: zmq.Context | None = None) -> ReferenceHook:
    """The hook ``config.hook`` names, built from ``config.hook_dir`` / ``hook_endpoint`` / ``hook_command``."""
    if config.hook == "file":
        assert config.hook_dir is not None  # checked by MonitorConfig
        return FileHook(config.hook_dir)
    if config.hook == "zmq":
        assert config.hook_endpoint is not None
        return ZmqPushHook(config.hook_endpoint, timeout_s=min(config.hook_timeout_s, 10.0), context=context)
    if config.hook == "script":
        assert config.hook_command is not None
        return ScriptHook(config.hook_command, timeout_s=config.hook_timeout_s)
    return LogHook()


@dataclass(frozen=True)
class HookStats:
    """Requests ``delivered``, ``failed`` and ``dropped`` (queue full) by a :class:`HookRunner`; the latest
    failure message."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None


class HookRunner(Worker):
    """Delivers requests through ``hook`` on a worker thread (``start``, ``submit``, ``stop``).

    A failed delivery is logged and counted; the worker carries on. Only a bug in the runner itself stops it
    (re-raised by :meth:`check`). What is still queued when it stops is delivered before the hook is closed.
    """

    def __init__(self, hook: ReferenceHook, *, queue_size: int = 8, poll_interval_s: float = 0.1) -> None:
        super().__init__("refscope-reference-hook", poll_interval_s=poll_interval_s)
        self.hook = hook
        self._queue: queue.Queue[Mapping[str, Any]] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._lock = threading.Lock()
        self._delivered = self._failed = self._dropped = 0
        self._last_error: str | None = None

    def submit(self, request: Mapping[str, Any]) -> None:
        """Queue a request (never blocks; on a full queue the oldest waiting one is dropped)."""
        while True:
            try:
                self._queue.put_nowait(request)
                return
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                with self._lock:
                    self._dropped += 1
                _log.warning("reference request %s dropped undelivered: the %s hook is behind", old.get("id"),
                             self.hook.name)

    def stats(self) -> HookStats:
        with self._lock:
            return HookStats(self._delivered, self._failed, self._dropped, self._last_error)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Deliver what is queued (for up to ``timeout`` s), stop the thread and close the hook. Idempotent."""
        try:
            return super().stop(timeout)
        finally:
            try:
                self.hook.close()
            except Exception:  # noqa: BLE001 - closing: report and go on
                _log.exception("reference hook %s: error while closing", self.hook.name)

    def poll_once(self, timeout: float) -> None:
        try:
            request = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._deliver(request)

    def on_stop(self) -> None:
        while True:  # what was submitted before stop() is still delivered
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            self._deliver(request)

    def _deliver(self, request: Mapping[str, Any]) -> None:
        try:
            self.hook.deliver(request)
            with self._lock:
                self._delivered += 1
        except Exception as exc:  # noqa: BLE001 - a failed delivery never stops the runner
            message = f"reference request {request.get('id')} not delivered by the {self.hook.name} hook: {exc}"
            with self._lock:
                self._failed += 1
                self._last_error = message
            _log.error("%s", message)

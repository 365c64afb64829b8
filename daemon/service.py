"""``refscope daemon``: the service beside the microscope, assembled from the daemon's modules.

Data flow (one thread each, all stoppable)::

    sources (folder / ZMQ) --ingest--> classify --HR--> Learner (pair, fit, promote) --on_promoted--> engine
                                              \\                                   \\--on_scored--> QualityMonitor
                                               \\--LR--> note_lr + serve queue --serve--> ServingEngine.enhance
                                                                                  --> QualityMonitor.observe (signals,
                                                                                      confidence map, requests -> hook)
                                                                                  --> FolderPublisher (out_dir, lossless)
                                                                                  --> StreamPublisher (PUB, lossy:
                                                                                      lr, enhanced, confidence)
    control endpoint (REP) <-> status / pause / resume / request_reference / set / snapshot

Policies:

* **Ingest** polls every source round robin; a frame is recorded in the catalogue (``<state_dir>/catalogue.sqlite3``)
  and classified (:class:`~refscope.daemon.pairing.RoleClassifier`). HR references go to the learner
  (never blocking: its queue drops the oldest waiting reference); LR frames are noted for pairing and queued
  for serving.
* **Serve queue** (``SERVE_QUEUE_SIZE`` frames): lossless for the output folder -- when it is full, ingest waits up
  to ``serve_block_s`` seconds (the sources' own bounded queues and the ZMQ PULL socket absorb the backlog);
  only then is the frame dropped, counted under ``serve_queue_full`` and logged.
* **Output folder**: :class:`~refscope.daemon.publish.FolderPublisher`, lossless bounded queue
  (``publish.output_queue_limit``; the serve loop waits, then drops and counts). A frame is marked enhanced in
  the catalogue only once its TIFF is written (``on_written``). Without an output folder, once streamed.
* **Stream**: :class:`~refscope.daemon.publish.StreamPublisher`, lossy (viewers get the newest frames). Per
  frame: the raw LR frame (``publish.stream_raw``), the enhanced frame, its confidence map
  (``publish.stream_confidence``, once a model serves); formats in :mod:`.protocol`.
* **Quality** (:mod:`.monitor`): every served frame is measured against the frames the model learned from
  (``status()["quality"]``); drift, or frames without a model, trigger a rate-limited ``reference_requested``
  handed to the ``monitor.hook``; the operator's ``request_reference`` goes the same way.
* **Restart rule** (no duplicate outputs): after a restart (the catalogue exists) the folder is read from the
  start, existing files included (on the very first start, files already there are left alone), and a file
  frame is skipped when this version of it (same source, size, mtime) is already *enhanced* or *rejected* in the
  catalogue; an HR reference is skipped when this version of it was already recorded (it was handed to the
  learner). Frames received but not finished before a crash are processed again; outputs are written
  atomically and an earlier output of the same frame is replaced, never duplicated; temporary files left in
  the output and state folders by a write interrupted by a crash (``.name.tmp-<hex>``) are removed at start.
* **Pause**: frames are still received, recorded and learned from (references, LR pairing candidates), but
  not enhanced, written or streamed; each is marked rejected (``skipped: paused``) so that a restart does not
  back-fill them, and counted under ``skipped.paused``.
* **Errors**: a bad frame (unusable pixels, a failed enhancement, a failed write, a catalogue hiccup) is logged,
  counted by reason (``status()["errors_by_reason"]``) and the daemon carries on. A failure of a component
  itself (a source's worker, the learner, the writer, the control thread) stops the daemon: :meth:`Daemon.run_forever`
  returns 1 and the service manager restarts it.

Latency of a frame: from the input's "closed" time (the file's modification time; for ZMQ frames the header's
``t``, else the time of receipt) to its publication on the PUB socket, seconds; ``model_s`` is the engine's own
time. Both are summarised (p50/p99) over the last ``LATENCY_WINDOW`` frames.

While running, ``<state_dir>/daemon.json`` holds the process id and the bound endpoints (written atomically,
removed at a clean stop) so that tools can find a daemon started with ephemeral ports.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, FittedModel, default_patch_size
from refscope.models.promotion import PromotionDecision

from .atomic import TEMP_MARKER, atomic_write_json
from .catalogue import CATALOGUE_NAME, Catalogue
from .config import DaemonConfig
from .control import ControlServer
from .errors import RefscopeError
from .frames import Frame, FrameSource
from .learner import Learner, ReferenceOutcome, load_initial
from .monitor import Observation, QualityMonitor
from .pairing import RoleClassifier
from .protocol import DTYPES, encode_confidence, encode_frame
from .publish import EventPublisher, FolderPublisher, PublishedFile, StreamPublisher, output_stem
from .reference_hooks import HookRunner, make_hook
from .serving import EnhanceResult, ServingEngine
from .source_folder import FolderFrameSource
from .source_zmq import ZmqFrameSource
from .tiff_io import write_tiff

__all__ = [
    "DAEMON_LOGGER",
    "DAEMON_FILE",
    "SERVE_QUEUE_SIZE",
    "LATENCY_WINDOW",
    "MAX_FRAME_PIXELS",
    "Daemon",
    "fit_config_for",
]

DAEMON_LOGGER = "refscope.daemon"
_log = logging.getLogger(DAEMON_LOGGER)

DAEMON_FILE = "daemon.json"
"""``<state_dir>/daemon.json``: pid and bound endpoints of the running daemon."""
SERVE_QUEUE_SIZE = 8
"""LR frames waiting for the serve loop."""
LATENCY_WINDOW = 300
"""Frames over which latency percentiles are computed."""
MAX_FRAME_PIXELS = 8192 * 8192
"""Largest LR frame enhanced (H·W); larger frames are refused (``too_large``) to bound memory."""
_NOMINAL_PIXEL_NM = 1.0  # stream pixel size of frames without one (the wire format needs a positive value)


def fit_config_for(config: DaemonConfig, *, scale: int | None = None) -> FitConfig:
    """The learner's :class:`FitConfig` from ``config.model`` (``scale`` overrides ``model.scale``)."""
    model = config.model
    s = model.scale if scale is None else int(scale)
    patch = model.patch_size if model.patch_size is not None else default_patch_size(s)
    return FitConfig(scale=s, library=LibraryConfig(patch_size=patch, size=model.library_size))


@dataclass(frozen=True, eq=False)
class _Item:
    """An LR frame waiting to be served."""

    frame: Frame
    origin_t: float  # input "closed" time, unix seconds
    ingested_t: float  # when ingest took it from its source, unix seconds
    size: int | None
    mtime: float | None


def _file_version(frame: Frame) -> tuple[int | None, float | None]:
    """(size in bytes, mtime in unix s) of a file frame; (None, None) for ZMQ/memory frames."""
    meta = frame.metadata
    size, mtime = meta.get("file_size_bytes"), meta.get("file_mtime")
    if isinstance(size, int) and isinstance(mtime, (int, float)):
        return int(size), float(mtime)
    return None, None


def _same_version(record: Any, size: int | None, mtime: float | None) -> bool:
    if record.size != size:
        return False
    if record.mtime is None or mtime is None:
        return record.mtime is None and mtime is None
    return abs(float(record.mtime) - float(mtime)) <= 1e-6


def _remove_stale_temps(folder: Path) -> None:
    """Delete refscope's own temporary files (``.name.tmp-<hex>``, see :mod:`.atomic`) left in one of *its*
    folders (output or state, never the watched folder) by a write interrupted by a crash."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and TEMP_MARKER in entry.name and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                _log.info("removed %s, left by an interrupted write", entry.path)
            except OSError as exc:
                _log.warning("cannot remove stale temporary file %s: %s", entry.path, exc)


class _Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class _FrameStream(StreamPublisher):
    """The enhanced-frame stream, which also carries the raw LR frames and confidence maps (see :mod:`.protocol`)."""

    def send_parts(self, parts: list[bytes]) -> bool:
        """Send an already encoded two-part message without blocking; False when dropped (counted)."""
        return self._pub.send(parts)


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


class Daemon:
    """The refscope service (see the module docstring).

    Args:
        config: the validated configuration.
        sources: frame sources to use instead of those built from ``config.ingest`` (tests, replays).
        folder_options: extra :class:`~refscope.daemon.source_folder.FolderSourceConfig` fields for the folder
            source built from the configuration. By default ``include_existing`` is True when the catalogue already
            exists (a restart: files that arrived while the daemon was down are processed, see the restart rule)
            and False on the very first start (files that were there before are not refscope's business).
        use_onnx: serve paired models through ONNX Runtime when possible (see :class:`ServingEngine`).
        serve_block_s: how long ingest waits on a full serve queue before dropping a frame, seconds.
        drain_s: at stop, how long the serve loop keeps working through queued frames, seconds.

    Use ``start()``/``stop()`` (or a ``with`` block), or ``run_forever()`` in a process's main thread.
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        sources: Sequence[FrameSource] | None = None,
        folder_options: Mapping[str, Any] | None = None,
        use_onnx: bool = True,
        serve_block_s: float = 5.0,
        drain_s: float = 5.0,
    ) -> None:
        self.config = config
        self._given_sources = list(sources) if sources is not None else None
        self._folder_options = dict(folder_options or {})
        self._serve_block_s = float(serve_block_s)
        self._drain_s = float(drain_s)
        self.engine = ServingEngine(config.model, config.serve, use_onnx=use_onnx)
        self._classify = RoleClassifier(config.ingest, lr_pixel_size_nm=config.ingest.pixel_size_nm)
        self._context: zmq.Context | None = None
        self.catalogue: Catalogue | None = None
        self.learner: Learner | None = None
        self.folder: FolderPublisher | None = None
        self.stream: StreamPublisher | None = None
        self.events: EventPublisher | None = None
        self.control: ControlServer | None = None
        self.monitor: QualityMonitor | None = None
        self._hooks: HookRunner | None = None
        self._sources: list[tuple[str, FrameSource]] = []
        self._serve_queue: queue.Queue[_Item] = queue.Queue(maxsize=SERVE_QUEUE_SIZE)
        self._threads: list[threading.Thread] = []
        self._stop_ingest = threading.Event()
        self._stop_serve = threading.Event()
        self._stop_requested = threading.Event()
        self._paused = threading.Event()
        self._started = False
        self._stopped = False
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._counts = _Counters()  # frames in/out, skipped.*, dropped.*
        self._errors = _Counters()  # errors by reason
        self._last_error: str | None = None
        self._lat_lock = threading.Lock()
        self._latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._model_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._processing_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._newest: tuple[Frame, EnhanceResult] | None = None
        self._newest_lock = threading.Lock()
        self._out_seq = 0
        self._started_at = 0.0
        self._warned_no_pixel = False
        self._learner_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Bound endpoints (real ports after ``:*``): ``control``, ``events``, ``pub``, ``zmq_ingest`` (or None)."""
        zmq_ingest = None
        for _, source in self._sources:
            if isinstance(source, ZmqFrameSource):
                zmq_ingest = source.endpoint
        return {
            "control": self.control.bound_endpoint if self.control else self.config.control.endpoint,
            "events": self.events.bound_endpoint if self.events else self.config.control.events_endpoint,
            "pub": self.stream.bound_endpoint if self.stream else self.config.publish.pub_endpoint,
            "zmq_ingest": zmq_ingest if zmq_ingest is not None else self.config.ingest.zmq_endpoint,
        }

    @property
    def paused(self) -> bool:
        """True while paused (see the module docstring)."""
        return self._paused.is_set()

    def start(self) -> None:
        """Open the catalogue, load the saved model, bind every socket, start the threads.

        Raises RefscopeError (naming the endpoint, folder or file) when something cannot be set up; whatever
        was started is stopped again.
        """
        if self._started:
            raise RefscopeError("daemon: already started")
        self._started = True
        self._started_at = time.time()
        cfg = self.config
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self._folder_options.setdefault("include_existing", (cfg.state_dir / CATALOGUE_NAME).exists())
            for folder in (cfg.publish.out_dir, cfg.state_dir):
                if folder is not None:
                    _remove_stale_temps(folder)
            self.catalogue = Catalogue.in_state_dir(cfg.state_dir)
            model, version = load_initial(cfg.state_dir)
            if model is not None:
                if model.scale != cfg.model.scale:
                    raise RefscopeError(
                        f"{cfg.state_dir}: the saved model is x{model.scale} but model.scale is {cfg.model.scale}; use "
                        "the same scale or another state folder")
                self.engine.set_model(model, version)
            self._context = zmq.Context()
            self.stream = _FrameStream(cfg.publish.pub_endpoint, hwm=cfg.publish.pub_hwm, context=self._context)
            self.stream.start()
            self.events = EventPublisher(cfg.control.events_endpoint, context=self._context)
            self.events.start()
            if cfg.publish.out_dir is not None:
                self.folder = FolderPublisher(cfg.publish.out_dir, queue_limit=cfg.publish.output_queue_limit,
                                              on_written=self._on_written)
                self.folder.start()
            self._hooks = HookRunner(make_hook(cfg.monitor, context=self._context))
            self._hooks.start()
            self.monitor = QualityMonitor(cfg.monitor, emit=lambda kind, payload: self._emit(kind, payload, record=True),
                                          hooks=self._hooks)
            if model is not None:
                self.monitor.set_model(model, version)
            self.learner = self._make_learner(model, version, cfg.model.scale)
            self.learner.start()
            self.control = ControlServer(cfg.control.endpoint, self._handlers(), context=self._context)
            self.control.start()
            self._sources = self._build_sources()
            for _, source in self._sources:
                source.start()
            self._threads = [
                threading.Thread(target=self._guard, args=(self._ingest_loop, "ingest"), name="refscope-ingest",
                                 daemon=True),
                threading.Thread(target=self._guard, args=(self._serve_loop, "serve"), name="refscope-serve",
                                 daemon=True),
            ]
            for thread in self._threads:
                thread.start()
            self._write_daemon_file()
        except BaseException:
            self._shutdown()
            raise
        ep = self.endpoints
        _log.info("refscope daemon started: control %s, events %s, stream %s%s%s; model v%d (%s)",
                  ep["control"], ep["events"], ep["pub"],
                  f", ZMQ ingest {ep['zmq_ingest']}" if ep["zmq_ingest"] else "",
                  f", watching {cfg.ingest.watch}" if cfg.ingest.watch else "",
                  self.engine.version, self.engine.describe()["served_by"])

    def _make_learner(self, model: FittedModel | None, version: int, scale: int) -> Learner:
        fit_config = fit_config_for(self.config, scale=scale)
        if model is not None and model.library.patch_size != fit_config.library_config.patch_size:
            _log.warning("the saved model's patch size %d differs from the configuration's %d; learning continues "
                         "with the saved model's", model.library.patch_size, fit_config.library_config.patch_size)
            lib = fit_config.library_config
            fit_config = FitConfig(scale=scale, library=LibraryConfig(patch_size=model.library.patch_size,
                                                                      size=lib.size))
        return Learner(fit_config=fit_config, state_dir=self.config.state_dir, catalogue=self.catalogue,
                       events=self.events, on_promoted=self._on_promoted, initial_model=model,
                       initial_version=version, on_scored=self._on_scored)

    def _build_sources(self) -> list[tuple[str, FrameSource]]:
        if self._given_sources is not None:
            return [(f"source{i}:{type(s).__name__}", s) for i, s in enumerate(self._given_sources)]
        ingest = self.config.ingest
        sources: list[tuple[str, FrameSource]] = []
        if ingest.watch is not None:
            sources.append((f"folder:{ingest.watch}",
                            FolderFrameSource(ingest.folder_source_config(**self._folder_options))))
        if ingest.zmq_endpoint is not None:
            sources.append(("zmq", ZmqFrameSource(ingest.zmq_source_config(), context=self._context)))
        return sources

    def stop(self, timeout: float = 30.0) -> None:
        """Stop cleanly: no new frames, queued frames served (for up to ``drain_s``), outputs flushed, sockets
        closed, catalogue closed. Idempotent. ``timeout`` bounds the wait for the output writer, seconds."""
        if not self._started or self._stopped:
            return
        self._shutdown(timeout=timeout)

    def _shutdown(self, timeout: float = 30.0) -> None:
        self._stopped = True
        self._stop_requested.set()
        if self.control is not None:
            self._quietly(self.control.stop, "control endpoint")
        self._stop_ingest.set()
        for _, source in self._sources:
            self._quietly(source.stop, "source")
        for thread in self._threads:
            if thread.name == "refscope-ingest":
                thread.join(timeout=10.0)
        self._stop_serve.set()
        for thread in self._threads:
            if thread.name == "refscope-serve":
                thread.join(timeout=self._drain_s + 60.0)
        if self.folder is not None:
            self._quietly(lambda: self.folder.stop(drain=True, timeout=timeout), "output writer")
        if self.learner is not None:
            self._quietly(lambda: self.learner.stop(timeout=60.0), "learner")
        if self._hooks is not None:
            self._quietly(self._hooks.stop, "reference hook")
        for pub in (self.stream, self.events):
            if pub is not None:
                self._quietly(pub.stop, "publisher")
        if self.catalogue is not None:
            self._quietly(self.catalogue.close, "catalogue")
        if self._context is not None:
            context, self._context = self._context, None
            closer = threading.Thread(target=context.term, name="refscope-zmq-term", daemon=True)
            closer.start()
            closer.join(timeout=5.0)
            if closer.is_alive():
                _log.warning("daemon: a ZMQ socket is still open; not waiting for it")
        try:
            (self.config.state_dir / DAEMON_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        _log.info("refscope daemon stopped")

    @staticmethod
    def _quietly(action: Any, what: str) -> None:
        try:
            action()
        except Exception:  # noqa: BLE001 - stopping: report and go on stopping the rest
            _log.exception("daemon: error while stopping the %s", what)

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to return (thread- and signal-safe)."""
        self._stop_requested.set()

    def check(self) -> None:
        """Re-raise, on the caller's thread, the failure of any component (thread, learner, writer, control)."""
        if self._failure is not None:
            raise self._failure
        if self.learner is not None:
            self.learner.check()
        if self.folder is not None:
            self.folder.check()
        if self.control is not None:
            self.control.check()
        if self._hooks is not None:
            self._hooks.check()

    def run_forever(self, *, install_signals: bool = True) -> int:
        """Start (if needed) and serve until SIGTERM/SIGINT or :meth:`request_stop`; stop cleanly.

        Returns 0 after a requested stop, 1 when a component failed (logged). Signal handlers are installed only
        in the main thread and restored on return.
        """
        previous: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: self._stop_requested.set())
        code = 0
        try:
            if not self._started:
                self.start()
            while not self._stop_requested.wait(0.25):
                try:
                    self.check()
                except BaseException as exc:  # noqa: BLE001 - a component failed: stop, report, exit 1
                    _log.critical("refscope daemon: %s failed: %s; stopping", type(exc).__name__, exc)
                    code = 1
                    break
            if self._failure is not None:
                code = 1
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return code

    def _guard(self, loop: Any, name: str) -> None:
        """Run a thread's loop; store an escaping exception as the daemon's failure and request a stop."""
        try:
            loop()
        except BaseException as exc:  # re-raised by check() on the owner's thread
            _log.exception("daemon: %s thread failed", name)
            with self._failure_lock:
                if self._failure is None:
                    self._failure = exc
            self._stop_requested.set()

    def _write_daemon_file(self) -> None:
        try:
            atomic_write_json(self.config.state_dir / DAEMON_FILE,
                              {"pid": os.getpid(), "started": self._started_at, "endpoints": self.endpoints,
                               "out_dir": self.config.publish.out_dir, "watch": self.config.ingest.watch})
        except (OSError, ValueError) as exc:
            _log.warning("cannot write %s: %s", self.config.state_dir / DAEMON_FILE, exc)

    # ------------------------------------------------------------------------------------------ counting

    def _error(self, reason: str, message: str, *, level: int = logging.WARNING, exc_info: Any = None) -> None:
        """Count a per-frame problem under ``reason`` and log it; the daemon goes on."""
        self._errors.add(reason)
        self._last_error = message
        _log.log(level, "%s: %s", reason, message, exc_info=exc_info)

    def _catalogue_call(self, action: Any, what: str) -> bool:
        """Run a catalogue write; a failure is counted (``catalogue_error``) and logged. True if it worked."""
        try:
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - StateError (disk full, locked) or a bug: counted, go on
            self._error("catalogue_error", f"{what}: {exc}", level=logging.ERROR)
            return False

    def _emit(self, type: str, payload: Mapping[str, Any], *, record: bool = False) -> None:
        if record and self.catalogue is not None:
            self._catalogue_call(lambda: self.catalogue.record_event(type, payload), f"event {type}")
        if self.events is not None:
            try:
                self.events.emit(type, payload)
            except (ValueError, RefscopeError) as exc:
                _log.warning("event %s not published: %s", type, exc)

    # ------------------------------------------------------------------------------------------ ingest

    def _ingest_loop(self) -> None:
        sources = self._sources
        slice_s = 0.1 / max(1, len(sources))
        while not self._stop_ingest.is_set():
            got = False
            for name, source in sources:
                if self._stop_ingest.is_set():
                    return
                frame = source.poll(0.0 if got else slice_s)  # a failure of the source itself propagates
                if frame is None:
                    continue
                got = True
                try:
                    self._ingest(frame)
                except Exception as exc:  # noqa: BLE001 - one bad frame never stops ingest
                    self._error("ingest_failed", f"{frame.source}: {type(exc).__name__}: {exc}", level=logging.ERROR,
                                exc_info=exc)

    def _ingest(self, frame: Frame) -> None:
        now = time.time()
        self._counts.add("in")
        size, mtime = _file_version(frame)
        role = self._classify(frame)
        self._counts.add(f"in_{role}")
        catalogue = self.catalogue
        assert catalogue is not None and self.learner is not None
        record = None
        try:
            record = catalogue.frame(frame.source)
        except Exception as exc:  # noqa: BLE001
            self._error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
        # the restart rule applies to files (re-read after a restart); a ZMQ message is never delivered twice, and a
        # sender that restarts its seq counter must not have its new frames taken for old ones
        known = size is not None and record is not None and _same_version(record, size, mtime)
        if role == "hr":
            if known:
                self._counts.add("skipped.already_seen")
                _log.info("%s: HR reference already handed to the learner before; skipped", frame.source)
                return
            self._catalogue_call(lambda: catalogue.record_frame(frame.source, role="hr", seq=frame.seq, t=frame.t,
                                                                size=size, mtime=mtime), frame.source)
            if not self.learner.submit_reference(frame):
                self._error("learner_unavailable", f"{frame.source}: the learner is not accepting references")
            else:
                _log.info("%s: HR reference (%.4g nm/px) handed to the learner", frame.source, frame.pixel_size_nm or 0)
                if self.monitor is not None:
                    self.monitor.reference_arrived(frame)
            return
        self.learner.note_lr(frame)
        if known and record.status in ("enhanced", "rejected"):
            self._counts.add(f"skipped.already_{record.status}")
            return
        self._catalogue_call(lambda: catalogue.record_frame(frame.source, role="lr", seq=frame.seq, t=frame.t,
                                                            size=size, mtime=mtime), frame.source)
        origin = mtime if mtime is not None else frame.t
        item = _Item(frame=frame, origin_t=origin, ingested_t=now, size=size, mtime=mtime)
        deadline = time.monotonic() + self._serve_block_s
        while True:
            try:
                self._serve_queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if self._stop_ingest.is_set():
                    return  # stopping: the frame stays "received" and is processed after a restart
                if time.monotonic() >= deadline:
                    break
        self._counts.add("dropped.serve_queue_full")
        self._error("serve_queue_full", f"{frame.source}: dropped, the serve queue stayed full ({SERVE_QUEUE_SIZE} "
                    f"frames) for {self._serve_block_s:g} s")
        self._emit("output_dropped", {"source": frame.source, "reason": "serve_queue_full"})

    # ------------------------------------------------------------------------------------------ serving

    def _serve_loop(self) -> None:
        drain_deadline: float | None = None
        while True:
            if self._stop_serve.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + self._drain_s
                if time.monotonic() >= drain_deadline:
                    left = self._serve_queue.qsize()
                    if left:
                        _log.warning("stopping with %d frame(s) not enhanced (they are processed after a restart)",
                                     left)
                    return
            if self.monitor is not None:
                self.monitor.tick()
            try:
                item = self._serve_queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop_serve.is_set():
                    return
                continue
            try:
                self._serve(item)
            except Exception as exc:  # noqa: BLE001 - one bad frame never stops serving
                self._error("serve_failed", f"{item.frame.source}: {type(exc).__name__}: {exc}", level=logging.ERROR,
                            exc_info=exc)

    def _reject(self, item: _Item, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        self._error(reason, message, level=level)
        if self.catalogue is not None:
            self._catalogue_call(lambda: self.catalogue.mark_rejected(item.frame.source, f"{reason}: {message}"),
                                 item.frame.source)

    def _serve(self, item: _Item) -> None:
        frame = item.frame
        catalogue = self.catalogue
        assert catalogue is not None
        try:
            if item.size is not None and catalogue.already_enhanced(frame.source, item.size, item.mtime):
                self._counts.add("skipped.already_enhanced")
                return
        except Exception as exc:  # noqa: BLE001
            self._error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
        if self._paused.is_set():
            self._counts.add("skipped.paused")
            self._catalogue_call(lambda: catalogue.mark_rejected(frame.source, "skipped: paused"), frame.source)
            return
        height, width = frame.shape
        if height * width > MAX_FRAME_PIXELS:
            self._reject(item, "too_large", f"{frame.source}: {height}x{width} px is more than the "
                         f"{MAX_FRAME_PIXELS} pixels the daemon enhances")
            return
        try:
            result = self.engine.enhance(frame.data)
        except ValueError as exc:
            self._reject(item, "bad_frame", f"{frame.source}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the model failed on this frame
            self._reject(item, "enhance_failed", f"{frame.source}: {type(exc).__name__}: {exc}", level=logging.ERROR)
            return
        scale = result.image.shape[0] // height  # the engine's scale when it enhanced this frame
        out_pixel_nm = frame.pixel_size_nm / scale if frame.pixel_size_nm is not None else None
        with self._newest_lock:
            self._newest = (frame, result)
        # The quality look (an extra pass over the library) stays off the latency path: the enhanced frame is
        # handed to the writer and the stream first, its confidence map follows -- unless the map is written
        # beside the output TIFF, which needs it before the hand-over.
        write_conf = self.config.publish.write_confidence
        observation = self._observe(frame, result) if write_conf else None
        meta = {"model": result.model_name, "model_version": result.version, "backend": result.backend,
                "model_s": round(result.seconds, 6), "source_seq": frame.seq}
        if self.folder is not None:
            stem = output_stem(frame.source)
            confidence = observation.confidence if observation is not None else None
            if not self.folder.submit(result.image, source=frame.source, t=frame.t, scale=scale,
                                      pixel_size_nm=out_pixel_nm, metadata=meta, stem=stem, confidence=confidence):
                self._counts.add("dropped.output_queue_full")
                self._emit("output_dropped", {"source": frame.source, "reason": "output_queue_full"})
        drift = observation.drift if observation is not None else self._drift_now()
        seq, latency, out_pixel_nm = self._publish_stream(frame, result, item, scale, out_pixel_nm, drift)
        if observation is None:
            observation = self._observe(frame, result)
        self._publish_confidence(frame, result, observation, seq, latency, out_pixel_nm)
        if self.folder is None:
            self._catalogue_call(lambda: catalogue.mark_enhanced(frame.source, None), frame.source)

    def _observe(self, frame: Frame, result: EnhanceResult) -> Observation:
        """The quality monitor's look at a served frame; a failure is counted (``monitor_failed``), never fatal."""
        if self.monitor is None:
            return Observation(None, {}, False)
        try:
            return self.monitor.observe(frame, out_shape=result.image.shape)
        except Exception as exc:  # noqa: BLE001 - quality measurement must never stop serving
            self._error("monitor_failed", f"{frame.source}: quality not measured ({type(exc).__name__}: {exc})",
                        level=logging.ERROR, exc_info=exc)
            return Observation(None, {}, False)

    def _send(self, parts_of: Any, what: str, frame: Frame) -> None:
        """Encode (``parts_of()``) and send an extra stream message (raw frame, confidence map); problems are
        counted, never fatal."""
        assert self.stream is not None
        try:
            if not self.stream.send_parts(parts_of()):
                self._counts.add(f"dropped.stream_{what}")
        except Exception as exc:  # noqa: BLE001 - ProtocolError, odd dtype...
            self._error("stream_error", f"{frame.source}: {what} not streamed ({exc})")

    def _drift_now(self) -> bool:
        """The monitor's drift state before this frame is measured (flags the enhanced frame's header)."""
        return bool(self.monitor is not None and self.monitor.drift)

    def _publish_stream(self, frame: Frame, result: EnhanceResult, item: _Item, scale: int,
                        out_pixel_nm: float | None, drift: bool) -> tuple[int, float, float]:
        """Stream the raw frame and the enhanced one; returns (output seq, latency s, output pixel nm)."""
        assert self.stream is not None
        if out_pixel_nm is None:
            if not self._warned_no_pixel:
                _log.warning("%s: frame has no pixel size; streaming with a nominal %g nm input pixel (set "
                             "ingest.pixel_size_nm)", frame.source, _NOMINAL_PIXEL_NM)
                self._warned_no_pixel = True
            out_pixel_nm = _NOMINAL_PIXEL_NM / scale
        publish = self.config.publish
        if publish.stream_raw:
            raw = np.asarray(frame.data)
            if raw.dtype.newbyteorder("<") not in DTYPES.values():
                raw = raw.astype(np.float32)
            self._send(lambda: encode_frame(raw, seq=frame.seq, pixel_size_m=out_pixel_nm * scale * 1e-9, role="lr",
                                            stage_xy_m=frame.stage_xy_m, t=frame.t), "raw", frame)
        now = time.time()
        latency = max(0.0, now - item.origin_t)
        self._out_seq += 1
        seq = self._out_seq
        try:
            sent = self.stream.publish(result.image, seq=seq, pixel_size_m=out_pixel_nm * 1e-9,
                                       model=result.model_name, model_version=str(result.version), latency_s=latency,
                                       source_seq=frame.seq, t=frame.t, confidence="low" if drift else None)
        except Exception as exc:  # noqa: BLE001 - ProtocolError (e.g. an output side over the wire limit)
            self._error("stream_error", f"{frame.source}: not streamed ({exc})")
            sent = False
        if not sent:
            self._counts.add("dropped.stream")
        self._counts.add("out")
        with self._lat_lock:
            self._latency.append(latency)
            self._model_s.append(result.seconds)
            self._processing_s.append(max(0.0, now - item.ingested_t))
        return seq, latency, out_pixel_nm

    def _publish_confidence(self, frame: Frame, result: EnhanceResult, observation: Observation, seq: int,
                            latency: float, out_pixel_nm: float) -> None:
        """Stream the confidence map of output ``seq`` (role "confidence"), when there is one."""
        conf = observation.confidence
        if self.config.publish.stream_confidence and conf is not None and conf.shape == result.image.shape:
            self._send(lambda: encode_confidence(conf, seq=seq, pixel_size_m=out_pixel_nm * 1e-9, model=result.model_name,
                                                 model_version=str(result.version), latency_s=latency,
                                                 source_seq=frame.seq, t=frame.t), "confidence", frame)

    def _on_written(self, published: PublishedFile) -> None:
        """FolderPublisher callback (writer thread): the frame's output exists -> enhanced in the catalogue."""
        self._counts.add("written")
        if self.catalogue is not None:
            self._catalogue_call(lambda: self.catalogue.mark_enhanced(published.source, published.path),
                                 published.source)

    def _on_scored(self, outcome: ReferenceOutcome) -> None:
        """Learner callback (learner thread): the monitor learns the reference's scores and the new profile."""
        if self.monitor is None:
            return
        try:
            model = self.engine.fitted if self.engine.version == outcome.version else None
            self.monitor.on_outcome(outcome, model)
        except Exception as exc:  # noqa: BLE001 - a measurement problem must not stop the learner
            self._error("monitor_failed", f"{outcome.hr_source}: quality profile not updated "
                        f"({type(exc).__name__}: {exc})", level=logging.ERROR, exc_info=exc)

    def _on_promoted(self, model: FittedModel, version: int, decision: PromotionDecision) -> None:
        """Learner callback (learner thread): serve the promoted model."""
        try:
            self.engine.set_model(model, version)
        except ValueError as exc:
            self._error("model_refused", f"model v{version}: {exc}", level=logging.ERROR)

    # ------------------------------------------------------------------------------------------ control

    def _handlers(self) -> dict[str, Any]:
        return {
            "ping": lambda: {"pong": True, "t": time.time()},
            "status": lambda: {"status": self.status()},
            "pause": self.pause,
            "resume": self.resume,
            "request_reference": self.request_reference,
            "set": self.set_options,
            "snapshot": self.snapshot,
        }

    def pause(self) -> dict[str, Any]:
        """Stop enhancing/publishing (inputs are still recorded and learned from)."""
        if not self._paused.is_set():
            self._paused.set()
            _log.info("paused: frames are recorded but not enhanced or published")
            self._emit("paused", {"paused": True}, record=True)
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        """Enhance and publish again from the next frame on."""
        if self._paused.is_set():
            self._paused.clear()
            _log.info("resumed")
            self._emit("resumed", {"paused": False}, record=True)
        return {"paused": False}

    def request_reference(self, region: list[float] | None = None, note: str | None = None) -> dict[str, Any]:
        """Ask the operator for an HR reference scan: emits (and records) a ``reference_requested`` event.

        ``region``: [y0, x0, y1, x1] in LR pixels of the newest frame, or None (anywhere).
        """
        with self._newest_lock:
            newest = self._newest[0] if self._newest is not None else None
        if region is not None and newest is not None:
            height, width = newest.shape
            if region[2] > height or region[3] > width:
                raise ValueError(f"region {region} lies outside the newest frame ({height}x{width} px)")
        assert self.monitor is not None
        payload = self.monitor.request(reason="operator", frame=newest, region=region, note=note,
                                       detail="requested by the operator")
        return {"requested": payload}

    def set_options(self, method: str | None = None, sigma_n: Any = ..., scale: int | None = None) -> dict[str, Any]:
        """Change ``method``, ``sigma_n`` (None: the method's default) and/or ``scale`` (only while no model of
        another scale is loaded; the learner restarts at the new scale). Returns the serving state."""
        if scale is not None and scale != self.engine.scale:
            self._set_scale(int(scale))
        if method is not None:
            self.engine.set_method(method)
        if sigma_n is not ...:
            self.engine.set_sigma(sigma_n)
        state = self.engine.describe()
        self._emit("settings_changed", state, record=True)
        return {"model": state}

    def _set_scale(self, scale: int) -> None:
        with self._learner_lock:
            if self.engine.has_model:
                raise ValueError(f"scale x{scale} refused: model v{self.engine.version} serves x{self.engine.scale}; "
                                 "a new scale needs another state folder")
            old = self.learner
            if old is not None:
                status = old.status()
                if status.busy or status.queued:
                    raise ValueError(f"scale x{scale} refused: the learner is working on a reference; try again")
            self.engine.set_scale(scale)
            learner = self._make_learner(None, 0, scale)
            if old is not None:
                old.stop(timeout=30.0)
            if self.monitor is not None:
                self.monitor.reset()
            learner.start()
            self.learner = learner

    def snapshot(self) -> dict[str, Any]:
        """Write the newest frame (raw) and its enhancement as TIFFs into ``<state_dir>/snapshots/``."""
        with self._newest_lock:
            newest = self._newest
        if newest is None:
            raise ValueError("no frame has been enhanced yet")
        frame, result = newest
        folder = self.config.state_dir / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        stem = f"{output_stem(frame.source)}_{stamp}"
        raw_path, enhanced_path = folder / f"{stem}_raw.tif", folder / f"{stem}_enhanced.tif"
        scale = result.image.shape[0] // max(1, frame.shape[0])
        meta = {"source": frame.source, "source_t": frame.t, "model": result.model_name,
                "model_version": result.version, "kind": "snapshot"}
        raw = np.asarray(frame.data)
        if raw.dtype not in (np.uint8, np.uint16, np.float32):
            raw = raw.astype(np.float32)
        write_tiff(raw_path, raw, pixel_size_nm=frame.pixel_size_nm, metadata={**meta, "image": "raw"})
        write_tiff(enhanced_path, result.image,
                   pixel_size_nm=frame.pixel_size_nm / scale if frame.pixel_size_nm else None,
                   metadata={**meta, "image": "enhanced", "scale": scale})
        _log.info("snapshot written: %s, %s", raw_path, enhanced_path)
        return {"raw": str(raw_path), "enhanced": str(enhanced_path)}

    # ------------------------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Everything the TUI shows, as a JSON-able dict (see the keys below; times in seconds)."""
        counts = self._counts.snapshot()
        errors = self._errors.snapshot()
        with self._lat_lock:
            latency = _percentiles(self._latency)
            model_s = _percentiles(self._model_s)
            processing = _percentiles(self._processing_s)
            n_lat = len(self._latency)
        ingest: dict[str, Any] = {}
        for name, source in self._sources:
            try:
                stats = source.stats()
                ingest[name] = {"received": stats.received, "rejected": stats.rejected,
                                "rejected_by_reason": dict(stats.rejected_by_reason), "last_error": stats.last_error}
            except Exception as exc:  # noqa: BLE001
                ingest[name] = {"error": str(exc)}
        merged = dict(errors)
        for info in ingest.values():
            for reason, n in info.get("rejected_by_reason", {}).items():
                merged[reason] = merged.get(reason, 0) + n
        folder_stats = None
        if self.folder is not None:
            fs = self.folder.stats()
            folder_stats = {"written": fs.written, "replaced": fs.replaced, "dropped": fs.dropped, "errors": fs.errors,
                            "queue_depth": fs.queue_depth, "dropped_by_reason": dict(fs.dropped_by_reason),
                            "errors_by_reason": dict(fs.errors_by_reason), "last_error": fs.last_error}
            for reason, n in fs.errors_by_reason.items():
                merged[f"write_{reason}"] = merged.get(f"write_{reason}", 0) + n
            for reason, n in fs.dropped_by_reason.items():
                merged[f"output_{reason}"] = merged.get(f"output_{reason}", 0) + n
        learner = asdict(self.learner.status()) if self.learner is not None else None
        if learner is not None:
            for reason, n in learner["rejected_by_reason"].items():
                merged[f"reference_{reason}"] = merged.get(f"reference_{reason}", 0) + n
        stream = asdict(self.stream.stats()) if self.stream is not None else None
        events = asdict(self.events.stats()) if self.events is not None else None
        dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
        skipped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("skipped.")}
        model = self.engine.describe()
        model["validation_delta_db"] = learner["held_out_delta_db"] if learner else None
        catalogue = None
        if self.catalogue is not None:
            try:
                c = self.catalogue.counts()
                catalogue = {"frames": dict(c.frames), "pairs": c.pairs, "events": c.events, "models": c.models,
                             "promoted_models": c.promoted_models}
            except Exception as exc:  # noqa: BLE001 - closed or failing: say so
                catalogue = {"error": str(exc)}
        return {
            "running": self._started and not self._stopped,
            "paused": self.paused,
            "uptime_s": time.time() - self._started_at if self._started else 0.0,
            "frames": {
                "in": counts.get("in", 0), "in_lr": counts.get("in_lr", 0), "in_hr": counts.get("in_hr", 0),
                "out": counts.get("out", 0), "written": counts.get("written", 0),
                "dropped": sum(dropped.values()), "dropped_by_reason": dropped, "skipped": skipped,
                "errors": sum(errors.values()), "errors_by_reason": errors,
            },
            "errors_by_reason": merged,
            "last_error": self._last_error,
            "latency": {"window": n_lat, "p50_s": latency["p50"], "p99_s": latency["p99"],
                        "model_p50_s": model_s["p50"], "model_p99_s": model_s["p99"],
                        "model_mean_s": model_s["mean"], "processing_p50_s": processing["p50"],
                        "processing_p99_s": processing["p99"]},
            "queues": {"serve": self._serve_queue.qsize(), "serve_limit": SERVE_QUEUE_SIZE,
                       "output": folder_stats["queue_depth"] if folder_stats else 0,
                       "output_limit": self.config.publish.output_queue_limit,
                       "learner": learner["queued"] if learner else 0},
            "model": model,
            "library_size": model["library_size"],
            "model_version": model["version"],
            "method": model["method"],
            "validation_delta_db": model["validation_delta_db"],
            "learner": learner,
            "ingest": ingest,
            "publish": {"folder": folder_stats, "stream": stream, "events": events},
            "control": asdict(self.control.stats()) if self.control is not None else None,
            "quality": self.monitor.status() if self.monitor is not None else None,
            "catalogue": catalogue,
            "endpoints": self.endpoints,
            "state_dir": str(self.config.state_dir),
            "out_dir": str(self.config.publish.out_dir) if self.config.publish.out_dir else None,
        }


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
  and classified (:class:`~refscope.daemon.learn.pairing.RoleClassifier`). HR references go to the learner
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
  (``publish.stream_confidence``, once a model serves); formats in :mod:`refscope.daemon.wire.protocol`.
* **Fusion** (``[fusion]``, off by default; :mod:`refscope.daemon.serve.fusion_window`): the serve loop fuses each live frame
  with the recent frames of its field (registered, changed regions left out) and enhances the fused frame; the
  fused frame replaces the raw one as the learner's pairing candidate. A stage move, raised drift, another frame
  size or a frame that does not register restarts the window with that frame (served alone).
* **Quality** (:mod:`refscope.daemon.service.monitor`): every served frame is measured against the frames the model learned from
  (``status()["quality"]``); drift, or frames without a model, trigger a rate-limited ``reference_requested``
  handed to the ``monitor.hook``; the operator's ``request_reference`` goes the same way.
* **Restart rule** (no duplicate outputs): after a restart (the catalogue exists) the folder is read from the
  start, existing files included (on the very first start, files already there are left alone), and a file
  frame is skipped when this version of it (same source, size, mtime) is already *enhanced* or *rejected* in the
  catalogue; an HR reference is skipped when the learner finished this version of it (learned, after its pair and
  library were saved; rejected; or quarantined), and learned again when it was handed over but not finished. Frames received but not finished before a crash are processed again; outputs are written
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

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from refscope.models.baseline import SafeBaseline
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, FittedModel, default_patch_size
from refscope.models.promotion import PromotionDecision

from ..atomic import TEMP_MARKER, atomic_write_json
from ..config import DaemonConfig
from ..errors import RefscopeError, StateError
from ..frames import FrameSource
from ..images import read_frames
from ..ingest.feed import ZmqFrameSource
from ..ingest.folder import FolderFrameSource
from ..learn.learner import Learner, ReferenceOutcome, library_serves, load_initial
from ..learn.pairing import RoleClassifier
from ..learn.prior_store import load_served_prior
from ..learn.trainer import BackgroundTrainer
from ..publish import EventPublisher, FolderPublisher, PublishedFile
from ..publish.spill import SPILL_DIR
from ..serve.champion import Champion
from ..serve.engine import ServingEngine
from ..serve.fusion_window import FusionWindow
from ..state.catalogue import CATALOGUE_NAME, Catalogue
from ..state.model_domain import DomainWatch
from ..state.model_store import load_domain, load_served_baseline
from ..state.net_store import has_net
from ..wire.curve import daemon_context
from ..wire.status import DaemonStatus, TrainingRound
from .commands import OperatorControls
from .control_server import ControlServer
from .frame_path import (MAX_FRAME_PIXELS, SERVE_QUEUE_SIZE, IngestLoop, LearnerSlot, NewestFrame, ServeLoop,
                         ServeQueue)
from .monitor import QualityMonitor
from .reference_hooks import HookRunner, make_hook
from .status import StatusReport
from .stream_output import FrameStream, StreamOutput
from .tally import LATENCY_WINDOW, Tally

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


def fit_config_for(config: DaemonConfig, *, scale: int | None = None) -> FitConfig:
    """The learner's :class:`FitConfig` from ``config.model`` (``scale`` overrides ``model.scale``)."""
    model = config.model
    s = model.scale if scale is None else int(scale)
    patch = model.patch_size if model.patch_size is not None else default_patch_size(s)
    return FitConfig(scale=s, library=LibraryConfig(patch_size=patch, size=model.library_size))


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


class Daemon:
    """The refscope service (see the module docstring), assembled from explicit collaborators.

    Built at construction: the :class:`~refscope.daemon.service.tally.Tally` (counts, errors, latencies, events),
    the :class:`~refscope.daemon.serve.engine.ServingEngine`, the role classifier, the fusion window, the serve queue,
    the learner slot and the :class:`~refscope.daemon.service.status.StatusReport`. Built by :meth:`start`, each
    given what it uses: the catalogue, the publishers, the quality monitor, the learner and trainer, the
    :class:`~refscope.daemon.service.commands.OperatorControls` behind the control server, the sources, and the two
    loops (:class:`~refscope.daemon.service.frame_path.IngestLoop`,
    :class:`~refscope.daemon.service.frame_path.ServeLoop`,
    workers whose failure stops the daemon).

    Args:
        config: the validated configuration.
        sources: frame sources to use instead of those built from ``config.ingest`` (tests, replays).
        folder_options: extra :class:`~refscope.daemon.ingest.folder.FolderSourceConfig` fields for the folder
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
        self.tally = Tally(_log, latency_window=LATENCY_WINDOW)
        self.engine = ServingEngine(config.model, config.serve, use_onnx=use_onnx, budget=config.memory_budget,
                                    export_in_child=True, onnx_cache_dir=config.state_dir,
                                    support_stride=config.monitor.confidence_stride)
        self.classify = RoleClassifier(config.ingest, lr_pixel_size_nm=config.ingest.pixel_size_nm)
        self.fusion = FusionWindow.from_config(config.fusion, config.memory_budget.fusion_bytes)
        self.serve_queue = ServeQueue(SERVE_QUEUE_SIZE)
        self.learners = LearnerSlot()
        self.newest = NewestFrame()
        self.domain_watch = DomainWatch(_log)  # frames served outside the model's domain: logged, counted
        self.champion = Champion(self.engine, config.state_dir)
        self._paused = threading.Event()
        self._started = False
        self._stopped = False
        self._started_at = 0.0
        self._stop_requested = threading.Event()
        self.report = StatusReport(config, tally=self.tally, engine=self.engine, classify=self.classify,
                                   fusion=self.fusion, domain_watch=self.domain_watch, serve_queue=self.serve_queue,
                                   learners=self.learners, running=lambda: self._started and not self._stopped,
                                   paused=self._paused.is_set,
                                   uptime_s=lambda: time.time() - self._started_at if self._started else 0.0,
                                   endpoints=lambda: self.endpoints)
        self._context: zmq.Context | None = None
        self.catalogue: Catalogue | None = None
        self.trainer: BackgroundTrainer | None = None
        self.folder: FolderPublisher | None = None
        self.stream: FrameStream | None = None
        self.events: EventPublisher | None = None
        self.control: ControlServer | None = None
        self.monitor: QualityMonitor | None = None
        self.controls: OperatorControls | None = None
        self.ingest: IngestLoop | None = None
        self.serve: ServeLoop | None = None
        self._hooks: HookRunner | None = None
        self._sources: list[tuple[str, FrameSource]] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def learner(self) -> Learner | None:
        """The current learner (replaced when the operator changes the scale)."""
        return self.learners.current

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

    def status(self) -> DaemonStatus:
        """Everything the TUI shows (:class:`~refscope.daemon.service.status.StatusReport`)."""
        return self.report.status()

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
        tally = self.tally
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self._folder_options.setdefault("include_existing", (cfg.state_dir / CATALOGUE_NAME).exists())
            for folder in (cfg.publish.out_dir, cfg.state_dir):
                if folder is not None:
                    _remove_stale_temps(folder)
            self.catalogue = Catalogue.in_state_dir(cfg.state_dir)
            tally.attach(catalogue=self.catalogue)
            self.report.attach(catalogue=self.catalogue)
            model, version = load_initial(cfg.state_dir)
            if model is not None:
                if model.scale != cfg.model.scale:
                    raise RefscopeError(
                        f"{cfg.state_dir}: the saved model is x{model.scale} but model.scale is {cfg.model.scale}; use "
                        "the same scale or another state folder")
                behind = not library_serves(cfg.state_dir)  # it lost to the network or prior serving then
                if behind and cfg.serve.prior and not has_net(cfg.state_dir):
                    self._serve_prior(cfg.model.scale)  # the prior it lost to serves again
                self.engine.set_model(model, version, champion=not behind)
                self.domain_watch.set_model(load_domain(cfg.state_dir))
            else:
                baseline = load_served_baseline(cfg.state_dir, cfg.model.scale)
                if baseline is not None:  # the session's safe baseline served before the restart
                    self.engine.set_baseline(baseline)
            listening = [(key, endpoint) for key, endpoint in (
                ("ingest.zmq_endpoint", cfg.ingest.zmq_endpoint), ("publish.pub_endpoint", cfg.publish.pub_endpoint),
                ("control.endpoint", cfg.control.endpoint), ("control.events_endpoint", cfg.control.events_endpoint))
                if endpoint is not None]
            # CURVE server keys + authenticator when configured
            self._context = daemon_context(cfg.security.curve_dir, cfg.security.authorized_clients_dir, listening)
            self.stream = FrameStream(cfg.publish.pub_endpoint, hwm=cfg.publish.pub_hwm, context=self._context)
            self.stream.start()
            self.events = EventPublisher(cfg.control.events_endpoint, context=self._context)
            self.events.start()
            tally.attach(events=self.events)
            self.report.attach(stream=self.stream, events=self.events)
            if cfg.publish.out_dir is not None:
                self.folder = FolderPublisher(cfg.publish.out_dir, queue_limit=cfg.publish.output_queue_limit,
                                              on_written=self._on_written, spill_dir=cfg.state_dir / SPILL_DIR)
                self.folder.start()
                self.report.attach(folder=self.folder)
            self._hooks = HookRunner(make_hook(cfg.monitor, context=self._context))
            self._hooks.start()
            self.monitor = QualityMonitor(cfg.monitor,
                                          emit=lambda kind, payload: tally.emit(kind, payload, record=True),
                                          hooks=self._hooks, model_pending=self._model_pending)
            self.report.attach(monitor=self.monitor)
            if model is not None:
                self.monitor.set_model(model, version)
            if cfg.trainer.enabled:
                self.trainer = BackgroundTrainer(cfg.trainer, state_dir=cfg.state_dir, scale=cfg.model.scale,
                                                 champion=self.champion.current,
                                                 on_promoted=self._on_net_promoted, catalogue=self.catalogue,
                                                 events=self.events)
                self.report.attach(trainer=self.trainer)
            restored = self.champion.restore(self.trainer.net_version if self.trainer is not None else 1)
            if model is None and not restored and cfg.serve.prior and self.engine.describe()["served_by"] == "bicubic":
                self._serve_prior(cfg.model.scale)
            self.learners.current = self._make_learner(model, version, cfg.model.scale)
            self.learners.current.start()
            if self.trainer is not None:
                self.trainer.start()
            self.controls = OperatorControls(engine=self.engine, monitor=self.monitor, learners=self.learners,
                                             make_learner=self._make_learner, newest=self.newest, paused=self._paused,
                                             status=self.status, state_dir=cfg.state_dir, tally=tally)
            self.control = ControlServer(cfg.control.endpoint, self.controls.handlers(), context=self._context)
            self.control.start()
            self.report.attach(control=self.control)
            self._sources = self._build_sources()
            self.report.attach(sources=self._sources)
            for _, source in self._sources:
                source.start()
            self.ingest = IngestLoop(cfg, sources=self._sources, catalogue=self.catalogue, learners=self.learners,
                                     classify=self.classify, engine=self.engine, monitor=self.monitor,
                                     serve_queue=self.serve_queue, serve_block_s=self._serve_block_s, tally=tally,
                                     on_failure=self.request_stop)
            self.serve = ServeLoop(cfg, serve_queue=self.serve_queue, catalogue=self.catalogue, engine=self.engine,
                                   domain_watch=self.domain_watch, paused=self._paused, fusion=self.fusion,
                                   learners=self.learners, folder=self.folder,
                                   output=StreamOutput(self.stream, cfg.publish,
                                                       consistency_on=cfg.monitor.consistency_on, tally=tally),
                                   monitor=self.monitor, trainer=self.trainer, newest=self.newest, tally=tally,
                                   on_failure=self.request_stop)
            self.report.attach(ingest=self.ingest)
            self.ingest.start()
            self.serve.start()
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
                       initial_version=version, on_scored=self._on_scored,
                       on_learned=self.trainer.add_pair if self.trainer is not None else None,
                       on_baseline=self._on_baseline, served_net=self.engine.champion_net,
                       recent_lr_bytes=self.config.memory_budget.recent_frames_bytes,
                       serving_busy=self.serve_queue.busy)

    def _build_sources(self) -> list[tuple[str, FrameSource]]:
        if self._given_sources is not None:
            return [(f"source{i}:{type(s).__name__}", s) for i, s in enumerate(self._given_sources)]
        ingest = self.config.ingest
        input_bytes = self.config.memory_budget.input_bytes  # no input decodes to more (checked before decoding)
        sources: list[tuple[str, FrameSource]] = []
        if ingest.watch is not None:
            sources.append((f"folder:{ingest.watch}",
                            FolderFrameSource(ingest.folder_source_config(**self._folder_options),
                                              reader=functools.partial(read_frames, max_bytes=input_bytes,
                                                                       detector=ingest.detector),
                                              ledger=self.catalogue)))
        if ingest.zmq_endpoint is not None:
            message_bytes = min(ingest.zmq_max_message_bytes, max(input_bytes, 1 << 16))  # per message part
            if message_bytes < ingest.zmq_max_message_bytes:
                _log.info("ZMQ messages on %s are limited to %d MB by serve.max_memory_mb (ingest.zmq_max_message_"
                          "bytes allows %d MB)", ingest.zmq_endpoint, message_bytes >> 20,
                          ingest.zmq_max_message_bytes >> 20)
            sources.append(("zmq", ZmqFrameSource(ingest.zmq_source_config(max_message_bytes=message_bytes),
                                                  context=self._context)))
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
        for _, source in self._sources:
            self._quietly(source.stop, "source")
        if self.ingest is not None:
            self._quietly(lambda: self.ingest.stop(timeout=10.0), "ingest loop")
        if self.serve is not None:
            self._quietly(lambda: self.serve.finish(self._drain_s, timeout=60.0), "serve loop")
        if self.folder is not None:
            self._quietly(lambda: self.folder.stop(drain=True, timeout=timeout), "output writer")
        if self.trainer is not None:
            self._quietly(self.trainer.stop, "trainer")
        learner = self.learners.current
        if learner is not None:
            self._quietly(lambda: learner.stop(timeout=60.0), "learner")
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
        for loop in (self.ingest, self.serve):
            if loop is not None:
                loop.check()
        if self.learner is not None:
            self.learner.check()
        if self.trainer is not None:
            self.trainer.check()
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
            if code == 0:
                try:
                    self.check()  # a loop that failed and asked for the stop
                except BaseException as exc:  # noqa: BLE001
                    _log.critical("refscope daemon: %s failed: %s; stopping", type(exc).__name__, exc)
                    code = 1
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return code

    def _write_daemon_file(self) -> None:
        try:
            atomic_write_json(self.config.state_dir / DAEMON_FILE,
                              {"pid": os.getpid(), "started": self._started_at, "endpoints": self.endpoints,
                               "out_dir": self.config.publish.out_dir, "watch": self.config.ingest.watch})
        except (OSError, ValueError) as exc:
            _log.warning("cannot write %s: %s", self.config.state_dir / DAEMON_FILE, exc)

    # ------------------------------------------------------------------------------------------ counting

    def _on_written(self, published: PublishedFile) -> None:
        """FolderPublisher callback (writer thread): the frame's output exists -> enhanced in the catalogue."""
        self.tally.counts.add("written")
        catalogue = self.catalogue
        if catalogue is not None:
            self.tally.catalogue_call(lambda: catalogue.mark_enhanced(published.source, published.path),
                                      published.source)

    def _on_scored(self, outcome: ReferenceOutcome) -> None:
        """Learner callback (learner thread): the monitor learns the reference's scores and the new profile."""
        if self.monitor is None:
            return
        try:
            model = self.engine.fitted if self.engine.version == outcome.version else None
            self.monitor.on_outcome(outcome, model)
        except Exception as exc:  # noqa: BLE001 - a measurement problem must not stop the learner
            self.tally.error("monitor_failed", f"{outcome.hr_source}: quality profile not updated "
                             f"({type(exc).__name__}: {exc})", level=logging.ERROR, exc_info=exc)

    def _model_pending(self) -> bool:
        """A model is on its way (monitor, serve thread): a reference is being learned or waits to be, or a promoted
        model is being exported and warmed up."""
        if self.engine.warming:
            return True
        learner = self.learners.current
        if learner is None:
            return False
        status = learner.status()
        return bool(status.busy or status.queued)

    def _on_promoted(self, model: FittedModel, version: int, decision: PromotionDecision, *, serve: bool = True
                     ) -> None:
        """Learner callback (learner thread): serve the promoted model; ``model_serving`` once it serves.
        ``serve=False``: the network that serves beat the library on its reference; the library is loaded as the
        session's library and the network keeps serving (no ``model_serving``)."""
        start = time.monotonic()
        try:
            self.champion.library_promoted(model, version, serve=serve)
        except ValueError as exc:
            self.tally.error("model_refused", f"model v{version}: {exc}", level=logging.ERROR)
            return
        self.domain_watch.set_model(load_domain(self.config.state_dir))  # the learner saved it with the model
        if serve:
            self._announce_serving("paired", version, time.monotonic() - start)

    def _serve_prior(self, scale: int) -> None:
        """Serve the shipped prior for ``scale`` while nothing is learned (``serve.prior``); a missing prior leaves
        bicubic, a damaged one is logged and counted (``prior_failed``) and bicubic serves."""
        try:
            prior = load_served_prior(scale)
            if prior is not None:
                self.engine.set_prior(*prior)
        except (StateError, ValueError) as exc:
            self.tally.error("prior_failed", f"the shipped x{scale} prior cannot serve ({exc}); bicubic serves until "
                             "a model is learned", level=logging.ERROR)

    def _on_baseline(self, baseline: SafeBaseline) -> None:
        """Learner callback (learner thread): no model serves yet and the first reference's safe baseline beat what
        was learned from it: serve that baseline instead of bicubic; ``model_serving`` (kind ``baseline``)."""
        start = time.monotonic()
        self.engine.set_baseline(baseline)
        self._announce_serving("baseline", 0, time.monotonic() - start)

    def _on_net_promoted(self, model_bytes: bytes, manifest: Any, version: int, result: TrainingRound) -> None:
        """Trainer callback (trainer thread): serve the promoted network; ``model_serving`` once it serves."""
        start = time.monotonic()
        self.champion.net_promoted(model_bytes, manifest, version, result)  # ValueError: logged by the trainer
        self._announce_serving("net", version, time.monotonic() - start)

    def _announce_serving(self, kind: str, version: int, seconds: float) -> None:
        """The event that says a promoted model now enhances the frames (``model_promoted`` says it won; export
        and warm-up come between)."""
        self.tally.emit("model_serving", {"kind": kind, "version": int(version), "engine_version": self.engine.version,
                                     "backend": self.engine.describe().get("backend"),
                                     "promotion_to_serving_s": round(seconds, 3)}, record=True)

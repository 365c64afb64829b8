"""The daemon's frame path: ingest (record, classify, route) and serve (enhance, write, stream, observe).

Two of the :class:`~refscope.daemon.service.daemon.Daemon`'s collaborators, each a
:class:`~refscope.daemon.worker.Worker` built from the parts it uses (the policies are in
:mod:`refscope.daemon.service.daemon`'s docstring): :class:`IngestLoop` takes frames from every source round robin,
records them in the catalogue and routes HR references to the learner and LR frames to the :class:`ServeQueue`;
:class:`ServeLoop` enhances each LR frame with the current model and hands it to the output folder, the
:class:`~refscope.daemon.service.stream_output.StreamOutput` and the quality monitor. What they share is explicit:
the queue, the :class:`LearnerSlot` (the learner is replaced when the operator changes the scale), the
:class:`NewestFrame` (read by the snapshot and reference-request commands) and the daemon's
:class:`~refscope.daemon.service.tally.Tally`.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from refscope.models.consistency import data_consistency
from refscope.models.fusion import count_confidence

from ..config import DaemonConfig
from ..config.budget import FramePlan
from ..frames import Frame, FrameSource
from ..learn.learner import Learner
from ..learn.pairing import RoleClassifier, RoleDecision
from ..publish import FolderPublisher, output_stem
from ..serve.engine import EnhanceResult, ServingEngine, check_frame
from ..serve.fusion_window import FusedFrame, FusionWindow
from ..state.model_domain import DomainWatch
from ..worker import Worker, supervised
from .monitor import Observation, QualityMonitor
from .stream_output import StreamOutput
from .tally import Tally

__all__ = ["IngestLoop", "ServeLoop", "ServeQueue", "LearnerSlot", "NewestFrame", "ServeItem", "plan_frame",
           "SERVE_QUEUE_SIZE", "MAX_FRAME_PIXELS"]

_log = logging.getLogger("refscope.daemon")

SERVE_QUEUE_SIZE = 8
"""LR frames waiting for the serve loop."""
RELEARN_QUIET_S = 1.0
"""After a restart, references handed over but never learned wait until ingest was idle this long, seconds."""
RELEARN_WAIT_S = 10.0
"""... or at most this long, seconds."""
MAX_FRAME_PIXELS = 8192 * 8192
"""Largest LR frame enhanced (H·W); larger frames are refused (``too_large``) to bound memory."""


@dataclass(frozen=True, eq=False)
class ServeItem:
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



class ServeQueue:
    """The LR frames waiting for the serve loop (``SERVE_QUEUE_SIZE``), and whether one is being served now."""

    def __init__(self, size: int = SERVE_QUEUE_SIZE) -> None:
        self.items: queue.Queue[ServeItem] = queue.Queue(maxsize=size)
        self.serving_now = threading.Event()

    def busy(self) -> bool:
        """A frame is being served or waits to be (the learner lets it go first: ``Learner(serving_busy=...)``)."""
        return self.serving_now.is_set() or self.items.qsize() > 0


class LearnerSlot:
    """The daemon's current :class:`~refscope.daemon.learn.learner.Learner` (the operator's change of scale
    replaces it while the loops run). ``lock`` serialises replacements."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: Learner | None = None


class NewestFrame:
    """The newest enhanced frame and its result (thread-safe): the snapshot and the reference request read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[Frame, EnhanceResult] | None = None

    def set(self, frame: Frame, result: EnhanceResult) -> None:
        with self._lock:
            self._value = (frame, result)

    def get(self) -> tuple[Frame, EnhanceResult] | None:
        with self._lock:
            return self._value


def plan_frame(frame: Frame, engine: ServingEngine, config: DaemonConfig, *, monitored: bool) -> FramePlan:
    """What serving ``frame`` at the engine's current scale costs under the memory budget (``fits`` False, with the
    reason, for a frame the daemon does not enhance). ``monitored``: a quality monitor makes confidence maps."""
    height, width = frame.shape
    if height * width > MAX_FRAME_PIXELS:
        return FramePlan(0, 0, 0, False, f"{height}x{width} px is more than the {MAX_FRAME_PIXELS} pixels the "
                         "daemon enhances")
    publish = config.publish
    return engine.budget.plan_frame(
        (height, width), engine.scale, stream=publish.pub_endpoint is not None,
        confidence=monitored and (publish.stream_confidence or publish.write_confidence),
        write_confidence=publish.write_confidence, queue_limit=publish.output_queue_limit,
        safe_blend=config.serve.safe_blend)


class IngestLoop(Worker):
    """Takes frames from every source round robin (one round per turn), records and classifies each and routes it:
    HR references to the learner, live frames to the serve queue (see the daemon's policies). A source whose
    ``poll`` raises has failed (its own thread died): the loop stops with that failure and the daemon with it.

    Args:
        config: the daemon's configuration (``ingest``, ``publish``).
        sources: ``(name, source)`` pairs, already started.
        catalogue: the open catalogue.
        learners: the current learner.
        classify: decides each frame's role.
        engine, monitor: for the memory plan of a live frame (and the monitor hears of references).
        serve_queue: where live frames go; ``serve_block_s``: how long a full queue is waited on before a frame is
            dropped, seconds.
        tally: the daemon's books.
        on_failure: called when a failure of the daemon's own state stops the loop (the daemon stops).
    """

    def __init__(self, config: DaemonConfig, *, sources: Sequence[tuple[str, FrameSource]], catalogue: Any,
                 learners: LearnerSlot, classify: RoleClassifier, engine: ServingEngine,
                 monitor: QualityMonitor | None, serve_queue: ServeQueue, serve_block_s: float, tally: Tally,
                 on_failure: Callable[[], None] | None = None) -> None:
        super().__init__("refscope-ingest", poll_interval_s=0.1, on_error=tally.count_failure,
                         on_stopped=on_failure)
        self.config = config
        self.sources = list(sources)
        self.catalogue = catalogue
        self.learners = learners
        self.classify = classify
        self.engine = engine
        self.monitor = monitor
        self.serve_queue = serve_queue
        self.serve_block_s = float(serve_block_s)
        self.tally = tally
        self._role_lock = threading.Lock()
        self._last_role: dict[str, str] | None = None
        self._relearn: list[tuple[Frame, float]] = []  # references to learn again after a restart
        self._last_frame = time.monotonic()

    @property
    def last_role(self) -> dict[str, str] | None:
        """The latest frame's role and why (status ``roles.last``)."""
        with self._role_lock:
            return self._last_role

    @property
    def learner(self) -> Learner:
        learner = self.learners.current
        assert learner is not None
        return learner

    def poll_once(self, timeout: float) -> None:
        slice_s = 0.1 / max(1, len(self.sources))
        got = False
        self._submit_relearned(time.monotonic() - self._last_frame)
        for _, source in self.sources:
            if self.stopping:
                return
            try:
                frame = source.poll(0.0 if got else slice_s)
            except Exception as exc:  # noqa: BLE001 - the source itself failed: no turn can mend it, stop
                self.fail(exc)
            if frame is None:
                continue
            got = True
            self._last_frame = time.monotonic()
            # one bad frame never stops ingest: counted, quarantined (rejected in the catalogue), go on
            supervised(lambda: self.ingest(frame), worker="ingest", item=frame.source, count=self.tally.count_failure,
                       quarantine=self.tally.quarantine, reason="ingest_failed")

    def ingest(self, frame: Frame) -> None:
        """Record, classify and route one frame."""
        now = time.time()
        counts = self.tally.counts
        counts.add("in")
        size, mtime = _file_version(frame)
        record = None
        try:
            record = self.catalogue.frame(frame.source)
        except Exception as exc:  # noqa: BLE001
            self.tally.error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
        # the restart rule applies to files (re-read after a restart); a ZMQ message is never delivered twice, and a
        # sender that restarts its seq counter must not have its new frames taken for old ones
        known = size is not None and record is not None and _same_version(record, size, mtime)
        if known and record.role in ("lr", "hr", "both"):  # re-read after a restart: keep the role it was given
            decision = RoleDecision(record.role, "the role recorded before the restart")  # type: ignore[arg-type]
            self.classify.decide(replace(frame, role="lr" if decision.live else "hr"))  # the live stream follows
        else:
            decision = self.classify.decide(frame, serve_finer=self.config.ingest.serve_finer_frames)
        role = decision.role
        counts.add(f"in_{role}")
        self._note_role(frame, decision)
        hand_over = self._reference_hand_over(frame, role, known, size, mtime) if decision.reference else None
        if not decision.live:
            if hand_over is not None:
                hand_over()
            return
        remember = False
        try:
            remember = self._ingest_live(frame, role, known, record, size, mtime, now, reference=decision.reference)
        finally:
            if hand_over is not None:  # a zoom-series frame: queued to be served first, then learned from
                hand_over()
        if remember:
            self.learner.note_lr(frame)  # after the hand-over: a reference is not paired with itself

    def _reference_hand_over(self, frame: Frame, role: str, known: bool, size: int | None,
                             mtime: float | None) -> Callable[[], None] | None:
        """Record an HR reference and return what hands it to the learner (None when it was learned before)."""
        catalogue = self.catalogue
        learned = self._learned_before(frame, size, mtime) if known else None
        if learned is not None:
            self.tally.counts.add("skipped.already_seen")
            _log.info("%s: HR reference already %s before; skipped", frame.source, learned)
            return None
        self.tally.catalogue_call(lambda: catalogue.record_frame(frame.source, role=role, seq=frame.seq, t=frame.t,
                                                                 size=size, mtime=mtime), frame.source)

        def hand_over() -> None:
            if known:
                # re-read after a restart, maybe before the LR frame it belongs to: learned once the re-read
                # folder has been taken in (see _submit_relearned)
                _log.warning("%s: HR reference was handed to the learner but not learned before the daemon "
                             "stopped; it is learned again", frame.source)
                self._relearn.append((frame, time.monotonic()))
            elif not self.learner.submit_reference(frame):
                self.tally.error("learner_unavailable", f"{frame.source}: the learner is not accepting references")
            else:
                _log.info("%s: HR reference (%.4g nm/px) handed to the learner", frame.source,
                          frame.pixel_size_nm or 0)
                if self.monitor is not None:
                    self.monitor.reference_arrived(frame)

        return hand_over

    def _ingest_live(self, frame: Frame, role: str, known: bool, record: Any, size: int | None,
                     mtime: float | None, now: float, *, reference: bool) -> bool:
        """Queue a live frame to be served unless it was served before a restart or does not fit the memory budget.
        Returns whether the learner may remember it for pairing (a frame that does not fit enters no buffer)."""
        catalogue = self.catalogue
        counts = self.tally.counts
        plan = plan_frame(frame, self.engine, self.config, monitored=self.monitor is not None)
        if known and record.status in ("enhanced", "rejected"):
            counts.add(f"skipped.already_{record.status}")
            return plan.fits
        if not reference:
            self.tally.catalogue_call(lambda: catalogue.record_frame(frame.source, role=role, seq=frame.seq,
                                                                     t=frame.t, size=size, mtime=mtime), frame.source)
        origin = mtime if mtime is not None else frame.t
        item = ServeItem(frame=frame, origin_t=origin, ingested_t=now, size=size, mtime=mtime)
        if not plan.fits:
            self.tally.reject(frame.source, "too_large", f"{frame.source}: {plan.reason}")
            return False
        deadline = time.monotonic() + self.serve_block_s
        while True:
            try:
                self.serve_queue.items.put(item, timeout=0.05)
                return True
            except queue.Full:
                if self.stopping:
                    return True  # stopping: the frame stays "received" and is processed after a restart
                if time.monotonic() >= deadline:
                    break
        counts.add("dropped.serve_queue_full")
        self.tally.error("serve_queue_full", f"{frame.source}: dropped, the serve queue stayed full "
                         f"({self.serve_queue.items.maxsize} frames) for {self.serve_block_s:g} s")
        self.tally.emit("output_dropped", {"source": frame.source, "reason": "serve_queue_full"})
        return True

    def _submit_relearned(self, quiet_s: float) -> None:
        """Hand the references to be learned again (restart) to the learner once ingest has been quiet for
        ``RELEARN_QUIET_S`` (the re-read folder's LR frames noted first), at the latest ``RELEARN_WAIT_S`` after
        they came."""
        if not self._relearn:
            return
        now = time.monotonic()
        if quiet_s < RELEARN_QUIET_S and now - self._relearn[0][1] < RELEARN_WAIT_S:
            return
        waiting, self._relearn = self._relearn, []
        for frame, _ in waiting:
            self.tally.counts.add("relearned")
            if not self.learner.submit_reference(frame):
                self.tally.error("learner_unavailable", f"{frame.source}: the learner is not accepting references")
            elif self.monitor is not None:
                self.monitor.reference_arrived(frame)

    def _learned_before(self, frame: Frame, size: int | None, mtime: float | None) -> str | None:
        """The learner's outcome for this version of a reference seen before a restart (``"learned"``,
        ``"rejected"``, ``"quarantined"``), or None when it was handed over but never finished (learn it again)."""
        try:
            return self.catalogue.learned(frame.source, size, mtime)
        except Exception as exc:  # noqa: BLE001 - a lookup hiccup: learning it twice is better than losing it
            self.tally.error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
            return None

    def _note_role(self, frame: Frame, decision: RoleDecision) -> None:
        """Log every frame's role and why; keep the latest in the status; a zoom-series frame (``"both"``) and a
        move of the live stream to a coarser magnification are also events (recorded in the catalogue)."""
        _log.info("%s: %s (%s)", frame.source, {"lr": "live frame", "hr": "reference", "both": "reference and live "
                  "frame"}[decision.role], decision.reason)
        with self._role_lock:
            self._last_role = {"source": frame.source, "role": decision.role, "reason": decision.reason}
        if decision.role == "both" or "live stream moves" in decision.reason:
            self.tally.emit("frame_role", {"source": frame.source, "role": decision.role, "reason": decision.reason},
                            record=True)


class ServeLoop(Worker):
    """Enhances each queued LR frame with the current model (fused with its field's recent frames when fusion is
    on) and hands it to the output folder, the stream and the quality monitor (see the daemon's policies).

    Args:
        config: the daemon's configuration (``publish``, ``fusion``).
        serve_queue: the frames to serve.
        catalogue: the open catalogue.
        engine: the serving engine; ``domain_watch``: its model's domain check.
        paused: set while the operator has paused serving.
        fusion: the fusion window; ``learners``: the current learner (it pairs references with fused frames).
        folder: the output folder writer (None: no output folder); ``output``: the stream.
        monitor: the quality monitor (None: no quality look); ``trainer``: held while a frame is served (or None).
        newest: where the newest enhanced frame is kept.
        tally: the daemon's books.
        on_failure: called when a failure of the daemon's own state stops the loop (the daemon stops).
    """

    def __init__(self, config: DaemonConfig, *, serve_queue: ServeQueue, catalogue: Any, engine: ServingEngine,
                 domain_watch: DomainWatch, paused: threading.Event, fusion: FusionWindow, learners: LearnerSlot,
                 folder: FolderPublisher | None, output: StreamOutput, monitor: QualityMonitor | None,
                 trainer: Any, newest: NewestFrame, tally: Tally,
                 on_failure: Callable[[], None] | None = None) -> None:
        super().__init__("refscope-serve", poll_interval_s=0.05, on_error=tally.count_failure,
                         on_stopped=on_failure)
        self.config = config
        self.serve_queue = serve_queue
        self.catalogue = catalogue
        self.engine = engine
        self.domain_watch = domain_watch
        self.paused = paused
        self.fusion = fusion
        self.learners = learners
        self.folder = folder
        self.output = output
        self.monitor = monitor
        self.trainer = trainer
        self.newest = newest
        self.tally = tally

    def finish(self, drain_s: float, timeout: float) -> bool:
        """Stop after serving what is queued, for at most ``drain_s`` seconds (what is left is processed after a
        restart); then wait up to ``timeout`` seconds for the frame in hand. Returns whether the loop ended."""
        deadline = time.monotonic() + drain_s
        while (time.monotonic() < deadline and self.serve_queue.busy() and self._thread is not None
               and self._error is None):
            time.sleep(0.02)
        ended = self.stop(timeout=timeout)
        left = self.serve_queue.items.qsize()
        if left:
            _log.warning("stopping with %d frame(s) not enhanced (they are processed after a restart)", left)
        return ended

    def poll_once(self, timeout: float) -> None:
        if self.monitor is not None:
            self.monitor.tick()
        try:
            item = self.serve_queue.items.get(timeout=timeout)
        except queue.Empty:
            return
        # one bad frame never stops serving: counted, quarantined (rejected in the catalogue), go on
        self.serve_queue.serving_now.set()
        if self.trainer is not None:
            self.trainer.hold(True)  # the frame gets the CPU; training goes on in the gaps
        try:
            supervised(lambda: self.serve(item), worker="serve", item=item.frame.source,
                       count=self.tally.count_failure, quarantine=self.tally.quarantine, reason="serve_failed")
        finally:
            self.serve_queue.serving_now.clear()
            if self.trainer is not None and self.serve_queue.items.empty():
                self.trainer.hold(False)

    # ------------------------------------------------------------------------------------ the quality look
    def _consistency(self, frame: Frame, result: EnhanceResult) -> float | None:
        """Data consistency ρ of a served frame (:func:`refscope.models.consistency.data_consistency` with the
        forward model learned with the serving library); None without one (bicubic, no model yet, a model saved
        before forward models existed, another scale). Where the safe blend left the model's output as it was, the
        blend's own pass of the forward model gives it (:attr:`~refscope.models.safe_blend.BlendSummary.
        model_consistency`), not a second pass. A failure is counted (``consistency_failed``), never fatal."""
        blend = result.safe_blend
        if blend is not None and blend.blended_share == 0.0 and blend.model_consistency is not None:
            rho = blend.model_consistency  # the served pixels are the model's: the blend already degraded them
        else:
            fitted = self.engine.fitted
            forward = fitted.forward if fitted is not None else None
            if forward is None or result.image.shape != (forward.scale * frame.shape[0],
                                                         forward.scale * frame.shape[1]):
                return None
            try:
                rho = data_consistency(frame.data, result.image, forward)
            except Exception as exc:  # noqa: BLE001 - a measurement must never stop serving
                self.tally.error("consistency_failed", f"{frame.source}: data consistency not measured "
                                 f"({type(exc).__name__}: {exc})", level=logging.ERROR, exc_info=exc)
                return None
        return round(float(rho), 4) if math.isfinite(rho) else None

    def _observe(self, frame: Frame, result: EnhanceResult, consistency: float | None = None) -> Observation:
        """The quality monitor's look at a served frame; a failure is counted (``monitor_failed``), never fatal."""
        if self.monitor is None:
            return Observation(None, {}, False)
        try:
            return self.monitor.observe(frame, out_shape=result.image.shape, consistency=consistency,
                                        support=result.support, support_version=result.support_version)
        except Exception as exc:  # noqa: BLE001 - quality measurement must never stop serving
            self.tally.error("monitor_failed", f"{frame.source}: quality not measured ({type(exc).__name__}: {exc})",
                             level=logging.ERROR, exc_info=exc)
            return Observation(None, {}, False)

    def _drift_now(self) -> bool:
        """The monitor's drift state before this frame is measured (flags the enhanced frame's header)."""
        return bool(self.monitor is not None and self.monitor.drift)

    def _look(self, enhanced: Frame, result: Any, fused: FusedFrame | None, scale: int,
              consistency: float | None = None) -> Observation:
        """The quality monitor's look at what was enhanced (``enhanced``: the fused frame when there is one); the
        confidence map is weighted by the frames fused per pixel (:func:`refscope.models.fusion.count_confidence`)."""
        observation = self._observe(enhanced, result, consistency)
        if fused is None or fused.count is None:
            return observation
        conf = observation.confidence
        if conf is not None and conf.shape == (fused.count.shape[0] * scale, fused.count.shape[1] * scale):
            observation = replace(observation, confidence=count_confidence(conf, fused.count, scale=scale))
        return observation

    # ------------------------------------------------------------------------------------------- serving
    def _fuse(self, frame: Frame) -> FusedFrame | None:
        """The fused frame to enhance in place of ``frame`` (None: fusion is off). A failure of fusion costs the
        fusion only: counted (``fusion_failed``), the frame is served alone."""
        if not self.fusion.active:
            return None
        try:
            fused = self.fusion.add(frame.data, t=frame.t, stage_xy_m=frame.stage_xy_m,
                                    pixel_size_nm=frame.pixel_size_nm, drift=self._drift_now())
        except Exception as exc:  # noqa: BLE001 - fusion must never stop serving
            self.fusion.clear()
            self.tally.error("fusion_failed", f"{frame.source}: served alone, fusion failed "
                             f"({type(exc).__name__}: {exc})", level=logging.ERROR)
            return None
        if fused.reset not in (None, "off"):
            _log.info("%s: fusion window restarted (%s)", frame.source, fused.reset)
        learner = self.learners.current
        if fused.frames > 1 and learner is not None:
            learner.note_fused(replace(frame, data=fused.image))  # pair references with what is served
        return fused

    def _publish_single(self, frame: Frame, stem: str, scale: int, out_pixel_nm: float | None,
                        meta: dict[str, Any], max_pending: int) -> None:
        """Write the single-frame enhancement beside the fused one (``<stem>_single``; ``fusion.publish_single``)."""
        assert self.folder is not None
        try:
            single = self.engine.enhance(frame.data)
        except Exception as exc:  # noqa: BLE001 - the fused output goes out anyway
            self.tally.error("enhance_failed", f"{frame.source}: single-frame result not made ({exc})")
            return
        if single.image.shape[0] != frame.shape[0] * scale:
            return  # the scale changed in between
        extra = dict(meta, fused_frames=1, model_s=round(single.seconds, 6))
        if not self.folder.submit(single.image, source=frame.source, t=frame.t, scale=scale, pixel_size_nm=out_pixel_nm,
                                  metadata=extra, stem=f"{stem}_single", confidence=None, max_pending=max_pending):
            self.tally.counts.add("dropped.output_queue_full")

    def serve(self, item: ServeItem) -> None:
        """Enhance one queued frame and hand it to the folder, the stream and the monitor."""
        frame = item.frame
        catalogue = self.catalogue
        tally = self.tally
        try:
            if item.size is not None and catalogue.already_enhanced(frame.source, item.size, item.mtime):
                tally.counts.add("skipped.already_enhanced")
                return
        except Exception as exc:  # noqa: BLE001
            tally.error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
        if self.paused.is_set():
            tally.counts.add("skipped.paused")
            tally.catalogue_call(lambda: catalogue.mark_rejected(frame.source, "skipped: paused"), frame.source)
            return
        height, width = frame.shape
        plan = plan_frame(frame, self.engine, self.config, monitored=self.monitor is not None)  # the scale may
        if not plan.fits:                                                                        # have changed
            tally.reject(frame.source, "too_large", f"{frame.source}: {plan.reason}")
            return
        try:
            check_frame(frame.data)  # a frame the model cannot take is not streamed either
        except ValueError as exc:
            tally.reject(frame.source, "bad_frame", f"{frame.source}: {exc}")
            return
        self.domain_watch.check(frame)  # outside the model's domain: logged and counted, served all the same
        self.output.stream_raw(frame)  # what the operator looks at first: the new scan, at once
        fused = self._fuse(frame)
        enhanced = replace(frame, data=fused.image) if fused is not None else frame  # what the model sees
        try:
            result = self.engine.enhance(enhanced.data)
        except ValueError as exc:
            tally.reject(frame.source, "bad_frame", f"{frame.source}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the model failed on this frame
            tally.reject(frame.source, "enhance_failed", f"{frame.source}: {type(exc).__name__}: {exc}",
                         level=logging.ERROR)
            return
        scale = result.image.shape[0] // height  # the engine's scale when it enhanced this frame
        out_pixel_nm = frame.pixel_size_nm / scale if frame.pixel_size_nm is not None else None
        self.newest.set(frame, result)
        # The quality look (an extra pass over the library) stays off the latency path: the enhanced frame is
        # handed to the writer and the stream first, its confidence map follows -- unless the map is written
        # beside the output TIFF, which needs it before the hand-over.
        write_conf = self.config.publish.write_confidence
        consistency = self._consistency(enhanced, result)
        observation = self._look(enhanced, result, fused, scale, consistency) if write_conf else None
        meta = {"model": result.model_name, "model_version": result.version, "backend": result.backend,
                "model_s": round(result.seconds, 6), "source_seq": frame.seq}
        if fused is not None:
            meta.update(fused_frames=fused.frames, fusion_s=round(fused.seconds, 6))
        if consistency is not None:
            meta["consistency"] = consistency
        if self.folder is not None:
            stem = output_stem(frame.source)
            confidence = observation.confidence if observation is not None else None
            if fused is not None and fused.frames > 1 and self.config.fusion.publish_single:
                self._publish_single(frame, stem, scale, out_pixel_nm, meta, plan.output_queue)
            if not self.folder.submit(result.image, source=frame.source, t=frame.t, scale=scale,
                                      pixel_size_nm=out_pixel_nm, metadata=meta, stem=stem, confidence=confidence,
                                      max_pending=plan.output_queue):
                tally.counts.add("dropped.output_queue_full")
                tally.emit("output_dropped", {"source": frame.source, "reason": "output_queue_full"})
        drift = observation.drift if observation is not None else self._drift_now()
        seq, latency, out_pixel_nm = self.output.publish(frame, result, origin_t=item.origin_t,
                                                         ingested_t=item.ingested_t, scale=scale,
                                                         out_pixel_nm=out_pixel_nm, drift=drift,
                                                         consistency=consistency)
        if observation is None:
            observation = self._look(enhanced, result, fused, scale, consistency)
        self.output.publish_confidence(frame, result, observation, seq, latency, out_pixel_nm)
        if self.folder is None:
            tally.catalogue_call(lambda: catalogue.mark_enhanced(frame.source, None), frame.source)

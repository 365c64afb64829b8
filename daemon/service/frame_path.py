"""The daemon's frame path: ingest (record, classify, route) and serve (enhance, write, stream, observe).

Part of :class:`~refscope.daemon.service.daemon.Daemon` (a mixin; the policies are in :mod:`refscope.daemon.service.daemon`'s docstring):
the ingest loop takes frames from every source round robin, records them in the catalogue and routes HR
references to the learner and LR frames to the serve queue; the serve loop enhances each LR frame with the
current model and hands it to the output folder, the stream and the quality monitor.
"""
from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


from refscope.models.fusion import count_confidence

from ..frames import Frame
from ..learn.pairing import RoleDecision
from ..publish import output_stem
from ..config.budget import FramePlan
from ..serve.fusion_window import FusedFrame
from ..serve.engine import check_frame
from ..worker import supervised

__all__ = ["FramePipeline", "ServeItem", "SERVE_QUEUE_SIZE", "MAX_FRAME_PIXELS"]

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


class FramePipeline:
    """Ingest and serve loops of :class:`~refscope.daemon.service.daemon.Daemon` (mixin)."""

    def _ingest_loop(self) -> None:
        sources = self._sources
        slice_s = 0.1 / max(1, len(sources))
        last_frame = time.monotonic()
        while not self._stop_ingest.is_set():
            got = False
            self._submit_relearned(time.monotonic() - last_frame)
            for name, source in sources:
                if self._stop_ingest.is_set():
                    return
                frame = source.poll(0.0 if got else slice_s)  # a failure of the source itself propagates
                if frame is None:
                    continue
                got = True
                last_frame = time.monotonic()
                # one bad frame never stops ingest: counted, quarantined (rejected in the catalogue), go on
                supervised(lambda: self._ingest(frame), worker="ingest", item=frame.source, count=self._count_failure,
                           quarantine=self._quarantine, reason="ingest_failed")

    def _ingest(self, frame: Frame) -> None:
        now = time.time()
        self._counts.add("in")
        size, mtime = _file_version(frame)
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
        if known and record.role in ("lr", "hr", "both"):  # re-read after a restart: keep the role it was given
            decision = RoleDecision(record.role, "the role recorded before the restart")  # type: ignore[arg-type]
            self._classify.decide(replace(frame, role="lr" if decision.live else "hr"))  # the live stream follows
        else:
            decision = self._classify.decide(frame, serve_finer=self.config.ingest.serve_finer_frames)
        role = decision.role
        self._counts.add(f"in_{role}")
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
        assert catalogue is not None and self.learner is not None
        learned = self._learned_before(frame, size, mtime) if known else None
        if learned is not None:
            self._counts.add("skipped.already_seen")
            _log.info("%s: HR reference already %s before; skipped", frame.source, learned)
            return None
        self._catalogue_call(lambda: catalogue.record_frame(frame.source, role=role, seq=frame.seq, t=frame.t,
                                                            size=size, mtime=mtime), frame.source)

        def hand_over() -> None:
            if known:
                # re-read after a restart, maybe before the LR frame it belongs to: learned once the re-read
                # folder has been taken in (see _submit_relearned)
                _log.warning("%s: HR reference was handed to the learner but not learned before the daemon "
                             "stopped; it is learned again", frame.source)
                self._relearn.append((frame, time.monotonic()))
            elif not self.learner.submit_reference(frame):
                self._error("learner_unavailable", f"{frame.source}: the learner is not accepting references")
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
        assert catalogue is not None and self.learner is not None
        plan = self._plan(frame)
        if known and record.status in ("enhanced", "rejected"):
            self._counts.add(f"skipped.already_{record.status}")
            return plan.fits
        if not reference:
            self._catalogue_call(lambda: catalogue.record_frame(frame.source, role=role, seq=frame.seq, t=frame.t,
                                                                size=size, mtime=mtime), frame.source)
        origin = mtime if mtime is not None else frame.t
        item = ServeItem(frame=frame, origin_t=origin, ingested_t=now, size=size, mtime=mtime)
        if not plan.fits:
            self._reject(item, "too_large", f"{frame.source}: {plan.reason}")
            return False
        deadline = time.monotonic() + self._serve_block_s
        while True:
            try:
                self._serve_queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                if self._stop_ingest.is_set():
                    return True  # stopping: the frame stays "received" and is processed after a restart
                if time.monotonic() >= deadline:
                    break
        self._counts.add("dropped.serve_queue_full")
        self._error("serve_queue_full", f"{frame.source}: dropped, the serve queue stayed full ({SERVE_QUEUE_SIZE} "
                    f"frames) for {self._serve_block_s:g} s")
        self._emit("output_dropped", {"source": frame.source, "reason": "serve_queue_full"})
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
            self._counts.add("relearned")
            if not self.learner.submit_reference(frame):
                self._error("learner_unavailable", f"{frame.source}: the learner is not accepting references")
            elif self.monitor is not None:
                self.monitor.reference_arrived(frame)

    def _serving_busy(self) -> bool:
        """A frame is being served or waits to be (the learner lets it go first: ``Learner(serving_busy=...)``)."""
        return self._serving_now.is_set() or self._serve_queue.qsize() > 0

    def _count_failure(self, reason: str, message: str) -> None:
        """Count a failure :func:`~refscope.daemon.worker.supervised` already logged."""
        self._errors.add(reason)
        self._last_error = message

    def _quarantine(self, source: str, message: str) -> None:
        """A frame a worker failed on: rejected in the catalogue, so a restart does not process it again."""
        record = self.catalogue.frame(source) if self.catalogue is not None else None
        if record is None:
            return
        self.catalogue.mark_rejected(source, message)
        if record.role in ("hr", "both"):
            self.catalogue.mark_learned(source, size=record.size, mtime=record.mtime, outcome="quarantined")

    def _learned_before(self, frame: Frame, size: int | None, mtime: float | None) -> str | None:
        """The learner's outcome for this version of a reference seen before a restart (``"learned"``,
        ``"rejected"``, ``"quarantined"``), or None when it was handed over but never finished (learn it again)."""
        assert self.catalogue is not None
        try:
            return self.catalogue.learned(frame.source, size, mtime)
        except Exception as exc:  # noqa: BLE001 - a lookup hiccup: learning it twice is better than losing it
            self._error("catalogue_error", f"{frame.source}: lookup failed ({exc})", level=logging.ERROR)
            return None

    def _note_role(self, frame: Frame, decision: RoleDecision) -> None:
        """Log every frame's role and why; keep the latest in the status; a zoom-series frame (``"both"``) and a
        move of the live stream to a coarser magnification are also events (recorded in the catalogue)."""
        _log.info("%s: %s (%s)", frame.source, {"lr": "live frame", "hr": "reference", "both": "reference and live "
                  "frame"}[decision.role], decision.reason)
        with self._role_lock:
            self._last_role = {"source": frame.source, "role": decision.role, "reason": decision.reason}
        if decision.role == "both" or "live stream moves" in decision.reason:
            self._emit("frame_role", {"source": frame.source, "role": decision.role, "reason": decision.reason},
                       record=True)

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
            # one bad frame never stops serving: counted, quarantined (rejected in the catalogue), go on
            self._serving_now.set()
            if self.trainer is not None:
                self.trainer.hold(True)  # the frame gets the CPU; training goes on in the gaps
            try:
                supervised(lambda: self._serve(item), worker="serve", item=item.frame.source,
                           count=self._count_failure, quarantine=self._quarantine, reason="serve_failed")
            finally:
                self._serving_now.clear()
                if self.trainer is not None and self._serve_queue.empty():
                    self.trainer.hold(False)

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
            self._error("fusion_failed", f"{frame.source}: served alone, fusion failed ({type(exc).__name__}: {exc})",
                        level=logging.ERROR)
            return None
        if fused.reset not in (None, "off"):
            _log.info("%s: fusion window restarted (%s)", frame.source, fused.reset)
        if fused.frames > 1 and self.learner is not None:
            self.learner.note_fused(replace(frame, data=fused.image))  # pair references with what is served
        return fused

    def _look(self, enhanced: Frame, result: Any, fused: FusedFrame | None, scale: int,
              consistency: float | None = None) -> Any:
        """The quality monitor's look at what was enhanced (``enhanced``: the fused frame when there is one); the
        confidence map is weighted by the frames fused per pixel (:func:`refscope.models.fusion.count_confidence`)."""
        observation = self._observe(enhanced, result, consistency)
        if fused is None or fused.count is None:
            return observation
        conf = observation.confidence
        if conf is not None and conf.shape == (fused.count.shape[0] * scale, fused.count.shape[1] * scale):
            observation = replace(observation, confidence=count_confidence(conf, fused.count, scale=scale))
        return observation

    def _publish_single(self, frame: Frame, stem: str, scale: int, out_pixel_nm: float | None,
                        meta: dict[str, Any], max_pending: int) -> None:
        """Write the single-frame enhancement beside the fused one (``<stem>_single``; ``fusion.publish_single``)."""
        assert self.folder is not None
        try:
            single = self.engine.enhance(frame.data)
        except Exception as exc:  # noqa: BLE001 - the fused output goes out anyway
            self._error("enhance_failed", f"{frame.source}: single-frame result not made ({exc})")
            return
        if single.image.shape[0] != frame.shape[0] * scale:
            return  # the scale changed in between
        extra = dict(meta, fused_frames=1, model_s=round(single.seconds, 6))
        if not self.folder.submit(single.image, source=frame.source, t=frame.t, scale=scale, pixel_size_nm=out_pixel_nm,
                                  metadata=extra, stem=f"{stem}_single", confidence=None, max_pending=max_pending):
            self._counts.add("dropped.output_queue_full")

    def _plan(self, frame: Frame) -> FramePlan:
        """What serving ``frame`` at the current scale costs under the memory budget (``fits`` False, with the
        reason, for a frame the daemon does not enhance)."""
        height, width = frame.shape
        if height * width > MAX_FRAME_PIXELS:
            return FramePlan(0, 0, 0, False, f"{height}x{width} px is more than the {MAX_FRAME_PIXELS} pixels the "
                             "daemon enhances")
        publish = self.config.publish
        return self.engine.budget.plan_frame(
            (height, width), self.engine.scale, stream=publish.pub_endpoint is not None,
            confidence=self.monitor is not None and (publish.stream_confidence or publish.write_confidence),
            write_confidence=publish.write_confidence, queue_limit=publish.output_queue_limit)

    def _reject(self, item: ServeItem, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        self._error(reason, message, level=level)
        if self.catalogue is not None:
            self._catalogue_call(lambda: self.catalogue.mark_rejected(item.frame.source, f"{reason}: {message}"),
                                 item.frame.source)

    def _serve(self, item: ServeItem) -> None:
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
        plan = self._plan(frame)  # again: the scale may have changed since ingest
        if not plan.fits:
            self._reject(item, "too_large", f"{frame.source}: {plan.reason}")
            return
        try:
            check_frame(frame.data)  # a frame the model cannot take is not streamed either
        except ValueError as exc:
            self._reject(item, "bad_frame", f"{frame.source}: {exc}")
            return
        self.domain_watch.check(frame)  # outside the model's domain: logged and counted, served all the same
        self._stream_raw(frame)  # what the operator looks at first: the new scan, at once
        fused = self._fuse(frame)
        enhanced = replace(frame, data=fused.image) if fused is not None else frame  # what the model sees
        try:
            result = self.engine.enhance(enhanced.data)
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
                self._counts.add("dropped.output_queue_full")
                self._emit("output_dropped", {"source": frame.source, "reason": "output_queue_full"})
        drift = observation.drift if observation is not None else self._drift_now()
        seq, latency, out_pixel_nm = self._publish_stream(frame, result, item, scale, out_pixel_nm, drift,
                                                          consistency)
        if observation is None:
            observation = self._look(enhanced, result, fused, scale, consistency)
        self._publish_confidence(frame, result, observation, seq, latency, out_pixel_nm)
        if self.folder is None:
            self._catalogue_call(lambda: catalogue.mark_enhanced(frame.source, None), frame.source)

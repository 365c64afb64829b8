"""The daemon's stream output: raw LR frames, enhanced frames and confidence maps on the PUB stream.

Part of :class:`~refscope.daemon.service.daemon.Daemon` (a mixin: it uses the daemon's stream, monitor, counters and
latency records). Every message is sent without blocking; a dropped or unencodable message is counted, never fatal.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from refscope.models.consistency import data_consistency

from ..frames import Frame
from .monitor import Observation
from ..wire.protocol import DTYPES, OutputFields, encode_confidence, encode_frame
from ..publish import StreamPublisher
from ..serve.engine import EnhanceResult

if TYPE_CHECKING:
    from .frame_path import ServeItem

__all__ = ["FrameStream", "StreamOutput", "NOMINAL_PIXEL_NM"]

_log = logging.getLogger("refscope.daemon")

NOMINAL_PIXEL_NM = 1.0
"""Stream pixel size of frames without one, nm (the wire format needs a positive value)."""


class FrameStream(StreamPublisher):
    """The enhanced-frame stream, which also carries the raw LR frames and confidence maps (see :mod:`refscope.daemon.wire.protocol`)."""

    def send_parts(self, parts: list[bytes]) -> bool:
        """Send an already encoded two-part message without blocking; False when dropped (counted)."""
        return self._pub.send(parts)


class StreamOutput:
    """Stream publishing of :class:`~refscope.daemon.service.daemon.Daemon` (mixin)."""

    def _consistency(self, frame: Frame, result: EnhanceResult) -> float | None:
        """Data consistency ρ of a served frame (:func:`refscope.models.consistency.data_consistency` with the
        forward model learned with the serving library); None without one (bicubic, no model yet, a model saved
        before forward models existed, another scale). A failure is counted (``consistency_failed``), never fatal."""
        fitted = self.engine.fitted
        forward = fitted.forward if fitted is not None else None
        if forward is None or result.image.shape != (forward.scale * frame.shape[0], forward.scale * frame.shape[1]):
            return None
        try:
            rho = data_consistency(frame.data, result.image, forward)
        except Exception as exc:  # noqa: BLE001 - a measurement must never stop serving
            self._error("consistency_failed", f"{frame.source}: data consistency not measured "
                        f"({type(exc).__name__}: {exc})", level=logging.ERROR, exc_info=exc)
            return None
        return round(float(rho), 4) if math.isfinite(rho) else None

    def _observe(self, frame: Frame, result: EnhanceResult, consistency: float | None = None) -> Observation:
        """The quality monitor's look at a served frame; a failure is counted (``monitor_failed``), never fatal."""
        if self.monitor is None:
            return Observation(None, {}, False)
        try:
            return self.monitor.observe(frame, out_shape=result.image.shape, consistency=consistency)
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

    def _stream_raw(self, frame: Frame) -> None:
        """Stream the raw LR frame as soon as serving takes it, before it is enhanced: the operator's raw pane
        shows the new scan at once (tens of ms), the enhanced one follows when the model is done."""
        if self.stream is None or not self.config.publish.stream_raw:
            return
        raw = np.asarray(frame.data)
        if raw.dtype.newbyteorder("<") not in DTYPES.values():
            raw = raw.astype(np.float32)
        pixel_nm = frame.pixel_size_nm if frame.pixel_size_nm is not None else NOMINAL_PIXEL_NM
        self._send(lambda: encode_frame(raw, seq=frame.seq, pixel_size_m=pixel_nm * 1e-9, role="lr",
                                        stage_xy_m=frame.stage_xy_m, t=frame.t, copy=False), "raw", frame)

    def _publish_stream(self, frame: Frame, result: EnhanceResult, item: ServeItem, scale: int,
                        out_pixel_nm: float | None, drift: bool,
                        consistency: float | None = None) -> tuple[int, float, float]:
        """Stream the enhanced frame (the raw one went first: :meth:`_stream_raw`); returns (output seq, latency s,
        output pixel nm)."""
        assert self.stream is not None
        if out_pixel_nm is None:
            if not self._warned_no_pixel:
                _log.warning("%s: frame has no pixel size; streaming with a nominal %g nm input pixel (set "
                             "ingest.pixel_size_nm)", frame.source, NOMINAL_PIXEL_NM)
                self._warned_no_pixel = True
            out_pixel_nm = NOMINAL_PIXEL_NM / scale
        low = drift or (consistency is not None and consistency >= self.config.monitor.consistency_on)
        now = time.time()
        latency = max(0.0, now - item.origin_t)
        self._out_seq += 1
        seq = self._out_seq
        try:
            sent = self.stream.publish(result.image, self._fields(frame, result, seq, latency, out_pixel_nm),
                                       confidence="low" if low else None, consistency=consistency)
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

    @staticmethod
    def _fields(frame: Frame, result: EnhanceResult, seq: int, latency: float, out_pixel_nm: float) -> OutputFields:
        """The output header of output ``seq`` (the enhanced frame and its confidence map share it)."""
        return OutputFields(seq=seq, pixel_size_m=out_pixel_nm * 1e-9, model=result.model_name,
                            model_version=str(result.version), latency_s=latency, source_seq=frame.seq, t=frame.t)

    def _publish_confidence(self, frame: Frame, result: EnhanceResult, observation: Observation, seq: int,
                            latency: float, out_pixel_nm: float) -> None:
        """Stream the confidence map of output ``seq`` (role "confidence"), when there is one."""
        conf = observation.confidence
        if self.config.publish.stream_confidence and conf is not None and conf.shape == result.image.shape:
            fields = self._fields(frame, result, seq, latency, out_pixel_nm)
            self._send(lambda: encode_confidence(conf, fields, copy=False), "confidence", frame)

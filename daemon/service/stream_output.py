"""The daemon's stream output: raw LR frames, enhanced frames and confidence maps on the PUB stream.

One of the :class:`~refscope.daemon.service.daemon.Daemon`'s collaborators, built from the stream it publishes on, the
``[publish]`` settings and the daemon's :class:`~refscope.daemon.service.tally.Tally`. Every message is sent
without blocking; a dropped or unencodable message is counted, never fatal.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..config import PublishConfig
from ..frames import Frame
from ..publish import StreamPublisher
from ..serve.engine import EnhanceResult
from ..wire.protocol import DTYPES, OutputFields, encode_confidence, encode_frame
from .monitor import Observation
from .tally import Tally

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
    """The PUB stream of served frames: raw first, then the enhanced frame, then its confidence map.

    Args:
        stream: the publisher (None: no stream endpoint; every call is then a no-op).
        publish: the ``[publish]`` settings (``stream_raw``, ``stream_confidence``).
        consistency_on: data consistency ρ from which a frame is flagged low-confidence (``monitor.consistency_on``).
        tally: counts drops and errors, and keeps the latency window.
    """

    def __init__(self, stream: FrameStream | None, publish: PublishConfig, *, consistency_on: float,
                 tally: Tally) -> None:
        self.stream = stream
        self._publish = publish
        self._consistency_on = float(consistency_on)
        self._tally = tally
        self._out_seq = 0
        self._warned_no_pixel = False

    def _send(self, parts_of: Any, what: str, frame: Frame) -> None:
        """Encode (``parts_of()``) and send an extra stream message (raw frame, confidence map); problems are
        counted, never fatal."""
        assert self.stream is not None
        try:
            if not self.stream.send_parts(parts_of()):
                self._tally.counts.add(f"dropped.stream_{what}")
        except Exception as exc:  # noqa: BLE001 - ProtocolError, odd dtype...
            self._tally.error("stream_error", f"{frame.source}: {what} not streamed ({exc})")

    def stream_raw(self, frame: Frame) -> None:
        """Stream the raw LR frame as soon as serving takes it, before it is enhanced: the operator's raw pane
        shows the new scan at once (tens of ms), the enhanced one follows when the model is done."""
        if self.stream is None or not self._publish.stream_raw:
            return
        raw = np.asarray(frame.data)
        if raw.dtype.newbyteorder("<") not in DTYPES.values():
            raw = raw.astype(np.float32)
        pixel_nm = frame.pixel_size_nm if frame.pixel_size_nm is not None else NOMINAL_PIXEL_NM
        self._send(lambda: encode_frame(raw, seq=frame.seq, pixel_size_m=pixel_nm * 1e-9, role="lr",
                                        stage_xy_m=frame.stage_xy_m, t=frame.t, copy=False), "raw", frame)

    def publish(self, frame: Frame, result: EnhanceResult, *, origin_t: float, ingested_t: float, scale: int,
                out_pixel_nm: float | None, drift: bool, consistency: float | None = None) -> tuple[int, float, float]:
        """Stream the enhanced frame (the raw one went first: :meth:`stream_raw`), count it out and record its
        latency from ``origin_t`` (the input's "closed" time) and ``ingested_t`` (taken from its source), unix s;
        returns (output seq, latency s, output pixel nm)."""
        if out_pixel_nm is None:
            if not self._warned_no_pixel:
                _log.warning("%s: frame has no pixel size; streaming with a nominal %g nm input pixel (set "
                             "ingest.pixel_size_nm)", frame.source, NOMINAL_PIXEL_NM)
                self._warned_no_pixel = True
            out_pixel_nm = NOMINAL_PIXEL_NM / scale
        low = drift or (consistency is not None and consistency >= self._consistency_on)
        now = time.time()
        latency = max(0.0, now - origin_t)
        self._out_seq += 1
        seq = self._out_seq
        sent = False
        if self.stream is not None:
            try:
                sent = self.stream.publish(result.image, self._fields(frame, result, seq, latency, out_pixel_nm),
                                           confidence="low" if low else None, consistency=consistency)
            except Exception as exc:  # noqa: BLE001 - ProtocolError (e.g. an output side over the wire limit)
                self._tally.error("stream_error", f"{frame.source}: not streamed ({exc})")
        if not sent:
            self._tally.counts.add("dropped.stream")
        self._tally.counts.add("out")
        self._tally.record_latency(latency, result.seconds, max(0.0, now - ingested_t))
        return seq, latency, out_pixel_nm

    @staticmethod
    def _fields(frame: Frame, result: EnhanceResult, seq: int, latency: float, out_pixel_nm: float) -> OutputFields:
        """The output header of output ``seq`` (the enhanced frame and its confidence map share it)."""
        return OutputFields(seq=seq, pixel_size_m=out_pixel_nm * 1e-9, model=result.model_name,
                            model_version=str(result.version), latency_s=latency, source_seq=frame.seq, t=frame.t)

    def publish_confidence(self, frame: Frame, result: EnhanceResult, observation: Observation, seq: int,
                           latency: float, out_pixel_nm: float) -> None:
        """Stream the confidence map of output ``seq`` (role "confidence"), when there is one."""
        conf = observation.confidence
        if (self.stream is not None and self._publish.stream_confidence and conf is not None
                and conf.shape == result.image.shape):
            fields = self._fields(frame, result, seq, latency, out_pixel_nm)
            self._send(lambda: encode_confidence(conf, fields, copy=False), "confidence", frame)

"""Decoders of v1 wire-format messages (:mod:`refscope.daemon.wire.protocol`): input frames, enhanced frames,
confidence maps and any message of the PUB stream, without copying the pixel buffer.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ..frames import Frame
from .header import _check_enhanced_fields, _check_input_fields, _is_int, parse_header
from .schema import CONFIDENCE_ROLE, DEFAULT_LIMITS, ENHANCED_ROLE, EnhancedFrame, ProtocolError, ProtocolLimits

__all__ = ["decode_frame", "decode_enhanced", "decode_confidence", "stream_role", "decode_stream"]


def _pixel_view(part: Any, dtype: np.dtype, shape: tuple[int, int], origin: str) -> np.ndarray:
    try:
        buffer = memoryview(part)
    except TypeError:
        raise ProtocolError("buffer_size", f"{origin}: pixel part is not a byte buffer") from None
    expected = shape[0] * shape[1] * dtype.itemsize
    if buffer.nbytes != expected:
        raise ProtocolError(
            "buffer_size",
            f"{origin}: pixel buffer is {buffer.nbytes} bytes, expected {expected} "
            f"({shape[0]} x {shape[1]} x {dtype.itemsize}-byte {dtype.name})",
        )
    try:
        array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. a non-contiguous buffer
        raise ProtocolError("buffer_size", f"{origin}: pixel buffer cannot be read as {dtype.name} ({exc})") from None
    array.flags.writeable = False
    return array


def decode_frame(
    parts: Sequence[Any],
    *,
    source: str,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    received_at: float | None = None,
) -> Frame:
    """Decode a v1 input message into a :class:`Frame` without copying the pixels.

    Args:
        parts: the message parts (bytes, bytearray, memoryview or ``zmq.Frame``).
        source: where it came from, e.g. ``"zmq:tcp://127.0.0.1:5555"``; the frame's ``source`` becomes
            ``f"{source}#{seq}"`` and error messages start with it.
        limits: size limits, checked before the pixel buffer is looked at.
        received_at: unix seconds used as ``t`` when the header has none (default: now).

    Raises :class:`ProtocolError` (with ``reason_code``) for anything that breaks the format.
    """
    header = parse_header(parts, origin=source, limits=limits)
    seq_hint = header.get("seq")
    origin = f"{source}#{seq_hint}" if _is_int(seq_hint) else source
    seq, dtype, shape, pixel_size_m = _check_input_fields(header, origin, limits)
    data = _pixel_view(parts[1], dtype, shape, origin)
    stage = header.get("stage_xy_m")
    t = header.get("t")
    if t is None:
        t = time.time() if received_at is None else received_at
    return Frame(
        data=data,
        pixel_size_nm=pixel_size_m * 1e9,
        role=header["role"],
        source=f"{source}#{seq}",
        seq=seq,
        t=float(t),
        stage_xy_m=(float(stage[0]), float(stage[1])) if stage is not None else None,
        field_of_view_nm=(shape[0] * pixel_size_m * 1e9, shape[1] * pixel_size_m * 1e9),
        metadata={"header": MappingProxyType(header)},
    )


def decode_enhanced(
    parts: Sequence[Any], *, source: str = "enhanced", limits: ProtocolLimits = DEFAULT_LIMITS
) -> EnhancedFrame:
    """Decode a v1 output message (``role: "enhanced"``) without copying the pixels.

    ``source`` names the stream in error messages. Raises :class:`ProtocolError` like :func:`decode_frame`.
    """
    header = parse_header(parts, origin=source, limits=limits)
    seq_hint = header.get("seq")
    origin = f"{source}#{seq_hint}" if _is_int(seq_hint) else source
    seq, dtype, shape, pixel_size_m = _check_enhanced_fields(header, origin, limits)
    data = _pixel_view(parts[1], dtype, shape, origin)
    return EnhancedFrame(**_output_fields(header, seq, pixel_size_m), data=data, confidence=header.get("confidence"),
                         consistency=None if header.get("consistency") is None else float(header["consistency"]),
                         header=MappingProxyType(header))


def _output_fields(header: Mapping[str, Any], seq: int, pixel_size_m: float) -> dict[str, Any]:
    """The :class:`OutputFields` of a checked output header, as keywords of :class:`EnhancedFrame`."""
    return {"seq": seq, "pixel_size_m": pixel_size_m, "model": header["model"], "model_version": header["model_version"],
            "latency_s": float(header["latency_s"]), "source_seq": int(header["source_seq"]), "t": float(header["t"])}


def decode_confidence(
    parts: Sequence[Any], *, source: str = "confidence", limits: ProtocolLimits = DEFAULT_LIMITS
) -> EnhancedFrame:
    """Decode a ``role: "confidence"`` message (an :class:`EnhancedFrame` whose ``data`` is the map) without
    copying the pixels. Raises :class:`ProtocolError` like :func:`decode_enhanced`."""
    header = parse_header(parts, origin=source, limits=limits)
    seq_hint = header.get("seq")
    origin = f"{source}#{seq_hint}" if _is_int(seq_hint) else source
    seq, dtype, shape, pixel_size_m = _check_enhanced_fields(header, origin, limits, role=CONFIDENCE_ROLE)
    data = _pixel_view(parts[1], dtype, shape, origin)
    return EnhancedFrame(**_output_fields(header, seq, pixel_size_m), data=data, header=MappingProxyType(header))


def stream_role(parts: Sequence[Any], *, limits: ProtocolLimits = DEFAULT_LIMITS) -> str:
    """The ``role`` of a stream message (``"lr"``, ``"enhanced"``, ``"confidence"``, or anything newer), read
    from its header only. Raises :class:`ProtocolError` when the header is unreadable or has no string role."""
    header = parse_header(parts, origin="stream", limits=limits)
    role = header.get("role")
    if not isinstance(role, str):
        raise ProtocolError("missing_field", "stream: header lacks a string 'role'")
    return role


def decode_stream(parts: Sequence[Any], *, source: str = "stream",
                  limits: ProtocolLimits = DEFAULT_LIMITS) -> tuple[str, Frame | EnhancedFrame | None]:
    """Decode any message of refscope's PUB stream: ``(role, decoded)`` with a :class:`Frame` for ``"lr"``,
    an :class:`EnhancedFrame` for ``"enhanced"`` and ``"confidence"``, and None for a role this version does
    not know (skip it). Raises :class:`ProtocolError` for a malformed message."""
    role = stream_role(parts, limits=limits)
    if role == "lr":
        return role, decode_frame(parts, source=source, limits=limits)
    if role == ENHANCED_ROLE:
        return role, decode_enhanced(parts, source=source, limits=limits)
    if role == CONFIDENCE_ROLE:
        return role, decode_confidence(parts, source=source, limits=limits)
    return role, None

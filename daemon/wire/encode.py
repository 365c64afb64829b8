"""Encoders of v1 wire-format messages (:mod:`refscope.daemon.wire.protocol`): input frames, enhanced frames and
confidence maps, each checked against the same rules the decoders apply.
"""
from __future__ import annotations

import json
import operator
from typing import Any

import numpy as np

from .header import _check_enhanced_fields, _check_input_fields, _check_shape, _show
from .schema import (CONFIDENCE_ROLE, DEFAULT_LIMITS, DTYPES, ENHANCED_ROLE, PROTOCOL_VERSION, OutputFields, ProtocolError,
                              ProtocolLimits)

__all__ = ["encode_frame", "encode_enhanced", "encode_confidence"]


def _pixels(data: np.ndarray, origin: str, limits: ProtocolLimits) -> tuple[str, np.ndarray]:
    array = np.asarray(data)
    name = next((n for n, d in DTYPES.items() if array.dtype.newbyteorder("<") == d), None)
    if name is None:
        raise ProtocolError("bad_dtype", f"{origin}: pixel dtype {array.dtype} is not one of {sorted(DTYPES)}")
    _check_shape(list(array.shape), origin, limits)
    return name, np.ascontiguousarray(array, dtype=DTYPES[name])


def _number(value: Any, name: str, origin: str) -> Any:
    """Convert numpy scalars and other real numbers to a JSON-able float, leaving odd values for the checks."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ProtocolError("bad_type", f"{origin}: {name!r} must be a number, got {_show(value)}") from None


def _integer(value: Any, name: str, origin: str) -> Any:
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        raise ProtocolError("bad_type", f"{origin}: {name!r} must be an integer, got {_show(value)}") from None


def _payload(pixels: np.ndarray, copy: bool) -> bytes:
    """The pixel part: a bytes copy, or with ``copy=False`` a zero-copy byte view of ``pixels`` (C order) that a
    ZMQ socket sends without copying (the array must not change until the message is sent)."""
    if copy:
        return pixels.tobytes()
    return memoryview(np.ascontiguousarray(pixels)).cast("B")  # type: ignore[return-value]


def _dump(header: dict[str, Any]) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_frame(
    data: np.ndarray,
    *,
    seq: int,
    pixel_size_m: float,
    role: str,
    stage_xy_m: tuple[float, float] | None = None,
    t: float | None = None,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    copy: bool = True,
) -> list[bytes]:
    """Encode an (H, W) image as a v1 input message ``[header, buffer]``.

    Args:
        data: (H, W) array of a dtype in :data:`DTYPES` (any byte order; sent little-endian, C order).
        seq: frame counter, >= 0.
        pixel_size_m: pixel edge length, metres.
        role: ``"lr"``, ``"hr"`` or ``"auto"``.
        stage_xy_m: optional stage position (x, y), metres.
        t: optional acquisition time, unix seconds.

    Raises :class:`ProtocolError` when the result would not decode (the same rules as :func:`decode_frame`).
    """
    origin = "encode_frame"
    name, pixels = _pixels(data, origin, limits)
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "seq": _integer(seq, "seq", origin),
        "dtype": name,
        "shape": [int(pixels.shape[0]), int(pixels.shape[1])],
        "pixel_size_m": _number(pixel_size_m, "pixel_size_m", origin),
        "role": role,
    }
    if stage_xy_m is not None:
        try:
            x, y = stage_xy_m
        except (TypeError, ValueError):
            raise ProtocolError("bad_type", f"{origin}: 'stage_xy_m' must be (x, y), got {_show(stage_xy_m)}") from None
        header["stage_xy_m"] = [_number(x, "stage_xy_m", origin), _number(y, "stage_xy_m", origin)]
    if t is not None:
        header["t"] = _number(t, "t", origin)
    _check_input_fields(header, origin, limits)
    return [_dump(header), _payload(pixels, copy)]


def encode_enhanced(
    data: np.ndarray,
    fields: OutputFields,
    *,
    confidence: str | None = None,
    consistency: float | None = None,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    copy: bool = True,
) -> list[bytes]:
    """Encode an enhanced (H, W) image as a v1 output message ``[header, buffer]`` with ``role: "enhanced"``.

    ``fields`` are the output header's (:class:`~refscope.daemon.wire.schema.OutputFields`: output pixel size in
    metres, seconds from input receipt to publication, the input frame's seq and acquisition time);
    ``confidence`` an optional short flag such as ``"low"``, ``consistency`` the optional data consistency ρ of
    the frame (>= 0; :mod:`refscope.models.consistency`). Raises :class:`ProtocolError` for values that would not
    decode.
    """
    origin = "encode_enhanced"
    name, pixels = _pixels(data, origin, limits)
    header = _output_header(ENHANCED_ROLE, name, pixels.shape, origin, fields)
    if confidence is not None:
        header["confidence"] = confidence
    if consistency is not None:
        header["consistency"] = _number(consistency, "consistency", origin)
    _check_enhanced_fields(header, origin, limits)
    return [_dump(header), _payload(pixels, copy)]


def _output_header(role: str, dtype_name: str, shape: tuple[int, ...], origin: str,
                   fields: OutputFields) -> dict[str, Any]:
    """The v1 header fields shared by every output message (enhanced frame, confidence map)."""
    if not isinstance(fields, OutputFields):
        raise TypeError(f"{origin}: fields must be OutputFields, got {type(fields).__name__}")
    return {
        "v": PROTOCOL_VERSION,
        "seq": _integer(fields.seq, "seq", origin),
        "dtype": dtype_name,
        "shape": [int(shape[0]), int(shape[1])],
        "pixel_size_m": _number(fields.pixel_size_m, "pixel_size_m", origin),
        "role": role,
        "model": fields.model,
        "model_version": fields.model_version,
        "latency_s": _number(fields.latency_s, "latency_s", origin),
        "source_seq": _integer(fields.source_seq, "source_seq", origin),
        "t": _number(fields.t, "t", origin),
    }


def encode_confidence(
    data: np.ndarray,
    fields: OutputFields,
    *,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    copy: bool = True,
) -> list[bytes]:
    """Encode a confidence map (H, W) as a v1 output message with ``role: "confidence"`` (sent as float32).

    ``fields`` are the enhanced frame's (its seq, its output pixel size...), as given to :func:`encode_enhanced`.
    Raises :class:`ProtocolError` for values that would not decode, ValueError for values outside [0, 1].
    """
    origin = "encode_confidence"
    array = np.asarray(data)
    if array.dtype.kind not in "uif":
        raise ProtocolError("bad_dtype", f"{origin}: a confidence map must be real, got {array.dtype}")
    array = array.astype("<f4", copy=False)
    if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0.0 and array.max() <= 1.0):
        raise ValueError(f"{origin}: confidence values must be finite and in [0, 1]")
    name, pixels = _pixels(array, origin, limits)
    header = _output_header(CONFIDENCE_ROLE, name, pixels.shape, origin, fields)
    _check_enhanced_fields(header, origin, limits, role=CONFIDENCE_ROLE)
    return [_dump(header), _payload(pixels, copy)]

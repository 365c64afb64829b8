"""refscope's ZMQ wire format, version 1: how frames come in and how enhanced frames go out.

Every message is a ZMQ multipart message of exactly **two parts**:

1. a JSON object (UTF-8, at most 64 KiB), the *header*;
2. the raw pixel buffer: ``H * W`` little-endian values of ``dtype``, row-major (C order), no padding.

Input header (what the microscope side sends, to refscope's PULL or SUB socket)::

    {"v": 1,                      # protocol version, int; must be 1
     "seq": 42,                   # sender's frame counter, int 0..2**63-1
     "dtype": "uint16",           # "uint8" | "uint16" | "int16" | "float32" | "float64" (little-endian)
     "shape": [768, 1024],        # [H, W] in pixels, each 8..16384
     "pixel_size_m": 4.9e-9,      # pixel edge length in metres, finite and > 0
     "role": "lr",                # "lr" (live frame) | "hr" (reference scan) | "auto" (refscope decides)
     "stage_xy_m": [1e-3, 2e-3],  # optional: stage position [x, y] in metres
     "t": 1718000000.25}          # optional: acquisition time, unix seconds (default: time of receipt)

Other keys are ignored (and kept in ``Frame.metadata``). A message that breaks any rule is dropped, counted
under a reason code (:data:`REASON_CODES`) and logged by refscope; it never stops the stream. Messages larger
than the receiving socket's ``max_message_bytes`` are refused by libzmq before they are allocated.

Feeding refscope from a microscope-side script (numpy + pyzmq, ten lines)::

    import json, time, numpy as np, zmq
    sock = zmq.Context().socket(zmq.PUSH)
    sock.connect("tcp://refscope-host:5555")            # refscope binds a PULL socket here
    for seq in range(1000):
        img = np.ascontiguousarray(acquire(), dtype="<u2")  # your (H, W) uint16 frame
        header = {"v": 1, "seq": seq, "dtype": "uint16", "shape": list(img.shape),
                  "pixel_size_m": 4.9e-9, "role": "lr", "t": time.time()}
        sock.send_multipart([json.dumps(header).encode(), img.tobytes()])
        time.sleep(1.0)
    sock.close(linger=1000)

(or, with refscope installed: ``sock.send_multipart(encode_frame(img, seq=seq, pixel_size_m=4.9e-9, role="lr"))``).

Output (enhanced) messages, published by refscope on its PUB socket, use the same two parts and conventions;
the header has ``role: "enhanced"`` and says which input and which model produced it::

    {"v": 1, "seq": 7, "dtype": "float32", "shape": [1536, 2048], "pixel_size_m": 2.45e-9,
     "role": "enhanced", "model": "paired", "model_version": "3",
     "latency_s": 0.31, "source_seq": 42, "t": 1718000000.25,
     "confidence": "low"}          # optional flag, a short label; absent when there is nothing to say

**The PUB stream** (``publish.pub_endpoint``) carries, per served LR frame and in this order, up to three
messages of the same two-part form; a viewer dispatches on ``header["role"]`` (:func:`stream_role`, or
:func:`decode_stream`) and ignores roles it does not know:

1. ``role: "lr"`` -- the raw LR frame as received, in the *input* format above (:func:`encode_frame`; its ``seq``
   is the input frame's seq, ``t`` its acquisition time, ``stage_xy_m`` when known). Optional
   (``publish.stream_raw``, on by default).
2. ``role: "enhanced"`` -- the enhanced frame (always sent; the header above). Its ``source_seq`` is the ``seq``
   of message 1; ``confidence: "low"`` flags a frame served while the quality monitor reports drift.
3. ``role: "confidence"`` -- the per-pixel confidence map of message 2 (:func:`encode_confidence`): ``float32``
   values in [0, 1] (1: the learned library supports the pixel well, 0.5: as poorly as the worst tenth of the
   frames it learned from), same shape and pixel size as the enhanced frame, header like the enhanced one
   (``seq`` = the enhanced frame's ``seq``, same ``source_seq``, ``model``, ``model_version``)::

       {"v": 1, "seq": 7, "dtype": "float32", "shape": [1536, 2048], "pixel_size_m": 2.45e-9,
        "role": "confidence", "model": "paired", "model_version": "3", "latency_s": 0.35,
        "source_seq": 42, "t": 1718000000.25}

   Optional (``publish.stream_confidence``, on by default); sent only once a learned model serves.

The stream is lossy (a slow viewer misses messages), so a viewer pairs messages by ``source_seq`` / ``seq``
rather than by arrival order.

Use :func:`encode_frame` / :func:`decode_frame` for input messages, :func:`encode_enhanced` /
:func:`decode_enhanced` and :func:`encode_confidence` / :func:`decode_confidence` for output messages. Decoders check every size limit before touching the pixel
buffer and never copy it (the returned array is a read-only view of the received bytes).
"""
from __future__ import annotations

import json
import math
import operator
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import RefscopeError
from .frames import FRAME_ROLES, Frame

__all__ = [
    "PROTOCOL_VERSION",
    "DTYPES",
    "REASON_CODES",
    "ProtocolError",
    "ProtocolLimits",
    "DEFAULT_LIMITS",
    "EnhancedFrame",
    "encode_frame",
    "decode_frame",
    "encode_enhanced",
    "decode_enhanced",
    "encode_confidence",
    "decode_confidence",
    "STREAM_ROLES",
    "stream_role",
    "decode_stream",
    "parse_header",
]

PROTOCOL_VERSION = 1

DTYPES: Mapping[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
"""Wire dtype names and the (little-endian) numpy dtypes they stand for."""

REASON_CODES: frozenset[str] = frozenset(
    {
        "part_count",  # not exactly two parts
        "header_too_large",  # header part longer than ProtocolLimits.max_header_bytes
        "bad_json",  # header is not UTF-8 JSON
        "not_object",  # header JSON is not an object
        "bad_version",  # "v" is not a version this refscope speaks
        "missing_field",  # a required header field is absent
        "bad_type",  # a field has the wrong JSON type
        "bad_value",  # a field has the right type but an impossible value (NaN pixel size, seq < 0, role...)
        "bad_dtype",  # dtype not one of DTYPES
        "bad_shape",  # shape is not [H, W] with each side within limits
        "too_many_pixels",  # H * W above ProtocolLimits.max_pixels
        "buffer_size",  # pixel buffer length != H * W * itemsize
    }
)
"""Every :attr:`ProtocolError.reason_code`; refscope counts rejected messages under these names."""

ENHANCED_ROLE = "enhanced"
CONFIDENCE_ROLE = "confidence"
STREAM_ROLES: tuple[str, ...] = ("lr", ENHANCED_ROLE, CONFIDENCE_ROLE)
"""Roles of the messages on refscope's PUB stream (see the module docstring)."""
_MAX_LABEL_CHARS = 256
_MAX_INT = 2**63 - 1
_MAX_FLOAT = sys.float_info.max


class ProtocolError(RefscopeError):
    """A ZMQ message does not follow the wire format.

    ``reason_code`` is one of :data:`REASON_CODES`; the message names the message's origin and what is wrong.
    """

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


@dataclass(frozen=True)
class ProtocolLimits:
    """Size limits enforced before any pixel buffer is interpreted.

    Attributes:
        max_header_bytes: longest accepted header part, bytes.
        min_side: smallest accepted H or W, pixels.
        max_side: largest accepted H or W, pixels.
        max_pixels: largest accepted H * W.
    """

    max_header_bytes: int = 64 * 1024
    min_side: int = 8
    max_side: int = 16384
    max_pixels: int = 16384 * 16384


DEFAULT_LIMITS = ProtocolLimits()


@dataclass(frozen=True, eq=False)
class EnhancedFrame:
    """A decoded output message (see the module docstring).

    Attributes:
        data: (H, W) read-only pixels.
        seq: refscope's output counter.
        pixel_size_m: output pixel edge length, metres.
        model: name of the method that produced it.
        model_version: version/fingerprint of the fitted model.
        latency_s: seconds from receipt of the input frame to publication.
        source_seq: ``seq`` of the input frame it enhances.
        t: acquisition time of the input frame, unix seconds.
        confidence: optional short flag (e.g. ``"low"``), or None.
        header: the full decoded header.
    """

    data: np.ndarray
    seq: int
    pixel_size_m: float
    model: str
    model_version: str
    latency_s: float
    source_seq: int
    t: float
    confidence: str | None = None
    header: Mapping[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- encoding


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
    return [_dump(header), pixels.tobytes()]


def encode_enhanced(
    data: np.ndarray,
    *,
    seq: int,
    pixel_size_m: float,
    model: str,
    model_version: str,
    latency_s: float,
    source_seq: int,
    t: float,
    confidence: str | None = None,
    limits: ProtocolLimits = DEFAULT_LIMITS,
) -> list[bytes]:
    """Encode an enhanced (H, W) image as a v1 output message ``[header, buffer]`` with ``role: "enhanced"``.

    ``pixel_size_m`` is the output pixel size (metres), ``latency_s`` the seconds from input receipt to
    publication, ``source_seq``/``t`` the input frame's seq and acquisition time (unix seconds), ``confidence``
    an optional short flag such as ``"low"``. Raises :class:`ProtocolError` for values that would not decode.
    """
    origin = "encode_enhanced"
    name, pixels = _pixels(data, origin, limits)
    header = _output_header(ENHANCED_ROLE, name, pixels.shape, origin, seq=seq, pixel_size_m=pixel_size_m, model=model,
                            model_version=model_version, latency_s=latency_s, source_seq=source_seq, t=t)
    if confidence is not None:
        header["confidence"] = confidence
    _check_enhanced_fields(header, origin, limits)
    return [_dump(header), pixels.tobytes()]


def _output_header(role: str, dtype_name: str, shape: tuple[int, ...], origin: str, *, seq: int, pixel_size_m: float,
                   model: str, model_version: str, latency_s: float, source_seq: int, t: float) -> dict[str, Any]:
    """The v1 header fields shared by every output message (enhanced frame, confidence map)."""
    return {
        "v": PROTOCOL_VERSION,
        "seq": _integer(seq, "seq", origin),
        "dtype": dtype_name,
        "shape": [int(shape[0]), int(shape[1])],
        "pixel_size_m": _number(pixel_size_m, "pixel_size_m", origin),
        "role": role,
        "model": model,
        "model_version": model_version,
        "latency_s": _number(latency_s, "latency_s", origin),
        "source_seq": _integer(source_seq, "source_seq", origin),
        "t": _number(t, "t", origin),
    }


def encode_confidence(
    data: np.ndarray,
    *,
    seq: int,
    pixel_size_m: float,
    model: str,
    model_version: str,
    latency_s: float,
    source_seq: int,
    t: float,
    limits: ProtocolLimits = DEFAULT_LIMITS,
) -> list[bytes]:
    """Encode a confidence map (H, W) as a v1 output message with ``role: "confidence"`` (sent as float32).

    Fields as :func:`encode_enhanced`: ``seq`` is the enhanced frame's, ``pixel_size_m`` its output pixel size.
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
    header = _output_header(CONFIDENCE_ROLE, name, pixels.shape, origin, seq=seq, pixel_size_m=pixel_size_m,
                            model=model, model_version=model_version, latency_s=latency_s, source_seq=source_seq, t=t)
    _check_enhanced_fields(header, origin, limits, role=CONFIDENCE_ROLE)
    return [_dump(header), pixels.tobytes()]


# ----------------------------------------------------------------------------------------------- decoding


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A JSON number a float can hold (an integer beyond +-1.8e308 is refused, not an OverflowError)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= _MAX_FLOAT
    return isinstance(value, float)


def _require(header: Mapping[str, Any], name: str, origin: str) -> Any:
    if name not in header:
        raise ProtocolError("missing_field", f"{origin}: header lacks the required field {name!r}")
    return header[name]


def _int_field(header: Mapping[str, Any], name: str, origin: str, *, minimum: int = 0) -> int:
    value = _require(header, name, origin)
    if not _is_int(value):
        raise ProtocolError("bad_type", f"{origin}: {name!r} must be an integer, got {_show(value)}")
    if not minimum <= value <= _MAX_INT:  # counters are stored as 64-bit integers (catalogue)
        raise ProtocolError("bad_value", f"{origin}: {name!r} must be {minimum}..2**63-1, got {_show(value)}")
    return int(value)


def _float_field(header: Mapping[str, Any], name: str, origin: str, *, positive: bool = False) -> float:
    value = _require(header, name, origin)
    if not _is_number(value):
        raise ProtocolError("bad_type", f"{origin}: {name!r} must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError("bad_value", f"{origin}: {name!r} must be finite, got {number!r}")
    if positive and number <= 0:
        raise ProtocolError("bad_value", f"{origin}: {name!r} must be > 0, got {number!r}")
    return number


def _str_field(header: Mapping[str, Any], name: str, origin: str) -> str:
    value = _require(header, name, origin)
    if not isinstance(value, str):
        raise ProtocolError("bad_type", f"{origin}: {name!r} must be a string, got {_show(value)}")
    if len(value) > _MAX_LABEL_CHARS:
        raise ProtocolError("bad_value", f"{origin}: {name!r} is longer than {_MAX_LABEL_CHARS} characters")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_shape(shape: Any, origin: str, limits: ProtocolLimits) -> tuple[int, int]:
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise ProtocolError("bad_type", f"{origin}: 'shape' must be a list of two integers [H, W], got {_show(shape)}")
    if len(shape) != 2:
        raise ProtocolError("bad_shape", f"{origin}: 'shape' must be [H, W] (2 entries), got {len(shape)} entries")
    height, width = shape
    for side in (height, width):
        if not limits.min_side <= side <= limits.max_side:
            raise ProtocolError(
                "bad_shape",
                f"{origin}: shape {shape} has a side outside {limits.min_side}..{limits.max_side} pixels",
            )
    if height * width > limits.max_pixels:
        raise ProtocolError(
            "too_many_pixels", f"{origin}: shape {shape} has {height * width} pixels, more than {limits.max_pixels}"
        )
    return int(height), int(width)


def _check_common(header: Mapping[str, Any], origin: str, limits: ProtocolLimits) -> tuple[int, np.dtype, tuple[int, int], float]:
    """Validate v, seq, dtype, shape and pixel_size_m; return seq, dtype, shape, pixel size (m)."""
    version = _require(header, "v", origin)
    if not _is_int(version):
        raise ProtocolError("bad_type", f"{origin}: 'v' must be an integer, got {_show(version)}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"{origin}: protocol version {version} is not supported (expected {PROTOCOL_VERSION})")
    seq = _int_field(header, "seq", origin)
    dtype_name = _require(header, "dtype", origin)
    if not isinstance(dtype_name, str):
        raise ProtocolError("bad_type", f"{origin}: 'dtype' must be a string, got {_show(dtype_name)}")
    if dtype_name not in DTYPES:
        raise ProtocolError("bad_dtype", f"{origin}: dtype {_show(dtype_name)} is not one of {sorted(DTYPES)}")
    shape = _check_shape(_require(header, "shape", origin), origin, limits)
    value = _require(header, "pixel_size_m", origin)
    if not _is_number(value):
        raise ProtocolError("bad_type", f"{origin}: 'pixel_size_m' must be a number, got {_show(value)}")
    pixel_size_m = float(value)
    if math.isnan(pixel_size_m):
        raise ProtocolError("bad_value", f"{origin}: 'pixel_size_m' is NaN")
    if not (math.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ProtocolError("bad_value", f"{origin}: 'pixel_size_m' must be finite and > 0, got {pixel_size_m!r}")
    return seq, DTYPES[dtype_name], shape, pixel_size_m


def _check_input_fields(
    header: Mapping[str, Any], origin: str, limits: ProtocolLimits
) -> tuple[int, np.dtype, tuple[int, int], float]:
    """Validate an input header; return seq, dtype, shape and pixel size (m)."""
    common = _check_common(header, origin, limits)
    role = _require(header, "role", origin)
    if not isinstance(role, str):
        raise ProtocolError("bad_type", f"{origin}: 'role' must be a string, got {_show(role)}")
    if role not in FRAME_ROLES:
        raise ProtocolError("bad_value", f"{origin}: role {_show(role)} is not one of {list(FRAME_ROLES)}")
    if header.get("stage_xy_m") is not None:
        stage = header["stage_xy_m"]
        if not isinstance(stage, list) or len(stage) != 2 or not all(_is_number(s) for s in stage):
            raise ProtocolError("bad_type", f"{origin}: 'stage_xy_m' must be [x, y] in metres, got {_show(stage)}")
        if not all(math.isfinite(float(s)) for s in stage):
            raise ProtocolError("bad_value", f"{origin}: 'stage_xy_m' must be finite, got {_show(stage)}")
    if header.get("t") is not None:
        _float_field(header, "t", origin)
    return common


def _check_enhanced_fields(
    header: Mapping[str, Any], origin: str, limits: ProtocolLimits, *, role: str = ENHANCED_ROLE
) -> tuple[int, np.dtype, tuple[int, int], float]:
    """Validate an output header (``role`` enhanced or confidence); return seq, dtype, shape and pixel size (m)."""
    common = _check_common(header, origin, limits)
    got = _require(header, "role", origin)
    if got != role:
        raise ProtocolError("bad_value", f"{origin}: role must be {role!r} in this output message, got {_show(got)}")
    _str_field(header, "model", origin)
    _str_field(header, "model_version", origin)
    latency = _float_field(header, "latency_s", origin)
    if latency < 0:
        raise ProtocolError("bad_value", f"{origin}: 'latency_s' must be >= 0, got {latency!r}")
    _int_field(header, "source_seq", origin)
    _float_field(header, "t", origin)
    if header.get("confidence") is not None:
        _str_field(header, "confidence", origin)
    return common


def parse_header(parts: Sequence[Any], *, origin: str, limits: ProtocolLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check the part count and header size, and parse the header JSON into a dict (fields not yet checked)."""
    try:
        count = len(parts)
    except TypeError:
        raise ProtocolError("part_count", f"{origin}: message is not a sequence of parts") from None
    if count != 2:
        raise ProtocolError("part_count", f"{origin}: message has {count} part(s), expected 2 (JSON header, pixels)")
    try:
        raw = memoryview(parts[0])
    except TypeError:
        raise ProtocolError("bad_json", f"{origin}: header part is not a byte buffer") from None
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError(
            "header_too_large", f"{origin}: header is {raw.nbytes} bytes, more than {limits.max_header_bytes}"
        )
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ProtocolError("bad_json", f"{origin}: header is not UTF-8 JSON ({reason})") from None
    if not isinstance(header, dict):
        raise ProtocolError("not_object", f"{origin}: header JSON is a {type(header).__name__}, expected an object")
    return header


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
    return EnhancedFrame(
        data=data,
        seq=seq,
        pixel_size_m=pixel_size_m,
        model=header["model"],
        model_version=header["model_version"],
        latency_s=float(header["latency_s"]),
        source_seq=int(header["source_seq"]),
        t=float(header["t"]),
        confidence=header.get("confidence"),
        header=MappingProxyType(header),
    )


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
    return EnhancedFrame(data=data, seq=seq, pixel_size_m=pixel_size_m, model=header["model"],
                         model_version=header["model_version"], latency_s=float(header["latency_s"]),
                         source_seq=int(header["source_seq"]), t=float(header["t"]), header=MappingProxyType(header))


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

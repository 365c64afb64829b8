"""Validation of v1 wire-format headers (:mod:`refscope.daemon.wire.protocol`): part count, header size, JSON, and
every field of input and output headers, each failure a :class:`ProtocolError` with its reason code.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..frames import FRAME_ROLES, pixel_size_problem
from .schema import DEFAULT_LIMITS, DTYPES, ENHANCED_ROLE, PROTOCOL_VERSION, ProtocolError, ProtocolLimits

__all__ = ["parse_header"]

_MAX_LABEL_CHARS = 256
_MAX_INT = 2**63 - 1
_MAX_FLOAT = sys.float_info.max


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
    problem = pixel_size_problem(pixel_size_m * 1e9)
    if problem is not None:
        raise ProtocolError("bad_value", f"{origin}: 'pixel_size_m' = {pixel_size_m!r} m: {problem}")
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
    if header.get("consistency") is not None:
        consistency = _float_field(header, "consistency", origin)
        if not consistency >= 0:
            raise ProtocolError("bad_value", f"{origin}: 'consistency' must be >= 0, got {consistency!r}")
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

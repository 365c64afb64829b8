"""The vocabulary of refscope's v1 wire format: version, dtypes, roles, reason codes, limits and error type.

The format itself is documented in :mod:`refscope.daemon.wire.protocol`; the header checks live in
:mod:`refscope.daemon.wire.header`, encoders in :mod:`refscope.daemon.wire.encode` and decoders in :mod:`refscope.daemon.wire.decode`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RefscopeError

__all__ = [
    "PROTOCOL_VERSION",
    "DTYPES",
    "REASON_CODES",
    "ENHANCED_ROLE",
    "CONFIDENCE_ROLE",
    "STREAM_ROLES",
    "ProtocolError",
    "ProtocolLimits",
    "DEFAULT_LIMITS",
    "EnhancedFrame",
    "OutputFields",
    "METHODS",
]

PROTOCOL_VERSION = 1

METHODS: tuple[str, ...] = ("best", "paired", "net", "paired-faithful", "original", "bicubic")
"""Served methods (``model.method``, the control command ``set method=``, the enhanced header's ``model``): the
champion, the library, the trained network, the NLM references, bicubic."""

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


@dataclass(frozen=True)
class OutputFields:
    """The header fields every output message carries (enhanced frame, confidence map), given once per served
    frame to :func:`~refscope.daemon.wire.encode.encode_enhanced` and
    :func:`~refscope.daemon.wire.encode.encode_confidence`.

    Attributes:
        seq: refscope's output counter (>= 0).
        pixel_size_m: output pixel edge length, metres.
        model: name of the method that produced it.
        model_version: version/fingerprint of the fitted model.
        latency_s: seconds from receipt of the input frame to publication.
        source_seq: ``seq`` of the input frame it enhances.
        t: acquisition time of the input frame, unix seconds.
    """

    seq: int
    pixel_size_m: float
    model: str
    model_version: str
    latency_s: float
    source_seq: int
    t: float


@dataclass(frozen=True, eq=False)
class EnhancedFrame(OutputFields):
    """A decoded output message (see the module docstring): the output header's :class:`OutputFields` and

    Attributes:
        data: (H, W) read-only pixels.
        confidence: optional short flag (e.g. ``"low"``), or None.
        consistency: data consistency ρ of the frame (its output degraded by the forward model learned from the
            references, against its own LR frame, in LR noise units; about 1 = consistent), or None.
        header: the full decoded header.
    """

    data: np.ndarray
    confidence: str | None = None
    consistency: float | None = None
    header: Mapping[str, Any] = field(default_factory=dict)

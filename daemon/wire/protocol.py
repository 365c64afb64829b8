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
A STEM scan generator sends the same way, at its own pixel size (e.g. ``pixel_size_m=5e-11``, 50 pm): see
``deploy/stem_zmq_sender.py``, which sends an HR reference scan (``role="hr"``) and then live frames from
:func:`refscope.models.simulator.stem_pair` (atomic lattice, Poisson dose, scan noise, line jitter, point
sampling) -- replace its ``frames()`` by the scan engine's readout.

Output (enhanced) messages, published by refscope on its PUB socket, use the same two parts and conventions;
the header has ``role: "enhanced"`` and says which input and which model produced it::

    {"v": 1, "seq": 7, "dtype": "float32", "shape": [1536, 2048], "pixel_size_m": 2.45e-9,
     "role": "enhanced", "model": "paired", "model_version": "3",
     "latency_s": 0.31, "source_seq": 42, "t": 1718000000.25,
     "confidence": "low",          # optional flag, a short label; absent when there is nothing to say
     "consistency": 1.12}          # optional: data consistency ρ (below); absent when not measured

**The PUB stream** (``publish.pub_endpoint``) carries, per served LR frame and in this order, up to three
messages of the same two-part form; a viewer dispatches on ``header["role"]`` (:func:`stream_role`, or
:func:`decode_stream`) and ignores roles it does not know:

1. ``role: "lr"`` -- the raw LR frame as received, in the *input* format above (:func:`encode_frame`; its ``seq``
   is the input frame's seq, ``t`` its acquisition time, ``stage_xy_m`` when known). Optional
   (``publish.stream_raw``, on by default).
2. ``role: "enhanced"`` -- the enhanced frame (always sent; the header above). Its ``source_seq`` is the ``seq``
   of message 1; ``confidence: "low"`` flags a frame served while the quality monitor reports drift, or whose
   ``consistency`` is at or above ``monitor.consistency_on``. ``consistency`` (ρ >= 0) says how far the
   enhanced frame, degraded by the forward model learned from the session's references, departs from its own LR
   frame, in units of the LR noise (:mod:`refscope.models.consistency`): about 1, it explains its input up to
   the noise; well above 1, it departs from it more than the noise allows. Sent once a learned model serves.
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

from .decode import decode_confidence, decode_enhanced, decode_frame, decode_stream, stream_role
from .encode import encode_confidence, encode_enhanced, encode_frame
from .header import parse_header
from .schema import (
    CONFIDENCE_ROLE,  # noqa: F401 -- module-level names before the split, kept importable from here
    DEFAULT_LIMITS,
    DTYPES,
    ENHANCED_ROLE,  # noqa: F401
    PROTOCOL_VERSION,
    REASON_CODES,
    STREAM_ROLES,
    EnhancedFrame,
    OutputFields,
    ProtocolError,
    ProtocolLimits,
)

__all__ = [
    "PROTOCOL_VERSION",
    "DTYPES",
    "REASON_CODES",
    "ProtocolError",
    "ProtocolLimits",
    "DEFAULT_LIMITS",
    "EnhancedFrame",
    "OutputFields",
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

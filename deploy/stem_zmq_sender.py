"""Example: a STEM scan generator sending its frames to refscope over ZMQ (the v1 wire format, refscope.daemon.wire.protocol).

    python deploy/stem_zmq_sender.py tcp://127.0.0.1:5555 [--frames 20] [--period-s 1.0]

with the daemon receiving on that endpoint (``refscope daemon --config ...`` with
``ingest.zmq_endpoint = "tcp://127.0.0.1:5555"``, ``ingest.zmq_pattern = "pull"``). Here the "microscope" is
refscope's STEM simulator (:func:`refscope.models.simulator.stem_pair`: atomic lattice, Poisson dose, scan noise,
line jitter, probe blur, point sampling); on a real instrument replace ``frames()`` by the scan engine's readout
(DigitalMicrograph/DigiScan, Nion Swift, a Velox/TIA acquisition hook...) and keep the sending part:

* one message per frame: ``encode_frame(image, seq=..., pixel_size_m=..., role=...)`` gives ``[header, buffer]``
  (the header is JSON: shape, dtype, pixel size in metres, role, seq, time, optional stage x/y in metres);
* ``role="lr"`` for the live scan, ``"hr"`` for a finer reference scan of part of its field (or ``"auto"``: the
  daemon decides from the pixel sizes);
* a PUSH socket connected to the daemon's PULL endpoint (lossless; the daemon bounds what it accepts with
  ``ingest.zmq_max_message_bytes``); with CURVE keys configured, ``load_client_keys(...).apply(socket)`` first.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import zmq

from refscope.daemon.wire.protocol import encode_frame
from refscope.models.simulator import StemOptics, stem_pair


def frames(count: int, *, seed: int = 0, optics: StemOptics = StemOptics()) -> Iterator[tuple[np.ndarray, float, str]]:
    """(image uint16, pixel size in m, role): an HR reference scan first, then ``count`` live LR frames."""
    rng = np.random.default_rng(seed)
    lr, hr, lr_nm, hr_nm = stem_pair(optics, rng=rng)
    yield hr, hr_nm * 1e-9, "hr"
    yield lr, lr_nm * 1e-9, "lr"
    for _ in range(count - 1):
        lr, _, lr_nm, _ = stem_pair(optics, rng=rng)
        yield lr, lr_nm * 1e-9, "lr"


def send(endpoint: str, count: int, *, period_s: float = 1.0, context: zmq.Context | None = None) -> int:
    """Send ``count`` LR frames (after one HR reference) to ``endpoint``; returns the messages sent."""
    ctx = context or zmq.Context.instance()
    socket = ctx.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 2000)
    socket.connect(endpoint)
    sent = 0
    try:
        for seq, (image, pixel_m, role) in enumerate(frames(count)):
            socket.send_multipart(encode_frame(image, seq=seq, pixel_size_m=pixel_m, role=role, t=time.time()))
            sent += 1
            if period_s > 0:
                time.sleep(period_s)  # a scan takes time; the daemon serves each frame as it comes
    finally:
        socket.close()
    return sent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="the daemon's ingest.zmq_endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--frames", type=int, default=20, help="live LR frames to send (default 20)")
    parser.add_argument("--period-s", type=float, default=1.0, help="seconds between frames (default 1)")
    arguments = parser.parse_args()
    print(f"sent {send(arguments.endpoint, arguments.frames, period_s=arguments.period_s)} messages")

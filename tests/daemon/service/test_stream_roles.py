"""The PUB stream's three roles (:mod:`refscope.daemon.wire.protocol`): per served frame the raw LR frame, the
enhanced frame and its confidence map; and the status' ``quality`` dict once a model serves."""
from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from refscope.daemon.config import load_config
from refscope.daemon.frames import Frame
from refscope.daemon.state.model_store import save_model
from refscope.daemon.wire.protocol import (OutputFields, ProtocolError, decode_stream, encode_confidence, encode_enhanced, encode_frame,
                                      stream_role)
from refscope.daemon.service.daemon import Daemon
from refscope.models.consistency import data_consistency
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair

from tests.daemon.queue_source import QueueSource
from tests.daemon.waiting import stream_joined

SHAPE = (96, 128)


def test_protocol_round_trip_of_every_stream_role():
    image = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20)
    conf = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40)
    raw = encode_frame(image, seq=7, pixel_size_m=1e-8, role="lr", t=5.0)
    enhanced = encode_enhanced(conf * 100, OutputFields(seq=1, pixel_size_m=5e-9, model="paired", model_version="2", latency_s=0.1, source_seq=7, t=5.0), confidence="low")
    confidence = encode_confidence(conf, OutputFields(seq=1, pixel_size_m=5e-9, model="paired", model_version="2", latency_s=0.1, source_seq=7, t=5.0))
    assert [stream_role(m) for m in (raw, enhanced, confidence)] == ["lr", "enhanced", "confidence"]
    role, frame = decode_stream(raw)
    assert role == "lr" and frame.seq == 7 and np.array_equal(frame.data, image)
    role, enh = decode_stream(enhanced)
    assert role == "enhanced" and enh.confidence == "low" and enh.source_seq == 7 and enh.consistency is None
    rated = encode_enhanced(conf, OutputFields(seq=2, pixel_size_m=5e-9, model="paired", model_version="2", latency_s=0.1, source_seq=8, t=5.0), consistency=np.float32(1.25))
    assert decode_stream(rated)[1].consistency == 1.25
    with pytest.raises(ProtocolError, match="consistency"):
        encode_enhanced(conf, OutputFields(seq=2, pixel_size_m=5e-9, model="paired", model_version="2", latency_s=0.1, source_seq=8, t=5.0), consistency=-1.0)
    role, got = decode_stream(confidence)
    assert role == "confidence" and got.source_seq == 7 and np.array_equal(got.data, conf)
    assert decode_stream([b'{"role": "histogram"}', b""]) == ("histogram", None)  # unknown roles are skipped
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_confidence(conf + 0.5, OutputFields(seq=1, pixel_size_m=5e-9, model="m", model_version="1", latency_s=0.0, source_seq=7, t=5.0))
    with pytest.raises(ProtocolError):
        decode_stream([b"not json", b""])


def _served_state(tmp_path, **overrides: str):
    """(synthetic pair, fitted model, daemon config) with that model saved in ``tmp_path/state``, every endpoint on
    a free loopback port, no reference requests; ``overrides`` add configuration keys."""
    pair = make_pair(rng=np.random.default_rng(4), lr_shape=SHAPE, factor=2.0)
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=400)))
    state = tmp_path / "state"
    save_model(state, model, sources=["synthetic"])
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(state),
                                "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "monitor.request_on_drift": "false",
                                **overrides})
    return pair, model, config


def _subscribed(context: zmq.Context, daemon: Daemon) -> zmq.Socket:
    """A SUB socket on the daemon's stream, subscribed to everything and joined (PUB/SUB)."""
    stream = context.socket(zmq.SUB)
    stream.setsockopt(zmq.SUBSCRIBE, b"")
    stream.connect(daemon.endpoints["pub"])
    stream_joined(stream, daemon)
    return stream


def test_daemon_streams_raw_enhanced_and_confidence_per_frame(tmp_path):
    pair, model, config = _served_state(tmp_path, **{"publish.out_dir": str(tmp_path / "out"),
                                                     "publish.write_confidence": "true"})
    source = QueueSource()
    context = zmq.Context()
    try:
        with Daemon(config, sources=[source], use_onnx=False) as daemon:
            stream = _subscribed(context, daemon)
            frames = []
            for seq in range(3):
                noisy = pair.lr + np.random.default_rng(seq).normal(0, 0.003, SHAPE)
                frames.append(noisy.astype(np.float32))
                source.items.put(Frame(frames[-1], 10.0, "lr", f"mem:{seq}", seq, time.time()))
            got: list[tuple[str, object]] = []
            deadline = time.monotonic() + 20
            while len(got) < 9 and time.monotonic() < deadline:
                if stream.poll(100):
                    got.append(decode_stream(stream.recv_multipart()))
            quality = daemon.status().quality
        written = sorted(p.name for p in (tmp_path / "out").glob("*_confidence.tif"))
    finally:
        context.destroy(linger=0)
    assert [role for role, _ in got] == ["lr", "enhanced", "confidence"] * 3
    for i in range(3):
        (_, raw), (_, enhanced), (_, conf) = got[3 * i: 3 * i + 3]
        assert raw.seq == enhanced.source_seq == conf.source_seq == i and conf.seq == enhanced.seq
        assert raw.data.shape == SHAPE and conf.data.shape == enhanced.data.shape == (2 * SHAPE[0], 2 * SHAPE[1])
        assert conf.data.dtype == np.float32 and 0.0 <= conf.data.min() and conf.data.max() <= 1.0
        assert enhanced.model_version == "1"
        # data consistency: the served output degraded by the forward model learned with the library, vs its LR
        expected = data_consistency(frames[i], enhanced.data, model.forward)
        assert enhanced.consistency == pytest.approx(expected, abs=1e-3) and 0.3 < enhanced.consistency < 2.0
        assert enhanced.confidence is None  # consistent and no drift: not flagged
    assert quality.consistency_last == got[-2][1].consistency and quality.consistency_flagged == 0
    assert quality.model_version == 1 and quality.baseline == "first frame" and quality.frames_measured == 3
    assert quality.signals["coverage"].value == pytest.approx(1.0, abs=0.3) and quality.drift is False
    assert set(quality.signals) == {"coverage", "texture", "intensity", "focus", "consistency", "held_out"}
    assert quality.signals["consistency"].value == pytest.approx(
        float(np.median([e.consistency for role, e in got if role == "enhanced"])), abs=1e-6)
    assert written == ["mem_0_x2_confidence.tif", "mem_1_x2_confidence.tif", "mem_2_x2_confidence.tif"]


def test_a_frame_the_safe_blend_left_alone_is_degraded_by_the_forward_model_once(tmp_path, monkeypatch):
    """The safe blend measures the model's output against its input through the forward model; where it blends
    nothing, the published data consistency is that measurement, not a second pass (one ``degrade`` per frame),
    and it is data_consistency of the published pixels."""
    from dataclasses import replace

    from refscope.models.baseline import SafeBaseline
    from refscope.models.consistency import ForwardModel

    pair, model, config = _served_state(tmp_path)
    model = replace(model, safe=SafeBaseline(1.0, 0.1, 1e6))  # a baseline the library is trusted against everywhere
    save_model(config.state_dir, model, sources=["synthetic"])
    calls: list[tuple[int, int]] = []
    degrade = ForwardModel.degrade
    monkeypatch.setattr(ForwardModel, "degrade", lambda self, hr, **kw: calls.append(hr.shape) or degrade(self, hr, **kw))
    source = QueueSource()
    context = zmq.Context()
    try:
        with Daemon(config, sources=[source], use_onnx=False) as daemon:
            stream = _subscribed(context, daemon)
            frames = [(pair.lr + np.random.default_rng(seq).normal(0, 0.003, SHAPE)).astype(np.float32)
                      for seq in range(3)]
            for seq, frame in enumerate(frames):
                source.items.put(Frame(frame, 10.0, "lr", f"mem:{seq}", seq, time.time()))
            enhanced = []
            deadline = time.monotonic() + 20
            while len(enhanced) < 3 and time.monotonic() < deadline:
                if stream.poll(100):
                    role, item = decode_stream(stream.recv_multipart())
                    if role == "enhanced":
                        enhanced.append(item)
            served = [daemon.status().model.safe_blend_share]
    finally:
        context.destroy(linger=0)
    assert len(enhanced) == 3 and served == [0.0]
    assert calls.count((2 * SHAPE[0], 2 * SHAPE[1])) == 3  # one pass per served frame
    for frame, item in zip(frames, enhanced):
        assert item.consistency == pytest.approx(data_consistency(frame, item.data, model.forward), abs=1e-3)


def test_the_raw_frame_is_streamed_before_the_model_runs(tmp_path, monkeypatch):
    """What the operator looks at first (issue 18): the new scan reaches her raw pane at once, not after the model."""
    source = QueueSource()
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"),
                                "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "trainer.enabled": "false"})
    context = zmq.Context()
    try:
        with Daemon(config, sources=[source], use_onnx=False) as daemon:
            real = daemon.engine.enhance

            def slow(data):  # type: ignore[no-untyped-def]
                time.sleep(0.8)  # a model that takes its time
                return real(data)

            monkeypatch.setattr(daemon.engine, "enhance", slow)
            stream = _subscribed(context, daemon)
            sent = time.monotonic()
            source.items.put(Frame(np.ones(SHAPE, np.float32), 10.0, "lr", "mem:0", 0, time.time()))
            arrived: dict[str, float] = {}
            deadline = time.monotonic() + 20
            while "enhanced" not in arrived and time.monotonic() < deadline:
                if stream.poll(100):
                    arrived.setdefault(stream_role(stream.recv_multipart()), time.monotonic())
    finally:
        context.destroy(linger=0)
    assert arrived["lr"] - sent < 0.5 and arrived["enhanced"] - arrived["lr"] >= 0.7


def test_an_output_that_departs_from_its_input_is_flagged(tmp_path):
    """An enhanced frame that its own LR frame cannot explain within the noise (here: detail added after the model
    ran) gets ρ >= monitor.consistency_on, the "low" confidence flag, a flagged count and the raised signal."""
    import dataclasses

    pair, _, config = _served_state(tmp_path, **{"monitor.window": "1", "publish.stream_raw": "false",
                                                 "publish.stream_confidence": "false"})
    source = QueueSource()
    context = zmq.Context()
    try:
        with Daemon(config, sources=[source], use_onnx=False) as daemon:
            serve = daemon.engine.enhance
            invented = 0.2 * np.sign(np.sin(np.arange(2 * SHAPE[1]) / 1.5))[None, :].astype(np.float32)

            def departing(data, *args, **kwargs):
                result = serve(data, *args, **kwargs)
                return dataclasses.replace(result, image=result.image + invented)

            daemon.engine.enhance = departing
            stream = _subscribed(context, daemon)
            for seq in range(2):
                noisy = pair.lr + np.random.default_rng(seq).normal(0, 0.003, SHAPE)
                source.items.put(Frame(noisy.astype(np.float32), 10.0, "lr", f"mem:{seq}", seq, time.time()))
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 2 and time.monotonic() < deadline:
                if stream.poll(100):
                    got.append(decode_stream(stream.recv_multipart())[1])
            while daemon.status().quality.frames_measured < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the monitor looks at a frame after it is streamed
            quality = daemon.status().quality
    finally:
        context.destroy(linger=0)
    assert len(got) == 2
    for enhanced in got:
        assert enhanced.consistency > config.monitor.consistency_on and enhanced.confidence == "low"
    assert quality.consistency_flagged == 2 and quality.signals["consistency"].raised is True
    assert quality.drift is True

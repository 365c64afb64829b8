"""ZmqFrameSource: PULL and SUB, malformed messages counted and skipped, oversize messages refused, clean stop."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from refscope.daemon.errors import RefscopeError
from refscope.daemon.frames import Frame, FrameSource
from refscope.daemon.wire.protocol import encode_frame
from refscope.daemon.ingest.feed import ZmqFrameSource, ZmqSourceConfig

pytestmark = pytest.mark.timeout(30)


@pytest.fixture()
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def _poll_until(source: ZmqFrameSource, count: int, timeout: float = 5.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.poll(0.05)
        if frame is not None:
            frames.append(frame)
    return frames


def _wait_stats(source: ZmqFrameSource, rejected: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while source.stats().rejected < rejected and time.monotonic() < deadline:
        time.sleep(0.01)


def _frame_parts(seq: int, value: int = 0) -> list[bytes]:
    return encode_frame(np.full((16, 20), value + seq, np.uint16), seq=seq, pixel_size_m=5e-9, role="lr", t=100.0 + seq)


def test_pull_receives_good_frames_and_counts_bad_ones(context: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    source = ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*"))
    assert isinstance(source, FrameSource)
    source.start()
    try:
        assert source.endpoint.startswith("tcp://127.0.0.1:") and not source.endpoint.endswith("*")
        push = context.socket(zmq.PUSH)
        push.connect(source.endpoint)
        bad_header = json.dumps({"v": 1, "seq": 9, "dtype": "uint16", "shape": [16, 20], "pixel_size_m": 5e-9, "role": "lr"})
        messages = [
            _frame_parts(0),
            [b"not json", b"1234"],  # bad_json
            [b"only one part"],  # part_count
            _frame_parts(1),
            [bad_header.encode(), b"short"],  # buffer_size
            [json.dumps({"v": 2}).encode(), b""],  # bad_version
            _frame_parts(2),
        ]
        with caplog.at_level("WARNING", logger="refscope.ingest"):
            for message in messages:
                push.send_multipart(message)
            frames = _poll_until(source, 3)
            _wait_stats(source, 4)
        push.close(linger=0)
        assert [f.seq for f in frames] == [0, 1, 2]
        assert frames[1].data[0, 0] == 1 and frames[1].data.shape == (16, 20) and frames[1].t == 101.0
        assert frames[0].source == f"zmq:{source.endpoint}#0" and frames[0].pixel_size_nm == pytest.approx(5.0)
        stats = source.stats()
        assert stats.received == 3 and stats.rejected == 4
        assert stats.rejected_by_reason == {"bad_json": 1, "part_count": 1, "buffer_size": 1, "bad_version": 1}
        assert stats.last_error is not None and "version 2" in stats.last_error
        assert sum("rejected" in r.getMessage() for r in caplog.records) == 4
        assert source.poll(0.0) is None
    finally:
        source.stop()
    source.stop()  # idempotent


def test_sub_pattern_receives_from_a_publisher(context: zmq.Context) -> None:
    source = ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*", pattern="sub"), context=context)
    source.start()
    pub = context.socket(zmq.PUB)
    try:
        pub.connect(source.endpoint)
        # PUB/SUB drops messages until the subscription has propagated: keep publishing until one arrives.
        frame = None
        deadline = time.monotonic() + 5.0
        seq = 0
        while frame is None and time.monotonic() < deadline:
            pub.send_multipart(_frame_parts(seq))
            seq += 1
            frame = source.poll(0.05)
        assert frame is not None and frame.role == "lr"
        pub.send_multipart([b"{}", b""])
        pub.send_multipart(_frame_parts(1000))
        seqs: list[int] = []
        deadline = time.monotonic() + 5.0
        while 1000 not in seqs and time.monotonic() < deadline:
            seqs += [f.seq for f in _poll_until(source, 1, timeout=0.5)]
        assert seqs[-1] == 1000
        _wait_stats(source, 1)
        assert source.stats().rejected_by_reason == {"missing_field": 1}
    finally:
        pub.close(linger=0)
        source.stop()
    assert not context.closed  # a passed context is left to its owner


def test_connect_mode_with_a_binding_sender(context: zmq.Context) -> None:
    push = context.socket(zmq.PUSH)
    push.bind("tcp://127.0.0.1:*")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    with ZmqFrameSource(ZmqSourceConfig(endpoint, bind=False), context=context) as source:
        push.send_multipart(_frame_parts(5))
        assert [f.seq for f in _poll_until(source, 1)] == [5]
    push.close(linger=0)


def test_oversize_messages_are_refused_by_libzmq_and_the_stream_goes_on(context: zmq.Context) -> None:
    config = ZmqSourceConfig("tcp://127.0.0.1:*", max_message_bytes=4096)
    with ZmqFrameSource(config, context=context) as source:
        big = context.socket(zmq.PUSH)
        big.connect(source.endpoint)
        big.send_multipart(encode_frame(np.zeros((64, 64), np.uint16), seq=1, pixel_size_m=1e-9, role="lr"))  # 8 KiB
        assert source.poll(0.5) is None
        big.close(linger=0)
        small = context.socket(zmq.PUSH)
        small.connect(source.endpoint)
        small.send_multipart(_frame_parts(2))
        assert [f.seq for f in _poll_until(source, 1)] == [2]
        small.close(linger=0)


def test_slow_consumer_does_not_lose_pull_frames(context: zmq.Context) -> None:
    config = ZmqSourceConfig("tcp://127.0.0.1:*", queue_size=2, rcvhwm=4)
    with ZmqFrameSource(config, context=context) as source:
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 4)
        push.connect(source.endpoint)

        def send() -> None:
            for seq in range(40):
                push.send_multipart(_frame_parts(seq))  # blocks while refscope is behind: lossless

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.3)  # let the queues fill
        frames = _poll_until(source, 40)
        sender.join(5)
        push.close(linger=0)
        assert [f.seq for f in frames] == list(range(40))


def test_bind_failure_names_the_endpoint(context: zmq.Context) -> None:
    with ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*"), context=context) as first:
        second = ZmqFrameSource(ZmqSourceConfig(first.endpoint), context=context)
        with pytest.raises(RefscopeError, match=first.endpoint.replace(".", r"\.")):
            second.start()
        second.stop()
    with pytest.raises(ValueError):
        ZmqSourceConfig("tcp://127.0.0.1:*", pattern="req")  # type: ignore[arg-type]


def test_an_unexpected_failure_on_one_message_is_counted_and_the_source_goes_on(
        monkeypatch: pytest.MonkeyPatch, context: zmq.Context) -> None:
    import refscope.daemon.ingest.feed as module

    real = module.decode_frame
    calls = {"n": 0}

    def broken_once(*args: object, **kwargs: object) -> Frame:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("decoder bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "decode_frame", broken_once)
    with ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*"), context=context) as source:
        push = context.socket(zmq.PUSH)
        push.connect(source.endpoint)
        push.send_multipart(_frame_parts(0))
        push.send_multipart(_frame_parts(1))
        frame = None
        deadline = time.monotonic() + 5
        while frame is None and time.monotonic() < deadline:
            frame = source.poll(0.05)
        assert frame is not None and frame.seq == 1
        stats = source.stats()
        assert stats.rejected_by_reason == {"unexpected": 1} and "decoder bug" in stats.last_error
        push.close(linger=0)


def test_stop_is_prompt_and_releases_its_own_context() -> None:
    source = ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*"))
    source.start()
    endpoint = source.endpoint
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 2.0
    # the port is free again
    again = ZmqFrameSource(ZmqSourceConfig(endpoint))
    again.start()
    again.stop()


def test_the_ten_line_example_in_the_protocol_docstring_works() -> None:
    import refscope.daemon.wire.protocol as protocol

    doc = protocol.__doc__ or ""
    start = doc.index("    import json, time")
    lines = [line[4:] for line in doc[start:].splitlines()[:10]]
    assert all(line.strip() for line in lines) and lines[-1].startswith("sock.close")
    with ZmqFrameSource(ZmqSourceConfig("tcp://127.0.0.1:*")) as source:
        code = (
            "\n".join(lines)
            .replace("tcp://refscope-host:5555", source.endpoint)
            .replace("range(1000)", "range(3)")
            .replace("time.sleep(1.0)", "pass")
        )
        namespace = {"acquire": lambda: np.full((32, 40), 7, np.uint16)}
        exec(compile(code, "protocol-docstring-example", "exec"), namespace)  # noqa: S102
        namespace["sock"].context.term()
        frames = _poll_until(source, 3)
    assert [f.seq for f in frames] == [0, 1, 2]
    assert frames[0].data.shape == (32, 40) and frames[0].pixel_size_nm == pytest.approx(4.9)
    assert source.stats().rejected == 0

"""Publishing: atomic TIFF output with the no-overwrite rule, counted errors and drops, PUB streams and events."""
from __future__ import annotations

import errno
import json
import os
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

import refscope.daemon.publish.folder as publish_folder_module
from refscope.daemon.atomic import TEMP_MARKER, atomic_writer
from refscope.daemon.errors import RefscopeError, StateError
from refscope.daemon.wire.protocol import OutputFields, decode_enhanced
from refscope.daemon.publish import (
    EventPublisher,
    FolderPublisher,
    PublishedFile,
    StreamPublisher,
    output_names,
    output_stem,
)
from refscope.daemon.images import read_image, write_tiff

pytestmark = pytest.mark.timeout(30)

LOCAL = "tcp://127.0.0.1:*"


def _image(value: float = 1.0, shape: tuple[int, int] = (32, 48)) -> np.ndarray:
    return np.full(shape, value, np.float32) + np.arange(shape[1], dtype=np.float32)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


def _wait(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture()
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


# ------------------------------------------------------------------------------------------- naming


def test_output_names() -> None:
    assert output_stem("/acq/frame_012.tif") == "frame_012"
    assert output_stem("zmq:tcp://127.0.0.1:5555#42") == "zmq_tcp_127.0.0.1_5555_42"
    assert output_names("frame_012", 2) == ("frame_012_x2.tif", "frame_012_x2_confidence.tif")
    assert output_names("frame_012", 3, 2) == ("frame_012_x3-2.tif", "frame_012_x3-2_confidence.tif")


# ------------------------------------------------------------------------------------- folder output


def test_writes_readable_calibrated_tiffs_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written: list[PublishedFile] = []
    with FolderPublisher(out, queue_limit=4, on_written=written.append) as publisher:
        assert publisher.submit(_image(), source="/acq/frame_1.tif", t=100.0, scale=2, pixel_size_nm=2.5,
                                confidence=np.ones((32, 48), np.float32), metadata={"model": "paired"})
        assert publisher.submit(_image(5).astype(np.uint16), source="/acq/frame_2.tif", t=101.0, scale=2,
                                pixel_size_nm=2.5)
    stats = publisher.stats()
    assert (stats.written, stats.dropped, stats.errors, stats.queue_depth) == (2, 0, 0, 0)
    assert sorted(p.name for p in out.iterdir()) == ["frame_1_x2.tif", "frame_1_x2_confidence.tif", "frame_2_x2.tif"]
    assert _temp_files(out) == []
    first = read_image(out / "frame_1_x2.tif")
    assert first.pixel_size_nm == pytest.approx(2.5)
    np.testing.assert_array_equal(first.data, _image())
    assert first.metadata.extra["source"] == "/acq/frame_1.tif"
    assert first.metadata.extra["model"] == "paired" and first.metadata.extra["scale"] == 2
    assert read_image(out / "frame_2_x2.tif").data.dtype == np.uint16
    assert read_image(out / "frame_1_x2_confidence.tif").metadata.extra["kind"] == "confidence"
    assert [w.path.name for w in written] == ["frame_1_x2.tif", "frame_2_x2.tif"]
    assert written[0].confidence_path == out / "frame_1_x2_confidence.tif" and written[1].confidence_path is None


def test_disk_full_is_counted_and_the_next_frames_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = publish_folder_module.write_tiff
    calls = {"n": 0}

    def flaky(path, image, *, pixel_size_nm, metadata=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # fail half-way through writing the temporary file, as a full disk does
            with atomic_writer(path, "wb") as handle:
                handle.write(b"II*\x00partial")
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, image, pixel_size_nm=pixel_size_nm, metadata=metadata)

    monkeypatch.setattr(publish_folder_module, "write_tiff", flaky)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="refscope.publish"):
        with FolderPublisher(out, queue_limit=8) as publisher:
            for i in range(4):
                publisher.submit(_image(i), source=f"/acq/f{i}.tif", t=float(i), scale=2, pixel_size_nm=1.0)
    stats = publisher.stats()
    # the failed write is counted once and retried (here at the latest when the publisher stops): nothing is lost
    assert stats.written == 4 and stats.errors == 1 and stats.retried == 1 and stats.retry_waiting == 0
    assert stats.errors_by_reason == {"disk_full": 1}
    assert "f1_x2.tif" in (stats.last_error or "")
    assert sorted(p.name for p in out.iterdir()) == ["f0_x2.tif", "f1_x2.tif", "f2_x2.tif", "f3_x2.tif"]
    assert _temp_files(out) == []
    assert any("disk_full" in r.getMessage() for r in caplog.records)


class _Refusing:
    """``write_tiff`` of an output folder that refuses every write (EACCES, or ENOSPC) while ``on`` is set."""

    def __init__(self, error: int = errno.EACCES) -> None:
        self.on, self.error, self.real = True, error, publish_folder_module.write_tiff

    def __call__(self, path, image, **kwargs):  # type: ignore[no-untyped-def]
        if self.on:
            raise OSError(self.error, os.strerror(self.error), str(path))
        self.real(path, image, **kwargs)


def test_failed_writes_are_retried_with_back_off_while_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refusing = _Refusing()
    monkeypatch.setattr(publish_folder_module, "write_tiff", refusing)
    out, spill = tmp_path / "out", tmp_path / "state" / "spill"
    with FolderPublisher(out, spill_dir=spill, retry_first_s=0.05, retry_max_s=0.2) as publisher:
        for i in range(5):
            publisher.submit(_image(i), source=f"/acq/f{i}.tif", t=float(i), scale=2, pixel_size_nm=1.0)
        assert _wait(lambda: publisher.stats().retry_waiting == 5)
        assert len(list(spill.glob("*.npz"))) == 5  # on disk in the state folder, never in the output folder
        time.sleep(0.5)  # several retries, all refused: each frame is counted once
        assert publisher.stats().errors_by_reason == {"permission": 5} and publisher.stats().written == 0
        refusing.on = False  # the folder is writable again: written while running, not only at a restart
        assert _wait(lambda: publisher.stats().written == 5, 5.0)
        stats = publisher.stats()
        assert stats.retried == 5 and stats.retry_waiting == 0 and stats.errors == 5
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}_x2.tif" for i in range(5)]
    assert list(spill.iterdir()) == []
    assert read_image(out / "f3_x2.tif").pixel_size_nm == pytest.approx(1.0)


def test_disk_full_has_its_own_reason_even_when_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def wrapped(path, image, **kwargs):  # type: ignore[no-untyped-def]
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise OSError(f"{path}: write failed") from exc

    monkeypatch.setattr(publish_folder_module, "write_tiff", wrapped)
    publisher = FolderPublisher(tmp_path / "out", retry_first_s=5.0, retry_max_s=5.0)
    publisher.start()
    publisher.submit(_image(), source="/acq/f.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    assert _wait(lambda: publisher.stats().errors == 1)
    assert publisher.stats().errors_by_reason == {"disk_full": 1}
    publisher.stop()  # still failing at stop, held in memory (no spill folder): counted as dropped, never silent
    assert publisher.stats().dropped_by_reason == {"stopped": 1}


def test_outputs_spilled_by_a_stopped_writer_are_written_by_the_next(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    refusing = _Refusing(errno.ENOSPC)
    monkeypatch.setattr(publish_folder_module, "write_tiff", refusing)
    out, spill = tmp_path / "out", tmp_path / "spill"
    with FolderPublisher(out, spill_dir=spill, retry_first_s=5.0) as publisher:
        publisher.submit(_image(7), source="/acq/a.tif", t=1.0, scale=2, pixel_size_nm=2.0,
                         confidence=np.ones((32, 48), np.float32), metadata={"model": "paired"})
        assert _wait(lambda: publisher.stats().retry_waiting == 1)
    assert publisher.stats().errors_by_reason == {"disk_full": 1} and len(list(spill.glob("*.npz"))) == 1
    refusing.on = False
    with FolderPublisher(out, spill_dir=spill) as publisher:
        assert _wait(lambda: publisher.stats().written == 1)
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.tif", "a_x2_confidence.tif"]
    assert np.array_equal(read_image(out / "a_x2.tif").data, _image(7)) and list(spill.iterdir()) == []


def test_invalid_image_is_counted_not_fatal(tmp_path: Path) -> None:
    with FolderPublisher(tmp_path, queue_limit=2) as publisher:
        publisher.submit(np.full((8, 8), np.nan, np.float32), source="/a/bad.tif", t=0.0, scale=2, pixel_size_nm=1.0)
        publisher.submit(_image(), source="/a/good.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    assert publisher.stats().errors_by_reason == {"invalid_image": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["good_x2.tif"]


def test_queue_drops_only_beyond_the_limit_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    real = publish_folder_module.write_tiff

    def slow(path, image, **kwargs):  # type: ignore[no-untyped-def]
        gate.wait(10)
        real(path, image, **kwargs)

    monkeypatch.setattr(publish_folder_module, "write_tiff", slow)
    publisher = FolderPublisher(tmp_path / "out", queue_limit=2, block_s=0.1)
    publisher.start()
    try:
        submit = lambda i: publisher.submit(_image(i), source=f"/a/f{i}.tif", t=0.0, scale=2, pixel_size_nm=1.0)  # noqa: E731
        assert submit(0)
        assert _wait(lambda: publisher.stats().queue_depth == 0)  # the worker holds frame 0 (blocked in the write)
        assert submit(1) and submit(2)  # queue_limit frames wait: nothing dropped
        assert publisher.stats().dropped == 0
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="refscope.publish"):
            assert not submit(3)  # beyond the limit for longer than block_s: dropped, counted, logged
        assert time.monotonic() - started >= 0.09
        stats = publisher.stats()
        assert stats.dropped == 1 and stats.dropped_by_reason == {"queue_full": 1} and stats.queue_depth == 2
        assert any("queue_full" in r.getMessage() and "f3.tif" in r.getMessage() for r in caplog.records)
        # a consumer that catches up within the timeout loses nothing
        threading.Timer(0.05, gate.set).start()
        assert publisher.submit(_image(4), source="/a/f4.tif", t=0.0, scale=2, pixel_size_nm=1.0, timeout=5.0)
    finally:
        gate.set()
        publisher.stop(drain=True)
    stats = publisher.stats()
    assert stats.written == 4 and stats.dropped == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0_x2.tif", "f1_x2.tif", "f2_x2.tif", "f4_x2.tif"]


def test_stop_without_drain_counts_the_abandoned_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = publish_folder_module.write_tiff

    def slow(path, image, **kwargs):  # type: ignore[no-untyped-def]
        gate.wait(10)
        real(path, image, **kwargs)

    monkeypatch.setattr(publish_folder_module, "write_tiff", slow)
    publisher = FolderPublisher(tmp_path, queue_limit=4)
    publisher.start()
    for i in range(3):
        publisher.submit(_image(i), source=f"/a/f{i}.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    assert _wait(lambda: publisher.stats().queue_depth == 2)
    threading.Timer(0.1, gate.set).start()
    publisher.stop(drain=False, timeout=5)
    stats = publisher.stats()
    assert stats.written == 1 and stats.dropped_by_reason == {"stopped": 2}
    with pytest.raises(RefscopeError, match="not started"):
        publisher.submit(_image(), source="/a/x.tif", t=0.0, scale=2, pixel_size_nm=1.0)


def test_never_overwrites_foreign_files_and_replaces_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "frame_x2.tif").write_bytes(b"someone else's file")
    with FolderPublisher(out) as publisher:
        publisher.submit(_image(1), source="/acq/a/frame.tif", t=10.0, scale=2, pixel_size_nm=1.0)
        publisher.submit(_image(2), source="/acq/b/frame.tif", t=11.0, scale=2, pixel_size_nm=1.0)
    assert (out / "frame_x2.tif").read_bytes() == b"someone else's file"
    assert read_image(out / "frame_x2-2.tif").metadata.extra["source"] == "/acq/a/frame.tif"
    assert read_image(out / "frame_x2-3.tif").metadata.extra["source"] == "/acq/b/frame.tif"

    # a restart re-processing the same frames replaces refscope's own outputs: no duplicates, new content
    with FolderPublisher(out) as again:
        again.submit(_image(7), source="/acq/b/frame.tif", t=11.0, scale=2, pixel_size_nm=1.0)
        again.submit(_image(8), source="/acq/a/frame.tif", t=10.0, scale=2, pixel_size_nm=1.0)
    assert again.stats().written == 2 and again.stats().replaced == 2
    assert sorted(p.name for p in out.iterdir()) == ["frame_x2-2.tif", "frame_x2-3.tif", "frame_x2.tif"]
    np.testing.assert_array_equal(read_image(out / "frame_x2-3.tif").data, _image(7))
    np.testing.assert_array_equal(read_image(out / "frame_x2-2.tif").data, _image(8))

    # a new version of a file (another acquisition time) never replaces the earlier one's output
    write_tiff(out / "new_x2.tif", _image(), pixel_size_nm=1.0, metadata={"source": "/acq/new.tif", "source_t": 1.0})
    with FolderPublisher(out) as third:
        third.submit(_image(9), source="/acq/new.tif", t=2.0, scale=2, pixel_size_nm=1.0)
    assert third.stats().replaced == 0
    assert (out / "new_x2-2.tif").exists()
    assert _temp_files(out) == []


def test_callback_failure_on_one_frame_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    def boom(published: PublishedFile) -> None:
        if published.source == "/a/f.tif":
            raise RuntimeError("a bug on this frame")

    with FolderPublisher(tmp_path, on_written=boom) as publisher:
        publisher.submit(_image(), source="/a/f.tif", t=0.0, scale=2, pixel_size_nm=1.0)
        publisher.submit(_image(), source="/a/g.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    publisher.check()
    stats = publisher.stats()
    assert stats.errors_by_reason == {"unexpected": 1} and "/a/f.tif" in stats.last_error
    assert (tmp_path / "g_x2.tif").exists()


def test_a_state_failure_in_the_callback_is_reraised_on_the_owner_thread(tmp_path: Path) -> None:
    def boom(_: PublishedFile) -> None:
        raise StateError("catalogue.sqlite3: catalogue write failed (disk I/O error)")

    publisher = FolderPublisher(tmp_path, on_written=boom)
    publisher.start()
    publisher.submit(_image(), source="/a/f.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    assert _wait(lambda: publisher._error is not None)
    with pytest.raises(StateError, match="disk I/O error"):
        publisher.submit(_image(), source="/a/g.tif", t=0.0, scale=2, pixel_size_nm=1.0)
    with pytest.raises(StateError, match="disk I/O error"):
        publisher.stop()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="queue_limit"):
        FolderPublisher(tmp_path, queue_limit=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RefscopeError, match="cannot create the output folder"):
        FolderPublisher(tmp_path / "file" / "out").start()
    with FolderPublisher(tmp_path / "ok") as publisher:
        with pytest.raises(ValueError, match="2-D"):
            publisher.submit(np.zeros((2, 2, 3)), source="/a/rgb.tif", t=0.0, scale=2, pixel_size_nm=1.0)


# -------------------------------------------------------------------------------------------- ZMQ output


def _subscriber(context: zmq.Context, endpoint: str, *, rcvhwm: int = 1000) -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def test_stream_publisher_delivers_enhanced_frames(context: zmq.Context) -> None:
    with StreamPublisher(LOCAL, hwm=4, context=context) as stream:
        assert stream.bound_endpoint.startswith("tcp://127.0.0.1:") and not stream.bound_endpoint.endswith("*")
        sub = _subscriber(context, stream.bound_endpoint)
        image = _image(3)
        received = None
        deadline = time.monotonic() + 5
        seq = 0
        while received is None and time.monotonic() < deadline:  # PUB/SUB: resend until the subscription is live
            stream.publish(image, OutputFields(seq=seq, pixel_size_m=2.5e-9, model="paired", model_version="v1", latency_s=0.2, source_seq=41, t=1000.0), confidence="low")
            seq += 1
            if sub.poll(50):
                received = decode_enhanced(sub.recv_multipart())
        sub.close()
    assert received is not None
    np.testing.assert_array_equal(received.data, image)
    assert received.model == "paired" and received.source_seq == 41 and received.confidence == "low"
    assert received.pixel_size_m == pytest.approx(2.5e-9)
    assert stream.stats().sent >= 1


def test_stream_publisher_counts_drops_when_nobody_reads(context: zmq.Context) -> None:
    with StreamPublisher(LOCAL, hwm=1, context=context) as stream:
        sub = _subscriber(context, stream.bound_endpoint, rcvhwm=1)
        small = _image(0, (8, 8))
        # wait until the subscription is live (a frame arrives), then stop reading
        assert _wait(lambda: (stream.publish(small, OutputFields(seq=0, pixel_size_m=1e-9, model="m", model_version="v", latency_s=0.0, source_seq=0, t=0.0)) or True) and sub.poll(20) != 0)
        big = np.zeros((1024, 1024), np.float32)  # 4 MiB: kernel socket buffers fill after a few frames
        results = [stream.publish(big, OutputFields(seq=i, pixel_size_m=1e-9, model="m", model_version="v", latency_s=0.0, source_seq=i, t=0.0)) for i in range(1, 60)]
        stats = stream.stats()
        sub.close()
    assert not all(results)
    assert stats.dropped == results.count(False) and stats.dropped > 0


def test_stream_publisher_without_subscribers_never_blocks(context: zmq.Context) -> None:
    with StreamPublisher(LOCAL, hwm=1, context=context) as stream:
        started = time.monotonic()
        for i in range(20):
            stream.publish(_image(), OutputFields(seq=i, pixel_size_m=1e-9, model="m", model_version="v", latency_s=0.0, source_seq=i, t=0.0))
        assert time.monotonic() - started < 2.0


def test_bind_failure_names_the_endpoint(context: zmq.Context) -> None:
    with StreamPublisher(LOCAL, context=context) as first:
        second = StreamPublisher(first.bound_endpoint, context=context)
        with pytest.raises(RefscopeError, match=first.bound_endpoint.replace(".", r"\.")):
            second.start()


def test_event_publisher_events_arrive(context: zmq.Context) -> None:
    with EventPublisher(LOCAL, context=context) as events:
        sub = _subscriber(context, events.bound_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, EventPublisher.TOPIC)
        got: list[list[bytes]] = []

        def probe() -> bool:
            events.emit("reference_requested", {"reason": "probe"})
            if sub.poll(20):
                got.append(sub.recv_multipart())
            return bool(got)

        assert _wait(probe)
        events.emit("model_promoted", {"version": "v2", "scores": {"psnr": np.float64(31.5)}}, t=123.5)
        events.emit("pair_learned", {"hr": Path("/a/hr.tif"), "lr": "/a/lr.tif"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(b'"pair_learned"' in m[1] for m in got):
            if sub.poll(50):
                got.append(sub.recv_multipart())
        sub.close()
    decoded = [json.loads(parts[1]) for parts in got]
    assert all(parts[0] == b"event" for parts in got)
    promoted = next(e for e in decoded if e["type"] == "model_promoted")
    assert promoted == {"type": "model_promoted", "t": 123.5, "payload": {"version": "v2", "scores": {"psnr": 31.5}}}
    learned = next(e for e in decoded if e["type"] == "pair_learned")
    assert learned["payload"] == {"hr": "/a/hr.tif", "lr": "/a/lr.tif"} and learned["t"] > 1e9


def test_event_encoding_errors() -> None:
    with pytest.raises(ValueError, match="event type"):
        EventPublisher.encode("Bad Type")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        EventPublisher.encode("error", {"value": float("nan")})

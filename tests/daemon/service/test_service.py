"""End-to-end tests of the daemon (:mod:`refscope.daemon.service.daemon`): frames in, enhanced frames out, learning.

Each test starts a real :class:`Daemon` on temporary folders with ephemeral ``tcp://127.0.0.1:*`` endpoints,
feeds it like a microscope (files written slowly, via a temporary name or in chunks; ZMQ PUSH messages) and
watches the PUB stream, the output folder and the control endpoint.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zmq

from refscope.daemon.publish import folder as publish_folder_module
from refscope.daemon.config import load_config
from refscope.daemon.wire.control import ControlClient
from refscope.daemon.frames import Frame
from refscope.daemon.wire.protocol import decode_enhanced, encode_frame, stream_role
from refscope.daemon.publish import output_stem
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.images import read_image, write_tiff
from refscope.models.synthetic import make_pair
from tests.daemon.waiting import stream_joined, wait_for
from tests.daemon.queue_source import QueueSource

LR_SHAPE = (160, 200)
LR_NM, HR_NM = 10.0, 5.0
EPHEMERAL = {
    "control.endpoint": "tcp://127.0.0.1:*",
    "control.events_endpoint": "tcp://127.0.0.1:*",
    "publish.pub_endpoint": "tcp://127.0.0.1:*",
}
FAST_FOLDER = {"poll_interval_s": 0.1, "retry_s": 0.15, "max_retries": 2}


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def pair():
    """A synthetic LR frame (160x200 at 10 nm) and an HR reference at 5 nm inside it."""
    return make_pair(rng=np.random.default_rng(7), lr_shape=LR_SHAPE, factor=2.0, lr_pixel_size_nm=LR_NM)


def lr_frame(pair, i: int) -> np.ndarray:
    """The LR field scanned again: the same frame with a little fresh noise (float32)."""
    noise = np.random.default_rng(1000 + i).normal(0.0, 0.003, pair.lr.shape)
    return (pair.lr + noise).astype(np.float32)


def tiff_bytes(image: np.ndarray, pixel_size_nm: float, tmp: Path) -> bytes:
    """An ImageJ TIFF with its pixel size, as bytes (written outside the watched folder)."""
    path = tmp / f"stage-{time.monotonic_ns()}.tif"
    write_tiff(path, image, pixel_size_nm=pixel_size_nm)
    data = path.read_bytes()
    path.unlink()
    return data


def write_slowly(path: Path, data: bytes, *, via_temp: bool, chunks: int = 4, pause_s: float = 0.05) -> None:
    """Write like a microscope: in chunks with pauses, either to a temporary name renamed at the end, or
    directly under the final name."""
    target = path.with_name(path.name + ".part") if via_temp else path
    step = max(1, len(data) // chunks + 1)
    with open(target, "wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start:start + step])
            handle.flush()
            time.sleep(pause_s)
    if via_temp:
        os.replace(target, path)


class Viewer:
    """A SUB socket on the daemon's stream collecting decoded enhanced frames (other roles skipped)."""

    def __init__(self, daemon: Daemon) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(daemon.endpoints["pub"])
        self.frames: list[Any] = []
        stream_joined(self.socket, daemon)  # PUB/SUB: the subscription has reached the publisher

    def drain(self) -> list[Any]:
        while self.socket.poll(0):
            parts = self.socket.recv_multipart()
            if stream_role(parts) == "enhanced":  # the stream also carries raw frames and confidence maps
                self.frames.append(decode_enhanced(parts))
        return self.frames

    def wait(self, n: int, timeout: float) -> list[Any]:
        return wait_for(lambda: len(self.drain()) >= n and self.frames, timeout, f"{n} enhanced frames on the stream")

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def make_config(tmp_path: Path, **overrides: Any):
    # no background training process: tests/daemon/learn/test_trainer.py covers it; here it would only compete with
    # the daemon for the CI machine's 2 cores
    values = {**EPHEMERAL, "model.library_size": "2000", "trainer.enabled": "false", **overrides}
    return load_config(None, values)


def control_status(daemon: Daemon) -> dict[str, Any]:
    with ControlClient(daemon.endpoints["control"], timeout_s=10.0) as client:
        reply = client.request("status")
    assert reply["ok"], reply
    return reply["status"]


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))


# -------------------------------------------------------------------------------------------- folder e2e


def test_folder_end_to_end_learns_from_a_reference(tmp_path, pair):
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    write_tiff(watch / "old_000.tif", lr_frame(pair, 99), pixel_size_nm=LR_NM)  # there before the first start
    daemon = Daemon(make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)}),
                    folder_options=FAST_FOLDER)
    daemon.start()
    viewer = Viewer(daemon)
    try:
        # three LR frames: temp name + rename, direct chunked write, temp name + rename
        for i, via_temp in enumerate((True, False, True)):
            write_slowly(watch / f"frame_{i:03d}.tif", tiff_bytes(lr_frame(pair, i), LR_NM, staging), via_temp=via_temp)
            time.sleep(0.2)
        frames = viewer.wait(3, timeout=20)
        assert {f.source_seq for f in frames[:3]} == {0, 1, 2}
        for f in frames[:3]:
            assert f.data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1])
            assert f.model == "prior" and f.model_version == "0"  # nothing learned yet: the shipped prior serves
            assert f.pixel_size_m == pytest.approx(LR_NM / 2 * 1e-9)
            assert 0 <= f.latency_s < 10
        wait_for(lambda: len(outputs(out)) == 3, 10, "3 output TIFFs")
        for path in outputs(out):
            image = read_image(path)
            assert image.data.shape == (320, 400) and image.data.dtype == np.float32
            assert image.pixel_size_nm == pytest.approx(LR_NM / 2, rel=1e-4)
        assert [p.name for p in outputs(out)] == [f"frame_{i:03d}_x2.tif" for i in range(3)]

        # the HR reference (pixel size half the LR's) -> model version 1; told apart by its pixel size only, it is
        # also a live frame (the operator zoomed in: issue 18's zoom series) and is enhanced at its own pixel size
        write_slowly(watch / "ref_000.tif", tiff_bytes(pair.hr.astype(np.float32), HR_NM, staging), via_temp=True)
        wait_for(lambda: control_status(daemon)["model_version"] == 1, 40, "model version 1", interval=0.25)
        # announced twice, truthfully: promoted (it won) and then serving (exported, warmed up, enhancing frames)
        def announced() -> list[str]:
            return [e.type for e in daemon.catalogue.recent_events(50) if e.type in ("model_promoted", "model_serving")]

        wait_for(lambda: "model_serving" in announced(), 10, "the model_serving event")
        assert announced() == ["model_promoted", "model_serving"]
        serving = next(e for e in daemon.catalogue.recent_events(50) if e.type == "model_serving")
        assert serving.payload["version"] == 1 and serving.payload["kind"] == "paired"
        assert serving.payload["promotion_to_serving_s"] >= 0
        status = control_status(daemon)
        assert status["learner"]["pairs_learned"] == 1
        assert status["library_size"] > 0
        assert status["validation_delta_db"] > 0
        assert status["frames"]["in_hr"] == 1 and status["frames"]["in_both"] == 1
        assert status["roles"]["last"]["role"] == "both" and "finer than the live stream" in status["roles"]["last"]["reason"]
        wait_for(lambda: (out / "ref_000_x2.tif").exists(), 10, "the output of the zoomed-in frame")
        assert read_image(out / "ref_000_x2.tif").pixel_size_nm == pytest.approx(HR_NM / 2, rel=1e-4)

        before = len(viewer.drain())
        write_slowly(watch / "frame_100.tif", tiff_bytes(lr_frame(pair, 100), LR_NM, staging), via_temp=False)
        frames = viewer.wait(before + 1, timeout=20)
        assert frames[-1].model == "paired" and frames[-1].model_version == "1"
        wait_for(lambda: (out / "frame_100_x2.tif").exists(), 10, "the output of frame_100")
        meta = read_image(out / "frame_100_x2.tif").metadata.extra
        assert meta["model_version"] == 1 and meta["source"] == str(watch / "frame_100.tif")

        status = control_status(daemon)
        assert status["frames"]["out"] == 5 and status["frames"]["written"] == 5
        assert status["roles"]["last"]["role"] == "lr" and "coarser" in status["roles"]["last"]["reason"]
        assert status["errors_by_reason"] == {}
        assert status["latency"]["p50_s"] is not None and status["latency"]["p99_s"] >= status["latency"]["p50_s"]
        assert status["queues"]["serve"] == 0
        ingest = next(iter(status["ingest"].values()))
        assert ingest["received"] == 5 and ingest["rejected"] == 0
        # nothing in the watched folder was modified, nothing added to it
        assert sorted(folder_digest(watch)) == ["frame_000.tif", "frame_001.tif", "frame_002.tif", "frame_100.tif",
                                                "old_000.tif", "ref_000.tif"]
        assert not (out / "old_000_x2.tif").exists()  # files from before the first start are left alone
        digest = folder_digest(watch)
    finally:
        viewer.close()
        daemon.stop()
    assert folder_digest(watch) == digest
    assert not (daemon.config.state_dir / "daemon.json").exists()


# ----------------------------------------------------------------------------------------------- ZMQ e2e


def test_zmq_end_to_end_learns_from_a_reference(tmp_path, pair):
    out = tmp_path / "out"
    daemon = Daemon(make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*",
                                             "publish.out_dir": str(out)}))
    daemon.start()
    viewer = Viewer(daemon)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(daemon.endpoints["zmq_ingest"])
    try:
        for i in range(3):
            push.send_multipart(encode_frame(lr_frame(pair, i), seq=i, pixel_size_m=LR_NM * 1e-9, role="lr",
                                             t=time.time()))
            time.sleep(0.2)
        viewer.wait(3, timeout=20)
        push.send_multipart(encode_frame(pair.hr.astype(np.float32), seq=3, pixel_size_m=HR_NM * 1e-9, role="hr"))
        wait_for(lambda: control_status(daemon)["model_version"] == 1, 40, "model version 1", interval=0.25)
        push.send_multipart(encode_frame(lr_frame(pair, 4), seq=4, pixel_size_m=LR_NM * 1e-9, role="lr",
                                         t=time.time()))
        frames = wait_for(lambda: [f for f in viewer.drain() if f.source_seq == 4], 20, "frame 4 enhanced")
        assert frames[0].model_version == "1" and frames[0].model == "paired"
        endpoint = daemon.endpoints["zmq_ingest"]
        expected = {f"{output_stem(f'zmq:{endpoint}#{seq}')}_x2.tif" for seq in (0, 1, 2, 4)}
        wait_for(lambda: {p.name for p in outputs(out)} == expected, 10, "4 output TIFFs")
        # a file appears (atomic rename) a moment before the writer's callback catalogues it
        wait_for(lambda: control_status(daemon)["catalogue"]["frames"]["enhanced"] == 4, 10, "4 outputs catalogued")
        status = control_status(daemon)
        assert status["frames"]["in"] == 5 and status["frames"]["in_hr"] == 1 and status["frames"]["out"] == 4
        assert status["catalogue"]["frames"]["enhanced"] == 4
        # the sender restarts its counter: seq 0 again is a new frame, enhanced into a new file (nothing overwritten)
        push.send_multipart(encode_frame(lr_frame(pair, 5), seq=0, pixel_size_m=LR_NM * 1e-9, role="lr"))
        second = f"{output_stem(f'zmq:{endpoint}#0')}_x2-2.tif"
        wait_for(lambda: (out / second).exists(), 20, "the second frame with seq 0 written")
        assert len(outputs(out)) == 5
    finally:
        push.close(linger=0)
        context.term()
        viewer.close()
        daemon.stop()


# ------------------------------------------------------------------------------------------- bad inputs


def _huge_tiff_header(width: int = 70000, height: int = 70000) -> bytes:
    """A TIFF whose header claims ``width`` x ``height`` uint8 pixels (and holds none)."""
    import struct

    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 4, height), (279, 4, min(width * height, 0xFFFFFFFF))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(64)


def test_bad_inputs_are_counted_and_later_frames_still_served(tmp_path, pair, monkeypatch):
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    daemon = Daemon(make_config(tmp_path, **{"ingest.watch": str(watch), "ingest.zmq_endpoint": "tcp://127.0.0.1:*",
                                             "publish.out_dir": str(out)}), folder_options=FAST_FOLDER)
    daemon.start()
    viewer = Viewer(daemon)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(daemon.endpoints["zmq_ingest"])
    try:
        good = tiff_bytes(lr_frame(pair, 0), LR_NM, staging)
        write_slowly(watch / "good_000.tif", good, via_temp=True)
        viewer.wait(1, timeout=20)

        # broken files
        (watch / "truncated.tif").write_bytes(good[: len(good) // 2])
        (watch / "corrupt.tif").write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(4000))
        (watch / "empty.tif").write_bytes(b"")
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.ones((32, 32), np.complex64))
        (watch / "complex.tif").write_bytes(buffer.getvalue())
        (watch / "huge.tif").write_bytes(_huge_tiff_header())
        # malformed ZMQ messages
        valid = encode_frame(lr_frame(pair, 1), seq=50, pixel_size_m=LR_NM * 1e-9, role="lr")
        push.send_multipart([valid[0]])  # one part
        push.send_multipart([b"{not json", valid[1]])
        push.send_multipart([valid[0], valid[1][:-10]])  # short buffer
        header = json.loads(valid[0])
        header["shape"] = [70000, 70000]
        push.send_multipart([json.dumps(header).encode(), b"\x00" * 16])
        # an HR reference of another specimen: matches no LR frame
        other = make_pair(rng=np.random.default_rng(99), lr_shape=LR_SHAPE, factor=2.0)
        write_slowly(watch / "stray_ref.tif", tiff_bytes(other.hr.astype(np.float32), HR_NM, staging), via_temp=True)

        def reasons() -> dict[str, int]:
            return control_status(daemon)["errors_by_reason"]

        expected = {"incomplete": 2, "unreadable": 3, "part_count": 1, "bad_json": 1, "buffer_size": 1,
                    "bad_shape": 1, "reference_no_match": 1}
        wait_for(lambda: all(reasons().get(k, 0) >= v for k, v in expected.items()), 20,
                 f"rejections {expected}", interval=0.2)

        # a full disk on the output folder, for one write
        real_write = publish_folder_module.write_tiff
        failures = {"left": 1}

        def full_disk(path, *args, **kwargs):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_write(path, *args, **kwargs)

        monkeypatch.setattr(publish_folder_module, "write_tiff", full_disk)
        write_slowly(watch / "good_001.tif", tiff_bytes(lr_frame(pair, 1), LR_NM, staging), via_temp=True)
        wait_for(lambda: reasons().get("write_disk_full", 0) == 1, 20, "the disk-full write error")
        assert not (out / "good_001_x2.tif").exists()

        # the daemon keeps serving
        before = len(viewer.drain())
        write_slowly(watch / "good_002.tif", tiff_bytes(lr_frame(pair, 2), LR_NM, staging), via_temp=False)
        push.send_multipart(encode_frame(lr_frame(pair, 3), seq=60, pixel_size_m=LR_NM * 1e-9, role="lr"))
        viewer.wait(before + 2, timeout=20)
        wait_for(lambda: (out / "good_002_x2.tif").exists(), 10, "good_002 written")
        status = control_status(daemon)
        assert status["running"] is True
        assert status["learner"]["rejected_by_reason"] == {"no_match": 1}
        assert status["publish"]["folder"]["errors_by_reason"] == {"disk_full": 1}
        assert status["model_version"] == 0
        names = {p.name for p in outputs(out)}
        # the stray reference (finer pixel size only) is also a live frame: enhanced, though never paired
        assert names == {"good_000_x2.tif", "good_002_x2.tif", "stray_ref_x2.tif",
                         f"{output_stem('zmq:' + daemon.endpoints['zmq_ingest'] + '#60')}_x2.tif"}
        # the frame whose write failed is still "received" in the catalogue: it is retried after a restart
        assert daemon.catalogue.frame(str(watch / "good_001.tif")).status == "received"
    finally:
        push.close(linger=0)
        context.term()
        viewer.close()
        daemon.stop()


def test_unusable_pixels_are_rejected_by_reason(tmp_path, pair):
    source = QueueSource()
    config = make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "publish.out_dir": str(tmp_path / "o")})
    with Daemon(config, sources=[source]) as daemon:
        viewer = Viewer(daemon)
        try:
            t = time.time()
            nan = lr_frame(pair, 0).copy()
            nan[3, 3] = np.nan
            source.items.put(Frame(np.ones(LR_SHAPE, np.complex64), LR_NM, "lr", "mem:complex", 0, t))
            source.items.put(Frame(nan, LR_NM, "lr", "mem:nan", 1, t))
            source.items.put(Frame(np.zeros((4, 300), np.float32), LR_NM, "lr", "mem:tiny", 2, t))
            source.items.put(Frame(np.full(LR_SHAPE, 7, np.uint16), LR_NM, "lr", "mem:constant", 3, t))
            source.items.put(Frame(lr_frame(pair, 4), None, "lr", "mem:no-pixel-size", 4, t))
            frames = viewer.wait(2, timeout=15)
            assert [f.source_seq for f in frames] == [3, 4]
            assert np.allclose(frames[0].data, 7)  # a constant frame stays constant
            status = daemon.status()
            assert status.errors_by_reason == {"bad_frame": 3}
            assert daemon.catalogue.frame("mem:nan").status == "rejected"
        finally:
            viewer.close()


def test_stream_only_daemon_marks_frames_enhanced_once_streamed(tmp_path, pair):
    source = QueueSource()
    config = make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state")})
    assert config.publish.out_dir is None
    with Daemon(config, sources=[source]) as daemon:
        viewer = Viewer(daemon)
        try:
            source.items.put(Frame(lr_frame(pair, 0), LR_NM, "lr", "mem:a", 0, time.time()))
            viewer.wait(1, timeout=15)
            wait_for(lambda: daemon.catalogue.frame("mem:a").status == "enhanced", 5, "mem:a marked enhanced")
            assert daemon.catalogue.frame("mem:a").output_path is None
            assert daemon.status().publish.folder is None
        finally:
            viewer.close()


def test_a_frame_outside_the_serving_models_domain_is_logged_counted_and_served(tmp_path, pair, caplog):
    """Issue 15.2 in the daemon: a model fitted on 10 nm float frames meets an 8-bit frame at 4 nm -- never a stop,
    a warning naming what differs, a count and a status field."""
    from refscope.daemon.cli import main as cli_main

    staging = tmp_path / "staging"
    staging.mkdir()
    write_tiff(staging / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=LR_NM)
    write_tiff(staging / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=HR_NM)
    state = tmp_path / "state"
    assert cli_main(["fit", str(staging / "lr.tif"), str(staging / "hr.tif"), "-o", str(state),
                     "--library-size", "1000", "-q"]) == 0
    source = QueueSource()
    config = make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(state)})
    caplog.set_level(logging.WARNING, logger="refscope.daemon")
    with Daemon(config, sources=[source]) as daemon:
        assert daemon.status().domain.model["pixel_size_nm"] == pytest.approx(LR_NM)
        source.items.put(Frame(lr_frame(pair, 0), LR_NM, "lr", "mem:inside", 0, time.time()))
        foreign = np.clip(lr_frame(pair, 1) * 250, 0, 255).astype(np.uint8)
        for i in range(2):
            source.items.put(Frame(foreign, 4.0, "lr", f"mem:foreign{i}", 1 + i, time.time()))
        wait_for(lambda: daemon.status().frames.out == 3, 30, "3 frames served")
        status = daemon.status()
        assert status.running and status.domain.frames_outside == 2
        last = status.domain.last
        assert last.startswith("mem:foreign1: outside the serving model's domain")
        assert "pixel size 4 nm, the model's 10 nm" in last and "pixel type uint8, the model's float32" in last
    warned = [r.getMessage() for r in caplog.records if "outside the serving model's domain" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("mem:foreign0")  # once per change, not once per frame


def test_a_safe_baseline_that_serves_before_any_model_serves_again_after_a_restart(tmp_path):
    """A first reference that teaches less than the tuned blur of bicubic (a noisy field, a reference whose training
    area is scrambled): the daemon serves that blur (``baseline``), announces it, and a restarted daemon on the same
    state folder serves it again, not bicubic."""
    from tests.daemon.learn.test_learner import scramble_training_area

    pair = make_pair(rng=np.random.default_rng(7), lr_shape=LR_SHAPE, factor=2.0, lr_pixel_size_nm=LR_NM, noise="high")

    config = make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state")})
    garbage = scramble_training_area(pair, np.random.default_rng(5)).astype(np.float32)
    source = QueueSource()
    with Daemon(config, sources=[source]) as daemon:
        viewer = Viewer(daemon)
        try:
            source.items.put(Frame(lr_frame(pair, 0), LR_NM, "lr", "mem:lr0", 0, time.time()))
            viewer.wait(1, timeout=20)
            source.items.put(Frame(garbage, HR_NM, "hr", "mem:garbage_hr", 1, time.time()))
            wait_for(lambda: any(e.type == "model_serving" for e in daemon.catalogue.recent_events(50)), 40,
                     "the safe baseline to serve")
            serving = next(e for e in daemon.catalogue.recent_events(50) if e.type == "model_serving")
            assert serving.payload["kind"] == "baseline" and daemon.engine.describe()["served_by"] == "baseline"
            before = len(viewer.drain())
            source.items.put(Frame(lr_frame(pair, 1), LR_NM, "lr", "mem:lr1", 2, time.time()))
            frames = viewer.wait(before + 1, timeout=20)
            assert (frames[-1].model, frames[-1].model_version) == ("baseline", "0")
        finally:
            viewer.close()
    source = QueueSource()
    with Daemon(config, sources=[source]) as restarted:
        assert restarted.engine.describe()["served_by"] == "baseline"
        viewer = Viewer(restarted)
        try:
            source.items.put(Frame(lr_frame(pair, 2), LR_NM, "lr", "mem:lr2", 3, time.time()))
            (frame,) = viewer.wait(1, timeout=20)[-1:]
            assert (frame.model, frame.model_version) == ("baseline", "0")
        finally:
            viewer.close()


# ----------------------------------------------------------------------------------------------- CLI glue


def test_daemon_cli_config_errors_exit_2_with_one_line(tmp_path, capsys):
    from refscope.daemon.cli.daemon import main

    watch = tmp_path / "in"
    watch.mkdir()
    assert main(["--out", str(tmp_path / "out")]) == 2  # no ingest source
    err = capsys.readouterr().err
    assert err.startswith("refscope daemon: error: ") and err.count("\n") == 1 and "ingest.watch" in err
    assert main(["--watch", str(watch), "--out", str(watch / "out")]) == 2  # output inside the watched folder
    assert "inside the watched folder" in capsys.readouterr().err
    assert main(["--watch", str(watch), "--scale", "9"]) == 2
    assert "model.scale" in capsys.readouterr().err
    assert main(["--watch", str(watch), "--out", str(tmp_path / "out"), "--scale", "3", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "scale = 3" in text and str(watch) in text


def test_daemon_cli_bind_error_exits_2(tmp_path, capsys):
    import logging

    from refscope.daemon.cli.daemon import main

    root_level = logging.getLogger().level
    context = zmq.Context()
    busy = context.socket(zmq.REP)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        code = main(["--watch", str(tmp_path), "--out", str(tmp_path.parent / (tmp_path.name + "-out")),
                     "--control", f"tcp://127.0.0.1:{port}", "--pub", "tcp://127.0.0.1:*",
                     "--events", "tcp://127.0.0.1:*"])
    finally:
        busy.close(linger=0)
        context.term()
        logging.getLogger().setLevel(root_level)  # run_daemon set the log level of the process
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("refscope daemon: error: ") and f"127.0.0.1:{port}" in err


def test_a_restart_rereads_a_zoom_series_in_acquisition_order_so_a_new_reference_stays_a_reference(tmp_path, pair):
    """Found by the chaos benchmark: after a restart the existing files were re-read in name order, so a zoom-in
    taken *before* the last 1200x-like frame was re-read *after* it, the live stream stayed at the finer
    magnification, and the next reference was taken for a live frame at the live stream's magnification and never
    learned."""
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    # acquisition order a_lr (t0), z_ref (t1, a zoom-in: reference and live frame), b_lr (t2); name order differs
    for name, image, nm, t in (("a_lr.tif", lr_frame(pair, 0), LR_NM, 1000.0),
                               ("z_ref.tif", pair.hr.astype(np.float32), HR_NM, 2000.0),
                               ("b_lr.tif", lr_frame(pair, 1), LR_NM, 3000.0)):
        (watch / name).write_bytes(tiff_bytes(image, nm, staging))
        os.utime(watch / name, (t, t))
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})
    with Daemon(config, folder_options={**FAST_FOLDER, "include_existing": True}) as first:
        wait_for(lambda: control_status(first)["frames"]["in"] == 3, 20, "the three files read")
        assert control_status(first)["roles"]["last"]["source"].endswith("b_lr.tif")
    with Daemon(config, folder_options=FAST_FOLDER) as again:  # the catalogue exists: existing files re-read
        wait_for(lambda: control_status(again)["frames"]["in"] == 3, 20, "the three files re-read")
        write_slowly(watch / "c_ref.tif", tiff_bytes(pair.hr.astype(np.float32), HR_NM, staging), via_temp=True)
        wait_for(lambda: control_status(again)["frames"]["in"] == 4, 20, "the new reference")
        status = control_status(again)
    assert status["roles"]["last"]["source"].endswith("c_ref.tif") and status["roles"]["last"]["role"] == "both"

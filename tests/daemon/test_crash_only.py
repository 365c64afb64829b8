"""Crash-only daemon (issue 13): no input stops it, no reference or output is lost.

* a message, a file or a reference that makes a worker fail costs that input only: counted, quarantined, the
  daemon goes on (:mod:`refscope.daemon.worker`); a failure of the daemon's own state stops it with exit code 1;
* an output the output folder refuses is retried while the daemon runs and counted once in ``frames.errors``;
* an HR reference handed to the learner but not learned when the daemon stopped is learned after the restart.
"""
from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import refscope.daemon.learn.learner as learner_module
import refscope.daemon.publish.folder as publish_folder_module
import refscope.daemon.ingest.feed as source_zmq_module
from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.errors import StateError
from refscope.daemon.learn.learner import Learner
from refscope.daemon.wire.protocol import encode_frame
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.worker import Worker, is_state_failure, supervised
from refscope.models.synthetic import make_pair
from test_fuzz import zmq_daemon_and_pusher
from test_restart import put_frame
from tests.daemon.service.test_service import FAST_FOLDER, control_status, make_config
from waiting import wait_for

LR_NM, HR_NM = 10.0, 5.0


# ------------------------------------------------------------------------------------------- the rule


def test_supervised_counts_quarantines_and_goes_on_but_lets_a_state_failure_through() -> None:
    counted, quarantined = [], []

    def bad() -> int:
        raise KeyError("odd header")

    assert supervised(lambda: 7, worker="w", item="a") == 7
    assert supervised(bad, worker="zmq ingest", item="zmq:x#3", count=lambda r, m: counted.append((r, m)),
                      quarantine=lambda i, m: quarantined.append(i)) is None
    assert counted[0][0] == "zmq_ingest_failed" and "zmq:x#3" in counted[0][1] and "KeyError" in counted[0][1]
    assert quarantined == ["zmq:x#3"]
    with pytest.raises(StateError):
        supervised(lambda: (_ for _ in ()).throw(StateError("catalogue gone")), worker="w", item="a")
    assert is_state_failure(MemoryError()) and is_state_failure(KeyboardInterrupt()) and not is_state_failure(
        ValueError())


def test_worker_base_goes_on_after_a_bad_turn_and_hands_a_state_failure_back() -> None:
    class Turns(Worker):
        def __init__(self) -> None:
            super().__init__("turns", poll_interval_s=0.01)
            self.turns = 0

        def poll_once(self, timeout: float) -> None:
            self.turns += 1
            if self.turns == 2:
                raise ValueError("one bad input")
            if self.turns == 5:
                raise StateError("state folder gone")
            time.sleep(timeout)

    worker = Turns()
    worker.start()
    wait_for(lambda: worker._error is not None, 5, "the state failure")
    assert worker.turns == 5 and worker.failed_turns == 1
    with pytest.raises(StateError, match="state folder gone"):
        worker.check()
    with pytest.raises(StateError):
        worker.stop()


def test_worker_fail_stops_it_with_a_failure_that_is_not_a_state_error() -> None:
    """A dependency no turn can mend (a frame source whose own thread died): the worker stops and its owner gets
    the failure itself, as for a state failure; an ordinary bad turn is still only counted."""
    told: list[BaseException] = []

    class Watcher(Worker):
        def __init__(self) -> None:
            super().__init__("watcher", poll_interval_s=0.01)
            self.turns = 0

        def poll_once(self, timeout: float) -> None:
            self.turns += 1
            if self.turns == 1:
                raise ValueError("one bad input")
            if self.turns == 3:
                self.fail(RuntimeError("acquisition watcher crashed"))
            time.sleep(timeout)

        def on_failure(self, exc: BaseException) -> None:
            told.append(exc)

    worker = Watcher()
    worker.start()
    wait_for(lambda: worker._error is not None, 5, "the failure")
    assert worker.turns == 3 and worker.failed_turns == 1
    assert len(told) == 1 and isinstance(told[0], RuntimeError)
    with pytest.raises(RuntimeError, match="acquisition watcher crashed"):
        worker.stop()


def test_worker_base_stops_between_turns_releases_on_its_own_thread_and_starts_again() -> None:
    class Waiting(Worker):
        def __init__(self) -> None:
            super().__init__("waiting", poll_interval_s=0.05)
            self.turns = 0
            self.released_on: list[str] = []

        def poll_once(self, timeout: float) -> None:
            self.turns += 1
            time.sleep(timeout)  # a poll that found nothing

        def on_stop(self) -> None:
            self.released_on.append(threading.current_thread().name)

    worker = Waiting()
    worker.start()
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    wait_for(lambda: worker.turns >= 2, 5, "two turns")
    assert worker.stop(timeout=5) is True and worker.stopping
    assert worker.released_on == ["waiting"] and worker.failed_turns == 0
    turns = worker.turns
    time.sleep(0.2)
    assert worker.turns == turns  # no turn after stop
    assert worker.stop() is True  # idempotent
    worker.start()  # a stopped worker can run again
    wait_for(lambda: worker.turns > turns, 5, "a turn after the restart")
    worker.stop()
    assert worker.released_on == ["waiting", "waiting"]


# ------------------------------------------------------------------------------------------- ZMQ ingest


def _valid(seq: int) -> list[bytes]:
    pixels = (np.arange(24 * 32).reshape(24, 32) % 200).astype(np.uint16)
    return encode_frame(pixels, seq=seq, pixel_size_m=5e-9, role="lr", t=time.time())


def test_no_zmq_message_stops_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13.1: a valid header with ``pixel_size_m: 1e300`` (inf nm) killed the receiving thread and the daemon;
    so would any unexpected error while one message is decoded."""
    real = source_zmq_module.decode_frame

    def decode(parts, **kwargs):  # type: ignore[no-untyped-def]
        if bytes(parts[0].bytes if hasattr(parts[0], "bytes") else parts[0]).find(b'"seq":666') >= 0:
            raise RuntimeError("a decoder bug on this message")
        return real(parts, **kwargs)

    monkeypatch.setattr(source_zmq_module, "decode_frame", decode)
    with zmq_daemon_and_pusher(tmp_path) as (daemon, push):
        header, pixels = _valid(1)
        huge = json.loads(header)
        huge["pixel_size_m"] = 1e300
        push.send_multipart([json.dumps(huge).encode(), pixels])
        push.send_multipart(_valid(666))
        push.send_multipart(_valid(2))
        wait_for(lambda: daemon.status().frames.written == 1, 15, "the valid frame written")
        daemon.check()  # no component failed
        status = control_status(daemon)
        ingest = status["ingest"]["zmq"]
        assert status["running"] and ingest["rejected"] == 2 and ingest["received"] == 1
        assert status["frames"]["errors"] == sum(status["errors_by_reason"].values()) == 2


# -------------------------------------------------------------------------------------------- state failure


def test_a_failure_of_the_daemons_own_state_stops_it_with_exit_code_1(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    watch = tmp_path / "in"
    watch.mkdir()
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, lr_pixel_size_nm=LR_NM)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(tmp_path / "out")})

    def gone(self, source, **kwargs):  # type: ignore[no-untyped-def]
        raise StateError(f"{self.path}: catalogue write failed (disk I/O error)")

    monkeypatch.setattr(Catalogue, "mark_learned", gone)
    daemon = Daemon(config, folder_options=FAST_FOLDER)
    daemon.start()
    put_frame(watch, tmp_path, "scan_000.tif", specimen.lr, LR_NM)
    put_frame(watch, tmp_path, "ref_001.tif", specimen.hr, HR_NM)
    code: list[int] = []
    runner = threading.Thread(target=lambda: code.append(daemon.run_forever(install_signals=False)))
    runner.start()
    runner.join(60)
    assert code == [1]
    with pytest.raises(StateError, match="disk I/O error"):
        daemon.learner.check()


# ----------------------------------------------------------------------------------------------- outputs


def test_outputs_refused_by_the_output_folder_are_written_while_the_daemon_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13.5: with the output folder refusing writes for a while, outputs were missing until a restart and
    ``frames.errors`` stayed 0."""
    refusing = {"on": False, "errno": errno.EACCES}
    real = publish_folder_module.write_tiff

    def write_tiff(path, image, **kwargs):  # type: ignore[no-untyped-def]
        if refusing["on"]:
            raise OSError(refusing["errno"], os.strerror(refusing["errno"]), str(path))
        real(path, image, **kwargs)

    monkeypatch.setattr(publish_folder_module, "write_tiff", write_tiff)
    monkeypatch.setattr(publish_folder_module.SpillQueue, "__init__", _fast_spill(publish_folder_module.SpillQueue))
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})
    rng = np.random.default_rng(1)
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        put_frame(watch, tmp_path, "f0.tif", rng.random((32, 40)), LR_NM)
        wait_for(lambda: (out / "f0_x2.tif").exists(), 20, "the first output")
        refusing["on"] = True
        for i in range(1, 4):
            put_frame(watch, tmp_path, f"f{i}.tif", rng.random((32, 40)), LR_NM)
        wait_for(lambda: daemon.status().publish.folder.retry_waiting == 3, 20, "3 outputs waiting")
        refusing["errno"] = errno.ENOSPC
        put_frame(watch, tmp_path, "f4.tif", rng.random((32, 40)), LR_NM)
        wait_for(lambda: daemon.status().publish.folder.retry_waiting == 4, 20, "4 outputs waiting")
        status = control_status(daemon)
        assert status["errors_by_reason"] == {"write_permission": 3, "write_disk_full": 1}
        assert status["frames"]["errors"] == 4  # one figure for every failure (the TUI's "errors" row)
        spilled = list((config.state_dir / "spill").glob("*.npz"))
        assert len(spilled) == 4 and not list(watch.glob("*.npz"))
        refusing["on"] = False
        wait_for(lambda: len(list(out.glob("f*_x2.tif"))) == 5, 20, "every output written, without a restart")
        # the files appear (atomic rename) a moment before the writer's and the catalogue's counters follow
        wait_for(lambda: control_status(daemon)["catalogue"]["frames"]["enhanced"] == 5, 10, "5 outputs catalogued")
        status = control_status(daemon)
        assert status["publish"]["folder"]["retried"] == 4 and status["frames"]["written"] == 5
        assert status["catalogue"]["frames"]["enhanced"] == 5
    assert not list((config.state_dir / "spill").iterdir())


def _fast_spill(cls):  # type: ignore[no-untyped-def]
    real = cls.__init__

    def init(self, folder, **kwargs):  # type: ignore[no-untyped-def]
        real(self, folder, **{**kwargs, "first_s": 0.1, "max_s": 0.3})
    return init


# -------------------------------------------------------------------------------------------- references


def test_a_reference_handed_over_but_not_learned_is_learned_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13.6: the reference was marked as handed to the learner before learning, so a daemon killed while
    learning it skipped it after the restart: lost."""
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, lr_pixel_size_nm=LR_NM)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})
    real_process = Learner._process
    handed: list[str] = []
    # the first daemon "dies" while learning: the learner takes the reference and never finishes it
    monkeypatch.setattr(Learner, "_process", lambda self, hr, recent: handed.append(hr.source))
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        put_frame(watch, tmp_path, "scan_000.tif", specimen.lr, LR_NM)
        wait_for(lambda: (out / "scan_000_x2.tif").exists(), 20, "the LR frame enhanced")
        put_frame(watch, tmp_path, "ref_001.tif", specimen.hr, HR_NM)
        wait_for(lambda: handed, 20, "the reference handed to the learner")
    monkeypatch.setattr(Learner, "_process", real_process)
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        wait_for(lambda: daemon.status().learner.pairs_learned == 1, 60, "the reference learned again")
        assert "already_seen" not in daemon.status().frames.skipped  # the reference was not skipped
    with Catalogue.in_state_dir(config.state_dir) as catalogue:
        record = catalogue.frame(str(watch / "ref_001.tif"))
        assert catalogue.learned(record.source, record.size, record.mtime) == "learned"
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:  # learned now: never again
        wait_for(lambda: daemon.status().frames.in_ == 2, 20, "the folder read again")
        wait_for(lambda: daemon.status().frames.skipped.get("already_seen") == 1, 10, "the reference skipped")
        assert daemon.status().learner.pairs_learned == 0


def test_a_reference_the_learner_fails_on_is_quarantined_not_retried_at_every_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, lr_pixel_size_nm=LR_NM)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise UnicodeEncodeError("utf-8", "ref\udcff", 3, 4, "surrogates not allowed")

    monkeypatch.setattr(learner_module, "pair_reference", broken)
    for attempt in range(2):
        with Daemon(config, folder_options=FAST_FOLDER) as daemon:
            if attempt == 0:
                put_frame(watch, tmp_path, "scan_000.tif", specimen.lr, LR_NM)
                put_frame(watch, tmp_path, "ref_001.tif", specimen.hr, HR_NM)
                wait_for(lambda: daemon.status().learner.rejected_by_reason.get("learn_failed") == 1, 20,
                         "the reference quarantined")
                put_frame(watch, tmp_path, "scan_002.tif", specimen.lr, LR_NM)
                wait_for(lambda: (out / "scan_002_x2.tif").exists(), 20, "serving goes on")
            else:
                wait_for(lambda: daemon.status().frames.skipped.get("already_seen") == 1, 20, "skipped")
                assert daemon.status().learner.rejected_by_reason == {}
            daemon.check()


def test_a_worker_starts_and_reports_its_failure_on_its_own_thread():
    """``Worker.on_start`` runs on the worker's thread before the first turn; a failure of the state stops the
    loop, ``on_failure`` sees it on that thread, and the owner gets it from ``check``/``stop``."""
    from refscope.daemon.errors import StateError
    from refscope.daemon.worker import Worker

    seen: dict[str, object] = {}

    class Failing(Worker):
        def on_start(self) -> None:
            seen["start"] = threading.current_thread().name

        def poll_once(self, timeout: float) -> None:
            raise StateError("catalogue gone")

        def on_failure(self, exc: BaseException) -> None:
            seen["failure"] = (threading.current_thread().name, str(exc))

    worker = Failing("failing-worker", poll_interval_s=0.01)
    worker.start()
    deadline = time.monotonic() + 5.0
    while "failure" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == {"start": "failing-worker", "failure": ("failing-worker", "catalogue gone")}
    with pytest.raises(StateError, match="catalogue gone"):
        worker.check()
    with pytest.raises(StateError):
        worker.stop()

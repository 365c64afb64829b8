"""The SQLite catalogue: round trips, the restart rule across reopen, concurrent writers, SIGKILL safety."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from refscope.daemon.state.catalogue import CATALOGUE_NAME, Catalogue
from refscope.daemon.errors import StateError

pytestmark = pytest.mark.timeout(30)


def test_frames_round_trip_and_restart_rule_across_reopen(tmp_path: Path) -> None:
    with Catalogue.in_state_dir(tmp_path / "state") as cat:  # missing folders are created
        assert cat.path == tmp_path / "state" / CATALOGUE_NAME
        cat.record_frame("/acq/a.tif", role="lr", seq=0, t=100.0, size=1234, mtime=99.5)
        cat.record_frame("/acq/b.tif", role="hr", seq=1, t=101.0, size=99, mtime=100.25)
        cat.record_frame("zmq:tcp://127.0.0.1:5555#7", role="lr", seq=7, t=102.0)
        assert not cat.already_enhanced("/acq/a.tif", 1234, 99.5)  # received, not yet written out
        cat.mark_enhanced("/acq/a.tif", tmp_path / "out" / "a_x2.tif")
        cat.mark_enhanced("zmq:tcp://127.0.0.1:5555#7", None)
        cat.mark_rejected("/acq/b.tif", "not registered: NCC 0.12 < 0.3")
        record = cat.frame("/acq/a.tif")
        assert record is not None and record.status == "enhanced" and record.output_path == tmp_path / "out" / "a_x2.tif"
        assert (record.size, record.mtime, record.role, record.seq, record.t) == (1234, 99.5, "lr", 0, 100.0)
        assert cat.frame("/acq/b.tif").error == "not registered: NCC 0.12 < 0.3"  # type: ignore[union-attr]
        assert cat.frame("/nope") is None
        with pytest.raises(ValueError, match="never recorded"):
            cat.mark_enhanced("/acq/unknown.tif", "x")

    with Catalogue(tmp_path / "state" / CATALOGUE_NAME) as cat:  # reopened, as after a restart
        assert cat.already_enhanced("/acq/a.tif", 1234, 99.5)
        assert cat.already_enhanced("zmq:tcp://127.0.0.1:5555#7", None, None)
        assert not cat.already_enhanced("/acq/a.tif", 1235, 99.5)  # a new version of the file
        assert not cat.already_enhanced("/acq/a.tif", 1234, 120.0)
        assert not cat.already_enhanced("/acq/b.tif", 99, 100.25)  # rejected is not enhanced
        assert not cat.already_enhanced("/acq/new.tif", 1, 1.0)
        # the same version received again keeps its status; a new version resets it
        cat.record_frame("/acq/a.tif", role="lr", seq=5, t=100.0, size=1234, mtime=99.5)
        assert cat.already_enhanced("/acq/a.tif", 1234, 99.5)
        assert cat.frame("/acq/a.tif").seq == 5  # type: ignore[union-attr]
        cat.record_frame("/acq/a.tif", role="lr", seq=6, t=130.0, size=2000, mtime=130.0)
        record = cat.frame("/acq/a.tif")
        assert record is not None and record.status == "received" and record.output_path is None
        assert not cat.already_enhanced("/acq/a.tif", 2000, 130.0)
        counts = cat.counts()
        assert counts.frames == {"received": 1, "enhanced": 1, "rejected": 1}
        assert cat.integrity_check() == "ok"


def test_pairs_events_models_round_trip(tmp_path: Path) -> None:
    with Catalogue(tmp_path / "c.sqlite3") as cat:
        pair_id = cat.record_pair("/a/hr.tif", "/a/lr.tif", {"angle_deg": 0.5, "shift": (1.0, 2.0)}, 0.91, t=5.0)
        for i in range(5):
            cat.record_event("pair_learned", {"i": i}, t=10.0 + i)
        cat.record_model("v1", kind="paired", method="paired", library_size=8000, scores={"psnr": 30.1},
                         promoted=True, reason="first model", t=20.0)
        cat.record_model("v2", kind="paired", method="paired", library_size=8000, scores={"psnr": 29.0},
                         promoted=False, reason="worse than v1 on held-out pairs", t=21.0)
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            cat.record_event("error", {"x": float("nan")})
    with Catalogue(tmp_path / "c.sqlite3") as cat:
        pairs = cat.pairs()
        assert len(pairs) == 1 and pairs[0].id == pair_id
        assert pairs[0].geometry == {"angle_deg": 0.5, "shift": [1.0, 2.0]} and pairs[0].score == 0.91
        recent = cat.recent_events(3)
        assert [e.payload["i"] for e in recent] == [2, 3, 4] and [e.t for e in recent] == [12.0, 13.0, 14.0]
        assert all(e.type == "pair_learned" for e in recent)
        history = cat.model_history()
        assert [(m.version, m.promoted, m.reason) for m in history] == [
            ("v1", True, "first model"), ("v2", False, "worse than v1 on held-out pairs")]
        assert history[0].scores == {"psnr": 30.1} and history[0].library_size == 8000
        counts = cat.counts()
        assert (counts.pairs, counts.events, counts.models, counts.promoted_models) == (1, 5, 2, 1)


def test_names_that_are_not_utf8_are_stored_losslessly(tmp_path: Path) -> None:
    """Issue 13.6: an HR file named ``b'ref\\xff_HR.tif'`` crashed ``record_pair`` (UnicodeEncodeError) and an LR
    file with such a name was never found again, so it was re-enhanced at every restart."""
    hr, lr = os.fsdecode(b"/acq/ref\xff_HR.tif"), os.fsdecode(b"/acq/frame\xfe_000.tif")
    out = os.fsdecode(b"/out/frame\xfe_000_x2.tif")
    look_alike = "/acq/ref\u00ff_HR.tif"  # the valid UTF-8 name "refÿ_HR.tif": another file
    with Catalogue.in_state_dir(tmp_path) as cat:
        cat.record_frame(lr, role="lr", seq=0, t=1.0, size=100, mtime=10.0)
        cat.mark_enhanced(lr, out)
        cat.record_frame(hr, role="hr", seq=1, t=2.0, size=200, mtime=20.0)
        cat.mark_rejected(hr, f"{hr}: not registered")
        cat.mark_learned(hr, size=200, mtime=20.0, outcome="learned")
        cat.record_pair(hr, lr, {"source": hr, "shift": (1.0, 2.0)}, 0.9)
        cat.record_event("pair_learned", {"hr": hr, "lr": lr})
        cat.record_model("v1", kind="paired", method="paired", library_size=10, scores={}, promoted=False,
                         reason=f"candidate model 1 (from {hr}) could not be saved")
        cat.record_refused(lr + ".bad", size=5, mtime=1.0, reason="unreadable", error=f"{lr}.bad: not an image")
    with Catalogue.in_state_dir(tmp_path) as cat:  # after a restart: the same str comes back, lookups find it
        assert cat.already_enhanced(lr, 100, 10.0)
        record = cat.frame(lr)
        assert record is not None and record.source == lr and record.output_path == Path(out)
        assert os.fsencode(record.output_path) == b"/out/frame\xfe_000_x2.tif"
        assert cat.frame(hr).error == f"{hr}: not registered"  # type: ignore[union-attr]
        assert cat.learned(hr, 200, 20.0) == "learned"
        assert cat.frame(look_alike) is None and cat.learned(look_alike, 200, 20.0) is None
        (pair,) = cat.pairs()
        assert (pair.hr_source, pair.lr_source, pair.geometry["source"]) == (hr, lr, hr)
        assert cat.recent_events(1)[0].payload == {"hr": hr, "lr": lr}
        assert cat.model_history()[0].reason == f"candidate model 1 (from {hr}) could not be saved"
        assert cat.refused(lr + ".bad", 5, 1.0) == "unreadable"
        assert cat.integrity_check() == "ok"
        with pytest.raises(ValueError, match="cannot be stored"):  # no file name decodes to a lone high surrogate
            cat.record_frame("/acq/\ud800.tif", role="lr", seq=2, t=3.0)
    conn = sqlite3.connect(tmp_path / CATALOGUE_NAME)  # kept as the file system's own bytes, for any SQLite tool
    try:
        assert conn.execute("SELECT source FROM frames WHERE role = 'lr'").fetchone()[0] == b"/acq/frame\xfe_000.tif"
    finally:
        conn.close()


def test_refused_files_are_remembered_per_version(tmp_path: Path) -> None:
    with Catalogue(tmp_path) as cat:
        assert cat.refused("/acq/notes.tif", 10, 1.5) is None
        cat.record_refused("/acq/notes.tif", size=10, mtime=1.5, reason="unreadable",
                           error="/acq/notes.tif: is not a TIFF or PNG image")
        cat.record_refused("/acq/link.tif", size=3, mtime=2.0, reason="symlink_outside", error="/acq/link.tif: link")
    with Catalogue(tmp_path) as cat:
        assert cat.refused("/acq/notes.tif", 10, 1.5) == "unreadable"
        assert cat.refused("/acq/link.tif", 3, 2.0) == "symlink_outside"
        assert cat.refused("/acq/notes.tif", 11, 1.5) is None and cat.refused("/acq/notes.tif", 10, 9.0) is None
        cat.record_refused("/acq/notes.tif", size=11, mtime=3.0, reason="incomplete", error="truncated")  # new version
        assert cat.refused("/acq/notes.tif", 10, 1.5) is None and cat.refused("/acq/notes.tif", 11, 3.0) == "incomplete"
        assert cat.counts().frames == {"received": 0, "enhanced": 0, "rejected": 0}  # not frames: never decoded
        with pytest.raises(ValueError, match="reason"):
            cat.record_refused("/acq/x.tif", size=1, mtime=1.0, reason="", error="x")


def test_threads_share_one_catalogue(tmp_path: Path) -> None:
    with Catalogue(tmp_path) as cat:  # an existing folder: the file is created inside it
        assert cat.path == tmp_path / CATALOGUE_NAME

        def worker(k: int) -> None:
            for i in range(25):
                cat.record_frame(f"/acq/{k}_{i}.tif", role="lr", seq=i, t=float(i), size=i, mtime=float(i))
                cat.record_event("frame_received", {"k": k, "i": i})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counts = cat.counts()
        assert counts.frames["received"] == 100 and counts.events == 100


def test_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    bad = tmp_path / CATALOGUE_NAME
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=str(bad)):
        Catalogue(bad)
    cat = Catalogue(tmp_path / "ok.sqlite3")
    cat.close()
    cat.close()
    with pytest.raises(StateError, match="closed"):
        cat.counts()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / CATALOGUE_NAME
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StateError, match="newer refscope"):
        Catalogue(path)


_WRITER = textwrap.dedent(
    """
    import sys
    from refscope.daemon.state.catalogue import Catalogue
    cat = Catalogue(sys.argv[1])
    i = 0
    while True:
        cat.record_frame(f"/acq/f{i}.tif", role="lr", seq=i, t=float(i), size=i, mtime=float(i))
        cat.mark_enhanced(f"/acq/f{i}.tif", f"/out/f{i}_x2.tif")
        cat.record_event("frame_enhanced", {"i": i, "pad": "x" * 500})
        cat.record_model(f"v{i}", kind="paired", method="paired", library_size=i, scores={"i": i}, promoted=i % 2 == 0)
        i += 1
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_writes_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / CATALOGUE_NAME
    Catalogue(path).close()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    try:
        deadline = time.monotonic() + 20
        with Catalogue(path) as reader:  # a concurrent reader (WAL): sees only committed rows
            while reader.counts().events < 40 and time.monotonic() < deadline:
                assert proc.poll() is None, "writer died"
                time.sleep(0.05)
        assert time.monotonic() < deadline, "writer too slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with Catalogue(path) as cat:
        assert cat.integrity_check() == "ok"
        counts = cat.counts()
        frames = counts.frames["received"] + counts.frames["enhanced"]
        # each call is one transaction, so the rows of iteration i appear in order and whole
        assert frames - 1 <= counts.frames["enhanced"] <= frames
        assert counts.frames["enhanced"] - 1 <= counts.events <= counts.frames["enhanced"]
        assert counts.events - 1 <= counts.models <= counts.events
        assert counts.events >= 40
        for event in cat.recent_events(5):
            assert len(event.payload["pad"]) == 500
        cat.record_frame("/after/restart.tif", role="lr", seq=0, t=0.0)  # still writable

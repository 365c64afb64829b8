"""FolderFrameSource (native events and polling), plus the in-memory and replay sources.

Every test uses a tmp_path folder and short intervals; the source must deliver each complete file exactly once,
survive garbage and a vanishing folder, and never touch what is in the folder.
"""
from __future__ import annotations

import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from refscope.daemon.frames import Frame, FrameSource
from refscope.daemon.ingest.folder import FolderFrameSource, FolderSourceConfig, list_image_files
from refscope.daemon.ingest.memory import FolderReplaySource, MemoryFrameSource
from refscope.daemon.images import write_tiff

pytestmark = pytest.mark.timeout(30)

FAST = dict(poll_interval_s=0.05, stable_checks=2, retry_s=0.05, max_retries=3, rescan_s=0.5)


def tiff_bytes(data: np.ndarray, pixel_size_nm: float = 5.0) -> bytes:
    """An ImageJ TIFF (resolution tags in microns) carrying ``pixel_size_nm``."""
    buffer = io.BytesIO()
    per_micron = 1e3 / pixel_size_nm
    tifffile.imwrite(buffer, data, imagej=True, resolution=(per_micron, per_micron), metadata={"unit": "micron"})
    return buffer.getvalue()


def image(value: int, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    data = np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape)
    return (data + value).astype(np.uint16)


def write(path: Path, value: int, pixel_size_nm: float = 5.0) -> np.ndarray:
    data = image(value)
    path.write_bytes(tiff_bytes(data, pixel_size_nm))
    return data


def collect(source: FrameSource, count: int, timeout: float = 5.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.poll(0.02)
        if frame is not None:
            frames.append(frame)
    return frames


def drain(source: FrameSource, seconds: float) -> list[Frame]:
    """Everything delivered during ``seconds`` (to prove nothing more arrives)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = source.poll(0.02)
        if frame is not None:
            frames.append(frame)
    return frames


def wait_for(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(params=[False, True], ids=["events", "polling"])
def use_polling(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def make_source(folder: Path, **overrides: object) -> FolderFrameSource:
    options = {**FAST, **overrides}
    return FolderFrameSource(FolderSourceConfig(folder, **options))  # type: ignore[arg-type]


def test_new_file_is_delivered_once_with_its_pixel_size(tmp_path: Path, use_polling: bool) -> None:
    with make_source(tmp_path, use_polling=use_polling, role="lr") as source:
        assert isinstance(source, FrameSource)
        assert source.polling == use_polling
        data = write(tmp_path / "frame_001.tif", 1, pixel_size_nm=4.2)
        frames = collect(source, 1)
        assert len(frames) == 1
        frame = frames[0]
        np.testing.assert_array_equal(frame.data, data)
        assert frame.pixel_size_nm == pytest.approx(4.2)
        assert frame.role == "lr" and frame.seq == 0
        assert frame.source == str(tmp_path / "frame_001.tif")
        assert frame.t == pytest.approx(os.stat(tmp_path / "frame_001.tif").st_mtime)
        assert frame.field_of_view_nm == pytest.approx((64 * 4.2, 80 * 4.2))
        assert frame.metadata["file_size_bytes"] == (tmp_path / "frame_001.tif").stat().st_size
        assert drain(source, 0.6) == []  # past a rescan: still once
        write(tmp_path / "frame_002.tif", 2)
        assert [f.seq for f in collect(source, 1)] == [1]
        stats = source.stats()
        assert stats.received == 2 and stats.rejected == 0 and stats.last_error is None


def test_slowly_written_file_is_delivered_once_and_complete(tmp_path: Path, use_polling: bool) -> None:
    payload = tiff_bytes(image(7, (256, 256)))
    config = dict(poll_interval_s=0.1, retry_s=0.3, max_retries=5)
    with make_source(tmp_path, use_polling=use_polling, **config) as source:
        with open(tmp_path / "slow.tif", "wb") as handle:
            handle.write(payload[: len(payload) // 2])
            handle.flush()
            assert drain(source, 0.6) == []  # half a file is never delivered
            handle.write(payload[len(payload) // 2 :])
        frames = collect(source, 1)
        assert len(frames) == 1
        np.testing.assert_array_equal(frames[0].data, image(7, (256, 256)))
        assert drain(source, 0.5) == []
        stats = source.stats()
        assert stats.received == 1
        assert stats.rejected == 0, stats


def test_file_renamed_into_the_folder_is_delivered(tmp_path: Path, use_polling: bool) -> None:
    watched = tmp_path / "acq"
    outside = tmp_path / "staging"
    watched.mkdir()
    outside.mkdir()
    with make_source(watched, use_polling=use_polling) as source:
        # written under a hidden temporary name inside the folder, then renamed (what atomic writers do)
        write_tiff(watched / "atomic.tif", image(3), pixel_size_nm=2.0)
        # written elsewhere, then moved in
        write(outside / "moved.tif", 4)
        os.rename(outside / "moved.tif", watched / "moved.tif")
        # written in the folder under a temp name, then renamed
        write(watched / "renamed.tif.part", 5)
        os.rename(watched / "renamed.tif.part", watched / "renamed.tif")
        frames = collect(source, 3)
        assert sorted(Path(f.source).name for f in frames) == ["atomic.tif", "moved.tif", "renamed.tif"]
        by_name = {Path(f.source).name: f for f in frames}
        np.testing.assert_array_equal(by_name["renamed.tif"].data, image(5))
        assert by_name["atomic.tif"].pixel_size_nm == pytest.approx(2.0)
        assert drain(source, 0.3) == []
        assert source.stats().rejected == 0


def test_garbage_and_truncated_files_are_reported_once_and_skipped(
    tmp_path: Path, use_polling: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="refscope.ingest"), make_source(tmp_path, use_polling=use_polling) as source:
        (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + os.urandom(3000))
        (tmp_path / "text.tif").write_bytes(b"this is not an image at all")
        (tmp_path / "truncated.tif").write_bytes(tiff_bytes(image(1))[:5000])
        assert wait_for(lambda: source.stats().rejected == 3)
        assert drain(source, 0.3) == []  # retries are over: nothing more, no second report
        stats = source.stats()
        assert stats.rejected == 3
        assert stats.rejected_by_reason == {"unreadable": 2, "incomplete": 1}
        messages = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert len(messages) == 3
        assert any(str(tmp_path / "truncated.tif") in m and "truncated" in m for m in messages)
        # later good files still arrive
        data = write(tmp_path / "good.tif", 9)
        frames = collect(source, 1)
        assert len(frames) == 1 and Path(frames[0].source).name == "good.tif"
        np.testing.assert_array_equal(frames[0].data, data)
        # a rejected file that is later rewritten completely is a new version and is delivered
        (tmp_path / "truncated.tif").write_bytes(tiff_bytes(image(1)))
        frames = collect(source, 1)
        assert len(frames) == 1 and Path(frames[0].source).name == "truncated.tif"
        assert source.stats().rejected == 3


def test_hidden_and_temporary_files_are_ignored_and_other_files_refused_by_name(tmp_path: Path,
                                                                                use_polling: bool) -> None:
    (tmp_path / ".hidden_dir").mkdir()
    with make_source(tmp_path, use_polling=use_polling) as source:
        for name in [".hidden.tif", "frame.tif.tmp", "frame.tif.part", "frame.tmp", "~lock.tif", "notes.txt",
                     "frame.tif~", ".hidden_dir/inside.tif"]:
            write(tmp_path / name, 1)
        assert drain(source, 0.3) == []
        write(tmp_path / "VISIBLE.TIF", 2)
        frames = collect(source, 1)
        assert [Path(f.source).name for f in frames] == ["VISIBLE.TIF"]
        assert wait_for(lambda: source.stats().rejected == 1)
        stats = source.stats()
        assert stats.rejected_by_reason == {"not_matched": 1}  # never skipped silently (issue 19)
        assert f"{tmp_path / 'notes.txt'}: refused (not_matched): its name matches none of the patterns" in " ".join(
            stats.recent)
        assert f"{tmp_path / 'VISIBLE.TIF'}: ingested" in stats.recent


def test_subfolders_are_watched_when_recursive(tmp_path: Path, use_polling: bool) -> None:
    with make_source(tmp_path, use_polling=use_polling) as source:
        (tmp_path / "session" / "site1").mkdir(parents=True)
        write(tmp_path / "session" / "site1" / "a.tif", 1)
        frames = collect(source, 1)
        assert [Path(f.source).name for f in frames] == ["a.tif"]
    (tmp_path / "other").mkdir()
    with make_source(tmp_path, use_polling=use_polling, recursive=False) as source:
        write(tmp_path / "other" / "b.tif", 2)
        write(tmp_path / "top.tif", 3)
        frames = collect(source, 1) + drain(source, 0.3)
        assert [Path(f.source).name for f in frames] == ["top.tif"]


def test_existing_files_are_skipped_unless_asked_for_and_read_in_acquisition_order(tmp_path: Path) -> None:
    """Existing files come in the order they were acquired (modification time; the name breaks ties): a restart
    re-reads a zoom series as the operator took it, so the roles follow the magnification as they did."""
    for index, acquired in ((10, 100.0), (2, 300.0), (1, 200.0), (3, 200.0)):
        write(tmp_path / f"old_{index}.tif", index)
        os.utime(tmp_path / f"old_{index}.tif", (acquired, acquired))
    with make_source(tmp_path) as source:
        assert drain(source, 0.4) == []
    with make_source(tmp_path, include_existing=True) as source:
        frames = collect(source, 4)
        assert [Path(f.source).name for f in frames] == ["old_10.tif", "old_1.tif", "old_3.tif", "old_2.tif"]
        assert [f.seq for f in frames] == [0, 1, 2, 3]


def test_folder_deleted_and_recreated_keeps_working(tmp_path: Path, use_polling: bool) -> None:
    watched = tmp_path / "acq"
    watched.mkdir()
    with make_source(watched, use_polling=use_polling) as source:
        write(watched / "a.tif", 1)
        assert [Path(f.source).name for f in collect(source, 1)] == ["a.tif"]
        shutil.rmtree(watched)
        assert wait_for(lambda: (source.stats().last_error or "").endswith("waiting for it to (re)appear"))
        assert drain(source, 0.2) == []
        watched.mkdir()
        time.sleep(0.2)  # let the source notice the new folder (a real session starts after a while too)
        write(watched / "b.tif", 2)
        assert [Path(f.source).name for f in collect(source, 1)] == ["b.tif"]
        # and replaced by another folder of the same name without a gap long enough to notice
        os.rename(watched, tmp_path / "acq_old")
        watched.mkdir()
        time.sleep(0.2)
        write(watched / "c.tif", 3)
        assert [Path(f.source).name for f in collect(source, 1)] == ["c.tif"]
        assert source.stats().rejected == 0


def test_missing_folder_at_start_is_waited_for(tmp_path: Path, use_polling: bool) -> None:
    watched = tmp_path / "not_yet"
    with make_source(watched, use_polling=use_polling) as source:
        assert source.poll(0.2) is None
        assert "waiting" in (source.stats().last_error or "")
        watched.mkdir()
        write(watched / "first.tif", 1)
        assert [Path(f.source).name for f in collect(source, 1)] == ["first.tif"]


def test_source_never_modifies_the_folder(tmp_path: Path, use_polling: bool) -> None:
    for index in range(3):
        write(tmp_path / f"pre_{index}.tif", index)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")

    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {
            str(p.relative_to(tmp_path)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file()
        }

    with make_source(tmp_path, use_polling=use_polling, include_existing=True) as source:
        before = snapshot()
        frames = collect(source, 3)
        assert wait_for(lambda: source.stats().rejected == 1)
        write(tmp_path / "new.tif", 7)
        before_new = snapshot()
        frames += collect(source, 1)
        assert len(frames) == 4
        assert drain(source, 0.3) == []
    after = snapshot()
    assert after == before_new and {k: v for k, v in after.items() if k in before} == before
    assert sorted(os.listdir(tmp_path)) == sorted(before_new)


def test_full_queue_blocks_then_counts_a_drop(tmp_path: Path) -> None:
    with make_source(tmp_path, queue_size=1, queue_block_s=0.2) as source:
        for index in range(3):
            write(tmp_path / f"f{index}.tif", index)
        assert wait_for(lambda: source.stats().rejected_by_reason.get("queue_full", 0) >= 1)
        frames = drain(source, 0.5)
        stats = source.stats()
        assert len(frames) == stats.received
        assert stats.received + stats.rejected_by_reason["queue_full"] == 3
        assert "dropped" in (stats.last_error or "")


def test_worker_failure_is_re_raised_on_the_owner_thread(tmp_path: Path) -> None:
    """The crash-only rule of every worker: a failure of the daemon's own state stops the source and is re-raised
    by ``poll`` (and ``stop``) on the owner's thread; an unexpected error in one turn is counted and the source
    goes on delivering files."""
    from refscope.daemon.errors import StateError

    config = FolderSourceConfig(tmp_path, **FAST)  # type: ignore[arg-type]
    source = FolderFrameSource(config)

    def explode(*_: object) -> None:
        raise StateError("catalogue gone")

    source._process_due = explode  # type: ignore[method-assign]
    source.start()
    with pytest.raises(StateError, match="catalogue gone"):
        for _ in range(100):
            source.poll(0.02)
    with pytest.raises(StateError):
        source.stop()

    flaky = FolderFrameSource(FolderSourceConfig(tmp_path / "flaky", **FAST))  # type: ignore[arg-type]
    (tmp_path / "flaky").mkdir()
    real, calls = flaky._process_due, []

    def once_broken() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("worker bug")
        real()

    flaky._process_due = once_broken  # type: ignore[method-assign]
    with flaky:
        tiff_bytes_path = tmp_path / "flaky" / "a.tif"
        tiff_bytes_path.write_bytes(tiff_bytes(image(100)))
        frame = None
        for _ in range(200):
            frame = flaky.poll(0.02)
            if frame is not None:
                break
        assert frame is not None and flaky.failed_turns == 1


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FolderSourceConfig(tmp_path, patterns="*.tif")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FolderSourceConfig(tmp_path, poll_interval_s=0)
    with pytest.raises(ValueError):
        FolderSourceConfig(tmp_path, pixel_size_nm=float("nan"))
    with pytest.raises(ValueError):
        FolderSourceConfig(tmp_path, role="enhanced")  # type: ignore[arg-type]


def test_pixel_size_override(tmp_path: Path) -> None:
    with make_source(tmp_path, pixel_size_nm=1.5) as source:
        write(tmp_path / "x.tif", 1, pixel_size_nm=9.0)
        frames = collect(source, 1)
        assert frames and frames[0].pixel_size_nm == pytest.approx(1.5)


def test_stop_is_prompt_and_releases_a_waiting_poll(tmp_path: Path) -> None:
    source = make_source(tmp_path, poll_interval_s=0.5)
    source.start()
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(source.poll(5.0)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    source.stop()
    waiter.join(3)
    assert time.monotonic() - started < 1.0 and results == [None]
    source.stop()


# ------------------------------------------------------------------------------- memory and replay sources


def test_memory_source_delivers_in_order_then_nothing() -> None:
    frames = [Frame(np.zeros((8, 8), np.uint8), 1.0, "lr", f"mem#{i}", i, float(i)) for i in range(3)]
    source = MemoryFrameSource(frames)
    assert isinstance(source, FrameSource)
    source.start()
    assert [source.poll(0.1) for _ in range(3)] == frames
    assert source.exhausted and source.poll(0.01) is None
    assert source.stats().received == 3
    source.stop()


def test_folder_replay_in_natural_order_with_interval(tmp_path: Path) -> None:
    for index in (10, 2, 1):
        write(tmp_path / f"f_{index}.tif", index)
    (tmp_path / "broken.tif").write_bytes(b"nope")
    (tmp_path / ".hidden.tif").write_bytes(b"nope")
    assert [p.name for p in list_image_files(tmp_path)] == ["broken.tif", "f_1.tif", "f_2.tif", "f_10.tif"]
    source = FolderReplaySource(tmp_path, interval_s=0.1)
    source.start()
    started = time.monotonic()
    frames = collect(source, 3)
    elapsed = time.monotonic() - started
    assert [Path(f.source).name for f in frames] == ["f_1.tif", "f_2.tif", "f_10.tif"]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert elapsed >= 0.18
    assert source.exhausted and source.poll(0.01) is None
    stats = source.stats()
    assert stats.received == 3 and stats.rejected_by_reason == {"unreadable": 1}
    source.stop()

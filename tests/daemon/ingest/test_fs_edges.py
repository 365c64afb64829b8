"""File-system edges of the watched folder (issue 13, item 6).

* a symbolic link is never followed out of the watched folder: refused (``symlink_outside``) and counted, its
  target never opened; a link that resolves inside the folder is read;
* a refused file is reported by name and reason only: its content never reaches the log or the status;
* refusals that re-reading cannot change are catalogued: after a restart the file is not read again until it
  changes (a failure to open it is retried);
* a file name that is not UTF-8 is catalogued, paired and learned, and its output is not made again at every
  restart.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.errors import InputFileError
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.ingest.folder import FolderFrameSource, FolderSourceConfig
from refscope.daemon.images import LoadedImage, read_image, write_tiff
from refscope.models.synthetic import make_pair
from tests.daemon.service.test_service import FAST_FOLDER, control_status, make_config, outputs
from tests.daemon.ingest.test_source_folder import FAST, collect, drain, image, tiff_bytes
from tests.daemon.waiting import wait_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(os.name == "nt", reason="POSIX links and byte names")]

SECRET = b"SECRET-0042 root:x:0:0:the content of a file that is not an image\n"
LR_NM, HR_NM = 10.0, 5.0


class CountingReader:
    """``read_image`` (with ``max_bytes``) that records every path it is asked to read."""

    def __init__(self, *, max_bytes: int | None = None, fail: Callable[[str], Exception | None] = lambda p: None):
        self.paths: list[str] = []
        self._fail = fail
        self._max_bytes = max_bytes

    def __call__(self, path: str, **options: Any) -> LoadedImage:
        self.paths.append(os.fspath(path))
        problem = self._fail(os.fspath(path))
        if problem is not None:
            raise problem
        return read_image(path, max_bytes=self._max_bytes, **options)

    def names(self) -> set[str]:
        return {Path(p).name for p in self.paths}


def source_for(folder: Path, reader: CountingReader, ledger: Catalogue | None = None,
               **overrides: Any) -> FolderFrameSource:
    extra = {} if ledger is None else {"ledger": ledger}
    return FolderFrameSource(FolderSourceConfig(folder, **{**FAST, **overrides}), reader=reader, **extra)


def shown(source: FolderFrameSource, caplog: pytest.LogCaptureFixture) -> str:
    """Everything the source has said: its log lines and its stats (what the daemon's status shows)."""
    return caplog.text + json.dumps(source.stats().__dict__, default=str)


# --------------------------------------------------------------------------------------------- links


@pytest.mark.parametrize("use_polling", [False, True], ids=["events", "polling"])
def test_a_link_out_of_the_folder_is_refused_unread_and_a_link_inside_is_read(
        tmp_path: Path, use_polling: bool, caplog: pytest.LogCaptureFixture) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    watch.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "real.tif").write_bytes(tiff_bytes(image(1)))  # a valid image: out of bounds all the same
    (outside / "dir" / "inner.tif").write_bytes(tiff_bytes(image(2)))
    (watch / "frame.tif").write_bytes(tiff_bytes(image(3)))
    reader = CountingReader()
    with caplog.at_level(logging.DEBUG, logger="refscope.ingest"), \
            source_for(watch, reader, use_polling=use_polling) as source:
        (watch / "leak.tif").symlink_to(outside / "secret.txt")
        (watch / "stolen.tif").symlink_to(outside / "real.tif")
        (watch / "linked").symlink_to(outside / "dir", target_is_directory=True)
        (watch / "alias.tif").symlink_to("frame.tif")  # relative, resolves inside: may be read
        (watch / "notes.tif").write_bytes(SECRET)  # inside, not an image: refused by name and reason only
        frames = collect(source, 1)
        assert wait_for(lambda: source.stats().rejected == 3, 5, "three refusals")
        frames += drain(source, 0.4)
        stats = source.stats()
    assert [Path(f.source).name for f in frames] == ["alias.tif"]
    np.testing.assert_array_equal(frames[0].data, image(3))
    assert stats.rejected_by_reason == {"symlink_outside": 2, "unreadable": 1}
    assert not reader.names() & {"leak.tif", "stolen.tif", "inner.tif"}  # never opened
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected (symlink_outside)")]
    assert sorted(Path(m.split(": ", 1)[1].split(":", 1)[0]).name for m in refusals) == ["leak.tif", "stolen.tif"]
    text = shown(source, caplog)
    assert "SECRET" not in text and "root:x" not in text
    assert str(watch / "notes.tif") in text and "not a TIFF or PNG image" in text


# ------------------------------------------------------------------------------------- refusals kept


def test_refused_files_are_catalogued_and_not_read_again_after_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (watch / "leak.tif").symlink_to(outside / "secret.txt")
    (watch / "notes.tif").write_bytes(SECRET)  # not an image
    (watch / "truncated.tif").write_bytes(tiff_bytes(image(1))[:3000])  # truncated for good (incomplete)
    (watch / "huge.tif").write_bytes(tiff_bytes(np.zeros((200, 200), np.float32)))  # over max_bytes
    (watch / "flaky.tif").write_bytes(tiff_bytes(image(2)))  # cannot be opened: may work after a restart
    (watch / "good.tif").write_bytes(tiff_bytes(image(3)))

    def flaky(path: str) -> Exception | None:
        if not path.endswith("flaky.tif"):
            return None
        error = InputFileError(f"{path}: cannot be opened (Input/output error)")
        error.__cause__ = OSError(5, "Input/output error")
        return error

    refusals = {"leak.tif": "symlink_outside", "notes.tif": "unreadable", "truncated.tif": "incomplete",
                "huge.tif": "unreadable"}
    with Catalogue.in_state_dir(tmp_path / "state") as catalogue:
        first = CountingReader(max_bytes=64 * 1024, fail=flaky)
        with caplog.at_level(logging.INFO, logger="refscope.ingest"), \
                source_for(watch, first, catalogue, include_existing=True) as source:
            frames = collect(source, 1)
            assert wait_for(lambda: source.stats().rejected == 5, 5, "five refusals")
        assert [Path(f.source).name for f in frames] == ["good.tif"]
        assert source.stats().rejected_by_reason == {"symlink_outside": 1, "unreadable": 3, "incomplete": 1}
        for name, reason in refusals.items():
            info = os.stat(watch / name)
            assert catalogue.refused(str(watch / name), info.st_size, info.st_mtime) == reason, name
        info = os.stat(watch / "flaky.tif")
        assert catalogue.refused(str(watch / "flaky.tif"), info.st_size, info.st_mtime) is None

        # the restart: the same folder, the same catalogue
        caplog.clear()
        second = CountingReader(max_bytes=64 * 1024, fail=flaky)
        with caplog.at_level(logging.INFO, logger="refscope.ingest"), \
                source_for(watch, second, catalogue, include_existing=True) as source:
            frames = collect(source, 1)
            assert wait_for(lambda: source.stats().rejected == 1, 5, "the flaky file refused again")
            frames += drain(source, 0.3)
            assert second.names() == {"good.tif", "flaky.tif"}  # nothing refused for good is read again
            assert source.stats().rejected_by_reason == {"unreadable": 1}
            # a refused file that is rewritten is a new version: read (and here delivered)
            (watch / "notes.tif").write_bytes(tiff_bytes(image(4)))
            frames += collect(source, 1)
        assert [Path(f.source).name for f in frames] == ["good.tif", "notes.tif"]
        assert "SECRET" not in caplog.text


# ------------------------------------------------------------------------------------------- daemon


def put(folder: Path, name: bytes, data: bytes) -> Path:
    """Write ``data`` under the byte name ``name`` the way an acquisition program does (temp name, rename)."""
    target = os.path.join(os.fsencode(folder), name)
    fd = os.open(target + b".part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(target + b".part", target)
    return Path(os.fsdecode(target))


def tiff_of(image_data: np.ndarray, pixel_size_nm: float, staging: Path) -> bytes:
    path = staging / f"stage-{time.monotonic_ns()}.tif"
    write_tiff(path, image_data.astype(np.float32), pixel_size_nm=pixel_size_nm)
    return path.read_bytes()


def test_the_daemon_never_shows_a_refused_files_content(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch, outside = tmp_path / "in", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    daemon = Daemon(make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(tmp_path / "out")}),
                    folder_options=FAST_FOLDER)
    with caplog.at_level(logging.DEBUG):
        daemon.start()
        try:
            (watch / "frame_001.tif").symlink_to(outside / "passwd")
            (watch / "frame_002.tif").write_bytes(SECRET)

            def ingest() -> dict[str, Any]:
                return next(iter(control_status(daemon)["ingest"].values()))

            wait_for(lambda: ingest()["rejected"] == 2, 10, "two refused files")
            status = control_status(daemon)
        finally:
            daemon.stop()
    stats = next(iter(status["ingest"].values()))
    assert stats["rejected_by_reason"] == {"symlink_outside": 1, "unreadable": 1}
    assert "frame_002.tif" in stats["last_error"]
    for text in (json.dumps(status), caplog.text):
        assert "SECRET" not in text and "root:x" not in text
    assert status["frames"]["in"] == 0  # nothing of either reached the pipeline

    # a restart does not read them again: the daemon hands its catalogue to the folder source as the ledger
    again = Daemon(make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(tmp_path / "out")}),
                   folder_options=FAST_FOLDER)
    again.start()
    try:
        (watch / "frame_003.tif").write_bytes(SECRET)  # a new refusal, so that we know the old ones were looked at
        wait_for(lambda: next(iter(control_status(again)["ingest"].values()))["rejected"] >= 1, 10, "the new refusal")
        time.sleep(0.5)
        stats = next(iter(control_status(again)["ingest"].values()))
    finally:
        again.stop()
    assert stats["rejected"] == 1 and "frame_003.tif" in stats["last_error"]


def test_names_that_are_not_utf8_are_learned_and_not_redone_after_a_restart(tmp_path: Path) -> None:
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, staging):
        folder.mkdir()
    pair = make_pair(rng=np.random.default_rng(7), lr_shape=(160, 200), factor=2.0, lr_pixel_size_nm=LR_NM)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})
    daemon = Daemon(config, folder_options=FAST_FOLDER)
    daemon.start()
    try:
        lr = put(watch, b"frame\xfe_000.tif", tiff_of(pair.lr, LR_NM, staging))
        wait_for(lambda: len(outputs(out)) == 1, 10, "the LR frame's output")
        hr = put(watch, b"ref\xff_HR.tif", tiff_of(pair.hr, HR_NM, staging))
        assert daemon.catalogue is not None
        info = os.stat(hr)
        wait_for(lambda: daemon.catalogue.learned(str(hr), info.st_size, info.st_mtime), 20, "the reference learned")
        pairs = daemon.catalogue.pairs()
        wait_for(lambda: len(outputs(out)) == 2, 10, "the zoomed-in reference's output")
        status = control_status(daemon)
    finally:
        daemon.stop()
    assert [(p.hr_source, p.lr_source) for p in pairs] == [(str(hr), str(lr))]
    assert os.fsencode(pairs[0].hr_source) == os.fsencode(watch) + b"/ref\xff_HR.tif"  # the very bytes
    assert status["learner"]["pairs_learned"] == 1 and status["errors_by_reason"] == {}
    assert status["model_version"] == 1  # promoted: its manifest names the reference losslessly
    written = {p.name: p.stat().st_mtime_ns for p in outputs(out)}

    again = Daemon(config, folder_options=FAST_FOLDER)  # the catalogue exists: the folder is read again
    again.start()
    try:
        def frames() -> dict[str, Any]:
            return control_status(again)["frames"]

        wait_for(lambda: frames()["skipped"].get("already_enhanced", 0) + frames()["written"] >= 2, 10,
                 "both files taken in again")
        status = control_status(again)
    finally:
        again.stop()
    assert status["frames"]["written"] == 0 and status["frames"]["out"] == 0  # no output made twice
    assert status["frames"]["skipped"] == {"already_enhanced": 2, "already_seen": 1}  # the reference not relearned
    assert status["errors_by_reason"] == {}
    assert {p.name: p.stat().st_mtime_ns for p in outputs(out)} == written

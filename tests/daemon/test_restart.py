"""Crash safety: the daemon, run as a separate process, is SIGKILLed mid-stream and restarted on the same folders.

After the restart: the catalogue passes SQLite's integrity check, every file in the output folder is a readable
enhanced TIFF, no temporary file is left, every LR input has exactly one output, and the learned model (and
its version) is served again without re-learning the reference.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.atomic import TEMP_MARKER
from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.wire.control import ControlClient
from refscope.daemon.images import read_image, write_tiff
from refscope.models.synthetic import make_pair
from waiting import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

LR_NM, HR_NM = 10.0, 5.0


class DaemonProcess:
    """``python -m refscope.daemon.cli.daemon`` in a subprocess; endpoints read from its start-up lines."""

    def __init__(self, watch: Path, out: Path, log: Path) -> None:
        command = [sys.executable, "-m", "refscope.daemon.cli.daemon", "--watch", str(watch), "--out", str(out),
                   "--library-size", "2000", "--control", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
                   "--events", "tcp://127.0.0.1:*"]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.endpoints: dict[str, str] = {}
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise AssertionError(f"daemon did not start; log:\n{log.read_text()[-3000:]}")
            if line == "ready":
                break
            name, _, value = line.partition(" ")
            self.endpoints[name] = value

    def status(self) -> dict:
        with ControlClient(self.endpoints["control"], timeout_s=10) as client:
            return client.call("status")["status"]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


def put_frame(watch: Path, staging: Path, name: str, image: np.ndarray, pixel_nm: float) -> None:
    """Write a TIFF into the watched folder the way an acquisition program does: temp name, then rename."""
    staged = staging / name
    write_tiff(staged, image.astype(np.float32), pixel_size_nm=pixel_nm)
    part = watch / f"{name}.part"
    part.write_bytes(staged.read_bytes())
    os.replace(part, watch / name)


def test_sigkill_mid_stream_then_restart(tmp_path):
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, staging):
        folder.mkdir()
    pair = make_pair(rng=np.random.default_rng(11), lr_shape=(160, 200), factor=2.0, lr_pixel_size_nm=LR_NM)
    rng = np.random.default_rng(5)

    def lr(i: int) -> None:
        put_frame(watch, staging, f"frame_{i:03d}.tif", pair.lr + rng.normal(0, 0.003, pair.lr.shape), LR_NM)

    log = tmp_path / "daemon.log"
    first = DaemonProcess(watch, out, log)
    try:
        for i in range(3):
            lr(i)
            time.sleep(0.2)
        put_frame(watch, staging, "ref_000.tif", pair.hr, HR_NM)
        wait_for(lambda: first.status()["model_version"] == 1, 60, "model version 1")
        for i in range(3, 12):  # a burst, killed in the middle of it
            lr(i)
            time.sleep(0.05)
            if i == 8:
                first.proc.send_signal(signal.SIGKILL)
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    second = DaemonProcess(watch, out, log)
    try:
        status = second.status()
        assert status["model_version"] == 1 and status["learner"]["model_version"] == 1  # resumed
        assert status["model"]["library_size"] > 0
        for i in range(12, 14):
            lr(i)
            time.sleep(0.1)
        # the reference is known by its finer pixel size only, so it is also a live frame (zoom series): enhanced once
        expected = {f"frame_{i:03d}_x2.tif" for i in range(14)} | {"ref_000_x2.tif"}
        wait_for(lambda: {p.name for p in out.iterdir() if p.is_file()} == expected, 60,
                 f"one output per live frame ({len(expected)})")
        status = second.status()
        assert status["learner"]["pairs_learned"] == 0  # the reference was not learned again
        assert status["frames"]["skipped"].get("already_seen") == 1
        assert status["errors_by_reason"] == {}
        # frames 0-2 were done before the kill (skipped now), 9-13 came after it (enhanced now)
        assert status["frames"]["skipped"].get("already_enhanced", 0) >= 3 and status["frames"]["out"] >= 5
        print("after restart:", status["frames"])
    finally:
        code = second.terminate()
    assert code == 0, log.read_text()[-3000:]

    state = out / ".refscope-state"
    assert not (state / "daemon.json").exists()
    with Catalogue.in_state_dir(state) as catalogue:
        assert catalogue.integrity_check() == "ok"
        counts = catalogue.counts()
        assert counts.frames["enhanced"] == 15 and counts.promoted_models == 1
        assert catalogue.frame(str(watch / "ref_000.tif")).role == "both"
        for i in range(14):
            record = catalogue.frame(str(watch / f"frame_{i:03d}.tif"))
            assert record.status == "enhanced" and record.output_path == out / f"frame_{i:03d}_x2.tif"
    sources = []
    for path in sorted(out.iterdir()):
        if path.is_dir():
            continue
        assert TEMP_MARKER not in path.name and not path.name.startswith("."), path
        image = read_image(path)  # every output is a complete TIFF
        if path.name == "ref_000_x2.tif":
            assert image.pixel_size_nm == pytest.approx(HR_NM / 2, rel=1e-4)
        else:
            assert image.data.shape == (320, 400) and image.pixel_size_nm == pytest.approx(LR_NM / 2, rel=1e-4)
        sources.append(image.metadata.extra["source"])
    assert sorted(sources) == sorted([str(watch / f"frame_{i:03d}.tif") for i in range(14)]
                                     + [str(watch / "ref_000.tif")])  # no duplicates
    assert not [p for p in state.iterdir() if TEMP_MARKER in p.name]
    assert sorted(p.name for p in watch.iterdir()) == sorted(
        [f"frame_{i:03d}.tif" for i in range(14)] + ["ref_000.tif"])  # the watched folder is untouched

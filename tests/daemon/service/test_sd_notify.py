"""systemd notifications (:mod:`refscope.daemon.service.sd_notify`) against a real AF_UNIX datagram socket standing in for
the service manager: READY=1 once the daemon serves, WATCHDOG=1 every WATCHDOG_USEC / 2 only while the daemon's
components are healthy, STOPPING=1 when it stops; nothing at all without $NOTIFY_SOCKET.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from refscope.daemon.config import load_config
from refscope.daemon.frames import Frame, IngestStats
from refscope.daemon.service.sd_notify import (
    Notifier,
    ServiceNotifications,
    Watchdog,
    daemon_status_line,
    watchdog_interval_s,
)
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.wire.status import DaemonStatus

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or sys.platform == "win32",
                                reason="systemd notifications are Linux-only")

EPHEMERAL = ["--control", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*"]


class ServiceManager:
    """The manager's end of $NOTIFY_SOCKET: a bound datagram socket; ``messages`` holds each datagram as a list
    of ``KEY=VALUE`` lines, in arrival order."""

    def __init__(self, folder: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = folder / "notify.sock"
        if len(os.fsencode(path)) < 100:
            self.sock.bind(os.fspath(path))
            self.address = os.fspath(path)
        else:  # sun_path holds 108 bytes: fall back to the abstract namespace
            name = f"refscope-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        self.sock.settimeout(0.05)
        self.messages: list[list[str]] = []

    def drain(self, wait_s: float = 0.0) -> list[list[str]]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except (socket.timeout, BlockingIOError):
                if time.monotonic() >= deadline:
                    return self.messages

    def wait_for(self, line: str, timeout: float, *, count: int = 1) -> list[list[str]]:
        deadline = time.monotonic() + timeout
        while self.count(line) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {count} x {line!r}; got {self.messages}")
            self.drain(0.05)
        return self.messages

    def count(self, line: str) -> int:
        return sum(line in message for message in self.messages)

    def index(self, predicate) -> int:
        return next(i for i, message in enumerate(self.messages) if any(predicate(line) for line in message))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def manager(tmp_path):
    m = ServiceManager(tmp_path)
    yield m
    m.close()


# ------------------------------------------------------------------------------------------ the client


def test_notifier_sends_to_a_path_and_to_the_abstract_namespace(tmp_path, manager):
    notifier = Notifier(manager.address)
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=two\nlines")
    assert manager.drain(0.2) == [["READY=1", "STATUS=two lines"]]
    notifier.close()

    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"refscope-test-abstract-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.settimeout(2)
    try:
        assert Notifier("@" + name).status("serving")
        assert abstract.recv(4096) == b"STATUS=serving"
    finally:
        abstract.close()


def test_notifier_without_a_socket_does_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and not Notifier().notify("READY=1")
    assert not Notifier("vsock:2:1234").enabled  # not supported: disabled, with a warning
    gone = Notifier(str(tmp_path / "no-such.sock"))  # the manager went away: never raises, warns once
    assert not gone.notify("WATCHDOG=1") and not gone.notify("WATCHDOG=1")
    assert sum("cannot notify" in r.message for r in caplog.records) == 1
    with ServiceNotifications(lambda: None, notifier=Notifier("")) as session:
        assert session.watchdog is None


def test_watchdog_interval_is_half_of_watchdog_usec():
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": pid}) == 0.1
    assert watchdog_interval_s({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    for env in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert watchdog_interval_s(env) is None


def test_watchdog_pings_only_while_the_check_passes(manager):
    healthy = threading.Event()
    healthy.set()
    failures: list[BaseException] = []

    def check() -> None:
        if not healthy.is_set():
            raise RuntimeError("learner thread died")

    dog = Watchdog(Notifier(manager.address), 0.05, check, status=lambda: "serving", on_failure=failures.append)
    dog.start()
    try:
        manager.wait_for("WATCHDOG=1", 5, count=3)
        assert ["WATCHDOG=1", "STATUS=serving"] in manager.messages
        healthy.clear()
        manager.wait_for("STATUS=failed: RuntimeError: learner thread died", 5)
        pings = manager.count("WATCHDOG=1")
        manager.drain(0.4)  # eight intervals
        assert manager.count("WATCHDOG=1") == pings
        healthy.set()  # the pings never resume: a daemon that failed must be restarted
        manager.drain(0.3)
        assert manager.count("WATCHDOG=1") == pings
        assert len(failures) == 1 and isinstance(dog.failure, RuntimeError)
    finally:
        dog.stop()
    with pytest.raises(ValueError, match="interval"):
        Watchdog(Notifier(manager.address), 0, check)


def test_status_line_sums_up_the_daemon_status():
    status = {"paused": False, "frames": {"in": 12, "out": 11, "dropped": 1, "errors": 0},
              "model_version": 3, "method": "paired", "model": {"served_by": "CPUExecutionProvider"}}
    assert daemon_status_line(DaemonStatus.from_dict(status)) == ("serving: 12 frames in, 11 out, 1 dropped, 0 errors; model v3 paired on "
                                          "CPUExecutionProvider")
    assert daemon_status_line(DaemonStatus.from_dict({"paused": True})).startswith("paused: 0 frames in")


# ------------------------------------------------------------------------------------------ the daemon


def _start_cli_daemon(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, queue.Queue]:
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    command = [sys.executable, "-m", "refscope.daemon.cli.daemon", "--watch", str(watch), "--out", str(out), *EPHEMERAL]
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **env})
    log.close()
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def test_daemon_cli_notifies_ready_watchdog_and_stopping(tmp_path, manager):
    proc, lines = _start_cli_daemon(tmp_path, {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"})
    try:
        deadline = time.monotonic() + 60
        while (line := lines.get(timeout=max(0.1, deadline - time.monotonic()))) != "ready":
            assert line is not None, (tmp_path / "daemon.log").read_text()[-3000:]
        manager.wait_for("READY=1", 10)
        assert manager.index(lambda l: l == "READY=1") == 0  # nothing before the daemon serves
        ready = manager.messages[0]
        assert any(l.startswith("STATUS=serving: 0 frames in") for l in ready), ready
        manager.wait_for("WATCHDOG=1", 10, count=5)  # every 0.1 s
        t0, n0 = time.monotonic(), manager.count("WATCHDOG=1")
        manager.drain(1.0)
        rate = (manager.count("WATCHDOG=1") - n0) / (time.monotonic() - t0)
        assert 2 <= rate <= 15, f"{rate:.1f} pings/s, expected about 10"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        manager.wait_for("STOPPING=1", 5)
        stopping = manager.index(lambda l: l == "STOPPING=1")
        assert all("WATCHDOG=1" not in m for m in manager.messages[stopping + 1:])
        assert manager.count("READY=1") == 1 and manager.count("STOPPING=1") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class CrashingSource:
    """A FrameSource whose worker "dies" when ``crash`` is set: ``poll`` re-raises the failure, as the folder and
    ZMQ sources do, and the daemon's ingest thread stops on it."""

    def __init__(self) -> None:
        self.crash = threading.Event()

    def start(self) -> None:
        pass

    def poll(self, timeout: float) -> Frame | None:
        if self.crash.wait(timeout):
            raise RuntimeError("acquisition watcher crashed")
        return None

    def stop(self) -> None:
        pass

    def stats(self) -> IngestStats:
        return IngestStats()


def test_watchdog_stops_when_a_daemon_component_fails(tmp_path, manager):
    config = load_config(None, {"ingest.watch": str(tmp_path / "in"), "publish.out_dir": str(tmp_path / "out"),
                                "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*"})
    source = CrashingSource()
    daemon = Daemon(config, sources=[source])
    daemon.start()
    try:
        # no run_forever here: the daemon stays up after the failure, as a hung process would, and only the
        # missing pings can get it restarted
        with ServiceNotifications(daemon.check, status=lambda: daemon_status_line(daemon.status()),
                                  notifier=Notifier(manager.address), environ={"WATCHDOG_USEC": "100000"}) as session:
            manager.wait_for("WATCHDOG=1", 10, count=3)
            source.crash.set()
            manager.wait_for("STOPPING=1", 10)
            failed = manager.index(lambda l: l.startswith("STATUS=failed: RuntimeError: acquisition watcher crashed"))
            stopping = manager.index(lambda l: l == "STOPPING=1")
            assert failed < stopping
            pings = manager.count("WATCHDOG=1")
            manager.drain(0.5)  # ten intervals
            assert manager.count("WATCHDOG=1") == pings
            assert all("WATCHDOG=1" not in m for m in manager.messages[failed:])
            assert session.watchdog is not None and isinstance(session.watchdog.failure, RuntimeError)
        with pytest.raises(RuntimeError, match="watcher crashed"):
            daemon.check()  # what run_forever sees: it stops and exits 1
        assert manager.count("STOPPING=1") == 1  # not sent twice on exit
    finally:
        daemon.stop()

"""Reference-request hooks (:mod:`refscope.daemon.service.reference_hooks`): file, script, ZMQ, log, and the runner."""
from __future__ import annotations

import json
import sys
import time

import pytest
import zmq

from refscope.daemon import atomic
from refscope.daemon.config import MonitorConfig
from refscope.daemon.errors import RefscopeError
from refscope.daemon.service.reference_hooks import (FileHook, HookRunner, LogHook, ScriptHook, ZmqPushHook, make_hook,
                                             request_file_name)

REQUEST = {"id": "1718000000123-3", "t": 1718000000.12, "reason": "drift", "region": [10, 20, 74, 100],
           "signals": {"coverage": 1.8, "focus": None}, "frame": "/acq/frame_000042_LR.tif"}


def test_file_hook_writes_the_request_atomically(tmp_path, monkeypatch):
    folder = tmp_path / "requests"
    FileHook(folder).deliver(REQUEST)
    path = folder / request_file_name(REQUEST)
    assert path.name == "reference-request-1718000000123-3.json"
    assert json.loads(path.read_text()) == REQUEST
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)  # the rename never happens
    second = {**REQUEST, "id": "2"}
    with pytest.raises(OSError):
        FileHook(folder).deliver(second)
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # neither a partial file nor a temp file


def test_script_hook_gets_the_json_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    script = "import json, sys; json.dump(json.load(sys.stdin), open(sys.argv[1], 'w'))"
    ScriptHook([sys.executable, "-c", script, str(out)]).deliver(REQUEST)
    assert json.loads(out.read_text()) == REQUEST
    failing = ScriptHook([sys.executable, "-c", "import sys; sys.stderr.write('no stage'); sys.exit(3)"])
    with pytest.raises(RefscopeError, match="exit code 3: no stage"):
        failing.deliver(REQUEST)
    slow = ScriptHook([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.3)
    with pytest.raises(RefscopeError, match="killed"):
        slow.deliver(REQUEST)
    with pytest.raises(RefscopeError, match="cannot run"):
        ScriptHook([str(tmp_path / "missing")]).deliver(REQUEST)


def test_zmq_hook_pushes_one_json_message():
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    hook = ZmqPushHook(endpoint, timeout_s=2.0, context=context)
    try:
        hook.deliver(REQUEST)
        assert pull.poll(2000)
        assert json.loads(pull.recv()) == REQUEST
    finally:
        hook.close()
        pull.close(0)
        context.term()
    nobody = ZmqPushHook("tcp://127.0.0.1:1", timeout_s=0.2)  # nothing listens there
    try:
        with pytest.raises(RefscopeError, match="nobody took"):
            nobody.deliver(REQUEST)
    finally:
        nobody.close()


class _Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.closed = False

    def deliver(self, request):
        if request["id"] == "bad":
            raise RuntimeError("microscope busy")
        self.got.append(dict(request))

    def close(self):
        self.closed = True


def test_runner_delivers_in_the_background_and_counts_failures():
    hook = _Flaky()
    runner = HookRunner(hook, poll_interval_s=0.02)
    runner.start()
    for request_id in ("a", "bad", "b"):
        runner.submit({**REQUEST, "id": request_id})
    deadline = time.monotonic() + 5
    while runner.stats().delivered + runner.stats().failed < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.stop()
    stats = runner.stats()
    assert [r["id"] for r in hook.got] == ["a", "b"]
    assert (stats.delivered, stats.failed) == (2, 1) and "microscope busy" in stats.last_error
    assert hook.closed
    runner.check()


def test_make_hook_follows_the_configuration(tmp_path):
    assert isinstance(make_hook(MonitorConfig()), LogHook)
    assert isinstance(make_hook(MonitorConfig(hook="file", hook_dir=tmp_path)), FileHook)
    assert isinstance(make_hook(MonitorConfig(hook="script", hook_command=("true",))), ScriptHook)
    LogHook().deliver(REQUEST)  # only logs

"""The control endpoint (:mod:`refscope.daemon.wire.control`): validation, refusal, robustness, and every daemon
command round-tripping over a real socket."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from refscope.daemon.service import commands as service_control_module
from refscope.daemon.config import load_config
from refscope.daemon.service.control_server import ControlServer
from refscope.daemon.wire.control import COMMANDS, ControlClient, ControlError, ControlTimeout, validate_request
from refscope.daemon.frames import Frame
from refscope.daemon.wire.protocol import decode_enhanced, stream_role
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.images import read_image
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair

from tests.daemon.queue_source import QueueSource
from tests.daemon.waiting import events_joined, stream_joined

LR_SHAPE = (96, 128)


# ---------------------------------------------------------------------------------------- schema (no I/O)


@pytest.mark.parametrize("document, message", [
    ([], "JSON object"),
    ({}, "needs a string"),
    ({"cmd": 3}, "needs a string"),
    ({"cmd": "reboot"}, "unknown command 'reboot'"),
    ({"cmd": "status", "verbose": True}, "unknown argument 'verbose'"),
    ({"cmd": "set"}, "at least one"),
    ({"cmd": "set", "method": "magic"}, "must be one of"),
    ({"cmd": "set", "method": 1}, "must be a string"),
    ({"cmd": "set", "sigma_n": -1}, "must lie in 0.01..100"),
    ({"cmd": "set", "sigma_n": "big"}, "finite number"),
    ({"cmd": "set", "scale": 2.5}, "must be an integer"),
    ({"cmd": "set", "scale": True}, "must be an integer"),
    ({"cmd": "set", "scale": 9}, "must lie in"),
    ({"cmd": "set", "method": None}, "must not be null"),
    ({"cmd": "request_reference", "region": [0, 0, 10]}, "[y0, x0, y1, x1]"),
    ({"cmd": "request_reference", "region": [5, 0, 1, 10]}, "0 <= y0 < y1"),
    ({"cmd": "request_reference", "note": "x" * 5000}, "longer than"),
])
def test_invalid_requests_are_refused_with_a_message(document, message):
    with pytest.raises(ControlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_request(document)


def test_valid_requests_pass_validation():
    assert validate_request({"cmd": "status"}) == ("status", {})
    assert validate_request({"cmd": "set", "sigma_n": None}) == ("set", {"sigma_n": None})
    assert validate_request({"cmd": "request_reference", "region": [1, 2, 3, 4]}) == (
        "request_reference", {"region": [1.0, 2.0, 3.0, 4.0]})
    assert set(COMMANDS) == {"ping", "status", "pause", "resume", "request_reference", "set", "snapshot"}


# ----------------------------------------------------------------------------------- server robustness


@pytest.fixture()
def server():
    def explode():
        raise RuntimeError("boom")

    def refuse(**_):
        raise ValueError("not now")

    handlers = {"ping": lambda: {"pong": True, "nan": float("nan"), "path": __import__("pathlib").Path("/x")},
                "status": explode, "pause": refuse}
    srv = ControlServer("tcp://127.0.0.1:*", handlers, max_request_bytes=1024)
    srv.start()
    yield srv
    srv.stop()


def test_server_answers_everything_and_never_dies(server):
    with ControlClient(server.bound_endpoint, timeout_s=5) as client:
        assert client.request("ping") == {"ok": True, "pong": True, "nan": None, "path": "/x"}
        reply = client.request("status")
        assert reply["ok"] is False and reply["error"].startswith("internal error: RuntimeError: boom")
        assert client.request("pause") == {"ok": False, "error": "pause: not now"}
        reply = client.request("snapshot")
        assert reply["ok"] is False and "not supported" in reply["error"]
        assert client.request("nope")["ok"] is False
        reply = client.send_raw([b"x" * 2000])
        assert reply["ok"] is False and "refused (at most 1024)" in reply["error"]
        reply = client.send_raw([b"\xff\xfe not json"])
        assert reply["ok"] is False and "not UTF-8 JSON" in reply["error"]
        reply = client.send_raw([b'{"cmd": "ping"}', b"extra"])
        assert reply["ok"] is False and "2 parts" in reply["error"]
        with pytest.raises(ControlError, match="not now"):
            client.call("pause")
        assert client.call("ping")["pong"] is True
    stats = server.stats()
    assert stats.requests == 10
    assert stats.refused_by_reason == {"internal": 1, "refused": 2, "unsupported": 1, "invalid": 1, "too_large": 1,
                                       "bad_json": 1, "bad_request": 1}
    server.check()


def test_client_times_out_then_recovers():
    context = zmq.Context()
    probe = context.socket(zmq.REP)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    endpoint = f"tcp://127.0.0.1:{port}"
    with ControlClient(endpoint, timeout_s=0.3) as client:
        start = time.monotonic()
        with pytest.raises(ControlTimeout, match="no reply within 0.3 s"):
            client.request("ping")
        assert time.monotonic() - start < 2
        srv = ControlServer(endpoint, {"ping": lambda: {"pong": True}})
        srv.start()
        try:
            assert client.request("ping", timeout=5) == {"ok": True, "pong": True}  # a fresh socket after the timeout
        finally:
            srv.stop()
    context.term()


# ------------------------------------------------------------------------------------ daemon round trips


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def next_enhanced(stream):
    """The next enhanced-frame message on the stream, skipping raw frames and confidence maps; None if none yet."""
    while stream.poll(100):
        parts = stream.recv_multipart()
        if stream_role(parts) == "enhanced":
            return parts
    return None


def test_every_daemon_command_round_trips(tmp_path, monkeypatch):
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=LR_SHAPE, factor=2.0)
    source = QueueSource()
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "publish.out_dir": str(tmp_path / "out"),
                                "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*"})
    context = zmq.Context()
    try:
        with Daemon(config, sources=[source], use_onnx=False) as daemon, \
                ControlClient(daemon.endpoints["control"], timeout_s=10) as client:
            events = context.socket(zmq.SUB)
            events.setsockopt(zmq.SUBSCRIBE, b"event")
            events.connect(daemon.endpoints["events"])
            stream = context.socket(zmq.SUB)
            stream.setsockopt(zmq.SUBSCRIBE, b"")
            stream.connect(daemon.endpoints["pub"])
            events_joined(events, daemon)
            stream_joined(stream, daemon)

            def event(kind: str, **match: object) -> dict:
                def next_of_kind():  # the next such event (an automatic no_model request may come first)
                    while events.poll(0):
                        doc = json.loads(events.recv_multipart()[1])
                        if doc["type"] == kind and all(doc["payload"].get(k) == v for k, v in match.items()):
                            return doc
                    return None
                return _wait(next_of_kind, 5, f"a {kind} event")

            def put(seq: int) -> None:
                source.items.put(Frame(pair.lr.astype(np.float32), 10.0, "lr", f"mem:{seq}", seq, time.time()))

            assert client.call("ping")["pong"] is True
            reply = client.call("status")
            assert reply["status"]["model_version"] == 0 and reply["status"]["paused"] is False
            assert client.request("snapshot") == {"ok": False, "error": "snapshot: no frame has been enhanced yet"}

            put(0)
            first = decode_enhanced(_wait(lambda: next_enhanced(stream), 10, "frame 0"))
            assert first.source_seq == 0 and first.data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1])

            # pause: inputs recorded, nothing published; resume: published again
            assert client.call("pause") == {"ok": True, "paused": True}
            assert event("paused")["payload"] == {"paused": True}
            put(1)
            _wait(lambda: client.call("status")["status"]["frames"]["skipped"].get("paused") == 1, 5, "frame 1 skipped")
            assert daemon.catalogue.frame("mem:1").status == "rejected"
            assert client.call("resume") == {"ok": True, "paused": False}
            put(2)
            got = decode_enhanced(_wait(lambda: next_enhanced(stream), 10, "frame 2"))
            assert got.source_seq == 2

            # request_reference
            reply = client.call("request_reference", region=[10, 20, 40, 60], note="the left particle")
            assert reply["requested"]["reason"] == "operator"
            payload = event("reference_requested", reason="operator")["payload"]
            assert payload["reason"] == "operator" and payload["region"] == [10, 20, 40, 60]
            assert payload["region_nm"] == [100, 200, 400, 600] and payload["frame"] == "mem:2"
            assert client.call("request_reference")["requested"]["region"] is None
            assert client.request("request_reference", region=[0, 0, 500, 10])["ok"] is False  # outside the frame

            # set: method, sigma_n, scale (no model yet: allowed)
            assert client.call("set", method="bicubic")["model"]["method"] == "bicubic"
            assert client.call("set", sigma_n=2.0)["model"]["sigma_n"] == 2.0
            assert client.call("set", sigma_n=None)["model"]["sigma_n"] is None
            assert client.call("set", scale=3)["model"]["scale"] == 3
            put(3)
            got = decode_enhanced(_wait(lambda: next_enhanced(stream), 10, "frame 3"))
            assert got.data.shape == (3 * LR_SHAPE[0], 3 * LR_SHAPE[1])
            assert client.call("set", scale=2, method="paired")["model"]["scale"] == 2
            assert daemon.learner.status().model_version == 0  # the learner restarted at the new scale

            # a model is loaded: a scale change is refused unless it matches
            model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=200)))
            daemon.engine.set_model(model, 1)
            reply = client.request("set", scale=3)
            assert reply["ok"] is False and "refused" in reply["error"]
            assert client.call("set", scale=2)["model"]["version"] == 1
            assert client.request("set", bogus=1)["ok"] is False

            # snapshot of the newest frame
            put(4)
            _wait(lambda: next_enhanced(stream), 20, "frame 4 enhanced")  # its raw frame comes first, before the model
            reply = client.call("snapshot")
            raw, enhanced = read_image(reply["raw"]), read_image(reply["enhanced"])
            assert raw.data.shape == LR_SHAPE and enhanced.data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1])
            assert enhanced.pixel_size_nm == pytest.approx(5.0, rel=1e-4)
            assert str(daemon.config.state_dir / "snapshots") in reply["raw"]
            # at most one snapshot a second, and a folder quota: refused, nothing deleted (issue 13.7)
            again = client.request("snapshot")
            assert again["ok"] is False and "at most one per 1 s" in again["error"]
            time.sleep(1.05)
            monkeypatch.setattr(service_control_module, "SNAPSHOT_QUOTA_MB", 0)
            full = client.request("snapshot")
            assert full["ok"] is False and "beyond the 0 MB quota; move or delete old snapshots" in full["error"]
            assert Path(reply["raw"]).exists() and Path(reply["enhanced"]).exists()

            status = client.call("status")["status"]
            assert status["model_version"] == 1 and status["control"]["requests"] > 10
            assert client.request("what")["ok"] is False
            events.close(linger=0)
            stream.close(linger=0)
    finally:
        context.destroy(linger=0)  # a failed check leaves no socket to block the next test

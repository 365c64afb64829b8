"""The TUI's reading of the daemon's protocol: stream roles, status numbers, drift signals, events (pure)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refscope.daemon.wire.protocol import OutputFields, ProtocolError, encode_enhanced, encode_frame
from refscope.daemon.publish import EventPublisher
from refscope.tui.app import _reachable
from refscope.tui.events import decode_event
from refscope.daemon.wire.status import DaemonStatus
from refscope.tui.status import RateMeter, drift_signals, summary_lines
from refscope.tui.stream import NewestSlot, decode_stream_message


def test_stream_messages_of_every_role_decode_without_copying():
    lr = np.arange(8 * 10, dtype=np.uint16).reshape(8, 10)
    raw = decode_stream_message(encode_frame(lr, seq=4, pixel_size_m=5e-9, role="lr"))
    assert (raw.role, raw.seq, raw.source_seq) == ("lr", 4, 4) and np.array_equal(raw.data, lr)
    enh = decode_stream_message(encode_enhanced(np.ones((16, 20), np.float32), OutputFields(seq=9, pixel_size_m=2.5e-9, model="paired", model_version="3", latency_s=0.1, source_seq=4, t=1.0)))
    assert (enh.role, enh.seq, enh.source_seq, enh.header["model"]) == ("enhanced", 9, 4, "paired")
    conf = np.full((16, 20), 0.5, np.float32)
    header = {"v": 1, "seq": 9, "dtype": "float32", "shape": [16, 20], "role": "confidence", "source_seq": 4}
    c = decode_stream_message([json.dumps(header).encode(), conf.tobytes()])
    assert c.role == "confidence" and c.source_seq == 4 and not c.data.flags.writeable
    with pytest.raises(ProtocolError) as err:
        decode_stream_message([json.dumps(header).encode(), conf.tobytes()[:-4]])
    assert err.value.reason_code == "buffer_size"
    with pytest.raises(ProtocolError):
        decode_stream_message([b"{}"])


def test_newest_slot_drops_older_items():
    slot = NewestSlot()
    for i in range(5):
        slot.put("lr", i)
    slot.put("enhanced", "e")
    assert slot.wait(0.01)
    items, fresh = slot.take()
    assert items == {"lr": 4, "enhanced": "e"} and fresh == {"lr", "enhanced"} and slot.dropped == 4
    assert not slot.wait(0.01)


STATUS = {  # the keys Daemon.status() returns (refscope.daemon.service.daemon), abridged
    "paused": False,
    "frames": {"in": 33, "out": 30, "written": 30, "dropped": 1, "dropped_by_reason": {"serve_queue_full": 1},
               "errors": 2, "errors_by_reason": {"bad_frame": 2}},
    "errors_by_reason": {"bad_frame": 2},
    "latency": {"p50_s": 0.116, "p99_s": 0.31},
    "queues": {"serve": 2, "serve_limit": 8, "output": 0, "learner": 1},
    "model": {"version": 3, "method": "paired", "served_by": "paired", "backend": "onnx", "sigma_n": 1.25,
              "safe_baseline_sigma_px": 1.25, "safe_blend_share": 0.034,
              "library_size": 8000, "validation_delta_db": 0.84},
    "library_size": 8000, "model_version": 3, "method": "paired", "validation_delta_db": 0.84,
    "fusion": {"enabled": True, "auto_static_stage": False, "window": 4, "frames": 3, "last_reset": "stage_moved"},
}


def test_status_rows_from_a_daemon_status_and_from_an_empty_one():
    rows = dict(summary_lines(DaemonStatus.from_dict(STATUS), {"in": 4.0, "out": None},
                              {"enhanced": 7, "lr": 7, "bad": 1}))
    assert rows["frames"] == "in 33  out 30  written 30" and rows["fps"] == "in 4.0  out -"
    assert rows["latency"] == "p50 116 ms  p99 310 ms" and rows["model"] == "paired v3 (onnx)"
    assert rows["ΔPSNR"].startswith("+0.84 dB") and rows["drops"] == "1 (serve_queue_full 1)"
    assert rows["errors"] == "2 (bad_frame 2)" and rows["σ_n"] == "1.25" and rows["library"] == "8000 pairs"
    assert rows["queues"] == "serve 2/8  out 0  learn 1" and rows["stream"] == "7 enhanced, 1 bad"
    empty = dict(summary_lines(DaemonStatus.from_dict({}), {}, {}))  # a daemon that sent none of these keys
    assert empty["latency"] == "p50 -  p99 -" and empty["model"] == "- v0" and empty["σ_n"] == "default"
    assert empty["ΔPSNR"].startswith("- ") and empty["network"] == "off"
    assert rows["fused"] == "3/4 frames  reset: stage_moved" and empty["fused"] == "off"
    assert rows["safe"] == "blur σ 1.25 px  3.4% of the last frame" and empty["safe"] == "-"


def test_drift_signals_from_the_quality_monitor():
    assert drift_signals(DaemonStatus.from_dict({})) == {}
    assert drift_signals(DaemonStatus.from_dict({"quality": None})) == {}
    monitor = {"quality": {"enabled": True, "drift": True, "frames_measured": 9, "window": 5, "signals": {
        # QualityMonitor.status() (refscope.daemon.service.monitor): value None while the window fills
        "coverage": {"value": 0.41, "on": 0.5, "off": 0.6, "higher_is_worse": False, "raised": True,
                     "threshold": 0.5, "direction": "below", "over": True, "history": [0.6, 0.45, 0.41]},
        "focus": {"value": None, "on": 0.5, "off": 0.6, "higher_is_worse": False, "raised": False,
                  "threshold": 0.5, "direction": "below", "over": False, "history": []},
        # an older daemon: no generic keys, no history
        "intensity": {"value": 1.4, "on": 1.2, "off": 1.1, "higher_is_worse": True, "raised": True}}}}
    signals = drift_signals(DaemonStatus.from_dict(monitor))
    assert set(signals) == {"coverage", "focus", "intensity"}
    assert signals["coverage"].over and not signals["focus"].over and signals["coverage"].threshold == 0.5
    assert signals["coverage"].history == (0.6, 0.45, 0.41) and signals["focus"].value is None
    assert signals["intensity"].over and signals["intensity"].threshold == 1.2 and signals["intensity"].history == ()


def test_rate_meter_over_a_window_and_after_a_restart():
    meter = RateMeter(window_s=5)
    assert meter.update("in", 0, now=0.0) is None
    assert meter.update("in", 10, now=1.0) == 10.0
    assert meter.update("in", 30, now=2.0) == 15.0
    meter.update("in", 2, now=3.0)  # the daemon restarted
    assert meter.update("in", 6, now=5.0) == 2.0


def test_events_become_log_lines():
    parts = EventPublisher.encode("model_rejected", {"version": 3, "candidate_delta_db": 0.5,
                                                     "held_out_delta_db": 0.8, "reason": "not better"}, t=0)
    entry = decode_event(parts)
    assert entry.type == "model_rejected" and "not better" in entry.text and "+0.50" in entry.text
    ref = decode_event(EventPublisher.encode("reference_requested", {"reason": "drift", "region": [1, 2, 30, 40]}))
    assert ref.text == "reference requested (drift): region [1, 2, 30, 40]" and ref.matches("DRIFT")
    assert decode_event(EventPublisher.encode("frame_enhanced", {})) is None  # per-frame noise stays out
    drift = decode_event(EventPublisher.encode("quality_drift", {"drift": True, "signals": {
        "coverage": {"value": 0.41, "raised": True}, "focus": {"value": 0.9, "raised": False}}}))
    assert drift.text == "drift: coverage 0.41"
    auto = decode_event(EventPublisher.encode("reference_requested", {"reason": "drift", "region": None,
                                                                      "suggested_region": [0, 0, 64, 80],
                                                                      "detail": "coverage 0.41 <= 0.5"}))
    assert auto.text == "reference requested (drift): anywhere (suggested [0, 0, 64, 80]) — coverage 0.41 <= 0.5"
    assert decode_event([b"event", b"not json"]) is None


def test_wildcard_endpoints_are_reached_through_the_control_host():
    assert _reachable("tcp://0.0.0.0:5561", "tcp://scope-pc:5560") == "tcp://scope-pc:5561"
    assert _reachable("tcp://*:5562", "tcp://10.0.0.2:5560") == "tcp://10.0.0.2:5562"
    assert _reachable("tcp://127.0.0.1:5561", "tcp://x:1") == "tcp://127.0.0.1:5561"
    assert _reachable(None, "tcp://x:1") is None


def test_a_companion_round_and_its_blend_weight_are_told_in_the_log():
    from refscope.tui.events import describe_event

    payload = {"round": 2, "status": "promoted", "candidate_delta_db": 0.71, "champion": "net",
               "champion_delta_db": 0.66, "reason": "beats", "trained": "companion", "companion_weight": 0.25}
    line = describe_event("net_round", payload)
    assert line.startswith("network round 2 (companion) promoted") and "companion weight 0.25" in line
    plain = describe_event("net_round", {**payload, "trained": "network", "companion_weight": 0.0})
    assert "companion" not in plain and plain.startswith("network round 2 promoted")
    assert "baseline" not in line
    shared = describe_event("net_round", {**payload, "baseline_share": 0.2})
    assert "companion weight 0.25, baseline share 0.20" in shared
    assert "baseline" not in describe_event("net_round", {**payload, "baseline_share": 0.0})

"""The simulated microscope (:mod:`refscope.models.simulator`, :mod:`refscope.daemon.offline.simulate`) and the whole loop
with the daemon: scene change -> drift -> reference requested -> answered -> model updated -> quality back."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import zmq

from refscope.daemon.config import load_config
from refscope.daemon.wire.control import ControlClient
from refscope.daemon.service.reference_hooks import FileHook
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.offline.simulate import SimulatedMicroscope, SimulatorConfig
from refscope.daemon.images import read_image
from refscope.models.simulator import (Event, Optics, Session, make_areas, scan_hr, scan_lr, stage_to_area,
                                       state_at)
from tests.daemon.waiting import events_joined, wait_for

SMALL = Optics(lr_shape=(96, 128))


# ------------------------------------------------------------------------------------------------ physics


@pytest.fixture(scope="module")
def areas():
    return make_areas(["particles", "cells"], SMALL, rng=np.random.default_rng(0), travel_lr_px=12)


def test_session_drifts_inside_the_area_changes_scene_and_applies_events(areas):
    session = Session(drift_nm_per_s=(50.0, 30.0), scene_change_s=20.0,
                      events=(Event("contrast", 5.0, 2.0, gain=1.5, offset=0.1), Event("focus", 8.0, 1.0, blur_px=1.0)))
    half_w, half_h = SMALL.lr_shape[1] * SMALL.lr_pixel_nm / 2e9, SMALL.lr_shape[0] * SMALL.lr_pixel_nm / 2e9
    for t in np.linspace(0.0, 40.0, 81):
        state = state_at(float(t), areas, SMALL, session)
        assert state.area == (1 if t >= 20.0 else 0)
        a = areas[state.area]
        h_nm, w_nm = a.size_nm
        x, y = state.stage_xy_m
        assert a.origin_m[0] + half_w <= x <= a.origin_m[0] + w_nm * 1e-9 - half_w  # the field stays in the area
        assert a.origin_m[1] + half_h <= y <= a.origin_m[1] + h_nm * 1e-9 - half_h
    assert state_at(0.0, areas, SMALL, session).stage_xy_m != state_at(3.0, areas, SMALL, session).stage_xy_m
    assert (state_at(6.0, areas, SMALL, session).gain, state_at(6.0, areas, SMALL, session).offset) == (1.5, 0.1)
    assert state_at(8.5, areas, SMALL, session).blur_px == 1.0 and state_at(9.5, areas, SMALL, session).blur_px == 0.0
    assert stage_to_area(areas[1].centre_m(), areas) == 1 and stage_to_area((5.0, 5.0), areas) is None


def test_scans_have_the_right_shape_dose_noise_and_blur(areas):
    state = state_at(0.0, areas, SMALL, Session())
    rng = np.random.default_rng(1)
    lr = scan_lr(areas, state, SMALL, rng)
    assert lr.shape == SMALL.lr_shape and lr.dtype == np.uint16
    hr = scan_hr(areas, state, SMALL, rng, centre_xy_m=state.stage_xy_m, lr_box_shape=(48, 64))
    assert hr.shape == (96, 128)  # 2x the sampling of a quarter of the field
    # the HR scan shows the centre of the LR field: block-averaged it correlates with that LR region
    centre = lr[24:72, 32:96].astype(float)
    binned = hr.reshape(48, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(centre.ravel(), binned.ravel())[0, 1] > 0.8
    # noise falls with the dose
    low = replace(SMALL, dose=50.0, read_noise=0.0, line_jitter_px=0.0)
    high = replace(SMALL, dose=5000.0, read_noise=0.0, line_jitter_px=0.0)
    diff_low = scan_lr(areas, state, low, rng).astype(float) - scan_lr(areas, state, low, rng)
    diff_high = scan_lr(areas, state, high, rng).astype(float) - scan_lr(areas, state, high, rng)
    assert diff_low.std() > 5 * diff_high.std()
    with pytest.raises(ValueError, match="outside every specimen area"):
        scan_hr(areas, state, SMALL, rng, centre_xy_m=(1.0, 1.0), lr_box_shape=(8, 8))


# ------------------------------------------------------------------------------------------------ process


def test_simulator_writes_calibrated_tiffs_and_answers_a_request_file(tmp_path):
    acq, requests = tmp_path / "acq", tmp_path / "requests"
    config = SimulatorConfig(optics=SMALL, session=Session(scene_change_s=None), frame_interval_s=0.1, hr_delay_s=0.0,
                             out_dir=acq, requests_dir=requests)
    with SimulatedMicroscope(config) as sim:
        wait_for(lambda: sim.stats().frames >= 2, 10, "two LR frames")
        frame = read_image(acq / "frame_000001_LR.tif")
        assert frame.data.shape == SMALL.lr_shape and frame.pixel_size_nm == pytest.approx(10.0)
        stage = frame.metadata.stage_xy_m
        assert stage is not None
        request = {"id": "r1", "reason": "drift", "region": [10, 20, 58, 84], "frame_shape": list(SMALL.lr_shape),
                   "region_center_stage_xy_m": [stage[0] + (52 - 64) * 10e-9, stage[1] + (34 - 48) * 10e-9]}
        FileHook(requests).deliver(request)
        wait_for(lambda: sim.stats().references == 1, 10, "the HR reference")
    hr = read_image(acq / "reference_001_HR.tif")
    assert hr.data.shape == (96, 128) and hr.pixel_size_nm == pytest.approx(5.0)
    assert hr.metadata.stage_xy_m == pytest.approx(tuple(request["region_center_stage_xy_m"]))
    events = [e["event"] for e in sim.timeline()]
    assert events[0] == "started" and "request_received" in events and events[-1] == "reference_sent"


def test_simulate_command_writes_frames_for_a_while(tmp_path, capsys):
    from refscope.daemon.cli import main

    out = tmp_path / "acq"
    assert main(["simulate", "--out", str(out), "--size", "80x64", "--interval", "0.2", "--duration", "1",
                 "--scene-change", "none", "--kinds", "fibres,cells"]) == 0
    frames = sorted(out.glob("frame_*_LR.tif"))
    assert len(frames) >= 3 and read_image(frames[0]).data.shape == (64, 80)
    printed = capsys.readouterr().out
    assert "simulating 80x64 px frames" in printed and "0 errors" in printed


def test_daemon_and_simulator_close_the_loop(tmp_path):
    """Drift detected after a scene change -> reference requested with a region inside the field -> the simulator
    answers over ZMQ -> the model is updated -> the out-of-sample quality is back above its threshold."""
    optics = Optics(lr_shape=(256, 320))
    config = load_config(None, {
        "ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"),
        "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
        "publish.pub_endpoint": "tcp://127.0.0.1:*", "model.library_size": "1500", "monitor.window": "2",
        "monitor.request_interval_s": "1", "log_level": "WARNING"})
    context = zmq.Context()
    events: list[dict] = []
    try:
        _close_the_loop(config, optics, context, events)
    finally:
        context.destroy(linger=0)


def _close_the_loop(config, optics: Optics, context: zmq.Context, events: list[dict]) -> None:
    with Daemon(config) as daemon, ControlClient(daemon.endpoints["control"], timeout_s=10) as client:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"event")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(daemon.endpoints["events"])
        events_joined(sub, daemon)

        def seen(kind: str, **match: Any) -> list[dict]:
            while sub.poll(0):
                events.append(json.loads(sub.recv_multipart()[1]))
            return [e["payload"] for e in events if e["type"] == kind
                    and all(e["payload"].get(k) == v for k, v in match.items())]

        sim = SimulatedMicroscope(SimulatorConfig(
            optics=optics, session=Session(scene_change_s=None), frame_interval_s=0.4, hr_delay_s=0.2, seed=3,
            push_endpoint=daemon.endpoints["zmq_ingest"], events_endpoint=daemon.endpoints["events"]))
        with sim:
            # no model yet: the first reference is requested, answered and learned
            wait_for(lambda: seen("reference_requested", reason="no_model"), 10, "a first request")
            wait_for(lambda: seen("model_promoted", version=1), 30, "model v1")
            wait_for(lambda: client.call("status")["status"]["quality"]["frames_measured"] >= 3, 10, "measured frames")
            assert seen("quality_drift") == []
            sim.change_scene_now()
            drift = wait_for(lambda: seen("quality_drift"), 10, "drift after the scene change")[0]
            assert any(s["raised"] for s in drift["signals"].values())
            request = wait_for(lambda: seen("reference_requested", reason="drift"), 10, "a drift request")[0]
            y0, x0, y1, x1 = request["region"]
            assert 0 <= y0 < y1 <= 256 and 0 <= x0 < x1 <= 320 and (y1 - y0, x1 - x0) == (128, 160)
            wait_for(lambda: len(seen("reference_received")) >= 2, 10, "the second reference")
            wait_for(lambda: seen("model_promoted", version=2), 30, "model v2")
            try:
                # 15 s was too short on a loaded 2-core machine
                wait_for(lambda: seen("quality_recovered"), 30, "quality recovered")
            except AssertionError:
                q = client.call("status")["status"]["quality"]
                raise AssertionError({k: (v["value"], v["raised"]) for k, v in q["signals"].items()}) from None
            status = client.call("status")["status"]
        assert sim.stats().references >= 2 and sim.stats().errors == 0
    quality = status["quality"]
    held_out = quality["signals"]["held_out"]
    assert held_out["value"] >= held_out["off"] and not held_out["raised"]
    # v1 scored on the new scene before learning from it (out-of-sample) below what v2 scores
    assert status["learner"]["last_reference_delta_db"] < held_out["value"]
    assert quality["model_version"] == 2 and quality["drift"] is False
    assert quality["requests"]["received"] >= 2 and quality["requests"]["by_reason"]["drift"] >= 1

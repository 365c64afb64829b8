"""The daemon's quality monitor (:mod:`refscope.daemon.service.monitor`): drift with hysteresis, requests and their rate
limit, the profile after a promotion, and the ``[monitor]`` configuration."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.daemon.config import ConfigError, MonitorConfig, load_config
from refscope.daemon.frames import Frame
from refscope.daemon.learn.learner import ReferenceOutcome
from refscope.daemon.service.monitor import QualityMonitor
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.simulator import Optics, Session, make_areas, scan_hr, scan_lr, state_at

SHAPE = (128, 160)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, kind, payload) -> None:
        self.events.append((kind, dict(payload)))

    def of(self, kind: str) -> list[dict]:
        return [p for k, p in self.events if k == kind]


def frame(data: np.ndarray, seq: int) -> Frame:
    return Frame(data.astype(np.float32), 10.0, "lr", f"mem:{seq}", seq, 0.0, stage_xy_m=(1e-3, 2e-3))


OPTICS = Optics(lr_shape=SHAPE)
FIT = FitConfig(scale=2, library=LibraryConfig(size=600))


@pytest.fixture(scope="module")
def microscope():
    """Two specimen areas (particles, then cells from t = 100 s) of the simulated microscope."""
    areas = make_areas(["particles", "cells"], OPTICS, rng=np.random.default_rng(11), travel_lr_px=16)
    session = Session(drift_nm_per_s=(20.0, 10.0), scene_change_s=100.0)
    rng = np.random.default_rng(12)

    def scan(t: float) -> np.ndarray:
        return scan_lr(areas, state_at(t, areas, OPTICS, session), OPTICS, rng).astype(np.float64)

    def learn(t: float, model=None):
        """Fit (or extend ``model``) from an HR reference of the centre quarter at time t; (model, LR region)."""
        state = state_at(t, areas, OPTICS, session)
        lr = scan_lr(areas, state, OPTICS, rng).astype(np.float64)
        hr = scan_hr(areas, state, OPTICS, rng, centre_xy_m=state.stage_xy_m, lr_box_shape=(64, 80))
        fitted = fit(lr, [(hr.astype(np.float64), 2.0)], config=FIT, model=model)
        oy, ox = (int(v) + 1 for v in fitted.geometries[-1].offset_yx)
        return fitted, lr[oy:oy + 62, ox:ox + 78]

    return scan, learn


def test_requests_without_a_model_are_rate_limited():
    clock, events = Clock(), Recorder()
    monitor = QualityMonitor(MonitorConfig(request_interval_s=10.0, request_timeout_s=60.0), emit=events, clock=clock)
    lr = np.random.default_rng(0).random(SHAPE)
    assert monitor.observe(frame(lr, 1)).confidence is None
    monitor.observe(frame(lr, 2))
    requests = events.of("reference_requested")
    assert len(requests) == 1 and requests[0]["reason"] == "no_model"
    y0, x0, y1, x1 = requests[0]["region"]
    assert (y1 - y0, x1 - x0) == (64, 80) and 0 <= y0 and 0 <= x0 and y1 <= SHAPE[0] and x1 <= SHAPE[1]
    assert requests[0]["region_nm"] == [10.0 * v for v in requests[0]["region"]]
    clock.now += 30.0  # still outstanding (no reference yet): no new request
    monitor.observe(frame(lr, 3))
    assert len(events.of("reference_requested")) == 1
    clock.now += 31.0  # past the timeout: the request expires, a new one is made
    monitor.observe(frame(lr, 4))
    assert len(events.of("reference_request_expired")) == 1 and len(events.of("reference_requested")) == 2
    # a reference arrives and is processed: no longer outstanding, but the interval still applies
    monitor.reference_arrived(frame(lr, 5))
    monitor.on_outcome(ReferenceOutcome("hr:1", None, None, None, None, False, 0, "no match"), None)
    monitor.observe(frame(lr, 6))
    assert len(events.of("reference_requested")) == 2
    clock.now += 10.0
    monitor.observe(frame(lr, 7))
    assert len(events.of("reference_requested")) == 3
    # the operator is never held back
    payload = monitor.request(reason="operator", frame=frame(lr, 8), region=[0, 0, 10, 10], note="here")
    assert payload["region"] == [0, 0, 10, 10] and payload["note"] == "here" and payload["suggested_region"]
    status = monitor.status()
    assert status.requests.made == 4 and status.requests.received == 1
    assert status.requests.by_reason == {"no_model": 3, "operator": 1}


def test_drift_raises_requests_and_clears_after_learning_the_new_scene(microscope):
    scan, learn = microscope
    model, region = learn(0.0)
    clock, events = Clock(), Recorder()
    config = MonitorConfig(window=3, request_interval_s=0.0)
    monitor = QualityMonitor(config, emit=events, clock=clock)
    monitor.set_model(model, 1, regions=[region])
    seq = 0
    for t in (1.0, 2.0, 3.0):
        seq += 1
        obs = monitor.observe(frame(scan(t), seq), out_shape=(256, 320))
        assert obs.confidence is not None and obs.confidence.shape == (256, 320) and not obs.drift, obs.signals
    assert events.of("reference_requested") == [] and not monitor.drift
    seq += 1
    monitor.observe(frame(scan(101.0), seq))
    assert not monitor.drift  # the median of 3 frames needs two drifted frames
    seq += 1
    monitor.observe(frame(scan(102.0), seq))
    assert monitor.drift
    drift = events.of("quality_drift")
    assert len(drift) == 1 and drift[0]["signals"]["coverage"]["raised"]
    request = events.of("reference_requested")[0]
    assert request["reason"] == "drift" and "coverage" in request["detail"]
    y0, x0, y1, x1 = request["region"]
    assert (y1 - y0, x1 - x0) == (64, 80) and 0 <= y0 < y1 <= SHAPE[0] and 0 <= x0 < x1 <= SHAPE[1]
    quality = monitor.status()
    assert quality.signals["coverage"].on == config.coverage_on and quality.drift is True
    assert quality.signals["coverage"].threshold == config.coverage_on and quality.signals["coverage"].over
    # the model learns the new scene: signals restart with a profile of both regions; cell frames clear the drift
    new, new_region = learn(103.0, model)
    monitor.on_outcome(ReferenceOutcome("hr:2", "mem:x", new_region, 0.1, 1.2, True, 2, "beats"), new)
    assert monitor.status().signals["held_out"].value == pytest.approx(1.2)
    assert monitor.drift  # until frames are measured with the new model
    for t in (104.0, 105.0):
        seq += 1
        monitor.observe(frame(scan(t), seq))
    assert not monitor.drift and len(events.of("quality_recovered")) == 1, {k: (v["value"], v["raised"]) for k, v in monitor.status().signals.items()}
    assert monitor.status().model_version == 2 and monitor.status().baseline == "2 training region(s)"


def test_low_held_out_score_raises_drift():
    events = Recorder()
    monitor = QualityMonitor(MonitorConfig(held_out_on_db=0.2, held_out_off_db=0.4), emit=events, clock=Clock())
    monitor.on_outcome(ReferenceOutcome("hr:1", "lr:1", None, 0.1, 0.15, False, 1, "no"), None)
    assert monitor.drift and events.of("quality_drift")[0]["signals"]["held_out"]["value"] == pytest.approx(0.1)
    monitor.on_outcome(ReferenceOutcome("hr:2", "lr:2", None, 0.3, 0.5, True, 2, "yes"), None)
    assert not monitor.drift and len(events.of("quality_recovered")) == 1


def test_monitor_configuration_rules(tmp_path):
    with pytest.raises(ConfigError, match="monitor.hook_dir"):
        MonitorConfig(hook="file")
    with pytest.raises(ConfigError, match="monitor.coverage_off"):
        MonitorConfig(coverage_on=1.2, coverage_off=1.3)
    with pytest.raises(ConfigError, match="monitor.held_out_off_db"):
        MonitorConfig(held_out_on_db=0.5, held_out_off_db=0.5)
    with pytest.raises(ConfigError, match="inside the watched folder"):
        load_config(None, {"ingest.watch": str(tmp_path), "monitor.hook": "file",
                           "monitor.hook_dir": str(tmp_path / "requests")})
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:5555", "monitor.window": "5",
                                "monitor.hook": "script", "monitor.hook_command": "/bin/echo,hello"})
    assert config.monitor.window == 5 and config.monitor.hook_command == ("/bin/echo", "hello")


def test_an_answered_request_never_expires():
    """Issue 18: a request that a reference answered within a second was later expired as "unanswered after 120 s"
    while the reference was still being learned."""
    clock, events = Clock(), Recorder()
    monitor = QualityMonitor(MonitorConfig(request_interval_s=10.0, request_timeout_s=120.0), emit=events, clock=clock)
    lr = np.random.default_rng(0).random(SHAPE)
    monitor.observe(frame(lr, 1))
    request = events.of("reference_requested")[0]
    clock.now += 1.0
    monitor.reference_arrived(frame(lr, 2))  # answered within a second; learning it takes minutes at x4
    clock.now += 200.0
    monitor.tick()
    assert events.of("reference_request_expired") == []
    assert monitor.status().requests.expired == 0
    monitor.on_outcome(ReferenceOutcome("mem:2", "mem:1", None, None, None, False, 0, "no match"), None)
    assert monitor.status().requests.outstanding is None
    # an unanswered request still expires
    clock.now += 20.0
    monitor.observe(frame(lr, 3))
    assert len(events.of("reference_requested")) == 2 and request["id"] != events.of("reference_requested")[1]["id"]
    clock.now += 121.0
    monitor.tick()
    assert len(events.of("reference_request_expired")) == 1


def test_no_model_request_while_a_model_is_on_its_way():
    """While a reference is being learned or a promoted model warms up, frames without a model ask for nothing."""
    clock, events = Clock(), Recorder()
    pending = {"now": True}
    monitor = QualityMonitor(MonitorConfig(request_interval_s=1.0), emit=events, clock=clock,
                             model_pending=lambda: pending["now"])
    lr = np.random.default_rng(0).random(SHAPE)
    for seq in range(5):
        clock.now += 2.0
        monitor.observe(frame(lr, seq))
    assert events.of("reference_requested") == []
    pending["now"] = False  # the reference was refused: no model after all, so ask
    monitor.observe(frame(lr, 9))
    assert [r["reason"] for r in events.of("reference_requested")] == ["no_model"]


def test_the_support_the_server_measured_is_used_instead_of_measuring_it_again(microscope):
    from dataclasses import replace

    from refscope.models.confidence import confidence_map, support_grid

    scan, learn = microscope
    model, region = learn(0.0)
    monitor = QualityMonitor(MonitorConfig(), emit=Recorder(), clock=Clock())
    monitor.set_model(model, 3, regions=[region])
    data = scan(1.0)
    measured = support_grid(data, model, stride=MonitorConfig().confidence_stride)
    doctored = replace(measured, q=measured.q * 10.0)  # what only a reused grid can give
    q_ref = monitor._profile.q_ref
    reused = monitor.observe(frame(data, 1), support=doctored, support_version=3)
    np.testing.assert_array_equal(reused.confidence, confidence_map(doctored, q_ref))
    for version, grid in ((2, doctored), (3, replace(doctored, out_shape=(2, 2)))):  # another model, another frame
        fresh = monitor.observe(frame(data, 2), support=grid, support_version=version)
        np.testing.assert_allclose(fresh.confidence, confidence_map(measured, q_ref), atol=1e-6)

"""The daemon's collaborators, each alone (issue 14, item 4): the books (:class:`Tally`), the stream output, the serve
and ingest loops and the operator's commands, built from the parts they are given -- no daemon around them."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refscope.daemon.frames import Frame
from refscope.daemon.ingest.memory import MemoryFrameSource
from refscope.daemon.learn.pairing import RoleClassifier
from refscope.daemon.serve.engine import ServingEngine
from refscope.daemon.serve.fusion_window import FusionWindow
from refscope.daemon.service.commands import OperatorControls
from refscope.daemon.service.frame_path import (IngestLoop, LearnerSlot, NewestFrame, ServeItem, ServeLoop,
                                                ServeQueue)
from refscope.daemon.service.stream_output import StreamOutput
from refscope.daemon.service.tally import Tally
from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.state.model_domain import DomainWatch
from tests.daemon.service.test_service import make_config

log = logging.getLogger("refscope.daemon")


class FakeStream:
    """Records what would go on the PUB socket."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.published: list[tuple[np.ndarray, Any, Any, Any]] = []
        self.parts: list[list[bytes]] = []

    def publish(self, image, fields, *, confidence=None, consistency=None) -> bool:  # type: ignore[no-untyped-def]
        self.published.append((image, fields, confidence, consistency))
        return self.accept

    def send_parts(self, parts: list[bytes]) -> bool:
        self.parts.append(parts)
        return self.accept


class FakeLearner:
    def __init__(self) -> None:
        self.lr: list[str] = []
        self.references: list[str] = []

    def note_lr(self, frame: Frame) -> None:
        self.lr.append(frame.source)

    def note_fused(self, frame: Frame) -> None:
        pass

    def submit_reference(self, frame: Frame) -> bool:
        self.references.append(frame.source)
        return True


def frame(source: str, shape=(24, 32), *, role: str = "lr", pixel_nm: float = 10.0, seq: int = 0) -> Frame:
    data = np.random.default_rng(seq).random(shape).astype(np.float32)
    return Frame(data, pixel_nm, role, source, seq, time.time())  # type: ignore[arg-type]


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture()
def parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, **{"ingest.watch": str(tmp_path / "in"), "state_dir": str(tmp_path / "state")})
    config.state_dir.mkdir(parents=True)
    catalogue = Catalogue.in_state_dir(config.state_dir)
    tally = Tally(log)
    tally.attach(catalogue=catalogue)
    engine = ServingEngine(config.model, config.serve, use_onnx=False, budget=config.memory_budget)
    yield config, catalogue, tally, engine
    catalogue.close()


# ----------------------------------------------------------------------------------------------------- tally
def test_the_tally_counts_errors_rejects_in_the_catalogue_and_summarises_latency(parts) -> None:
    config, catalogue, tally, _ = parts
    catalogue.record_frame("a.tif", role="lr", seq=0, t=0.0, size=1, mtime=1.0)
    tally.reject("a.tif", "too_large", "a.tif: 9000x9000 px")
    assert tally.errors.snapshot() == {"too_large": 1} and tally.last_error == "a.tif: 9000x9000 px"
    assert catalogue.frame("a.tif").status == "rejected"

    def broken() -> None:
        raise OSError("disk full")

    assert tally.catalogue_call(broken, "b.tif") is False
    assert tally.errors.get("catalogue_error") == 1 and "disk full" in tally.last_error
    tally.emit("paused", {"paused": True})  # no event publisher attached yet: nothing raised
    for seconds in (0.1, 0.2, 0.3):
        tally.record_latency(seconds, seconds / 2, seconds / 4)
    n, latency, model_s, processing = tally.latency_summary()
    assert n == 3 and latency["p50"] == pytest.approx(0.2) and model_s["mean"] == pytest.approx(0.1)
    assert processing["p99"] == pytest.approx(np.percentile([0.025, 0.05, 0.075], 99))


# --------------------------------------------------------------------------------------------- stream output
def test_the_stream_output_numbers_flags_and_counts_what_it_publishes(parts) -> None:
    config, _, tally, engine = parts
    stream = FakeStream()
    output = StreamOutput(stream, config.publish, consistency_on=2.0, tally=tally)  # type: ignore[arg-type]
    f = frame("mem:1")
    result = engine.enhance(f.data)
    times = {"origin_t": time.time() - 1.0, "ingested_t": time.time()}
    seq, latency, pixel_nm = output.publish(f, result, **times, scale=2, out_pixel_nm=5.0, drift=False,
                                            consistency=1.0)
    assert (seq, pixel_nm) == (1, 5.0) and latency >= 1.0 and stream.published[-1][2] is None
    seq, _, _ = output.publish(f, result, **times, scale=2, out_pixel_nm=None, drift=False,
                               consistency=2.5)  # past consistency_on
    assert seq == 2 and stream.published[-1][2] == "low" and stream.published[-1][1].pixel_size_m == 0.5e-9
    output.stream_raw(f)
    assert len(stream.parts) == (1 if config.publish.stream_raw else 0)
    stream.accept = False
    output.publish(f, result, **times, scale=2, out_pixel_nm=5.0, drift=True)
    counts = tally.counts.snapshot()
    assert counts["out"] == 3 and counts["dropped.stream"] == 1 and tally.latency_summary()[0] == 3
    nowhere = StreamOutput(None, config.publish, consistency_on=2.0, tally=tally)
    assert nowhere.publish(f, result, **times, scale=2, out_pixel_nm=5.0, drift=False)[0] == 1  # counted, dropped
    assert tally.counts.get("dropped.stream") == 2


# ------------------------------------------------------------------------------------------------ serve loop
def serve_loop(config, catalogue, tally, engine, stream, **kwargs):  # type: ignore[no-untyped-def]
    queue = ServeQueue(4)
    newest = NewestFrame()
    paused = threading.Event()
    loop = ServeLoop(config, serve_queue=queue, catalogue=catalogue, engine=engine, domain_watch=DomainWatch(log),
                     paused=paused, fusion=FusionWindow(enabled=False), learners=LearnerSlot(), folder=None,
                     output=StreamOutput(stream, config.publish, consistency_on=2.0, tally=tally), monitor=None,
                     trainer=None, newest=newest, tally=tally, **kwargs)
    return loop, queue, newest, paused


def test_the_serve_loop_alone_serves_skips_when_paused_and_drains_at_finish(parts) -> None:
    config, catalogue, tally, engine = parts
    stream = FakeStream()
    loop, queue, newest, paused = serve_loop(config, catalogue, tally, engine, stream)
    frames = [frame(f"mem:{i}", seq=i) for i in range(4)]
    for f in frames:
        catalogue.record_frame(f.source, role="lr", seq=f.seq, t=f.t)
    with loop:
        queue.items.put(ServeItem(frames[0], time.time(), time.time(), None, None))
        wait_for(lambda: len(stream.published) == 1, 10, "the first frame served")
        image = stream.published[0][0]
        assert image.shape == (48, 64) and newest.get()[0] is frames[0]
        assert catalogue.frame("mem:0").status == "enhanced"  # no output folder: enhanced once streamed
        paused.set()
        queue.items.put(ServeItem(frames[1], time.time(), time.time(), None, None))
        wait_for(lambda: tally.counts.get("skipped.paused") == 1, 10, "the paused frame skipped")
        assert catalogue.frame("mem:1").status == "rejected" and len(stream.published) == 1
        paused.clear()
        for f in frames[2:]:
            queue.items.put(ServeItem(f, time.time(), time.time(), None, None))
        assert loop.finish(drain_s=10.0, timeout=10.0)  # what was queued is served before the loop ends
    assert len(stream.published) == 3 and queue.items.empty()


def test_a_state_failure_stops_the_serve_loop_and_tells_its_owner(parts) -> None:
    from refscope.daemon.errors import StateError

    config, catalogue, tally, engine = parts
    stopped = threading.Event()
    loop, queue, _, _ = serve_loop(config, catalogue, tally, engine, FakeStream(), on_failure=stopped.set)

    class GoneMonitor:  # the daemon's own state fails in a turn (not a frame's fault)
        def tick(self) -> None:
            raise StateError("state folder gone")

    loop.monitor = GoneMonitor()  # type: ignore[assignment]
    loop.start()
    assert stopped.wait(10), "the owner was not told"
    with pytest.raises(StateError, match="state folder gone"):
        loop.stop(timeout=5)
    assert loop.failed_turns == 0  # not counted as a bad turn: it stopped the loop


# ----------------------------------------------------------------------------------------------- ingest loop
def test_the_ingest_loop_alone_routes_live_frames_to_the_queue_and_references_to_the_learner(parts) -> None:
    config, catalogue, tally, engine = parts
    learners = LearnerSlot()
    learners.current = FakeLearner()  # type: ignore[assignment]
    live = [frame(f"mem:lr{i}", seq=i, role="lr", pixel_nm=10.0) for i in range(2)]
    reference = frame("mem:hr", shape=(40, 40), seq=5, role="hr", pixel_nm=2.5)
    queue = ServeQueue(4)
    source = MemoryFrameSource([live[0], reference, live[1]])
    source.start()
    loop = IngestLoop(config, sources=[("memory", source)],
                      catalogue=catalogue, learners=learners,
                      classify=RoleClassifier(config.ingest, lr_pixel_size_nm=config.ingest.pixel_size_nm),
                      engine=engine, monitor=None, serve_queue=queue, serve_block_s=1.0, tally=tally)
    with loop:
        wait_for(lambda: queue.items.qsize() == 2 and learners.current.references, 10, "the three frames routed")
    served = [queue.items.get_nowait().frame.source for _ in range(2)]
    assert served == ["mem:lr0", "mem:lr1"] and learners.current.references == ["mem:hr"]
    assert learners.current.lr == ["mem:lr0", "mem:lr1"]
    assert loop.last_role == {"source": "mem:lr1", "role": "lr", "reason": loop.last_role["reason"]}
    counts = tally.counts.snapshot()
    assert counts["in"] == 3 and counts["in_lr"] == 2 and counts["in_hr"] == 1
    assert catalogue.frame("mem:hr").role == "hr" and catalogue.frame("mem:lr0").status == "received"


# ------------------------------------------------------------------------------------------ operator controls
def test_the_operator_controls_alone(parts, tmp_path: Path) -> None:
    config, _, tally, engine = parts
    events: list[tuple[str, dict]] = []

    class Events:
        def emit(self, kind: str, payload: dict) -> None:
            events.append((kind, payload))

    class Monitor:
        def request(self, **kwargs: Any) -> dict:
            return {"reason": kwargs["reason"], "region": kwargs["region"]}

        def reset(self) -> None:
            pass

    tally.attach(events=Events())
    paused, newest = threading.Event(), NewestFrame()
    controls = OperatorControls(engine=engine, monitor=Monitor(), learners=LearnerSlot(),  # type: ignore[arg-type]
                                make_learner=lambda *a: None, newest=newest, paused=paused,  # type: ignore[arg-type]
                                status=lambda: None, state_dir=tmp_path / "state",  # type: ignore[arg-type]
                                tally=tally)
    handlers = controls.handlers()
    assert set(handlers) == {"ping", "status", "pause", "resume", "request_reference", "set", "snapshot"}
    assert handlers["pause"]() == {"paused": True} and paused.is_set()
    assert handlers["resume"]() == {"paused": False} and not paused.is_set()
    assert [kind for kind, _ in events] == ["paused", "resumed"]
    with pytest.raises(ValueError, match="no frame has been enhanced yet"):
        controls.snapshot()
    f = frame("mem:1")
    newest.set(f, engine.enhance(f.data))
    with pytest.raises(ValueError, match="outside the newest frame"):
        controls.request_reference(region=[0, 0, 100, 10])
    assert controls.request_reference(region=[0, 0, 10, 10])["requested"]["reason"] == "operator"
    written = controls.snapshot()
    assert Path(written["raw"]).exists() and Path(written["enhanced"]).exists()

"""The learning worker: promotes a model that beats the serving one, refuses garbage, survives bad references,
keeps the newest references when its queue overflows, and hands its own failures back to the owner."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import refscope.daemon.learn.learner as learner_module
from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.state.model_store import load_served_baseline
from refscope.daemon.errors import RefscopeError
from refscope.daemon.frames import Frame
from refscope.daemon.learn.learner import MODEL_VERSION_FILE, Learner, load_initial
from refscope.daemon.publish import EventPublisher
from refscope.models.errors import LibraryError
from refscope.models.library import LibraryConfig
from refscope.models.image_ops import upsample_bicubic
from refscope.models.pipeline import FitConfig, FittedModel, enhance
from refscope.models.promotion import PromotionDecision
from refscope.models.synthetic import SyntheticPair, make_pair
from tests.daemon.waiting import wait_for

CONFIG = FitConfig(scale=2, library=LibraryConfig(size=2000, patch_size=9))


class FakeEvents:
    """Records what :meth:`EventPublisher.emit` would publish (same signature)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, type: str, payload: dict[str, Any] | None = None, *, t: float | None = None) -> bool:
        EventPublisher.encode(type, payload, t=t)  # same validation and JSON rules as the real publisher
        with self._lock:
            self.events.append((type, dict(payload or {})))
        return True

    def of(self, type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p in self.events if t == type]


class Promotions:
    """The ``on_promoted`` callback: remembers each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[FittedModel, int, PromotionDecision]] = []
        self.serve: list[bool] = []

    def __call__(self, model: FittedModel, version: int, decision: PromotionDecision, *, serve: bool = True) -> None:
        self.calls.append((model, version, decision))
        self.serve.append(serve)


def lr_frame(pair: SyntheticPair, source: str, seq: int = 0) -> Frame:
    return Frame(data=pair.lr, pixel_size_nm=pair.lr_pixel_size_nm, role="lr", source=source, seq=seq, t=0.0)


def hr_frame(data: np.ndarray, source: str, seq: int = 0) -> Frame:
    return Frame(data=data, pixel_size_nm=5.0, role="hr", source=source, seq=seq, t=0.0)


def done(learner: Learner, n: int) -> Callable[[], bool]:
    """True once ``n`` references were learned from or rejected and the worker is idle."""
    def check() -> bool:
        learner.check()
        s = learner.status()
        return s.pairs_learned + s.references_rejected >= n and not s.busy and s.queued == 0
    return check


def scramble_training_area(pair: SyntheticPair, rng: np.random.Generator, block: int = 6) -> np.ndarray:
    """The HR reference with its pixels shuffled within each block x block tile over the left 65 % of its columns.

    The coarse structure survives, so it still registers (NCC ~0.8), but the fine detail it teaches is garbage;
    the right quarter, which the learner holds out for validation, is left intact."""
    hr = pair.hr.copy()
    rows, cols = hr.shape[0] // block * block, int(0.65 * hr.shape[1]) // block * block
    tiles = hr[:rows, :cols].reshape(rows // block, block, cols // block, block).transpose(0, 2, 1, 3)
    tiles = rng.permuted(tiles.reshape(rows // block, cols // block, block * block), axis=2)
    hr[:rows, :cols] = tiles.reshape(rows // block, cols // block, block, block).transpose(0, 2, 1, 3).reshape(rows, cols)
    return hr


@pytest.fixture(scope="module")
def scenes() -> list[SyntheticPair]:
    """Three unrelated synthetic scenes: LR 160x200 at 10 nm, HR 160x200 at 5 nm over 25 % of the LR field."""
    rng = np.random.default_rng(31)
    return [make_pair(rng=rng, lr_shape=(160, 200), factor=2.0) for _ in range(3)]


@pytest.fixture()
def catalogue(tmp_path: Path) -> Iterator[Catalogue]:
    with Catalogue.in_state_dir(tmp_path / "state") as cat:
        yield cat


def make_learner(tmp_path: Path, catalogue: Catalogue | None, events: Any, on_promoted: Any, **options: Any) -> Learner:
    return Learner(fit_config=CONFIG, state_dir=tmp_path / "state", catalogue=catalogue, events=events,
                   on_promoted=on_promoted, poll_interval_s=0.02, **options)


def learn_one(tmp_path: Path, scene: SyntheticPair, hr: np.ndarray, **options: Any) -> tuple[Promotions, Any]:
    """A learner with ``options`` learns from one reference ``hr`` of ``scene``; (its promotions, its status)."""
    promoted = Promotions()
    learner = make_learner(tmp_path, None, None, promoted, **options)
    learner.start()
    try:
        learner.note_lr(lr_frame(scene, "lr.tif"))
        assert learner.submit_reference(hr_frame(hr, "hr.tif"))
        wait_for(done(learner, 1))
        return promoted, learner.status()
    finally:
        learner.stop(timeout=30)


# ------------------------------------------------------------------------------------------------ tests


def test_promotes_a_good_pair_and_refuses_a_garbage_one(tmp_path: Path, scenes, catalogue: Catalogue) -> None:
    first, second, _ = scenes
    events, promoted = FakeEvents(), Promotions()
    learner = make_learner(tmp_path, catalogue, events, promoted)
    assert learner.status().model_version == 0 and learner.status().held_out_delta_db == 0.0
    learner.start()
    try:
        learner.note_lr(lr_frame(first, "first_lr.tif"))
        assert learner.submit_reference(hr_frame(first.hr, "first_hr.tif"))
        wait_for(done(learner, 1))
        status = learner.status()
        assert (status.pairs_learned, status.model_version, status.models_promoted) == (1, 1, 1)
        assert status.held_out_delta_db is not None and status.held_out_delta_db > 0.1
        assert status.library_size > 0 and "beats serving model" in (status.last_decision_reason or "")
        assert len(promoted.calls) == 1
        model, version, decision = promoted.calls[0]
        assert version == 1 and decision.promote and len(model.library) == status.library_size

        # the saved state is what survives a restart
        loaded, saved_version = load_initial(tmp_path / "state")
        assert saved_version == 1 and loaded is not None
        np.testing.assert_array_equal(loaded.library.keys, model.library.keys)

        # a reference of another field that registers well but teaches garbage is not promoted
        learner.note_lr(lr_frame(second, "second_lr.tif"))
        garbage = scramble_training_area(second, np.random.default_rng(5))
        assert learner.submit_reference(hr_frame(garbage, "garbage_hr.tif"))
        wait_for(done(learner, 2))
        status = learner.status()
        assert (status.pairs_learned, status.model_version, status.models_rejected) == (2, 1, 1)
        assert "does not beat the serving model" in (status.last_decision_reason or "")
        assert len(promoted.calls) == 1
        served, served_version = learner.current_model()
        assert served is model and served_version == 1  # the champion keeps serving; the candidate is discarded
        assert status.library_size == len(model.library)
    finally:
        learner.stop(timeout=30)

    # the state on disk is still version 1 with the champion's library
    loaded, saved_version = load_initial(tmp_path / "state")
    assert saved_version == 1 and loaded is not None
    np.testing.assert_array_equal(loaded.library.values, model.library.values)

    # events and catalogue
    learned = events.of("pair_learned")
    assert [(e["hr"], e["lr"]) for e in learned] == [("first_hr.tif", "first_lr.tif"), ("garbage_hr.tif", "second_lr.tif")]
    np.testing.assert_allclose(learned[0]["offset"], first.offset_yx, atol=0.3)
    assert learned[0]["ncc"] > 0.9 and learned[1]["ncc"] > 0.5 and abs(learned[0]["rotation"]) < 0.5
    (prom,) = events.of("model_promoted")
    assert prom["version"] == 1 and prom["library_size"] == len(model.library) and prom["held_out_delta_db"] > 0.1
    (rej,) = events.of("model_rejected")
    assert rej["version"] == 1 and rej["candidate_delta_db"] < rej["held_out_delta_db"] and "does not beat" in rej["reason"]
    assert [p.hr_source for p in catalogue.pairs()] == ["first_hr.tif", "garbage_hr.tif"]
    history = catalogue.model_history()
    assert [(m.version, m.promoted) for m in history] == [("1", True), ("2", False)]
    assert "does not beat" in (history[1].reason or "") and history[1].scores["hr"] == "garbage_hr.tif"
    assert [e.type for e in catalogue.recent_events(10)] == ["pair_learned", "model_promoted", "pair_learned",
                                                             "model_rejected"]

    # resuming: an incremental learner starts from the saved model
    resumed = make_learner(tmp_path, None, None, Promotions(), initial_model=loaded, initial_version=saved_version)
    assert resumed.status().model_version == 1 and resumed.status().library_size == len(model.library)
    with pytest.raises(ValueError, match="does not match the fit configuration"):
        Learner(fit_config=FitConfig(scale=3), state_dir=tmp_path, catalogue=None, events=None,
                on_promoted=Promotions(), initial_model=loaded)


def test_load_initial_versions(tmp_path: Path, scenes) -> None:
    assert load_initial(tmp_path / "nowhere") == (None, 0)
    assert load_initial(tmp_path) == (None, 0)
    first = scenes[0]
    learner = make_learner(tmp_path, None, None, Promotions(), initial_version=6)
    learner.start()
    try:
        learner.note_lr(lr_frame(first, "lr.tif"))
        learner.submit_reference(hr_frame(first.hr, "hr.tif"))
        wait_for(done(learner, 1))
    finally:
        learner.stop(timeout=30)
    state = tmp_path / "state"
    assert load_initial(state)[1] == 7
    record = json.loads((state / MODEL_VERSION_FILE).read_text())
    assert record["version"] == 7 and record["sources"] == ["lr.tif", "hr.tif"]
    # a library newer than its version record (save interrupted before the record): the next version
    record["library_sha256"] = "0" * 64
    (state / MODEL_VERSION_FILE).write_text(json.dumps(record))
    assert load_initial(state)[1] == 8
    # a model without a record (e.g. `refscope fit -o`) is version 1
    (state / MODEL_VERSION_FILE).unlink()
    model, version = load_initial(state)
    assert version == 1 and model is not None


def test_unmatched_reference_is_rejected_and_the_next_one_is_learned(tmp_path: Path, scenes, catalogue) -> None:
    first, _, stranger = scenes
    events, promoted = FakeEvents(), Promotions()
    with make_learner(tmp_path, catalogue, events, promoted) as learner:
        learner.note_lr(lr_frame(first, "lr.tif"))
        learner.submit_reference(hr_frame(stranger.hr, "stranger_hr.tif"))
        wait_for(done(learner, 1))
        status = learner.status()
        assert status.references_rejected == 1 and status.rejected_by_reason == {"no_match": 1}
        assert "HR reference stranger_hr.tif matches none of the 1 recent LR frames (best NCC" in status.last_error
        learner.submit_reference(hr_frame(first.hr, "good_hr.tif"))
        wait_for(done(learner, 2))
        status = learner.status()
        assert (status.pairs_learned, status.references_rejected, status.model_version) == (1, 1, 1)
    (rejected,) = events.of("pair_rejected")
    assert rejected["hr"] == "stranger_hr.tif" and rejected["reason"] == "no_match" and rejected["best_ncc"] < 0.3
    assert [e.type for e in catalogue.recent_events(10)][0] == "pair_rejected"
    assert len(promoted.calls) == 1


def test_model_errors_while_fitting_are_counted_not_fatal(tmp_path: Path, scenes, monkeypatch) -> None:
    first = scenes[0]

    def no_texture(*args: Any, **kwargs: Any) -> FittedModel:
        raise LibraryError("too few textured patches")

    monkeypatch.setattr(learner_module, "fit_library", no_texture)
    events = FakeEvents()
    with make_learner(tmp_path, None, events, Promotions()) as learner:
        learner.note_lr(lr_frame(first, "lr.tif"))
        learner.submit_reference(hr_frame(first.hr, "hr.tif"))
        wait_for(done(learner, 1))
        status = learner.status()
    assert status.rejected_by_reason == {"fit_failed": 1} and status.model_version == 0
    assert "HR reference hr.tif (paired with lr.tif) could not be learned from: too few textured" in status.last_error
    assert events.of("pair_rejected")[0]["reason"] == "fit_failed" and not events.of("pair_learned")


def test_queue_keeps_the_newest_references(tmp_path: Path, caplog) -> None:
    events = FakeEvents()
    learner = make_learner(tmp_path, None, events, Promotions(), queue_size=2)
    refs = [hr_frame(np.zeros((16, 16)), f"hr{i}.tif", seq=i) for i in range(5)]
    with caplog.at_level("WARNING", logger="refscope.learner"):
        assert all(learner.submit_reference(r) for r in refs)  # not started yet: queued, never blocking
    status = learner.status()
    assert (status.queued, status.references_dropped) == (2, 3)
    assert "hr2.tif: dropped unprocessed, the learning queue was full (2 references waiting)" in status.last_error
    assert sum("dropped (queue_full" in r.getMessage() for r in caplog.records) == 3
    learner.start()
    wait_for(done(learner, 2))
    learner.stop(timeout=10)
    # only the two newest were processed (no LR frame yet: both rejected)
    assert [e["hr"] for e in events.of("pair_rejected")] == ["hr3.tif", "hr4.tif"]
    assert learner.status().rejected_by_reason == {"no_lr_frames": 2}
    assert not learner.submit_reference(refs[0])  # stopped
    learner.stop()  # idempotent


def test_a_reference_the_learner_fails_on_is_quarantined_and_the_worker_goes_on(tmp_path: Path, monkeypatch,
                                                                                catalogue: Catalogue) -> None:
    real = learner_module.pair_reference

    def broken_on_one(hr: Frame, *args: Any, **kwargs: Any) -> Any:
        if hr.source == "bad.tif":
            raise RuntimeError("bug in pairing")
        return real(hr, *args, **kwargs)

    monkeypatch.setattr(learner_module, "pair_reference", broken_on_one)
    events = FakeEvents()
    learner = make_learner(tmp_path, catalogue, events, Promotions())
    learner.start()
    bad = hr_frame(np.zeros((16, 16)), "bad.tif")
    bad = Frame(data=bad.data, pixel_size_nm=5.0, role="hr", source="bad.tif", seq=0, t=0.0,
                metadata={"file_size_bytes": 10, "file_mtime": 1.0})
    assert learner.submit_reference(bad)
    wait_for(done(learner, 1))
    # the worker is alive: the next reference is handled (no LR frame: rejected, not a crash)
    assert learner.submit_reference(hr_frame(np.zeros((16, 16)), "next.tif"))
    wait_for(done(learner, 2))
    learner.check()
    status = learner.status()
    assert status.rejected_by_reason == {"learn_failed": 1, "no_lr_frames": 1}
    assert "bad.tif" in status.last_error or "next.tif" in status.last_error
    # quarantined: recorded so that a restart does not retry it, and announced
    assert catalogue.learned("bad.tif", 10, 1.0) == "quarantined"
    assert catalogue.learned("bad.tif", 11, 1.0) is None  # a new version of the file is learned again
    assert [e["reason"] for e in events.of("pair_rejected")] == ["learn_failed", "no_lr_frames"]
    learner.stop(timeout=5)


def test_a_failure_of_the_state_stops_the_worker_and_is_reraised_on_the_owner_thread(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    def state_gone(*args: Any, **kwargs: Any) -> None:
        raise learner_module.StateError("catalogue.sqlite3: catalogue write failed (disk I/O error)")

    monkeypatch.setattr(learner_module, "pair_reference", state_gone)
    events = FakeEvents()
    learner = make_learner(tmp_path, None, events, Promotions())
    learner.start()
    learner.submit_reference(hr_frame(np.zeros((16, 16)), "hr.tif"))
    wait_for(lambda: learner.status().last_error is not None)
    wait_for(lambda: not learner.submit_reference(hr_frame(np.zeros((16, 16)), "hr2.tif")))
    with pytest.raises(learner_module.StateError, match="disk I/O error"):
        learner.check()
    assert "StateError" in learner.status().last_error
    assert events.of("error")[0]["component"] == "learner"
    with pytest.raises(learner_module.StateError):
        learner.stop(timeout=5)


def test_events_reach_a_subscriber(tmp_path: Path, scenes) -> None:
    first, _, stranger = scenes
    context = zmq.Context()
    try:
        with EventPublisher("tcp://127.0.0.1:*", context=context) as publisher:
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, EventPublisher.TOPIC)
            sub.connect(publisher.bound_endpoint)
            deadline = time.monotonic() + 5
            while True:  # wait until the subscription is live (slow joiner)
                publisher.emit("probe")
                if sub.poll(20):
                    sub.recv_multipart()
                    break
                assert time.monotonic() < deadline
            with make_learner(tmp_path, None, publisher, Promotions()) as learner:
                learner.note_lr(lr_frame(first, "lr.tif"))
                learner.submit_reference(hr_frame(stranger.hr, "stranger_hr.tif"))
                wait_for(done(learner, 1))
            got = []
            while sub.poll(200):
                got.append(json.loads(sub.recv_multipart()[1]))
            sub.close()
    finally:
        context.term()
    rejected = [e for e in got if e["type"] == "pair_rejected"]
    assert len(rejected) == 1 and rejected[0]["payload"]["hr"] == "stranger_hr.tif"


def test_bad_arguments(tmp_path: Path) -> None:
    for options, match in (({"queue_size": 0}, "queue_size"), ({"initial_version": -1}, "initial_version"),
                           ({"margin_db": float("nan")}, "margin_db")):
        with pytest.raises(ValueError, match=match):
            make_learner(tmp_path, None, None, Promotions(), **options)
    learner = make_learner(tmp_path, None, None, Promotions())
    learner.start()
    try:
        with pytest.raises(RefscopeError, match="already started"):
            learner.start()
    finally:
        learner.stop(timeout=5)


def test_a_reference_waits_for_the_frame_being_served_at_most_the_yield_time(tmp_path: Path, scenes,
                                                                             monkeypatch) -> None:
    """Serving first: a zoom-series frame is served before the learner fits it (both in one process)."""
    import refscope.daemon.learn.learner as learner_module

    first = scenes[0]
    serving = {"busy": True}
    started: list[float] = []
    real_pair = learner_module.pair_reference

    def pair(*args: Any, **kwargs: Any) -> Any:
        started.append(time.monotonic())
        return real_pair(*args, **kwargs)

    monkeypatch.setattr(learner_module, "pair_reference", pair)
    monkeypatch.setattr(learner_module, "YIELD_TO_SERVING_S", 1.5)
    with make_learner(tmp_path, None, FakeEvents(), Promotions(), serving_busy=lambda: serving["busy"]) as learner:
        learner.note_lr(lr_frame(first, "lr.tif"))
        submitted = time.monotonic()
        learner.submit_reference(hr_frame(first.hr, "a_hr.tif"))
        time.sleep(0.5)
        assert started == [] and learner.status().busy  # taken, but waiting for serving
        serving["busy"] = False
        wait_for(done(learner, 1))
        assert 0.5 <= started[0] - submitted < 1.5
        serving["busy"] = True  # serving never idle: the next reference is learned after the cap anyway
        submitted = time.monotonic()
        learner.submit_reference(hr_frame(first.hr, "b_hr.tif"))
        wait_for(done(learner, 2))
        assert 1.4 <= started[1] - submitted < 5.0


def test_a_promoted_library_carries_its_safe_baseline_chosen_on_the_held_out_area(tmp_path: Path, scenes) -> None:
    from refscope.models.baseline import SafeBaseline
    from refscope.models.confidence import reference_q, support_grid
    from refscope.models.peers import tuned_blur

    first = scenes[0]
    splits: list[Any] = []
    promoted = Promotions()
    learner = make_learner(tmp_path, None, None, promoted, on_learned=lambda split, sources: splits.append(split))
    learner.start()
    try:
        learner.note_lr(lr_frame(first, "first_lr.tif"))
        assert learner.submit_reference(hr_frame(first.hr, "first_hr.tif"))
        wait_for(done(learner, 1))
    finally:
        learner.stop(timeout=30)
    ((model, version, _),), (split,) = promoted.calls, splits
    sigma, delta = tuned_blur(split.held_out, scale=2)
    region = np.hstack([split.train[0], np.vstack([lr for lr, _ in split.held_out])])  # the pair's LR overlap
    assert model.safe == SafeBaseline(sigma, delta, reference_q([support_grid(region, model)]))
    loaded, saved_version = load_initial(tmp_path / "state")
    assert saved_version == version and loaded is not None and loaded.safe == model.safe  # saved with the model


def test_when_the_first_reference_teaches_less_than_the_safe_baseline_the_baseline_is_offered(tmp_path: Path,
                                                                                             scenes) -> None:
    second = scenes[1]
    offered: list[Any] = []
    promoted = Promotions()
    learner = make_learner(tmp_path, None, None, promoted, on_baseline=offered.append)
    learner.start()
    try:
        learner.note_lr(lr_frame(second, "second_lr.tif"))
        garbage = scramble_training_area(second, np.random.default_rng(5))
        assert learner.submit_reference(hr_frame(garbage, "garbage_hr.tif"))
        wait_for(done(learner, 1))
        status = learner.status()
    finally:
        learner.stop(timeout=30)
    assert promoted.calls == [] and status.model_version == 0
    (baseline,) = offered
    assert baseline.delta_db > 0 and baseline.sigma_px > 0  # the blur beat bicubic on the held-out area
    assert "does not beat the safe baseline" in (status.last_decision_reason or "")
    assert load_served_baseline(tmp_path / "state", CONFIG.scale) == baseline  # a restart serves it again


@pytest.mark.parametrize("net_wins", [True, False])
def test_a_library_is_measured_against_the_network_that_serves(tmp_path: Path, scenes, net_wins: bool) -> None:
    """A library that beats the serving library would replace a network that serves, which was never compared with
    it. With ``served_net`` it is: where the network scores at least as well on the reference's held-out area the
    library is promoted behind it (saved, versioned, ``serve=False``); where it does not, the library serves."""
    from refscope.models.pipeline import fit

    first = scenes[0]
    if net_wins:  # a "network" that has seen the whole reference, the held-out area included
        oracle = fit(first.lr, [(first.hr, 2.0)], config=CONFIG)
        net = lambda lr: enhance(lr, oracle, method="paired")  # noqa: E731
    else:
        net = lambda lr: upsample_bicubic(lr, 2)  # noqa: E731
    asked: list[int] = []
    promoted, status = learn_one(tmp_path, first, first.hr, served_net=lambda: asked.append(1) or net)
    assert asked and status.model_version == 1 and len(promoted.calls) == 1
    assert promoted.serve == [not net_wins]
    reason = promoted.calls[0][2].reason
    assert ("the serving network keeps serving" in reason) is net_wins
    assert ("it also beats the serving network" in reason) is (not net_wins)
    loaded, version = load_initial(tmp_path / "state")
    assert version == 1 and loaded is not None  # saved either way: the session's library grows


def test_without_a_serving_network_a_promoted_library_serves(tmp_path: Path, scenes) -> None:
    promoted, _ = learn_one(tmp_path, scenes[0], scenes[0].hr, served_net=lambda: None)
    assert promoted.serve == [True] and "serving network" not in promoted.calls[0][2].reason


def test_a_safe_baseline_does_not_replace_a_serving_prior_that_beats_it(tmp_path: Path, scenes) -> None:
    """The garbage first reference of the test above, while a network (the shipped prior) serves that scores
    better than the tuned blur on the held-out area: the baseline is not offered, the network keeps serving."""
    from refscope.models.pipeline import fit

    second = scenes[1]
    oracle = fit(second.lr, [(second.hr, 2.0)], config=CONFIG)  # has seen the held-out area: beats any blur
    offered: list[Any] = []
    garbage = scramble_training_area(second, np.random.default_rng(5))
    promoted, _ = learn_one(tmp_path, second, garbage, on_baseline=offered.append,
                            served_net=lambda: (lambda lr: enhance(lr, oracle, method="paired")))
    assert promoted.calls == [] and offered == []
    assert load_served_baseline(tmp_path / "state", CONFIG.scale) is None

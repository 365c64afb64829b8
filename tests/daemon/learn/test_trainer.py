"""The background trainer: rounds (warm start, validation, checkpoint, gate), its process supervisor (crashes,
kills, stale wins) and the champion that decides what the daemon serves (live and after a restart)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.serve.champion import Champion
from refscope.daemon.config import ModelConfig, ServeConfig, TrainerConfig, load_config
from refscope.daemon.state.net_store import SessionPairs, has_net, load_best, load_net, load_served, save_net, save_pairs
from refscope.daemon.serve.engine import ServingEngine
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.learn.train_round import CHECKPOINT_DIR, RoundSpec, run_round
from refscope.daemon.learn.trainer import TRAINER_FILE, BackgroundTrainer
from refscope.models.pipeline import FitConfig, fit_library, register_reference, training_grids
from refscope.models.net_fit import NetFit
from refscope.models.networks import build_network
from refscope.models.promotion import HeldOutSplit, decide_promotion, split_for_validation
from refscope.models.training import Normalisation
from refscope.models.synthetic import make_pair
from tests.daemon.waiting import wait_for


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split() -> HeldOutSplit:
    """A registered synthetic x2 pair split into training area and 3 held-out subimages."""
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 128), factor=2.0)
    lr, hr = pair.lr.astype(np.float64), pair.hr.astype(np.float64)
    geometry = register_reference(lr, hr, factor=2.0, config=FitConfig(scale=2))
    (y0, y1), (x0, x1) = (box := training_grids(lr, hr, geometry, scale=2))[0]
    return split_for_validation(lr[y0:y1, x0:x1], box[1], scale=2)


def _store(folder: Path, split: HeldOutSplit) -> SessionPairs:
    pairs = SessionPairs(2)
    pairs.add(split.train, split.held_out, ["lr.tif", "hr.tif"])
    save_pairs(folder, pairs)
    return pairs


def _spec(folder: Path, index: int = 1, **changes: Any) -> RoundSpec:
    options = dict(state_dir=str(folder), round_index=index, network="compact", strategy="real-pairs", budget_s=2.0,
                   bootstrap_fraction=0.3, champion="bicubic", prior=False,  # the prior: tests/daemon/learn/test_priors.py
                   companion=False,  # the companion: test_rounds_alternate_network_and_companion_and_blend_them
                   baseline_share=False)  # the share: test_a_round_mixes_in_the_safe_baseline_it_chose
    return RoundSpec(**{**options, **changes})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ one round
def test_round_warm_starts_checkpoints_and_promotes_only_by_the_gate(tmp_path: Path, split) -> None:
    _store(tmp_path, split)
    first = run_round(_spec(tmp_path, 1))
    second = run_round(_spec(tmp_path, 2, net_version=2))
    assert first.warm_start is None and second.warm_start == "checkpoint"
    for result in (first, second):
        cand = result.candidate["d_psnr_db"]
        assert len(result.candidate["per_subimage_d_psnr_db"]) == 3 and result.held_out == 3
        assert result.status == ("promoted" if decide_promotion(cand, 0.0).promote else "kept")
        assert result.checkpointed is True
    assert has_net(tmp_path / CHECKPOINT_DIR)
    assert has_net(tmp_path) == ("promoted" in (first.status, second.status))


def test_rounds_alternate_network_and_companion_and_blend_them(tmp_path: Path, split) -> None:
    """Round 1 trains the network; round 2, with the network's checkpoint and no companion, trains the companion
    (the checkpoint untouched) and judges the blend; a new pair makes round 3 train the network again (the
    companion is behind it then), round 4 the companion. The candidate's score is the blend's at the chosen weight."""
    from refscope.daemon.learn.train_round import COMPANION_DIR
    from refscope.models.net_blend import blend_fits
    from refscope.models.net_fit import net_predictor
    from refscope.models.promotion import held_out_delta_psnr

    pairs = _store(tmp_path, split)
    first = run_round(_spec(tmp_path, 1, companion=True))
    assert first.trained == "network" and first.companion_weight is None
    checkpoint = _sha(tmp_path / CHECKPOINT_DIR / "net.npz")
    second = run_round(_spec(tmp_path, 2, companion=True))
    assert second.trained == "companion" and second.warm_start == "checkpoint"
    assert _sha(tmp_path / CHECKPOINT_DIR / "net.npz") == checkpoint and has_net(tmp_path / COMPANION_DIR)
    w = second.companion_weight
    assert w in (0.0, 0.25, 0.5, 0.75)
    network, companion = load_net(tmp_path / CHECKPOINT_DIR), load_net(tmp_path / COMPANION_DIR)
    served = network if w == 0 else blend_fits([network, companion], [1 - w, w])
    expected = held_out_delta_psnr(net_predictor(served), split.held_out, scale=2)
    assert second.candidate["d_psnr_db"] == pytest.approx(expected, abs=1e-6)
    if second.status == "promoted":
        assert load_net(tmp_path).network == ("blend" if w else "compact")

    pairs.add(split.train, split.held_out, ["lr2.tif", "hr2.tif"])
    save_pairs(tmp_path, pairs)
    third = run_round(_spec(tmp_path, 3, companion=True))
    assert third.trained == "network" and third.companion_weight is not None and third.pairs == 2
    fourth = run_round(_spec(tmp_path, 4, companion=True))
    assert fourth.trained == "companion"
    assert run_round(_spec(tmp_path, 5, companion=True)).trained == "network"


def test_a_round_mixes_in_the_safe_baseline_it_chose(tmp_path: Path, split) -> None:
    """With ``baseline_share`` the candidate is the trained network mixed with the safe baseline (σ tuned on the
    held-out subimages) at the share the round reports: its score is recomputed from the checkpoint and that
    share; without it the share is not chosen (None)."""
    from refscope.models.net_blend import BASELINE_WEIGHTS, with_baseline
    from refscope.models.net_fit import net_predictor
    from refscope.models.peers import tuned_blur
    from refscope.models.promotion import held_out_delta_psnr

    _store(tmp_path, split)
    result = run_round(_spec(tmp_path, 1, baseline_share=True))
    assert result.baseline_share in BASELINE_WEIGHTS and result.to_dict()["baseline_share"] == result.baseline_share
    sigma, _ = tuned_blur(list(split.held_out), scale=2)
    served = with_baseline(load_net(tmp_path / CHECKPOINT_DIR), sigma, result.baseline_share)
    expected = held_out_delta_psnr(net_predictor(served), split.held_out, scale=2)
    assert result.candidate["d_psnr_db"] == pytest.approx(expected, abs=1e-6)
    if result.status == "promoted":
        assert load_net(tmp_path).network == ("blend" if result.baseline_share else "compact")
    assert run_round(_spec(tmp_path, 2)).baseline_share is None


def test_a_promoted_blend_is_saved_served_and_judged_as_the_champion(tmp_path: Path, split) -> None:
    """A blend saved as the session's network round-trips (weights, ONNX), and a round judges a candidate against
    it (champion "net"), warm-starting from its first member (the network the rounds fine-tune)."""
    from refscope.daemon.offline.net import onnx_runner
    from refscope.models.net_blend import blend_fits
    from refscope.models.net_fit import net_predictor

    _store(tmp_path, split)
    norm = Normalisation(float(np.percentile(split.train[0], 0.5)), 1.0 / float(np.ptp(split.train[0])))
    members = [NetFit("compact", 2, build_network("compact", scale=2, seed=s).state_dict(), norm) for s in (1, 2)]
    blend = blend_fits(members, [0.5, 0.5])
    save_net(tmp_path, blend, sources=["lr.tif", "hr.tif"])
    loaded = load_net(tmp_path)
    lr = split.held_out[0][0]
    assert loaded.network == "blend"
    np.testing.assert_allclose(net_predictor(loaded)(lr), net_predictor(blend)(lr), atol=1e-5)
    data, manifest = load_served(tmp_path)
    np.testing.assert_allclose(onnx_runner(data, manifest, threads=1)(lr), net_predictor(blend)(lr), atol=2e-3)
    result = run_round(_spec(tmp_path, 1, champion="net"))
    assert result.warm_start == "network" and result.champion is not None
    assert result.champion["d_psnr_db"] == pytest.approx(0.0, abs=1e-6)  # untrained members: bicubic


def test_round_without_pairs_does_nothing(tmp_path: Path) -> None:
    result = run_round(_spec(tmp_path))
    assert result.status == "no_data" and not has_net(tmp_path / CHECKPOINT_DIR)


def test_corrupted_rounds_are_not_promoted(tmp_path: Path, split) -> None:
    """A diverged warm start (NaN weights) and a round trained on garbage targets never replace the champion."""
    _store(tmp_path, split)
    run_round(_spec(tmp_path, 1))  # its checkpoint becomes the promoted network
    fit = load_net(tmp_path / CHECKPOINT_DIR)
    save_net(tmp_path, fit)  # a promoted network that must survive the bad rounds untouched
    served = _sha(next(tmp_path.glob("net-*.onnx")))
    fit.state_dict = {k: torch.full_like(v, float("nan")) for k, v in fit.state_dict.items()}
    save_net(tmp_path / CHECKPOINT_DIR, fit)

    diverged = run_round(_spec(tmp_path, 2, champion="net"))
    assert diverged.warm_start == "checkpoint" and diverged.status == "kept"
    assert "non-finite" in diverged.reason and diverged.checkpointed is False
    assert not has_net(tmp_path / CHECKPOINT_DIR)  # the next round starts from the promoted network
    assert _sha(next(tmp_path.glob("net-*.onnx"))) == served

    lr, hr = split.train
    garbage = SessionPairs(2)
    garbage.add((lr, np.random.default_rng(0).permutation(hr.ravel()).reshape(hr.shape)), split.held_out, ["x"])
    save_pairs(tmp_path, garbage)
    scrambled = run_round(_spec(tmp_path, 3, champion="bicubic"))
    assert scrambled.warm_start == "network" and scrambled.status == "kept"
    assert scrambled.candidate["d_psnr_db"] < 0.0
    assert _sha(next(tmp_path.glob("net-*.onnx"))) == served


# ------------------------------------------------------------------------------------------------ supervisor
def _crash(spec: RoundSpec, conn: Any, level: int) -> None:
    os._exit(3)


def _fake_win(spec: RoundSpec, conn: Any, level: int) -> None:
    conn.send({"round": spec.round_index, "status": "promoted", "reason": "test win", "candidate": {"d_psnr_db": 1.0},
               "champion": None, "held_out": 3})


def _trainer(tmp_path: Path, champion: Callable[[], tuple[str, Any]], served: list, **config: Any) -> BackgroundTrainer:
    target = {"target": config.pop("target")} if "target" in config else {}
    return BackgroundTrainer(TrainerConfig(**{"round_s": 2.0, "retry_s": 0.1, **config}), state_dir=tmp_path, scale=2,
                             champion=champion, catalogue=Catalogue.in_state_dir(tmp_path),
                             on_promoted=lambda data, manifest, version, result: served.append((version, result)),
                             **target)


def _untrained_net(folder: Path) -> None:
    """Save a freshly initialised compact network as the session's network."""
    net = build_network("compact", scale=2, seed=0)
    save_net(folder, NetFit("compact", 2, {k: v.detach().clone() for k, v in net.state_dict().items()},
                            Normalisation(0.0, 1.0 / 255.0)))


def test_supervisor_trains_in_a_process_and_records_each_round(tmp_path: Path, split) -> None:
    served: list = []
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), served, rounds_per_pair=1)
    trainer.start()
    try:
        trainer.add_pair(split, ["lr.tif", "hr.tif"])
        wait_for(lambda: trainer.status().rounds >= 1 and not trainer.status().busy)
        trainer.check()
    finally:
        trainer.stop()
    status = trainer.status()
    assert status.failures == 0 and status.last.status in ("promoted", "kept")
    assert status.pairs == 1 and status.held_out == 3 and status.rounds_left == 0
    rows = Catalogue.in_state_dir(tmp_path).model_history()
    assert [r.kind for r in rows] == ["net"] and rows[0].promoted == (status.last.status == "promoted")
    assert rows[0].scores["sources"] == [["lr.tif", "hr.tif"]] and rows[0].scores["strategy"] == "real-pairs"
    assert len(rows[0].scores["candidate"]["per_subimage_d_psnr_db"]) == 3
    assert len(served) == (1 if rows[0].promoted else 0)
    saved = json.loads((tmp_path / CHECKPOINT_DIR / TRAINER_FILE).read_text())
    assert saved["rounds"] == 1 and saved["net_version"] == (1 if served else 0)
    # a restart keeps the pairs, the counters and the checkpoint
    again = _trainer(tmp_path, lambda: ("bicubic", 0), served)
    assert again.status().pairs == 1 and again.status().rounds == 1
    assert has_net(tmp_path / CHECKPOINT_DIR)


def test_a_crashing_or_killed_round_does_not_stop_the_trainer(tmp_path: Path, split) -> None:
    _store(tmp_path, split)
    served: list = []
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), served, target=_crash)
    trainer.start()
    try:
        wait_for(lambda: trainer.status().failures >= 2, timeout=60)
        trainer.check()  # the supervisor itself is fine
        assert "exited with code 3" in trainer.status().last.reason
    finally:
        trainer.stop()
    assert served == []

    killed = _trainer(tmp_path, lambda: ("bicubic", 0), served, round_s=60.0)
    killed.start()
    try:
        wait_for(lambda: killed.child_pid is not None, timeout=30)
        time.sleep(1.0)
        os.kill(killed.child_pid, signal.SIGKILL)
        wait_for(lambda: killed.status().failures >= 3, timeout=30)  # 2 from before the restart + this one
        killed.check()
        assert "exited with code -9" in killed.status().last.reason
    finally:
        killed.stop()
    assert served == []


def test_a_round_that_cannot_start_is_a_failed_round(tmp_path: Path, split, monkeypatch) -> None:
    import multiprocessing.context

    def refuse(self) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refuse)
    _store(tmp_path, split)
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), [])
    trainer.start()
    try:
        wait_for(lambda: trainer.status().failures >= 1, timeout=30)
        trainer.check()
        assert "could not start" in trainer.status().last.reason
    finally:
        trainer.stop()


def test_a_win_is_not_served_when_the_champion_changed_during_the_round(tmp_path: Path, split) -> None:
    _store(tmp_path, split)
    served: list = []
    tokens = iter(range(1000))
    trainer = _trainer(tmp_path, lambda: ("paired", next(tokens)), served, target=_fake_win, rounds_per_pair=1)
    trainer.start()
    try:
        wait_for(lambda: trainer.status().last is not None, timeout=60)
    finally:
        trainer.stop()
    assert served == [] and trainer.status().last.status == "kept"
    assert "changed during the round" in trainer.status().last.reason

    steady: list = []
    trainer = _trainer(tmp_path, lambda: ("paired", 7), steady, target=_fake_win, rounds_per_pair=1)
    trainer.start()
    try:
        trainer.add_pair(split, ["b"])  # no network saved: the win cannot be served -> a failure, nothing served
        wait_for(lambda: trainer.status().failures == 1, timeout=60)
        assert steady == [] and "could not be served" in trainer.status().last.reason
        _untrained_net(tmp_path)
        wait_for(lambda: steady != [], timeout=60)  # retried after retry_s: now served
    finally:
        trainer.stop()
    assert steady[0][0] == 1 and trainer.status().last.status == "promoted"
    assert trainer.status().net_version == 1 and trainer.status().promotions == 1


# ------------------------------------------------------------------------------------------------ champion
def test_champion_serves_the_latest_promotion_and_restores_it(tmp_path: Path, split) -> None:
    _store(tmp_path, split)
    result = run_round(_spec(tmp_path, 1))
    fit = load_net(tmp_path / CHECKPOINT_DIR)
    save_net(tmp_path, fit)
    library = fit_library([split.train], config=FitConfig(scale=2))
    engine = ServingEngine(ModelConfig(scale=2), ServeConfig(tile=256, halo=16))
    champion = Champion(engine, tmp_path)
    assert champion.current()[0] == "bicubic"
    champion.library_promoted(library, 1)
    assert champion.current()[0] == "paired" and load_best(tmp_path)["best"] == "paired"
    lr = split.held_out[0][0]
    assert engine.enhance(lr).model_name == "paired"
    token = champion.current()[1]
    champion.net_promoted(*load_served(tmp_path), 1, result)
    assert champion.current()[0] == "net" and champion.current()[1] != token
    assert load_best(tmp_path)["best"] == "net"
    out = engine.enhance(lr)
    assert out.model_name == "net" and out.version == 1 and out.image.shape == (2 * lr.shape[0], 2 * lr.shape[1])
    engine.set_method("paired")
    assert engine.enhance(lr).model_name == "paired"
    engine.set_method("best")

    fresh = ServingEngine(ModelConfig(scale=2), ServeConfig(tile=256, halo=16))
    assert Champion(fresh, tmp_path).restore(4) is True
    assert fresh.describe()["served_by"] == "net" and fresh.describe()["net_version"] == 4
    np.testing.assert_allclose(fresh.enhance(lr).image, out.image, rtol=1e-5, atol=1e-4)

    champion.library_promoted(library, 2, serve=False)  # promoted behind the network: it lost to it
    assert engine.enhance(lr).model_name == "net" and engine.describe()["version"] == 2
    assert load_best(tmp_path)["best"] == "net"  # a restart still serves the network
    champion.library_promoted(library, 3)  # a newer library wins back "best"
    assert engine.enhance(lr).model_name == "paired" and load_best(tmp_path)["best"] == "paired"
    assert Champion(ServingEngine(ModelConfig(scale=2), ServeConfig()), tmp_path).restore(4) is False


def test_daemon_status_reports_the_trainer_and_restores_the_network(tmp_path: Path, split) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _store(state, split)
    run_round(_spec(state, 1))
    save_net(state, load_net(state / CHECKPOINT_DIR))
    (state / "best.json").write_text(json.dumps({"best": "net", "validated": True, "scale": 2}))
    (tmp_path / "in").mkdir()
    config = load_config(None, {"ingest.watch": tmp_path / "in", "publish.out_dir": tmp_path / "out",
                                "state_dir": state, "control.endpoint": "tcp://127.0.0.1:*",
                                "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "trainer.round_s": "1"})
    with Daemon(config) as daemon:
        status = daemon.status()
        assert status.model.served_by == "net" and status.model.champion == "net"
        assert status.trainer.enabled is True and status.trainer.pairs == 1
        daemon.check()
        # a new reference: its library is measured against the network that serves, not only the old library
        from refscope.daemon.images import write_tiff

        pair = make_pair(rng=np.random.default_rng(8), lr_shape=(96, 128), factor=2.0)
        write_tiff(tmp_path / "in" / "a_lr.tif", pair.lr.astype(np.float32), pixel_size_nm=10.0)
        time.sleep(0.5)
        write_tiff(tmp_path / "in" / "b_hr.tif", pair.hr.astype(np.float32), pixel_size_nm=5.0)
        promoted = wait_for(lambda: [e for e in daemon.catalogue.recent_events(50) if e.type == "model_promoted"],
                            60, "the new reference's library promoted")
        payload = promoted[0].payload
        assert "serving network" in payload["reason"]
        if payload["serves"] == "paired":  # it beat the network too: it serves once loaded
            wait_for(lambda: any(e.type == "model_serving" for e in daemon.catalogue.recent_events(50)), 30,
                     "the library serving")
        assert daemon.status().model.champion == ("net" if payload["serves"] == "net" else "paired")


# ------------------------------------------------------------------------------------------------ serving first
def _count_forever(spec: RoundSpec, conn: Any, level: int) -> None:
    """A round that counts in a file until killed (to see whether it runs)."""
    path, temp = Path(spec.state_dir) / "ticks", Path(spec.state_dir) / "ticks.tmp"
    ticks = 0
    while True:
        ticks += 1
        temp.write_text(str(ticks))
        os.replace(temp, path)  # never seen half-written
        time.sleep(0.01)


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_serving_holds_the_training_process_and_its_deadline_does_not_count_held_time(tmp_path: Path,
                                                                                        split) -> None:
    _store(tmp_path, split)
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), [], target=_count_forever, round_s=0.5)  # deadline 301 s
    trainer.hold(True)  # a frame is being served when the round starts: it starts stopped
    trainer.start()
    ticks = tmp_path / "ticks"
    try:
        wait_for(lambda: trainer.child_pid is not None, timeout=30)
        pid = trainer.child_pid
        wait_for(lambda: _state_of(pid) == "T", timeout=10, what="the round stopped")
        time.sleep(0.5)
        assert not ticks.exists() or int(ticks.read_text()) < 5
        trainer.hold(False)
        wait_for(lambda: ticks.exists() and int(ticks.read_text()) > 10, timeout=10, what="the round running")
        trainer.hold(True)
        wait_for(lambda: _state_of(pid) == "T", timeout=10, what="the round stopped again")
        before = int(ticks.read_text())
        time.sleep(0.5)
        assert int(ticks.read_text()) <= before + 1
        assert trainer._held_total() >= 0.5  # the deadline is moved by the time held
    finally:
        trainer.stop()  # a held round is continued so that it can be terminated
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _state_of(pid) == "Z", timeout=10, what="the round gone")
    assert trainer.status().failures == 0


def test_hold_does_nothing_when_pause_while_serving_is_off(tmp_path: Path, split) -> None:
    _store(tmp_path, split)
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), [], target=_count_forever, pause_while_serving=False)
    trainer.start()
    try:
        wait_for(lambda: trainer.child_pid is not None, timeout=30)
        trainer.hold(True)
        ticks = tmp_path / "ticks"
        wait_for(lambda: ticks.exists(), timeout=10)
        before = int(ticks.read_text())
        wait_for(lambda: int(ticks.read_text()) > before + 10, timeout=10, what="the round still running")
    finally:
        trainer.stop()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_training_is_not_starved_when_frames_keep_serving_busy(tmp_path: Path, split, monkeypatch) -> None:
    """With frames arriving as fast as they are served, holding training for every frame would stop it for good:
    once held more than MAX_HELD_SHARE of the recent time, a hold is skipped and the round runs."""
    import refscope.daemon.learn.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "HOLD_WINDOW_S", 4.0)  # a short window for the test (at least 1 s counted)
    _store(tmp_path, split)
    trainer = _trainer(tmp_path, lambda: ("bicubic", 0), [], target=_count_forever, round_s=0.5)
    trainer.start()
    try:
        wait_for(lambda: trainer.child_pid is not None, timeout=30)
        pid = trainer.child_pid
        trainer._window_start = time.monotonic()  # the test's own window
        trainer.hold(True)
        wait_for(lambda: _state_of(pid) == "T", timeout=10, what="the round stopped")
        time.sleep(1.0)
        trainer.hold(False)
        trainer.hold(True)  # held ~100 % of the window so far: skipped
        assert trainer.status().holds_skipped == 1 and trainer.status().held_s >= 1.0
        ticks = tmp_path / "ticks"
        wait_for(lambda: ticks.exists() and int(ticks.read_text()) > 10, timeout=10, what="the round running")
    finally:
        trainer.stop()

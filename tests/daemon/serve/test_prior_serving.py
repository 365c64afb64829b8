"""The shipped EM prior serves before anything is learned (``serve.prior``): in each frame's own units, tiled
exactly, until a library, network or safe baseline that beat it takes over (oracle: the prior as a PyTorch
:class:`~refscope.models.net_fit.NetFit` with the frame's normalisation, :func:`refscope.models.prior.frame_normalisation`)."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from refscope.daemon.config import ModelConfig, ServeConfig, load_config
from refscope.daemon.frames import Frame
from refscope.daemon.learn.prior_store import load_prior, load_served_prior
from refscope.daemon.serve.engine import ServingEngine
from refscope.daemon.service.daemon import Daemon
from refscope.models.baseline import SafeBaseline
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair
from tests.daemon.queue_source import QueueSource
from tests.daemon.waiting import wait_for

torch = pytest.importorskip("torch")


def _frame(shape=(90, 130), seed=2) -> np.ndarray:
    """A 16-bit-like SEM frame: the synthetic specimen scaled to detector counts, with an offset."""
    pair = make_pair(rng=np.random.default_rng(seed), lr_shape=shape, factor=2.0)
    return (3000.0 + 20000.0 * pair.lr).astype(np.float32)


def _oracle(frame: np.ndarray) -> np.ndarray:
    from refscope.models.net_fit import net_predictor
    from refscope.models.prior import frame_normalisation

    prior = load_prior("auto", 2)
    with torch.no_grad():
        return net_predictor(replace(prior, normalisation=frame_normalisation(frame)))(frame)


@pytest.fixture(scope="module")
def library():
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 112), factor=2.0)
    return fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=300, patch_size=9)))


def test_the_prior_serves_in_each_frames_units_and_tiles_exactly() -> None:
    prior = load_served_prior(2)
    assert prior is not None, "the package ships an x2 prior"
    engine = ServingEngine(ModelConfig(scale=2), ServeConfig(tile=64, halo=16, self_ensemble=1))  # small tiles
    engine.set_prior(*prior)
    frame = _frame()
    result = engine.enhance(frame)
    assert (result.model_name, result.version, engine.describe()["served_by"]) == ("prior", 0, "prior")
    expected = _oracle(frame)
    span = float(np.ptp(expected))
    np.testing.assert_allclose(result.image, expected, rtol=0, atol=2e-4 * span)
    brighter = engine.enhance(2.0 * frame + 500.0)  # another detector gain: the same image in its units
    np.testing.assert_allclose(brighter.image, 2.0 * result.image + 500.0, rtol=0, atol=5e-4 * span)
    # what the learner measures a new library against: the same pass
    np.testing.assert_allclose(engine.champion_net()(frame), result.image, rtol=0, atol=1e-5 * span)


def test_what_was_learned_retires_the_prior_unless_it_lost_to_it(library) -> None:
    engine = ServingEngine(ModelConfig(scale=2), ServeConfig(), use_onnx=False)
    engine.set_prior(*load_served_prior(2))
    engine.set_model(library, 1, champion=False)  # the library lost to the prior on its reference
    assert engine.describe()["served_by"] == "prior" and engine.describe()["version"] == 1
    engine.set_model(library, 2)  # one that beat it
    assert engine.describe()["served_by"] == "paired" and engine.champion_net() is None
    with pytest.raises(ValueError, match="only before anything is learned"):
        engine.set_prior(*load_served_prior(2))

    baseline_first = ServingEngine(ModelConfig(scale=2), ServeConfig(), use_onnx=False)
    baseline_first.set_prior(*load_served_prior(2))
    baseline_first.set_baseline(SafeBaseline(1.0, 0.4, 5.0))  # the tuned blur beat the prior on the reference
    assert baseline_first.describe()["served_by"] == "baseline" and baseline_first.champion_net() is None

    with pytest.raises(ValueError, match="scale x4 differs"):
        ServingEngine(ModelConfig(scale=2), ServeConfig()).set_prior(*load_served_prior(4))


@pytest.mark.parametrize("on", [True, False])
def test_a_daemon_serves_the_prior_until_it_learns_unless_told_not_to(tmp_path, on: bool) -> None:
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"),
                                "control.endpoint": "tcp://127.0.0.1:*",
                                "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "trainer.enabled": "false",
                                "serve.prior": str(on).lower()})
    source = QueueSource()
    with Daemon(config, sources=[source]) as daemon:
        source.items.put(Frame(_frame(), 10.0, "lr", "mem:0", 0, time.time()))
        wait_for(lambda: daemon.status().frames.out == 1, 30, "one frame served")
        assert daemon.engine.describe()["served_by"] == ("prior" if on else "bicubic")


@pytest.mark.parametrize("behind", [True, False])
def test_a_restart_serves_the_prior_a_saved_library_lost_to(tmp_path, library, behind: bool) -> None:
    """A library promoted behind the serving prior (``model_version.json``: ``serves`` false) stays behind it after
    a restart; one that won serves."""
    from refscope.daemon.learn.learner import _write_version, library_serves, load_initial
    from refscope.daemon.state.model_store import save_model

    state = tmp_path / "state"
    save_model(state, library, sources=["lr.tif", "hr.tif"])
    _write_version(state, 3, 0.2, len(library.library), ["lr.tif", "hr.tif"], serves=not behind)
    assert library_serves(state) is (not behind) and load_initial(state)[1] == 3
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(state),
                                "control.endpoint": "tcp://127.0.0.1:*",
                                "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "trainer.enabled": "false"})
    with Daemon(config, sources=[QueueSource()], use_onnx=False) as daemon:
        state_now = daemon.engine.describe()
    assert state_now["version"] == 3
    assert state_now["served_by"] == ("prior" if behind else "paired")

"""The one served-model type: its halo and alignment are the model's own, tiling with them is exact, a manifest
saved before they were recorded falls back as the daemon always served such a network, and it travels to Dask
workers as bytes (oracle: the untiled run of the same ONNX session)."""
from __future__ import annotations

import pickle
import warnings
from dataclasses import replace

import numpy as np
import pytest

from refscope.daemon.config import ModelConfig, ServeConfig
from refscope.daemon.serve.engine import ServingEngine
from refscope.daemon.serve.runtime import RuntimeConfig
from refscope.daemon.serve.served_model import ServedModel, bicubic_model, onnx_model
from refscope.models.image_ops import upsample_bicubic

torch = pytest.importorskip("torch")


def _exported(name: str, **kwargs):
    """(bytes, manifest, network) of a small seeded network whose zero-started layers are perturbed."""
    from refscope.models.networks import build_network
    from refscope.models.training import export_network, Normalisation

    net = build_network(name, scale=2, seed=0, **kwargs)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in net.parameters():
            if not param.abs().sum():
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's own notes
        data, manifest = export_network(net, Normalisation(0.0, 1 / 255.0), kind=name)
    return data, manifest, net


@pytest.fixture(scope="module")
def emsr():
    return _exported("emsr", channels=8, n_blocks=1, n_resblocks=1, heads=2, window=8)


def _frame(shape=(200, 232)) -> np.ndarray:
    rng = np.random.default_rng(4)
    return (128 + 60 * rng.standard_normal(shape)).astype(np.float32)


def test_emsr_tiles_exactly_with_its_own_halo_and_alignment_and_not_with_the_old_rule(emsr) -> None:
    data, manifest, net = emsr
    served = onnx_model(data, manifest, method="net").loaded(RuntimeConfig(intra_op_threads=1))
    assert (served.halo, served.align) == (net.halo, net.align) == (35, 8)
    frame = _frame()
    whole = served.run(frame)
    tiled = served.enhance(frame, tile=48)
    assert len(served.plan(frame.shape, tile=48)) == 5 * 5
    assert float(np.max(np.abs(tiled - whole))) <= 1e-5 * float(np.max(np.abs(whole)))
    # the rule live serving had for networks: serve.halo = 32 px of context, windows at even px
    old = replace(served, halo=32, align=2).enhance(frame, tile=48)
    assert float(np.max(np.abs(old - whole))) > 1e-4 * float(np.max(np.abs(whole)))


def test_a_manifest_without_tiling_uses_the_fallback_and_says_when_there_is_none(emsr) -> None:
    data, manifest, _ = emsr
    before = replace(manifest, halo=None, align=None)  # as saved by a refscope that did not record them
    assert (onnx_model(data, before, method="net", fallback=(32, 2)).halo,
            onnx_model(data, before, method="net", fallback=(32, 2)).align) == (32, 2)
    assert onnx_model(data, manifest, method="net", fallback=(32, 2)).halo == 35  # recorded: the fallback is unused
    with pytest.raises(ValueError, match="no halo/align"):
        onnx_model(data, before, method="net")


def test_engine_serves_a_network_with_its_own_tiling_and_an_old_one_with_serve_halo(emsr) -> None:
    data, manifest, _ = emsr
    engine = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(tile=64, halo=20))
    engine.set_net(data, manifest, 1)
    assert engine.tiling((500, 500))[1:] == (35, 8)
    engine.set_net(data, replace(manifest, halo=None, align=None), 2)
    assert engine.tiling((500, 500))[1:] == (20, 2)


def test_a_served_model_travels_as_bytes_without_its_session(emsr) -> None:
    data, manifest, _ = emsr
    served = onnx_model(data, manifest, method="net", model_id="net:abc").loaded()
    assert served.session is not None and served.backend == "onnx" and served.providers
    copy = pickle.loads(pickle.dumps(served))
    assert copy.session is None and copy.onnx_bytes == data and copy.key == served.key
    assert (copy.halo, copy.align, copy.model_id, copy.manifest) == (35, 8, "net:abc", manifest)
    with pytest.raises(RuntimeError, match="not loaded"):
        copy.run(_frame((16, 16)))
    frame = _frame((40, 48))
    np.testing.assert_array_equal(copy.loaded().run(frame), served.run(frame))


def test_bicubic_served_model_is_exact_with_its_halo() -> None:
    served = pickle.loads(pickle.dumps(bicubic_model(3)))  # picklable: shipped to workers like any model
    assert isinstance(served, ServedModel) and (served.halo, served.align, served.backend) == (3, 1, "bicubic")
    frame = _frame((70, 90)).astype(np.float64)
    np.testing.assert_allclose(served.enhance(frame, tile=16), upsample_bicubic(frame, 3), rtol=1e-6, atol=1e-3)


@pytest.fixture(scope="module")
def compact():
    return _exported("compact", channels=8, n_layers=2)


def test_the_engine_serves_a_fixed_self_ensemble_exactly(compact) -> None:
    """``serve.self_ensemble = 4``: every frame the network serves is the average of 4 passes over flipped
    copies (oracle: :func:`ensemble_run` of the untiled session on the whole frame), tiled exactly."""
    from refscope.models.self_ensemble import ensemble_run

    data, manifest, net = compact
    engine = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(tile=64, halo=20, self_ensemble=4))
    engine.set_net(data, manifest, 1)
    frame = _frame((150, 173))
    result = engine.enhance(frame)
    served = engine.served_model()
    whole = ensemble_run(served.run, frame, 4, align=net.align)
    assert result.ensemble == 4 and engine.describe()["self_ensemble"] == 4
    assert engine.tiling(frame.shape)[0] < 150  # several tiles
    np.testing.assert_allclose(result.image, whole, rtol=0, atol=1e-4 * float(np.abs(whole).max()))
    assert np.abs(result.image - served.run(frame)).max() > 1e-3  # not one pass


def test_the_automatic_self_ensemble_fits_the_frame_budget(compact) -> None:
    """``serve.self_ensemble = 0``: one pass on the first frame (no timing yet), then as many passes as the
    network's measured pass time lets fit in ``serve.frame_budget_s``: 8 with a generous budget, 1 with none to
    spare; a new network is timed afresh."""
    data, manifest, _ = compact
    frame = _frame((64, 80))
    generous = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(frame_budget_s=60.0))
    generous.set_net(data, manifest, 1)
    assert [generous.enhance(frame).ensemble for _ in range(3)] == [1, 8, 8]
    generous.set_net(data, manifest, 2)
    assert generous.enhance(frame).ensemble == 1
    tight = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(frame_budget_s=1e-6))
    tight.set_net(data, manifest, 1)
    assert [tight.enhance(frame).ensemble for _ in range(3)] == [1, 1, 1]
    bicubic = ServingEngine(ModelConfig(scale=2, method="bicubic"), ServeConfig(self_ensemble=8))
    assert bicubic.enhance(frame).ensemble == 1  # only a network is ensembled


def test_a_network_fitted_on_the_scans_own_orientation_is_served_in_one_pass(compact, caplog) -> None:
    """A manifest's ``max_ensemble`` caps the passes: the engine's automatic choice and a fixed
    ``serve.self_ensemble`` both serve 1 pass (oracle: the session's single run), and an operator's
    ``--self-ensemble 4`` is told why it got fewer; a manifest without the key keeps every size."""
    import logging

    data, manifest, _ = compact
    oriented = replace(manifest, max_ensemble=1)
    frame = _frame((64, 80))
    generous = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(frame_budget_s=60.0))
    generous.set_net(data, oriented, 1)
    assert [generous.enhance(frame).ensemble for _ in range(3)] == [1, 1, 1]
    fixed = ServingEngine(ModelConfig(scale=2, method="net"), ServeConfig(self_ensemble=4))
    fixed.set_net(data, oriented, 1)
    result = fixed.enhance(frame)
    assert result.ensemble == 1
    np.testing.assert_allclose(result.image, fixed.served_model().run(frame), rtol=0, atol=1e-5)
    served = onnx_model(data, oriented, method="net")
    assert served.max_ensemble == 1 and served.with_ensemble(8).ensemble == 1
    with caplog.at_level(logging.INFO, logger="refscope.test"):
        assert served.asked_ensemble(4, logging.getLogger("refscope.test")).ensemble == 1
    assert "1 pass(es), not the 4 asked" in caplog.text and "orientation" in caplog.text
    flips = onnx_model(data, replace(manifest, max_ensemble=4), method="net")
    assert [flips.with_ensemble(n).ensemble for n in (1, 2, 4, 8)] == [1, 2, 4, 4]
    assert onnx_model(data, manifest, method="net").with_ensemble(8).ensemble == 8  # nothing recorded: any
    with pytest.raises(ValueError, match="self-ensemble size"):
        served.with_ensemble(3)


def test_batch_workers_run_each_models_own_self_ensemble_on_one_cached_session(compact) -> None:
    """Dask workers keep one ONNX session per model checksum; two batches of the same network with different
    ``--self-ensemble`` in one process must each get their own number of passes (oracle: the served model's own
    tiled output at that ensemble size)."""
    import dask

    from refscope.daemon.offline.batch_compute import install_model, slab_graph

    data, manifest, _ = compact
    frame = _frame((90, 110))
    for n in (1, 4):
        model = replace(onnx_model(data, manifest, method="net"), ensemble=n)
        install_model(model)
        (out,) = dask.compute(slab_graph(dask.array.from_array(frame[np.newaxis]), model, block_px=48,
                                         constant={}), scheduler="synchronous")
        expected = model.loaded().enhance(frame, tile=model.tile(frame.shape, max_tile=48))
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_a_library_set_behind_the_serving_network_leaves_the_network_serving(emsr) -> None:
    """``set_model(champion=False)`` while a network is the champion: the library becomes the session's library
    (its version, method "paired") and "best" still serves the network; ``champion_net`` is that network's single
    pass (oracle: the untiled ONNX run), and None once a library is the champion."""
    from refscope.models.library import LibraryConfig
    from refscope.models.pipeline import FitConfig, fit
    from refscope.models.synthetic import make_pair

    data, manifest, _ = emsr
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 112), factor=2.0)
    library = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=300, patch_size=9)))
    engine = ServingEngine(ModelConfig(scale=2), ServeConfig(), use_onnx=False)
    assert engine.champion_net() is None  # bicubic serves
    engine.set_model(library, 1)
    engine.set_net(data, manifest, 1)
    engine.set_model(library, 2, champion=False)
    state = engine.describe()
    assert (state["champion"], state["version"], state["served_by"]) == ("net", 2, "net")
    frame = _frame((64, 72))
    assert engine.enhance(frame).model_name == "net"
    whole = onnx_model(data, manifest, method="net").loaded(RuntimeConfig(intra_op_threads=1)).run(frame)
    np.testing.assert_allclose(engine.champion_net()(frame), whole, rtol=0, atol=1e-4 * float(np.abs(whole).max()))
    engine.set_model(library, 3)  # a library that beat the network serves
    assert engine.describe()["champion"] == "paired" and engine.champion_net() is None

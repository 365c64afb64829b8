"""``refscope enhance`` and ``refscope batch`` give the same pixels for every model kind (issue 14, item 3).

Oracle: each command's own output file. One 2500 x 1800 LR frame (wider and taller than any tile either command
uses: enhance tiles at most ``serve.tile`` = 1024 LR px, batch ``--block`` 256) is enhanced x2 by the paired
library and by each registered network (:data:`refscope.models.network_names.NETWORK_NAMES`, small sizes, seeded
weights, last layers perturbed so the residual path is exercised -- an untrained network is exactly bicubic).
The two outputs must agree to a max relative difference of 1e-5 (of the output's largest value).

Why they agree: both serve one :class:`~refscope.daemon.serve.served_model.ServedModel` whose halo and alignment are
the model's own (recorded in the ONNX manifest at export), and both cut frames with
:func:`refscope.models.tiling.tile_plan` at that halo and alignment; the test checks that too. On the code before
(live and enhance gave networks ``serve.halo`` = 32 px of context at even origins, batch the network's halo at
``lcm(2, window)``), EMSR (halo 35 LR px, 8 x 8 attention windows anchored at the tile origin) differed by more
than 1e-5: enhance's tiles started at origins that are not multiples of 8.
"""
from __future__ import annotations

import numpy as np
import pytest

from refscope.daemon.cli import main
from refscope.daemon.images import read_image, write_tiff
from refscope.models.network_names import NETWORK_NAMES
from refscope.models.synthetic import make_pair

pytest.importorskip("distributed")
torch = pytest.importorskip("torch")

SHAPE = (1800, 2500)  # (H, W) LR px: 2500 wide, 1800 tall
SMALL = {"compact": {"channels": 8, "n_layers": 2}, "fullres": {"channels": 8, "n_layers": 3},
         "emsr": {"channels": 4, "n_blocks": 1, "n_resblocks": 1, "heads": 1, "window": 8}}


def _frame() -> np.ndarray:
    """A 2500 x 1800 textured LR frame, float32 (smooth structure plus pixel noise)."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float32)
    image = 120 + 40 * np.sin(x / 7.3 + np.cos(y / 19.0)) * np.cos(y / 5.1) + 25 * np.sin((x + 2 * y) / 3.7)
    return (image + rng.normal(0.0, 6.0, SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("parity_frame")
    path = folder / "big.tif"
    write_tiff(path, _frame(), pixel_size_nm=10.0)
    return path


@pytest.fixture(scope="module")
def paired_state(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("parity_paired")
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 128), factor=2.0)
    write_tiff(folder / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(folder / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    assert main(["fit", str(folder / "lr.tif"), str(folder / "hr.tif"), "-o", str(folder / "state"),
                 "--library-size", "200", "--patch-size", "5"]) == 0
    return folder / "state"


def _net_state(folder, name: str):
    """A state folder holding network ``name`` (small, seed 0, zero-started layers perturbed with seed 7)."""
    from refscope.daemon.state.net_store import save_net
    from refscope.models.net_fit import NetFit
    from refscope.models.networks import build_network
    from refscope.models.training import Normalisation

    net = build_network(name, scale=2, seed=0, **SMALL[name])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in net.parameters():
            if not param.abs().sum():
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    fit = NetFit(name, 2, {k: v.clone() for k, v in net.state_dict().items()}, Normalisation(60.0, 1 / 150.0),
                 dict(SMALL[name]))
    save_net(folder, fit)
    return folder, net


def _enhance_and_batch(state, frame, tmp_path, method: str) -> tuple[np.ndarray, np.ndarray]:
    enhanced, batched = tmp_path / "enhanced.tif", tmp_path / "batched.tif"
    assert main(["enhance", str(state), str(frame), "-o", str(enhanced), "--method", method, "--quiet"]) == 0
    assert main(["batch", str(state), str(frame), "-o", str(batched), "--method", method, "--quiet"]) == 0
    return read_image(enhanced).data, read_image(batched).data


def _assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (2 * SHAPE[0], 2 * SHAPE[1])
    relative = float(np.max(np.abs(ours.astype(np.float64) - theirs)) / np.max(np.abs(theirs)))
    assert relative <= 1e-5, f"max relative difference {relative:.2e}"


def test_paired_model_enhance_and_batch_agree(paired_state, frame, tmp_path) -> None:
    from refscope.daemon.config import ModelConfig, ServeConfig
    from refscope.daemon.offline.batch import load_batch_model
    from refscope.daemon.serve.engine import ServingEngine
    from refscope.daemon.state.model_store import load_model

    fitted = load_model(paired_state)
    engine = ServingEngine(ModelConfig(scale=2, method="paired"), ServeConfig(),  # as enhance serves it
                           onnx_cache_dir=paired_state)
    engine.set_model(fitted, version=1)
    tile, halo, align = engine.tiling(SHAPE)
    batch_model, _ = load_batch_model(paired_state, "paired")
    assert (halo, align) == (batch_model.halo, batch_model.align) == fitted.tiling("paired")
    assert tile < min(SHAPE)  # several tiles each way
    _assert_same(*_enhance_and_batch(paired_state, frame, tmp_path, "paired"))


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_each_network_enhance_and_batch_agree(name, frame, tmp_path) -> None:
    from refscope.daemon.offline.batch import load_batch_model
    from refscope.daemon.offline.net import served_net

    state, net = _net_state(tmp_path / "state", name)
    enhanced, batched = served_net(state), load_batch_model(state, "net")[0]  # what each command serves
    assert (enhanced.halo, enhanced.align) == (batched.halo, batched.align) == (net.halo, net.align)
    assert enhanced.manifest.halo == net.halo and enhanced.manifest.align == net.align  # recorded at export
    _assert_same(*_enhance_and_batch(state, frame, tmp_path, "net"))


def test_a_self_ensemble_gives_the_same_pixels_in_enhance_and_batch(frame, tmp_path) -> None:
    """``--self-ensemble 4`` of a network anchored on even origins (``compact``, align 2): the two commands still
    agree (each window is padded to the alignment before it is flipped), and the ensemble is really applied (it
    differs from one pass, by less than the output's range: the same network)."""
    state, _ = _net_state(tmp_path / "state", "compact")
    outputs = {}
    for n in (1, 4):
        enhanced, batched = tmp_path / f"enhanced{n}.tif", tmp_path / f"batched{n}.tif"
        assert main(["enhance", str(state), str(frame), "-o", str(enhanced), "--method", "net", "--quiet",
                     "--self-ensemble", str(n)]) == 0
        outputs[n] = read_image(enhanced).data
        if n > 1:
            assert main(["batch", str(state), str(frame), "-o", str(batched), "--method", "net", "--quiet",
                         "--self-ensemble", str(n)]) == 0
            _assert_same(outputs[n], read_image(batched).data)
    change = np.abs(outputs[4].astype(np.float64) - outputs[1])
    assert 1e-3 < float(change.max()) < 0.5 * float(np.ptp(outputs[1]))


def test_the_safe_blend_gives_the_same_pixels_in_enhance_and_batch(paired_state, frame, tmp_path) -> None:
    """A state whose safe baseline hands part of the big frame over (its ``q_ref`` set to a quarter of the
    frame's median support, so ``q / q_ref`` spans the 2 → 6 hand-over): enhance and batch agree, and the blend
    really ran (the output differs from the model alone, which a state without a safe baseline gives)."""
    import shutil
    from dataclasses import replace

    from refscope.daemon.state.model_store import load_model, save_model
    from refscope.models.baseline import SafeBaseline
    from refscope.models.confidence import support_grid

    fitted = load_model(paired_state)
    q = support_grid(read_image(frame).data, fitted).q
    states = {}
    for name, safe in (("blended", SafeBaseline(1.0, 0.1, float(np.median(q)) / 4)), ("alone", None)):
        states[name] = tmp_path / name
        shutil.copytree(paired_state, states[name])
        save_model(states[name], replace(fitted, safe=safe), sources=["lr.tif", "hr.tif"])
    enhanced, batched = _enhance_and_batch(states["blended"], frame, tmp_path, "paired")
    _assert_same(enhanced, batched)
    assert main(["enhance", str(states["alone"]), str(frame), "-o", str(tmp_path / "alone.tif"), "--method",
                 "paired", "--quiet"]) == 0
    alone = read_image(tmp_path / "alone.tif").data
    changed = np.abs(enhanced.astype(np.float64) - alone) > 1e-3 * float(np.ptp(alone))
    assert 0.05 < changed.mean() < 0.95

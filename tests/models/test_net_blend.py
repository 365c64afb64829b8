"""Two networks served as one (models/net_blend.py, networks.BlendedSR): the graph equals the weighted mean of the
members run alone, across normalisations, in PyTorch and through ONNX; the weight is chosen on held-out data. The
safe baseline as a fixed member (networks.BaselineSR, net_blend.with_baseline / choose_baseline_share)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from refscope.models.image_ops import upsample_bicubic
from scipy import ndimage

from refscope.models.baseline import baseline_block
from refscope.models.net_blend import (BASELINE_WEIGHTS, COMPANION_CHANNELS, baseline_fit, blend_fits, blend_members,
                                       blend_outputs, choose_baseline_share, choose_blend, companion_kwargs,
                                       companion_network, with_baseline)
from refscope.models.net_fit import NetFit, export_netfit, net_predictor
from refscope.models.networks import BaselineSR, BlendedSR, build_network
from refscope.models.tiling import conv_workspace_bytes_per_px
from refscope.models.training import Normalisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(network: str, scale: int, seed: int, norm: Normalisation, **kwargs) -> NetFit:
    """A network with random weights everywhere (its zero-started tail too, so its residual is not zero)."""
    net = build_network(network, scale=scale, seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in net.state_dict().items()}
    return NetFit(network, scale, state, norm, dict(kwargs))


def _image(seed: int, shape=(20, 26)) -> np.ndarray:
    return 200.0 + 50.0 * np.random.default_rng(seed).random(shape)


def test_a_blend_serves_the_weighted_mean_of_its_members_in_their_own_units() -> None:
    """Members trained in different units (and of different sizes) blend exactly: the oracle is each member run
    alone through its own normalisation, then mixed."""
    a = _fit("fullres", 2, 1, Normalisation(190.0, 1 / 60.0))
    b = _fit("fullres", 2, 2, Normalisation(170.0, 1 / 95.0), channels=16)
    x = _image(0)
    blend = blend_fits([a, b], [0.7, 0.3])
    expected = 0.7 * net_predictor(a)(x) + 0.3 * net_predictor(b)(x)
    np.testing.assert_allclose(net_predictor(blend)(x), expected, rtol=0, atol=2e-3)
    assert blend.network == "blend" and blend.normalisation == a.normalisation
    assert [h["weight"] for h in blend.history] == [0.7, 0.3]
    np.testing.assert_allclose(blend_outputs([[net_predictor(a)(x)], [net_predictor(b)(x)]], [0.7, 0.3])[0],
                               expected)


def test_the_members_of_a_blend_come_back_as_they_went_in() -> None:
    a = _fit("fullres", 2, 1, Normalisation(190.0, 1 / 60.0))
    b = _fit("fullres", 2, 2, Normalisation(170.0, 1 / 95.0), channels=16)
    x = _image(2)
    back = blend_members(blend_fits([a, b], [0.6, 0.4]))
    for original, member in zip((a, b), back):
        assert (member.network, member.network_kwargs) == (original.network, original.network_kwargs)
        assert member.normalisation.offset == pytest.approx(original.normalisation.offset)
        assert member.normalisation.scale == pytest.approx(original.normalisation.scale)
        np.testing.assert_allclose(net_predictor(member)(x), net_predictor(original)(x), rtol=0, atol=1e-4)
    assert len(blend_members(a)) == 1 and blend_members(a)[0] is a


def test_the_blend_exports_to_onnx_with_the_members_halo_and_a_bounded_workspace() -> None:
    from refscope.daemon.offline.net import onnx_runner

    a = _fit("fullres", 3, 3, Normalisation(190.0, 1 / 60.0))
    b = _fit("compact", 3, 4, Normalisation(180.0, 1 / 70.0), channels=8, n_layers=2)
    blend = blend_fits([a, b], [0.5, 0.5])
    data, manifest = export_netfit(blend)
    module = blend.build()
    assert manifest.halo == max(a.build().halo, b.build().halo) and manifest.align == 2  # lcm(1, 2)
    largest = max(conv_workspace_bytes_per_px(a.build(), 3), conv_workspace_bytes_per_px(b.build(), 3))
    assert largest < manifest.workspace_bytes_per_px == module.workspace_bytes_per_px <= largest + 8 * 9
    x = _image(1, (24, 30))
    np.testing.assert_allclose(onnx_runner(data, manifest, threads=1)(x), net_predictor(blend)(x), rtol=0, atol=2e-3)


def test_a_blend_checks_its_parts() -> None:
    a = _fit("fullres", 2, 1, Normalisation(0.0, 1.0))
    with pytest.raises(ValueError, match="sum to 1"):
        blend_fits([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match="different scales"):
        blend_fits([a, _fit("fullres", 3, 1, Normalisation(0.0, 1.0))], [0.5, 0.5])
    with pytest.raises(ValueError, match="another blend"):
        blend_fits([blend_fits([a, a], [0.5, 0.5]), a], [0.5, 0.5])
    with pytest.raises(ValueError, match="network must be one of"):
        BlendedSR(2, members=[{"network": "blend"}, {"network": "fullres"}], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="gain != 0"):
        BlendedSR(2, members=[{"network": "fullres", "input": [0.0, 1.0]}, {"network": "fullres"}],
                  weights=[0.5, 0.5])


def test_choose_blend_finds_the_weight_that_made_the_reference() -> None:
    """The HR is 0.5 · main + 0.5 · companion plus noise: w = 0.5 must win; with the HR = main, w = 0 (the main
    network itself, not a blend) must."""
    norm = Normalisation(150.0, 1 / 100.0)
    main, companion = _fit("fullres", 2, 5, norm), _fit("fullres", 2, 6, norm, channels=16)
    rng = np.random.default_rng(7)
    lrs = [_image(10 + k, (24, 24)) for k in range(3)]
    half = [(lr, 0.5 * net_predictor(main)(lr) + 0.5 * net_predictor(companion)(lr)
             + rng.normal(0, 0.2, (48, 48))) for lr in lrs]
    served, w, scores = choose_blend(main, companion, half)
    assert w == 0.5 and served.network == "blend" and set(scores) == {0.0, 0.25, 0.5, 0.75}
    assert scores[0.5] == max(scores.values())
    alone = [(lr, net_predictor(main)(lr)) for lr in lrs]
    served, w, _ = choose_blend(main, companion, alone)
    assert w == 0.0 and served is main
    with pytest.raises(ValueError, match="held-out"):
        choose_blend(main, companion, [])


def test_the_companion_is_smaller_and_trained_from_scratch() -> None:
    assert companion_kwargs("auto", 2) == {"channels": COMPANION_CHANNELS[2]}
    assert companion_kwargs("fullres", 6) == {"channels": COMPANION_CHANNELS[max(COMPANION_CHANNELS)]}
    assert companion_kwargs("compact", 2) == {}
    rng = np.random.default_rng(8)
    lr = upsample_bicubic(rng.random((20, 20)), 2) * 100.0
    hr = upsample_bicubic(lr, 2)
    fit = companion_network([lr], [(lr, hr)], scale=2, budget_s=1.0, seed=3, network_kwargs={"channels": 8})
    assert fit.network == "fullres" and fit.network_kwargs == {"channels": 8}
    assert [h["strategy"] for h in fit.history] == ["lr-only", "real-pairs"]


# ------------------------------------------------------------------------------------------ the safe baseline
@pytest.mark.parametrize("scale, sigma", [(2, 1.25), (3, 2.5), (4, 0.0)])
def test_the_baseline_layer_is_the_safe_baseline(scale: int, sigma: float) -> None:
    """Oracle: SciPy's Gaussian (same 4σ cut) of the bicubic image, normalised over the pixels inside the frame;
    away from the edge it is :func:`baseline_block` itself, and σ = 0 is bicubic."""
    x = _image(3, (18, 23))
    layer = BaselineSR(scale, sigma_px=sigma)
    out = layer(torch.from_numpy(x.astype(np.float32))[None, None])[0, 0].double().numpy()
    up = upsample_bicubic(x, scale)
    if sigma:
        inside = ndimage.gaussian_filter(np.ones_like(up), sigma, mode="constant")
        expected = ndimage.gaussian_filter(up, sigma, mode="constant") / inside
    else:
        expected = up
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4)
    r = layer.radius
    block = baseline_block(x, scale=scale, sigma_px=sigma, rows=(0, up.shape[0]), cols=(0, up.shape[1]))
    interior = (slice(r, up.shape[0] - r), slice(r, up.shape[1] - r))
    np.testing.assert_allclose(out[interior], block[interior], rtol=0, atol=2e-4)
    assert layer.halo == 2 + -(-r // scale) and not list(layer.parameters())
    assert BaselineSR(scale, sigma_px=sigma)(torch.ones(1, 1, 2, 2)).shape == (1, 1, 2 * scale, 2 * scale)
    with pytest.raises(ValueError, match="sigma_px"):
        BaselineSR(scale, sigma_px=-1.0)


def test_with_baseline_mixes_the_baseline_into_the_networks_in_one_graph() -> None:
    """Oracle: (1 - u) · the blend run alone + u · the baseline, in PyTorch and through ONNX; the members keep their
    weights scaled by 1 - u and come back with the baseline last."""
    from refscope.daemon.offline.net import onnx_runner

    a = _fit("fullres", 2, 1, Normalisation(190.0, 1 / 60.0))
    b = _fit("fullres", 2, 2, Normalisation(170.0, 1 / 95.0), channels=16)
    blend = blend_fits([a, b], [0.75, 0.25])
    served = with_baseline(blend, 1.5, 0.2)
    x = _image(4, (24, 30))
    base = baseline_fit(2, 1.5, Normalisation(0.0, 1.0))
    expected = 0.8 * net_predictor(blend)(x) + 0.2 * net_predictor(base)(x)
    np.testing.assert_allclose(net_predictor(served)(x), expected, rtol=0, atol=2e-3)
    assert served.network_kwargs["weights"] == pytest.approx([0.6, 0.2, 0.2])
    assert [m.network for m in blend_members(served)] == ["fullres", "fullres", "baseline"]
    data, manifest = export_netfit(served)
    assert manifest.halo == max(a.build().halo, BaselineSR(2, sigma_px=1.5).halo)
    np.testing.assert_allclose(onnx_runner(data, manifest, threads=1)(x), expected, rtol=0, atol=2e-3)
    alone = with_baseline(a, 0.0, 0.3)
    assert alone.network_kwargs["weights"] == pytest.approx([0.7, 0.3])
    assert with_baseline(a, 1.0, 0.0) is a
    with pytest.raises(ValueError, match="already holds"):
        with_baseline(served, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_baseline(a, 1.0, 1.0)


def test_choose_baseline_share_finds_the_share_that_made_the_reference() -> None:
    """The HR is 0.8 · network + 0.2 · baseline plus noise: u = 0.2 must win; with the HR = the network, u = 0 (the
    network itself) must."""
    norm = Normalisation(150.0, 1 / 100.0)
    network = _fit("fullres", 2, 5, norm)
    base = baseline_fit(2, 2.0, norm)
    rng = np.random.default_rng(9)
    lrs = [_image(20 + k, (24, 24)) for k in range(3)]
    mixed = [(lr, 0.8 * net_predictor(network)(lr) + 0.2 * net_predictor(base)(lr) + rng.normal(0, 0.2, (48, 48)))
             for lr in lrs]
    served, u, scores = choose_baseline_share(network, mixed, sigma_px=2.0)
    assert u == 0.2 and served.network == "blend" and set(scores) == set(BASELINE_WEIGHTS)
    assert scores[0.2] == max(scores.values())
    alone = [(lr, net_predictor(network)(lr)) for lr in lrs]
    served, u, _ = choose_baseline_share(network, alone, sigma_px=2.0)
    assert u == 0.0 and served is network
    with pytest.raises(ValueError, match="held-out"):
        choose_baseline_share(network, [], sigma_px=2.0)


@pytest.mark.parametrize("scale, sigma", [(2, 2.5), (3, 1.0)])
def test_baseline_tiles_reproduce_the_whole_frame(scale: int, sigma: float) -> None:
    """A tile with ``halo`` LR px of context gives the untiled output exactly at an odd interior origin (the
    renormalised edge of the tile stays inside its halo; ``halo`` may exceed the exact reach by a pixel)."""
    layer = BaselineSR(scale, sigma_px=sigma)
    x = torch.from_numpy(np.random.default_rng(5).random((1, 1, 31, 35)).astype(np.float32))
    h = layer.halo
    y0, y1, x0, x1 = h + 3, h + 12, h + 5, h + 16
    with torch.no_grad():
        whole = layer(x)[0, 0]
        window = layer(x[:, :, y0 - h:y1 + h, x0 - h:x1 + h])[0, 0]
    s = scale
    np.testing.assert_allclose(window[s * h:s * (h + y1 - y0), s * h:s * (h + x1 - x0)].numpy(),
                               whole[s * y0:s * y1, s * x0:s * x1].numpy(), rtol=0, atol=1e-5)
    with torch.no_grad():  # without the context the tile's renormalised edge shows: the check has teeth
        bare = layer(x[:, :, y0:y1, x0:x1])[0, 0]
    assert np.abs(bare.numpy() - whole[s * y0:s * y1, s * x0:s * x1].numpy()).max() > 1e-3

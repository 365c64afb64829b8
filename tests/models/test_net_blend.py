"""Two networks served as one (models/net_blend.py, networks.BlendedSR): the graph equals the weighted mean of the
members run alone, across normalisations, in PyTorch and through ONNX; the weight is chosen on held-out data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from refscope.models.image_ops import upsample_bicubic
from refscope.models.net_blend import (COMPANION_CHANNELS, blend_fits, blend_members, blend_outputs, choose_blend,
                                       companion_kwargs, companion_network)
from refscope.models.net_fit import NetFit, export_netfit, net_predictor
from refscope.models.networks import BlendedSR, build_network
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

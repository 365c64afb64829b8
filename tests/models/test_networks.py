"""Networks: registry, sizes, bicubic start, EMSR pieces against hand computations, ONNX export parity."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from refscope.models.emsr import EMSR, AtrousWavelet, WindowAttention
from refscope.models.image_ops import upsample_bicubic
from refscope.models.network_names import AUTO_NETWORK, NETWORK_NAMES, resolve_network
from refscope.models.networks import NETWORKS, CompactSR, FullResSR, KeysUpsample, build_network, count_parameters
from refscope.models.onnx_export import check_onnx_model, export_torch_module

torch.set_num_threads(1)


def _randomise_zero_layers(net: torch.nn.Module) -> None:
    """The last layers start at zero (untrained = bicubic); perturb them so the residual path is exercised."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in net.parameters():
            if not param.abs().sum():
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))


def test_registry_lists_known_names_on_unknown():
    assert {"compact", "fullres", "emsr"} <= set(NETWORKS)
    with pytest.raises(KeyError) as info:
        build_network("srgan", scale=2)
    assert "compact" in str(info.value) and "emsr" in str(info.value) and "auto" in str(info.value)


def test_torch_free_names_match_the_registry():
    assert set(NETWORK_NAMES) == set(NETWORKS) and set(AUTO_NETWORK.values()) <= set(NETWORKS)


@pytest.mark.parametrize("scale", [2, 3, 4, 6])
def test_auto_is_the_served_network(scale):
    expected = AUTO_NETWORK[min(scale, max(AUTO_NETWORK))]
    assert resolve_network("auto", scale) == expected
    assert type(build_network("auto", scale=scale)) is NETWORKS[expected]
    assert resolve_network("emsr", scale) == "emsr"


@pytest.mark.parametrize("scale,channels", [(2, 32), (3, 48), (4, 48)])
def test_fullres_is_narrower_at_x2(scale, channels):
    """C = 32 at x2 keeps the full-resolution body's cost per output pixel near that of C = 48 at x3."""
    net = FullResSR(scale)
    assert net.head.out_channels == channels and net.tail.out_channels == scale * scale
    assert 30_000 <= count_parameters(net) <= 150_000


def test_auto_refuses_a_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        resolve_network("auto", 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_compact_parameter_count(scale):
    assert 100_000 <= count_parameters(build_network("compact", scale=scale)) <= 300_000


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_network("compact", scale=2, seed=3)
    b = build_network("compact", scale=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("scale", [2, 3])
def test_keys_upsample_equals_numpy_bicubic(scale, rng):
    image = rng.random((7, 11))
    with torch.no_grad():
        out = KeysUpsample(scale)(torch.from_numpy(image)[None, None].float())[0, 0].numpy()
    np.testing.assert_allclose(out, upsample_bicubic(image, scale), atol=1e-5)


@pytest.mark.parametrize("name", ["compact", "fullres", "emsr"])
def test_untrained_network_is_bicubic(name, rng):
    image = rng.random((10, 13))
    net = build_network(name, scale=2, seed=0).eval()
    with torch.no_grad():
        out = net(torch.from_numpy(image)[None, None].float())[0, 0].numpy()
    np.testing.assert_allclose(out, upsample_bicubic(image, 2), atol=1e-5)


@pytest.mark.parametrize("scale", [3, 4])
def test_fullres_receptive_field_is_exactly_its_halo(scale):
    """An output block depends on LR pixels up to ``halo`` away and no further (the tiling contract)."""
    net = FullResSR(scale, channels=8, n_layers=3).eval()
    _randomise_zero_layers(net)
    assert net.halo == 5
    x = torch.rand(1, 1, 21, 21, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = net(x)[0, 0, 10 * scale:11 * scale, 10 * scale:11 * scale]
        for distance, changes in [(net.halo, True), (net.halo + 1, False)]:
            moved = x.clone()
            moved[0, 0, 10, 10 + distance] += 1.0
            out = net(moved)[0, 0, 10 * scale:11 * scale, 10 * scale:11 * scale]
            assert bool((out - base).abs().max() > 1e-6) is changes, distance


def test_fullres_tiles_reproduce_the_whole_frame(rng):
    """Tiles with ``halo`` px of context give the untiled output exactly, from any tile origin."""
    net = FullResSR(3, channels=8, n_layers=2).eval()
    _randomise_zero_layers(net)
    x = torch.from_numpy(rng.random((1, 1, 19, 23)).astype(np.float32))
    with torch.no_grad():
        whole = net(x)[0, 0]
        h = net.halo
        y0, y1, x0, x1 = 5, 12, 7, 16  # an interior tile at an odd origin
        window = net(x[:, :, y0 - h:y1 + h, x0 - h:x1 + h])[0, 0]
    np.testing.assert_allclose(window[3 * h:3 * (h + y1 - y0), 3 * h:3 * (h + x1 - x0)].numpy(),
                               whole[3 * y0:3 * y1, 3 * x0:3 * x1].numpy(), atol=1e-5)


def test_compact_output_shape_for_odd_sizes():
    net = CompactSR(3, channels=8, n_layers=1)
    _randomise_zero_layers(net)
    assert net(torch.zeros(2, 1, 5, 7)).shape == (2, 1, 15, 21)


def test_atrous_wavelet_details_vanish_on_constants_and_sum_to_the_smoothing():
    atw = AtrousWavelet(1, levels=3)
    assert torch.allclose(atw(torch.full((1, 1, 9, 12), 3.0)), torch.zeros(1, 3, 9, 12), atol=1e-6)
    x = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    coarse = x - atw(x).sum(dim=1, keepdim=True)           # c_J = x - sum_j w_j
    assert float(coarse.std()) < 0.5 * float(x.std())       # the residual is a smoothed image


def test_window_attention_matches_per_window_reference():
    """Eqs. 13-14 per window, padded tokens excluded, against a loop over the real windows."""
    torch.manual_seed(0)
    attn = WindowAttention(8, window=4, heads=2).eval()
    x = torch.randn(1, 8, 10, 7)
    with torch.no_grad():
        out = attn(x)
        ref = torch.zeros_like(x)
        for y0 in range(0, 10, 4):
            for x0 in range(0, 7, 4):
                win = x[0, :, y0:y0 + 4, x0:x0 + 4]
                h, w = win.shape[1:]
                tokens = win.reshape(8, -1).T                                   # (T, C)
                q, k, v = attn.qkv(tokens).chunk(3, dim=-1)
                heads = []
                for i in range(2):
                    sl = slice(4 * i, 4 * i + 4)
                    a = torch.softmax(q[:, sl] @ k[:, sl].T / 2.0, dim=-1)     # sqrt(d_k) = 2
                    heads.append(a @ v[:, sl])
                ref[0, :, y0:y0 + h, x0:x0 + w] = attn.proj(torch.cat(heads, dim=1)).T.reshape(8, h, w)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_emsr_rejects_heads_not_dividing_channels():
    with pytest.raises(ValueError, match="divisible"):
        EMSR(2, channels=30, heads=4)


def _ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name,scale,kwargs", [("compact", 2, {}), ("compact", 3, {}), ("fullres", 4, {}),
                                               ("emsr", 2, {"channels": 16, "n_blocks": 1, "heads": 2})])
def test_onnx_export_matches_torch_on_two_sizes(name, scale, kwargs, rng):
    net = build_network(name, scale=scale, seed=1, **kwargs)
    _randomise_zero_layers(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's own constant-folding notes
        model_bytes, manifest = export_torch_module(net, scale=scale, kind=name)
    check_onnx_model(model_bytes, expected_scale=scale)
    assert manifest.kind == name and manifest.scale == scale
    assert (manifest.halo, manifest.align) == (net.halo, net.align)  # serving tiles with the network's own
    net.eval()
    for shape in [(1, 1, 16, 16), (2, 1, 13, 21)]:
        x = rng.random(shape).astype(np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        got = _ort_run(model_bytes, x)
        assert got.shape == (shape[0], 1, scale * shape[2], scale * shape[3])
        np.testing.assert_allclose(got, expected, atol=1e-4)

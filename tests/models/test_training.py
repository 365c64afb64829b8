"""Degradations (resampling, synthetic I/II, multi-scale LR-only pairs), eq. 16, training strategies, warm start."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from refscope.models.degradations import (INTERPOLATIONS, MULTISCALE_PRESETS, BlurNoise, MultiScaleConfig,
                                          bicubic_downsample, downscale, multiscale_pair, resize, synthetic_lr)
from refscope.models.image_ops import upsample_bicubic
from refscope.models.metrics import psnr, ssim
from refscope.models.networks import build_network
from refscope.models.noise import estimate_noise_sigma
from refscope.models.training import (Normalisation, TrainConfig, export_network, lp_loss, make_lr_only_dataset,
                                      make_real_pair_dataset, make_synthetic_dataset, noise_robust_loss, predict,
                                      ssim_loss, train, training_device, warm_start)

torch.set_num_threads(1)


def pattern(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sum of oriented cosines with periods of 5-12 px: learnable, but blurred away by bicubic downsampling."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    image = np.zeros(shape)
    for _ in range(4):
        freq, theta, phase = rng.uniform(0.5, 1.3), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        image += np.cos(freq * (np.cos(theta) * y + np.sin(theta) * x) + phase)
    return 100.0 + 20.0 * image                                # arbitrary detector units


def small_net(scale: int = 2) -> torch.nn.Module:
    return build_network("compact", scale=scale, seed=0, channels=16, n_layers=2)


# ------------------------------------------------------------------------------------------------ resampling
def test_integer_downscale_nearest_and_box(rng):
    image = rng.random((8, 12))
    np.testing.assert_array_equal(downscale(image, 2, "nearest"), image[1::2, 1::2])
    np.testing.assert_allclose(downscale(image, 2, "box"), image.reshape(4, 2, 6, 2).mean(axis=(1, 3)))


@pytest.mark.parametrize("method", INTERPOLATIONS)
def test_resize_window_is_a_crop_and_constants_survive(method, rng):
    image = rng.random((30, 25))
    full = resize(image, (17, 41), method)
    np.testing.assert_allclose(resize(image, (17, 41), method, window=(3, 10, 9, 20)), full[3:12, 10:30],
                               atol=1e-12)
    np.testing.assert_allclose(resize(np.full((30, 25), 5.0), (11, 13), method), 5.0, atol=1e-12)


def test_nearest_degradation_preserves_noise_but_filters_do_not(rng):
    clean = pattern((240, 240), rng)
    noisy = clean + rng.normal(0.0, 3.0, clean.shape)
    for shape in [(120, 120), (150, 150)]:                       # factor 2 and the non-integer 1.6
        noise = resize(noisy, shape, "nearest") - resize(clean, shape, "nearest")
        assert abs(noise.std() / 3.0 - 1.0) < 0.05
    box_noise = downscale(noisy, 2, "box") - downscale(clean, 2, "box")
    assert abs(box_noise.std() / 1.5 - 1.0) < 0.05               # averaging 4 pixels halves the noise


def test_synthetic_degradations(rng):
    hr = pattern((64, 48), rng) / 255.0
    np.testing.assert_array_equal(synthetic_lr(hr, 2, rng=rng, degradation=None), bicubic_downsample(hr, 2))
    lr = synthetic_lr(hr, 2, rng=rng, degradation=BlurNoise(post_noise=(0.05, 0.05), dose=(500.0, 500.0)))
    assert lr.shape == (32, 24)
    assert estimate_noise_sigma(lr) > 0.04
    with pytest.raises(ValueError, match="low <= high"):
        BlurNoise(blur_sigma=(2.0, 1.0))


# ------------------------------------------------------------------------------------------------ multi-scale
@pytest.mark.parametrize("sub", [1, 2, 3, 4])
def test_multiscale_subprocess_shapes_and_factors(sub, rng):
    frame = pattern((120, 100), rng)
    weights = tuple(float(k == sub) for k in (1, 2, 3, 4))
    config = MultiScaleConfig(alpha=(0.5, 0.9), beta=(1.1, 2.0), gamma=(0.6, 0.8), weights=weights)
    for _ in range(5):
        pair = multiscale_pair(frame, 2, 12, rng=rng, config=config)
        assert pair.input.shape == (12, 12) and pair.target.shape == (24, 24)
        assert pair.subprocess == sub
        if sub == 1:
            assert pair.factor == 1.0
        else:
            grid = config.factors({2: "alpha", 3: "beta", 4: "gamma"}[sub])
            assert np.isclose(grid, pair.factor).any()
        if sub == 4:
            np.testing.assert_allclose(pair.target, upsample_bicubic(pair.input, 2))
        else:
            assert pair.method in INTERPOLATIONS
            np.testing.assert_allclose(pair.input, resize(pair.target, (12, 12), pair.method))


def test_multiscale_falls_back_to_plain_crops_and_validates(rng):
    frame = pattern((30, 30), rng)
    config = MultiScaleConfig(alpha=(0.25, 0.3), weights=(0.0, 1.0, 0.0, 0.0))  # 30 * 0.3 < 24: never fits
    assert multiscale_pair(frame, 2, 12, rng=rng, config=config).subprocess == 1
    assert MULTISCALE_PRESETS["4x-main"].active() == (1, 2, 3)
    with pytest.raises(ValueError, match="beta"):
        MultiScaleConfig(beta=(0.8, 1.5))
    with pytest.raises(ValueError, match="smaller patch"):
        multiscale_pair(frame, 2, 20, rng=rng)


# ------------------------------------------------------------------------------------------------ eq. 16
@pytest.mark.parametrize("p", [1, 2])
def test_noise_robust_loss_matches_hand_formula(p):
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    noisier = torch.tensor([[[[1.5, 1.0], [3.0, 6.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [2.0, 4.0]]]])
    lambdas = (1.0, 0.5, 2.0)
    total, terms = noise_robust_loss(pred, noisier, target, lambdas=lambdas, p=p)
    t1 = np.mean(np.abs([1, 0, 1, 0]) ** p)          # f(y) - x
    t2 = np.mean(np.abs([1.5, -1, 1, 2]) ** p)       # f(y') - x
    t3 = np.mean(np.abs([-0.5, 1, 0, -2]) ** p)      # f(y) - f(y')
    np.testing.assert_allclose([float(t) for t in terms], [t1, t2, t3])
    assert np.isclose(float(total), 1.0 * t1 + 0.5 * t2 + 2.0 * t3)


def test_ssim_loss_is_one_minus_the_metric_and_has_a_gradient(rng):
    clean = rng.random((2, 1, 24, 30))
    target = clean + 0.1 * rng.standard_normal(clean.shape)
    pred = torch.tensor(clean, requires_grad=True)
    loss = ssim_loss(pred, torch.tensor(target), data_range=1.0)
    oracle = np.mean([ssim(target[i, 0], clean[i, 0], data_range=1.0) for i in range(2)])   # scikit-image
    assert np.isclose(loss.item(), 1.0 - oracle, atol=1e-9)
    loss.backward()
    assert float(pred.grad.abs().sum()) > 0
    assert float(ssim_loss(torch.tensor(target), torch.tensor(target))) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim_loss(pred[..., :10, :10], torch.tensor(target)[..., :10, :10])
    with pytest.raises(ValueError, match="ssim_weight"):
        TrainConfig(ssim_weight=-1.0)


def test_the_structural_term_is_added_to_the_training_loss(rng):
    source = _sources(rng)["real-pairs"]
    runs = {}
    for weight in (0.0, 0.5):
        net = small_net()
        result = train(net, TrainConfig(strategy="real-pairs", patch=12, batch=4, steps=3, lr=1e-3, seed=1,
                                        ssim_weight=weight), source)
        runs[weight] = result.losses
    assert runs[0.5][0] > runs[0.0][0]       # same first batch and weights: the structural term is added
    assert np.all(np.isfinite(runs[0.5]))
    with pytest.raises(ValueError, match="at least 11 px: patch 5 at x2"):   # refused before the first step
        train(small_net(), TrainConfig(strategy="real-pairs", patch=5, steps=3, ssim_weight=0.5), source)


# ------------------------------------------------------------------------------------------------ datasets
def test_real_pair_patches_are_aligned(rng):
    lr = rng.random((20, 24)) * 50 + 10
    hr = np.kron(lr, np.ones((3, 3)))                        # exact S-times grid of the same field
    source = make_real_pair_dataset([(lr, hr)], 3, 6, intensity_fit=False)
    x, y = source.sample(6, rng, augment=True)
    assert x.shape == (6, 1, 6, 6) and y.shape == (6, 1, 18, 18) and x.dtype == np.float32
    for a, b in zip(x[:, 0], y[:, 0]):
        np.testing.assert_allclose(np.kron(a, np.ones((3, 3))), b, atol=1e-5)
    with pytest.raises(ValueError, match="3 x the LR region"):
        make_real_pair_dataset([(lr, hr[:-1])], 3, 6)


def test_normalisation_maps_robust_range_to_unit_interval_and_into_the_manifest(rng):
    image = rng.normal(1000.0, 50.0, (64, 64))
    norm = Normalisation.from_images([image])
    low, high = np.percentile(norm.apply(image), [0.5, 99.5])
    assert abs(low) < 1e-5 and abs(high - 1.0) < 1e-5
    np.testing.assert_allclose(norm.invert(norm.apply(image)), image, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's own constant-folding notes
        _, manifest = export_network(small_net(), norm, kind="compact")
    assert (manifest.input_offset, manifest.input_scale) == (norm.offset, norm.scale)
    np.testing.assert_allclose(manifest.normalise(image), norm.apply(image), rtol=1e-5, atol=1e-5)


def _ramp_source():
    """A real-pair source whose LR and HR both increase along x only (constant along y)."""
    lr = np.tile(np.arange(24, dtype=np.float64), (20, 1)) * 5 + 10
    hr = np.kron(lr, np.ones((2, 2)))
    return make_real_pair_dataset([(lr, hr)], 2, 8, intensity_fit=False)


def _orientation(patch: np.ndarray) -> str:
    """Which way a ramp patch runs: ``"x+"``, ``"x-"``, ``"y+"`` or ``"y-"``."""
    dy, dx = np.diff(patch, axis=0).mean(), np.diff(patch, axis=1).mean()
    return ("x+" if dx > 0 else "x-") if abs(dx) > abs(dy) else ("y+" if dy > 0 else "y-")


@pytest.mark.parametrize("augment, seen", [("dihedral", {"x+", "x-", "y+", "y-"}), (True, {"x+", "x-", "y+", "y-"}),
                                           ("flips", {"x+", "x-"}), ("none", {"x+"}), (False, {"x+"})])
def test_augmentation_modes_transform_the_pairs_as_named(augment, seen):
    # "flips" never transposes: the scan's fast axis stays x (direction-dependent blur and noise stay where they are)
    x, y = _ramp_source().sample(64, np.random.default_rng(3), augment=augment)
    assert {_orientation(a) for a in x[:, 0]} == seen
    for a, b in zip(x[:, 0], y[:, 0]):  # input and target transformed alike
        np.testing.assert_allclose(np.kron(a, np.ones((2, 2))), b, atol=1e-5)


def test_an_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="augment must be"):
        TrainConfig(augment="rotate")
    with pytest.raises(ValueError, match="augment must be"):
        _ramp_source().sample(2, np.random.default_rng(0), augment="transpose")


# ------------------------------------------------------------------------------------------------ training
def _held_out_loss(net: torch.nn.Module, source) -> float:
    """Mean ℓ1 error of the (clean-input) network on a fixed batch of the source."""
    x, y = source.sample(32, np.random.default_rng(0), augment=False)
    with torch.no_grad():
        return float(lp_loss(net(torch.from_numpy(x)), torch.from_numpy(y), 1))


def _sources(rng):
    hr_images = [pattern((96, 96), rng) for _ in range(2)]
    regions = [(bicubic_downsample(h, 2) + rng.normal(0, 0.5, (48, 48)), h) for h in hr_images]
    return {
        "real-pairs": make_real_pair_dataset(regions, 2, 12),
        "noise-robust": make_real_pair_dataset(regions, 2, 12),
        "lr-only": make_lr_only_dataset(hr_images, 2, 12,
                                        config=MultiScaleConfig(alpha=(0.6, 0.9), beta=(1.1, 1.5),
                                                                methods=("bicubic",))),
        "synthetic": make_synthetic_dataset(hr_images, 2, 12, degradation=None),
    }


def test_every_strategy_reduces_its_loss(rng):
    sources = _sources(rng)
    for strategy, source in sources.items():
        net = small_net()
        before = _held_out_loss(net, source)                   # untrained = bicubic
        result = train(net, TrainConfig(strategy=strategy, patch=12, batch=4, steps=60, lr=2e-3, seed=1), source)
        after = _held_out_loss(net, source)
        assert result.steps == 60 and len(result.losses) == 60 and np.all(np.isfinite(result.losses))
        assert after < 0.85 * before, (strategy, before, after)
    with pytest.raises(ValueError, match="lr-only"):
        train(small_net(), TrainConfig(strategy="lr-only"), sources["synthetic"])


def test_emsr_trains_with_the_noise_robust_loss(rng):
    source = _sources(rng)["noise-robust"]
    net = build_network("emsr", scale=2, seed=0, channels=16, n_blocks=1, heads=2)
    result = train(net, TrainConfig(strategy="noise-robust", patch=12, batch=2, steps=3, lr=1e-3), source)
    assert result.steps == 3 and np.all(np.isfinite(result.losses))
    assert float(result.state_dict["mapper.2.weight"].abs().sum()) > 0   # left the bicubic start


def test_compact_beats_its_untrained_self_on_bicubic_degraded_patterns(rng):
    source = make_synthetic_dataset([pattern((96, 96), rng) for _ in range(2)], 2, 12, degradation=None)
    test_hr = pattern((64, 64), rng)
    test_lr = bicubic_downsample(test_hr, 2)
    net = build_network("compact", scale=2, seed=0)
    inner = (slice(8, -8), slice(8, -8))

    def score() -> float:
        return psnr(test_hr[inner], predict(net, test_lr, source.normalisation)[inner], data_range=np.ptp(test_hr))

    before = score()                                           # untrained = bicubic
    train(net, TrainConfig(strategy="synthetic", patch=12, batch=4, steps=100, lr=5e-4), source)
    assert score() > before + 3.0


def test_training_is_reproducible_and_warm_start_restores_outputs(rng):
    source = _sources(rng)["synthetic"]
    config = TrainConfig(strategy="synthetic", patch=12, batch=2, steps=4, lr=1e-3, seed=5)
    net_a, net_b = small_net(), small_net()
    result_a, result_b = train(net_a, config, source), train(net_b, config, source)
    assert result_a.losses == result_b.losses
    lr = pattern((20, 18), rng)
    restored = warm_start(build_network("compact", scale=2, seed=99, channels=16, n_layers=2), result_a.state_dict)
    np.testing.assert_array_equal(predict(restored, lr, source.normalisation),
                                  predict(net_a, lr, source.normalisation))
    with pytest.raises(ValueError, match="do not fit"):
        warm_start(small_net(scale=3), result_a.state_dict)


def test_budget_and_stop_callback(rng):
    source = _sources(rng)["real-pairs"]
    assert train(small_net(), TrainConfig(steps=50, patch=12), source, budget_s=0.0).steps == 0
    result = train(small_net(), TrainConfig(steps=50, patch=12, batch=2), source, on_step=lambda step, _: step >= 3)
    assert result.steps == 3 and len(result.losses) == 3


@pytest.mark.parametrize("name", ["banana", "meta", "cuda:99"])
def test_an_unusable_training_device_is_refused_by_name(name):
    with pytest.raises(ValueError, match=name):
        training_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            training_device("cuda")


def test_training_on_an_explicit_device_hands_the_network_back_on_the_cpu(rng):
    source = _sources(rng)["noise-robust"]
    config = TrainConfig(strategy="noise-robust", patch=12, batch=2, steps=4, lr=1e-3, seed=5)
    reference = train(small_net(), config, source)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        net = small_net()
        result = train(net, TrainConfig(**{**config.__dict__, "device": device}), source)
        assert all(p.device.type == "cpu" for p in net.parameters())
        assert all(v.device.type == "cpu" for v in result.state_dict.values())
        # the same steps on another device: the same losses up to float32 kernel differences
        np.testing.assert_allclose(result.losses, reference.losses, rtol=1e-3 if device != "cpu" else 0)


def test_predict_returns_caller_units(rng):
    lr = pattern((15, 17), rng)
    norm = Normalisation.from_images([lr])
    out = predict(small_net(3), lr, norm)                      # untrained = bicubic
    assert out.shape == (45, 51) and out.dtype == np.float64
    np.testing.assert_allclose(out, upsample_bicubic(lr, 3), atol=1e-3)


def _distance(state: dict, start: dict) -> float:
    return float(sum(((state[k] - start[k]) ** 2).sum() for k in start))


def test_the_anchor_term_holds_the_weights_near_where_they_started(rng):
    """L2-SP: α Σ (w − w₀)² is added to the loss (its value at the start is 0, so the first loss is the same), and
    a strong α keeps the trained weights far closer to w₀ than training without it; a given anchor is the w₀."""
    source = _sources(rng)["real-pairs"]
    start = {k: v.detach().clone() for k, v in small_net().named_parameters()}
    runs = {}
    for alpha in (0.0, 10.0):
        config = TrainConfig(strategy="real-pairs", patch=12, batch=4, steps=40, lr=3e-3, seed=1, anchor_weight=alpha)
        runs[alpha] = train(small_net(), config, source)
    assert runs[10.0].losses[0] == pytest.approx(runs[0.0].losses[0])
    free, held = _distance(runs[0.0].state_dict, start), _distance(runs[10.0].state_dict, start)
    assert held < 0.2 * free, (held, free)
    # anchored elsewhere: the weights are pulled away from where they started, toward that anchor
    elsewhere = {k: v + 0.05 for k, v in start.items()}
    pulled = train(small_net(), TrainConfig(strategy="real-pairs", patch=12, batch=4, steps=40, lr=3e-3, seed=1,
                                            anchor_weight=10.0), source, anchor=elsewhere)
    assert _distance(pulled.state_dict, elsewhere) < _distance(start, elsewhere)
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(anchor_weight=-1.0)
    with pytest.raises(ValueError, match="lacks"):
        train(small_net(), TrainConfig(patch=12, steps=1, anchor_weight=1.0), source, anchor={})


def test_a_two_span_phase_pulls_toward_where_the_phase_started(rng, monkeypatch):
    """train_phase's lower-rate span starts from the first span's weights but keeps the phase's start as w₀."""
    from refscope.models import net_fit

    source = _sources(rng)["real-pairs"]
    net = small_net()
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    anchors = []
    real = net_fit.train

    def spy(*args, anchor=None, **kwargs):
        anchors.append(anchor)
        return real(*args, anchor=anchor, **kwargs)

    monkeypatch.setattr(net_fit, "train", spy)
    cfg = TrainConfig(strategy="real-pairs", patch=12, batch=4, lr=1e-3, anchor_weight=1.0)
    results = net_fit.train_phase(net, cfg, source, 60.0, None, steps=8)
    assert [r.steps for r in results] == [6, 2] and len(anchors) == 2 and anchors[0] is anchors[1]
    for key, value in start.items():
        torch.testing.assert_close(anchors[1][key], value)

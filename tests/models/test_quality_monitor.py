"""The no-reference quality signals (:mod:`refscope.models.quality_monitor`) and the confidence map
(:mod:`refscope.models.confidence`), each against a simple oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.confidence import confidence_map, key_index, reference_q, support_grid
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.quality_monitor import (FrameStats, Threshold, badness_on_lr_grid, drift_signals, focus_index,
                                             frame_stats, hysteresis, region_shape, suggest_region, texture_distance)
from refscope.models.synthetic import make_pair


def _blurred_noise(b: float, shape=(384, 384), seed=0) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), b, mode="wrap")


def _stats(**kw) -> FrameStats:
    values = dict(mean=0.0, std=1.0, p05=-1.6, p95=1.6, focus_index=0.2, noise_sigma=0.1)
    values.update(kw)
    return FrameStats(**values)


# ------------------------------------------------------------------------------------------------ focus


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
def test_focus_index_of_blurred_white_noise_matches_the_closed_form(b):
    ratio = (1 - math.exp(-1 / (4 * b * b))) / (1 - math.exp(-1 / (b * b)))
    expected = (ratio - 0.25) / 0.75
    clean = _blurred_noise(b)
    assert focus_index(clean, noise_sigma=0.0) == pytest.approx(expected, rel=0.1)
    noise = 0.5 * clean.std()
    noisy = clean + np.random.default_rng(1).normal(0.0, noise, clean.shape)
    assert focus_index(noisy, noise_sigma=noise) == pytest.approx(expected, rel=0.15)  # noise removed


def test_focus_index_ignores_gain_and_offset_and_drops_with_blur():
    image = make_pair(rng=np.random.default_rng(0), lr_shape=(128, 160), kind="particles").lr
    base = focus_index(image)
    assert focus_index(3.0 * image + 7.0) == pytest.approx(base, rel=1e-6)
    assert focus_index(ndimage.gaussian_filter(image, 1.0)) < 0.6 * base


# ------------------------------------------------------------------------------------------------ signals


def test_intensity_signal_is_the_largest_quantile_shift_in_training_spreads():
    rng = np.random.default_rng(2)
    train = rng.normal(100.0, 10.0, (96, 96))
    training = frame_stats(train)
    assert drift_signals(frame_stats(train), [training])["intensity"] == pytest.approx(0.0, abs=1e-12)
    shifted = frame_stats(train + 25.0)  # every quantile moves by 25 = 2.5 training standard deviations
    assert drift_signals(shifted, [training])["intensity"] == pytest.approx(25.0 / train.std(), rel=1e-9)
    gained = 1.5 * train - 50.0  # mean unchanged, p05/p95 move by 0.5 (p - mean)
    expected = 0.5 * max(abs(np.percentile(train, 5) - 100.0), abs(np.percentile(train, 95) - 100.0))
    value = drift_signals(frame_stats(gained), [training])["intensity"]
    assert value == pytest.approx(max(expected, abs(gained.mean() - train.mean())) / train.std(), rel=1e-6)


def test_signals_take_the_closest_training_region_and_none_without_one():
    a, b = _stats(mean=0.0, focus_index=0.2), _stats(mean=10.0, p05=8.4, p95=11.6, focus_index=0.1)
    frame = _stats(mean=10.0, p05=8.4, p95=11.6, focus_index=0.1)
    signals = drift_signals(frame, [a, b])
    assert signals["intensity"] == pytest.approx(0.0) and signals["focus"] == pytest.approx(0.0)
    assert drift_signals(frame, [a])["focus"] == pytest.approx(0.5)  # half as sharp as region a
    assert drift_signals(frame, []) == {"coverage": None, "texture": None, "intensity": None, "focus": None}
    assert drift_signals(frame, [a])["coverage"] is None  # no support measured


def test_texture_distance_oracle():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(6, 6))
    cov = m @ m.T + np.eye(6)
    cov /= np.trace(cov)
    assert texture_distance(cov, cov) == pytest.approx(0.0, abs=1e-6)
    scale = np.diag([2.0, 2.0, 2.0, 0.5, 0.5, 0.5])  # generalised eigenvalues 4 and 1/4 on a diagonal pair
    d = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert texture_distance(scale @ d @ scale, d) == pytest.approx(math.log(4.0), rel=1e-5)
    with pytest.raises(ValueError):
        texture_distance(cov, cov[:5, :5])


# ------------------------------------------------------------------------------------------------ hysteresis


def test_hysteresis_raises_at_on_and_clears_at_off():
    t = Threshold(on=1.5, off=1.2)
    values = [1.0, 1.4, 1.5, 1.3, 1.21, 1.2, 1.4, None, 1.6]
    states, active = [], False
    for v in values:
        active = hysteresis(active, v, t)
        states.append(active)
    assert states == [False, False, True, True, True, False, False, False, True]


def test_hysteresis_for_a_low_is_bad_score_and_threshold_checks():
    t = Threshold(on=0.2, off=0.4, higher_is_worse=False)
    assert hysteresis(False, 0.3, t) is False and hysteresis(False, 0.2, t) is True
    assert hysteresis(True, 0.39, t) is True and hysteresis(True, 0.4, t) is False
    assert hysteresis(True, float("nan"), t) is True
    with pytest.raises(ValueError):
        Threshold(on=1.0, off=1.0)
    with pytest.raises(ValueError):
        Threshold(on=0.4, off=0.2, higher_is_worse=False)


# ------------------------------------------------------------------------------------------------ regions


def test_region_is_a_quarter_of_the_field_where_badness_is_highest():
    assert region_shape((256, 320)) == (128, 160)
    bad = np.zeros((100, 120))
    bad[70:90, 95:110] = 1.0  # a bad spot near the bottom-right corner
    y0, x0, y1, x1 = suggest_region(bad, (100, 120), region_shape((100, 120)))
    assert (y1 - y0, x1 - x0) == (50, 60)
    assert 0 <= y0 and 0 <= x0 and y1 <= 100 and x1 <= 120  # inside the field
    assert y0 <= 70 and 90 <= y1 and x0 <= 95 and 110 <= x1  # covers the spot
    assert suggest_region(None, (100, 120), (50, 60)) == (25, 30, 75, 90)  # no map: centred
    assert suggest_region(np.zeros((100, 120)), (100, 120), (50, 60)) == (25, 30, 75, 90)  # ties: centred
    assert badness_on_lr_grid(np.full((8, 12), 0.25, np.float32), 2).shape == (4, 6)


# ------------------------------------------------------------------------------------------------ confidence


@pytest.fixture(scope="module")
def model_and_region():
    pair = make_pair(rng=np.random.default_rng(5), lr_shape=(128, 160), kind="particles")
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=600)))
    oy, ox = (int(v) + 1 for v in model.geometries[0].offset_yx)
    return model, pair, pair.lr[oy:oy + 60, ox:ox + 76]


def test_confidence_map_shape_range_and_exact_values(model_and_region):
    model, pair, region = model_and_region
    keys = key_index(model)
    grid = support_grid(pair.lr, model, keys=keys, stride=4)
    conf = confidence_map(grid, reference_q([grid]))
    assert conf.shape == (256, 320) and conf.dtype == np.float32
    assert 0.0 <= float(conf.min()) and float(conf.max()) <= 1.0
    # oracle: a constant q interpolates to the constant 2^-(q/q_ref)^2 everywhere
    flat = type(grid)(np.full_like(grid.q, 0.3), grid.ys, grid.xs, grid.out_shape, grid.noise_sigma)
    assert np.allclose(confidence_map(flat, 0.3), 0.5, atol=1e-6)
    assert np.allclose(confidence_map(flat, 0.6), 2 ** -0.25, atol=1e-6)


def test_confidence_and_coverage_tell_another_specimen_apart(model_and_region):
    model, pair, region = model_and_region
    keys = key_index(model)
    train_grid = support_grid(region, model, keys=keys)
    training, q_ref = frame_stats(region, support=train_grid), reference_q([train_grid])
    same = make_pair(rng=np.random.default_rng(6), lr_shape=(128, 160), kind="particles").lr
    other = make_pair(rng=np.random.default_rng(6), lr_shape=(128, 160), kind="cells").lr
    results = {}
    for name, frame in (("same", same), ("other", other)):
        grid = support_grid(frame, model, keys=keys)
        results[name] = (drift_signals(frame_stats(frame, support=grid), [training]),
                         float(confidence_map(grid, q_ref).mean()))
    assert results["same"][0]["coverage"] < 1.25 < 1.5 < results["other"][0]["coverage"]
    assert results["other"][1] < results["same"][1] - 0.1
    assert results["other"][0]["texture"] > results["same"][0]["texture"]

"""The safe baseline and the blend toward it: exact against naive whole-frame implementations of the same
equations, the identity where the model is trusted, the baseline where a model has gone wrong."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.baseline import SafeBaseline, baseline_block
from refscope.models.confidence import interpolate_grid, key_index, reference_q, support_grid
from refscope.models.consistency import local_consistency
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig
from refscope.models.noise import estimate_noise_sigma
from refscope.models.peers import tuned_blur
from refscope.models.pipeline import FitConfig, enhance, fit
from refscope.models.safe_blend import (SafeBlendConfig, blend_toward_baseline, consistency_window, hand_over,
                                        trust_grid)
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def session():
    """A library fitted on a cell specimen (with its forward model), the LR frame and its q_ref."""
    pair = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, kind="cells")
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(patch_size=9, size=500)))
    assert model.forward is not None
    keys = key_index(model)
    lr = np.asarray(pair.lr, np.float64)
    return model, keys, reference_q([support_grid(lr, model, keys=keys)]), lr


def naive_blend(model_out, lr, grid, baseline, forward, config):
    """Equations (1)-(2) on whole frames: the reference implementation."""
    scale = grid.out_shape[0] // lr.shape[0]
    base = ndimage.gaussian_filter(upsample_bicubic(lr, scale), baseline.sigma_px)
    rho = None if forward is None else local_consistency(lr, model_out, forward,
                                                         window=consistency_window(grid, scale),
                                                         sigma=estimate_noise_sigma(lr))
    w = np.clip(interpolate_grid(grid, trust_grid(grid, baseline.q_ref, consistency=rho, config=config)), 0, 1)
    w[w > 1 - 1e-6] = 1.0
    return base + w * (model_out - base), w.astype(np.float64)


@pytest.mark.parametrize("sigma", [0.0, 0.75, 2.5])
@pytest.mark.parametrize("rows,cols", [((0, 192), (0, 256)), ((0, 7), (250, 256)), ((37, 101), (3, 190)),
                                       ((185, 192), (0, 40))])
def test_baseline_block_is_the_blur_of_bicubic_cut_out(sigma, rows, cols) -> None:
    lr = np.random.default_rng(3).random((96, 128))
    whole = ndimage.gaussian_filter(upsample_bicubic(lr, 2), sigma) if sigma else upsample_bicubic(lr, 2)
    block = baseline_block(lr, scale=2, sigma_px=sigma, rows=rows, cols=cols)
    np.testing.assert_allclose(block, whole[rows[0]:rows[1], cols[0]:cols[1]], rtol=0, atol=1e-12)


def test_baseline_block_refuses_ranges_outside_the_output() -> None:
    with pytest.raises(ValueError, match="rows 0:200"):
        baseline_block(np.zeros((96, 128)), scale=2, sigma_px=1.0, rows=(0, 200), cols=(0, 10))
    with pytest.raises(ValueError, match="sigma_px"):
        baseline_block(np.zeros((96, 128)), scale=2, sigma_px=-1.0, rows=(0, 2), cols=(0, 10))


def test_hand_over_goes_smoothly_from_one_to_zero() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0])
    w = hand_over(x, 2.0, 6.0)
    np.testing.assert_allclose(w[[0, 1, 2]], 1.0)
    np.testing.assert_allclose(w[[6, 7]], 0.0)
    assert w[4] == pytest.approx(0.5) and np.all(np.diff(w) <= 0)
    for bad in ({"start": 0.0, "stop": 1.0}, {"start": 3.0, "stop": 2.0}, {"rho_start": 9.0},
                {"rho_stop": float("inf")}):
        with pytest.raises(ValueError, match="a safe blend needs 0 <"):
            SafeBlendConfig(**bad)


def test_a_trusted_model_on_the_frames_the_references_cover_is_left_alone(session) -> None:
    model, keys, q_ref, lr = session
    grid = support_grid(lr, model, keys=keys)
    out = enhance(lr, model).astype(np.float32)  # the library itself: supported and consistent
    before = out.copy()
    summary = blend_toward_baseline(out, lr, grid, SafeBaseline(1.0, 0.1, q_ref), forward=model.forward)
    np.testing.assert_array_equal(out, before)
    assert summary.blended_share == 0.0 and summary.mean_weight == 1.0


def test_an_output_that_does_not_explain_its_input_is_replaced_by_the_baseline(session) -> None:
    model, keys, q_ref, lr = session
    grid = support_grid(lr, model, keys=keys)
    good = enhance(lr, model)
    wrong = (2 * good.mean() - good).astype(np.float32)  # a model gone wrong: the contrast inverted
    baseline = SafeBaseline(1.0, 0.1, q_ref)
    out = wrong.copy()
    summary = blend_toward_baseline(out, lr, grid, baseline)  # without the forward model: the support is fine
    np.testing.assert_array_equal(out, wrong)
    assert summary.blended_share == 0.0
    summary = blend_toward_baseline(out, lr, grid, baseline, forward=model.forward)
    base = ndimage.gaussian_filter(upsample_bicubic(lr, 2), 1.0)
    rho = local_consistency(lr, wrong, model.forward, window=consistency_window(grid, 2))
    assert summary.baseline_share > 0.3 and summary.blended_share > 0.6
    assert np.abs(out - base).mean() < 0.5 * np.abs(wrong - base).mean()
    far = np.repeat(np.repeat(ndimage.minimum_filter(rho, 9) > 6.0, 2, axis=0), 2, axis=1)  # far from trusted px
    assert far.mean() > 0.1
    np.testing.assert_allclose(out[far], base[far], rtol=0, atol=1e-3 * np.ptp(lr))


def test_where_the_support_ratio_passes_stop_the_baseline_serves_alone(session) -> None:
    model, keys, q_ref, lr = session
    y, x = np.mgrid[0:96, 0:128]
    checker = lr.min() + np.ptp(lr) * (((x // 2) + (y // 2)) % 2)  # 2-px checks: no cell patch looks like it
    grid = support_grid(checker, model, keys=keys)
    ratio = grid.q / q_ref
    config = SafeBlendConfig(start=float(np.percentile(ratio, 5)), stop=float(np.percentile(ratio, 10)))
    out = np.full(grid.out_shape, 1e6, np.float32)
    summary = blend_toward_baseline(out, checker, grid, SafeBaseline(0.0, 0.0, q_ref), config=config)
    alone = interpolate_grid(grid, trust_grid(grid, q_ref, config=config)) == 0
    assert summary.baseline_share == pytest.approx(alone.mean()) and summary.baseline_share > 0.5
    np.testing.assert_allclose(out[alone], upsample_bicubic(checker, 2)[alone], rtol=0, atol=1e-5)
    assert np.all(out[~alone] > out[alone].max())  # the rest is a mixture with the (huge) model output


@pytest.mark.parametrize("band_rows", [1, 17, 256])
def test_the_blend_equals_the_naive_equations(session, band_rows) -> None:
    model, keys, q_ref, lr = session
    good = enhance(lr, model)
    model_out = good.copy()
    model_out[:, 128:] = np.random.default_rng(2).permutation(good[:, 128:].ravel()).reshape(192, 128)
    grid = support_grid(lr, model, keys=keys)
    baseline = SafeBaseline(0.75, 0.1, q_ref)
    config = SafeBlendConfig(start=0.8, stop=3.0, rho_start=2.0, rho_stop=12.0)
    expected, w = naive_blend(model_out, lr, grid, baseline, model.forward, config)
    assert 0.05 < (w < 1).mean() < 0.95 and ((w > 0) & (w < 1)).mean() > 0.05  # the premise: a real mixture
    out = model_out.astype(np.float32)
    summary = blend_toward_baseline(out, lr, grid, baseline, forward=model.forward, config=config,
                                    band_rows=band_rows)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-3 * np.ptp(lr))
    assert summary.blended_share == pytest.approx((w < 1).mean())
    assert summary.baseline_share == pytest.approx((w == 0).mean())
    assert summary.mean_weight == pytest.approx(w.mean(), abs=1e-6)


def test_blend_refuses_mismatched_or_read_only_outputs(session) -> None:
    model, keys, q_ref, lr = session
    grid = support_grid(lr, model, keys=keys)
    baseline = SafeBaseline(1.0, 0.0, q_ref)
    with pytest.raises(ValueError, match="support grid"):
        blend_toward_baseline(np.zeros((192, 254), np.float32), lr[:, :127], grid, baseline)
    read_only = np.zeros(grid.out_shape, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        blend_toward_baseline(read_only, lr, grid, baseline)
    with pytest.raises(ValueError, match="LR grid"):
        trust_grid(grid, q_ref, consistency=np.zeros((10, 10)))


def test_local_consistency_is_the_frame_measure_over_a_window(session) -> None:
    model, _, _, lr = session
    out = enhance(lr, model)
    residual = lr - model.forward.degrade(out)
    sigma = 0.7
    rho = local_consistency(lr, out, model.forward, window=5, sigma=sigma)
    by_hand = np.sqrt(ndimage.uniform_filter(residual ** 2, 5, mode="reflect")) / sigma
    np.testing.assert_allclose(rho, by_hand, rtol=1e-10)
    whole = local_consistency(lr, out, model.forward, window=1, sigma=sigma)
    np.testing.assert_allclose(whole, np.abs(residual) / sigma, rtol=1e-10)


def test_interpolate_grid_cut_out_equals_the_whole_map(session) -> None:
    model, keys, q_ref, lr = session
    grid = support_grid(lr, model, keys=keys)
    whole = interpolate_grid(grid, grid.q)
    np.testing.assert_array_equal(interpolate_grid(grid, grid.q, (5, 60), (100, 131)), whole[5:60, 100:131])
    with pytest.raises(ValueError, match="cols 0:999"):
        interpolate_grid(grid, grid.q, None, (0, 999))


def test_safe_baseline_round_trips_and_validates() -> None:
    safe = SafeBaseline(1.25, 0.31, 0.8)
    assert SafeBaseline.from_dict(safe.to_dict()) == safe
    with pytest.raises(ValueError, match="q_ref"):
        SafeBaseline(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_px"):
        SafeBaseline(-0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs sigma_px"):
        SafeBaseline.from_dict({"sigma_px": 1.0})


def test_tuned_blur_blurs_a_noisy_frame_and_keeps_bicubic_for_a_clean_one() -> None:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:64, 0:64]
    hr = np.sin(x / 5.0) + np.cos(y / 7.0)  # smooth: blur costs it nothing, noise is all there is to remove
    lr = hr.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    sigma, delta = tuned_blur([(lr + 0.3 * rng.standard_normal(lr.shape), hr)], scale=2)
    assert sigma > 0 and delta > 0.5
    sharp = rng.random((64, 64))  # pixel-scale detail: any blur loses it
    sigma, delta = tuned_blur([(sharp.reshape(32, 2, 32, 2)[:, 0, :, 0], sharp)], scale=2)
    assert sigma == 0.0 and delta == 0.0


def test_a_frame_that_under_reads_its_noise_is_measured_against_the_sessions_noise(session) -> None:
    model, keys, q_ref, lr = session
    frame = lr.copy()
    frame[:, :80] = lr.min()  # clipped black over most of the frame: the wavelet noise estimate reads ~0
    assert estimate_noise_sigma(frame) < 0.5 * model.lr_noise_sigma  # the premise
    grid = support_grid(frame, model, keys=keys)
    good = enhance(frame, model).astype(np.float32)
    summaries = {}
    for floor in (0.0, model.lr_noise_sigma):
        out = good.copy()
        summaries[floor] = blend_toward_baseline(out, frame, grid, SafeBaseline(1.0, 0.1, q_ref),
                                                 forward=model.forward, noise_floor=floor)
    assert summaries[0.0].blended_share > 0.3  # residuals of ordinary size look huge against a σ of ~0
    assert summaries[model.lr_noise_sigma].blended_share < 0.05


def test_the_blend_stays_within_the_memory_it_declares(session) -> None:
    import tracemalloc

    from refscope.models.safe_blend import blend_bytes, blend_with_library

    model, keys, q_ref, lr = session
    frame = np.tile(lr, (3, 3))  # 288 x 384 LR, x2
    out = (2 * frame.mean() - upsample_bicubic(frame, 2)).astype(np.float32)  # most of it handed over
    model_with = replace(model, safe=SafeBaseline(1.0, 0.1, q_ref))
    tracemalloc.start()
    try:
        _, summary = blend_with_library(out, frame, model_with, keys=keys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.blended_share > 0.5  # the premise: the baseline was computed over most of the frame
    assert peak <= blend_bytes(frame.shape, 2)


def test_the_blend_reports_the_model_outputs_data_consistency_from_its_own_pass(session, monkeypatch) -> None:
    """``BlendSummary.model_consistency`` is data_consistency of the output *before* the blend (oracle), for a
    trusted output (nothing blended) and for a wrong one (blended), from one pass of the forward model."""
    from refscope.models.consistency import ForwardModel, data_consistency

    model, keys, q_ref, lr = session
    grid = support_grid(lr, model, keys=keys)
    good = enhance(lr, model)
    wrong = 2 * good.mean() - good
    calls = []
    degrade = ForwardModel.degrade
    monkeypatch.setattr(ForwardModel, "degrade", lambda self, hr, **kw: calls.append(1) or degrade(self, hr, **kw))
    for output in (good, wrong):
        out = output.astype(np.float32)
        expected = data_consistency(lr, out.copy(), model.forward)
        calls.clear()
        summary = blend_toward_baseline(out, lr, grid, SafeBaseline(1.0, 0.1, q_ref), forward=model.forward)
        assert len(calls) == 1
        assert summary.model_consistency == pytest.approx(expected, rel=1e-9)
    assert summary.blended_share > 0.5 and summary.model_consistency > 4.0  # the inverted output
    plain = blend_toward_baseline(good.astype(np.float32), lr, grid, SafeBaseline(1.0, 0.1, q_ref))
    assert plain.model_consistency is None and plain.residual_rms is None  # no forward model, no figure

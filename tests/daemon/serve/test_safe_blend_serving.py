"""The serving engine pulls its output toward the library's safe baseline where the model is not trusted: the
same pixels as the model alone on frames the references cover, the naive equation where the hand-over runs, and
nothing without a safe baseline or with ``serve.safe_blend`` off."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from refscope.daemon.config import ConfigError, ModelConfig, ServeConfig
from refscope.daemon.serve.engine import ServingEngine
from refscope.models.baseline import SafeBaseline
from refscope.models.confidence import interpolate_grid, key_index, reference_q, support_grid
from refscope.models.consistency import local_consistency
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig
from refscope.models.noise import estimate_noise_sigma
from refscope.models.pipeline import FitConfig, fit
from refscope.models.safe_blend import SafeBlendConfig, consistency_window, trust_grid
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def session():
    pair = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, kind="cells")
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(patch_size=9, size=500)))
    lr = np.asarray(pair.lr, np.float64)
    model.safe = SafeBaseline(1.0, 0.1, reference_q([support_grid(lr, model, keys=key_index(model))]))
    y, x = np.mgrid[0:96, 0:128]
    checker = lr.min() + np.ptp(lr) * (((x // 2) + (y // 2)) % 2)
    frame = lr.copy()
    frame[:, 64:] = checker[:, 64:]  # half the frame a texture no reference showed
    return model, lr, frame


def engine(model, **serve) -> ServingEngine:
    e = ServingEngine(ModelConfig(scale=2, method="paired"), ServeConfig(**serve), use_onnx=False)
    e.set_model(model, 1)
    return e


def test_frames_the_references_cover_are_served_as_the_model_serves_them(session) -> None:
    model, lr, _ = session
    on, off = engine(model).enhance(lr), engine(model, safe_blend=False).enhance(lr)
    np.testing.assert_array_equal(on.image, off.image)
    assert on.safe_blend is not None and on.safe_blend.blended_share == 0.0 and on.support is not None
    assert off.safe_blend is None and off.support is None


def test_where_the_model_is_not_trusted_the_output_is_the_equation(session) -> None:
    model, _, frame = session
    probe = support_grid(frame, model, stride=6)
    ratio = probe.q / model.safe.q_ref
    start, stop = float(np.percentile(ratio, 40)), float(np.percentile(ratio, 70))
    served = engine(model, safe_blend_start=start, safe_blend_stop=stop)
    result = served.enhance(frame)
    alone = engine(model, safe_blend=False).enhance(frame).image.astype(np.float64)
    config = SafeBlendConfig(start, stop)
    sigma = max(estimate_noise_sigma(frame), model.lr_noise_sigma)
    rho = local_consistency(frame, alone, model.forward, window=consistency_window(result.support, 2), sigma=sigma)
    w = np.clip(interpolate_grid(result.support, trust_grid(result.support, model.safe.q_ref, consistency=rho,
                                                            config=config)), 0, 1)
    w[w > 1 - 1e-6] = 1.0
    base = ndimage.gaussian_filter(upsample_bicubic(frame, 2), model.safe.sigma_px)
    assert 0.2 < (w < 1).mean() < 0.8  # the premise: part of the frame is handed over
    np.testing.assert_allclose(result.image, base + w * (alone - base), rtol=0, atol=1e-4 * np.ptp(frame))
    assert result.safe_blend.blended_share == pytest.approx((w < 1).mean())
    described = served.describe()
    assert described["safe_baseline_sigma_px"] == model.safe.sigma_px
    assert described["safe_blend_share"] == pytest.approx(result.safe_blend.blended_share)


def test_no_blend_without_a_safe_baseline(session) -> None:
    model, _, frame = session
    plain = replace(model, safe=None)
    served = engine(plain, safe_blend_start=0.01, safe_blend_stop=0.02)  # would hand over everything
    result = served.enhance(frame)
    assert result.safe_blend is None and served.describe()["safe_baseline_sigma_px"] is None
    np.testing.assert_array_equal(result.image, engine(model, safe_blend=False).enhance(frame).image)


@pytest.mark.parametrize("serve", [{"safe_blend_start": 0.0}, {"safe_blend_start": 3.0, "safe_blend_stop": 2.0},
                                   {"safe_blend_rho_stop": 1.0}])
def test_the_hand_over_settings_are_validated(serve) -> None:
    with pytest.raises(ConfigError, match="serve.safe_blend"):
        ServeConfig(**serve)


def test_the_safe_baseline_serves_instead_of_bicubic_until_a_model_does(session) -> None:
    model, lr, _ = session
    served = ServingEngine(ModelConfig(scale=2), ServeConfig(tile=64, halo=8), use_onnx=False)  # several tiles
    before = served.enhance(lr)
    assert before.model_name == "bicubic"
    served.set_baseline(SafeBaseline(1.25, 0.2, 0.5))
    result = served.enhance(lr)
    assert (result.model_name, result.version, served.describe()["served_by"]) == ("baseline", 0, "baseline")
    np.testing.assert_allclose(result.image, ndimage.gaussian_filter(upsample_bicubic(lr, 2), 1.25), rtol=0,
                               atol=1e-5 * np.ptp(lr))  # tiled, yet the blur of bicubic of the whole frame
    chosen_bicubic = ServingEngine(ModelConfig(scale=2, method="bicubic"), ServeConfig(), use_onnx=False)
    chosen_bicubic.set_baseline(SafeBaseline(1.25, 0.2, 0.5))
    assert chosen_bicubic.enhance(lr).model_name == "bicubic"  # the operator's explicit choice stays
    served.set_model(model, 1)
    assert served.enhance(lr).model_name == "paired"
    rescaled = ServingEngine(ModelConfig(scale=2), ServeConfig(), use_onnx=False)
    rescaled.set_baseline(SafeBaseline(1.25, 0.2, 0.5))
    rescaled.set_scale(3)  # σ was chosen in x2 output px
    assert rescaled.enhance(lr).model_name == "bicubic"

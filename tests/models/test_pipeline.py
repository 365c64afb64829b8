"""Tests of refscope.models.pipeline: intensity units, fit (registration + library) and enhance."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models import synthetic as syn
from refscope.models.errors import ImageError
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import METHODS, FitConfig, IntensityScale, default_patch_size, enhance, fit

CONFIG = FitConfig(scale=2, library=LibraryConfig(patch_size=9, n_categories=6, oversample=5, size=600, seed=0))


@pytest.fixture(scope="module")
def pair():
    return syn.make_pair(rng=np.random.default_rng(3), lr_shape=(128, 160), factor=2.0, rotation_deg=1.0, noise="low")


@pytest.fixture(scope="module")
def model(pair):
    return fit(pair.lr, [(pair.hr, 2.0)], config=CONFIG)


# -------------------------------------------------------------------------------------------- IntensityScale
def test_intensity_scale_round_trip_and_percentiles():
    image = np.random.default_rng(0).gamma(2.0, 300.0, (40, 50))
    scale = IntensityScale.from_image(image)
    low, high = np.percentile(image, [0.5, 99.5])
    assert scale.low == pytest.approx(low) and scale.high == pytest.approx(high)
    units = scale.to_units(image)
    np.testing.assert_allclose(np.percentile(units, [0.5, 99.5]), [0.0, 255.0], atol=1e-9)
    np.testing.assert_allclose(scale.from_units(units), image, rtol=1e-12)
    np.testing.assert_allclose(scale.to_units(scale.from_units(units)), units, atol=1e-9)


def test_intensity_scale_falls_back_to_min_max_for_a_nearly_constant_image():
    image = np.zeros((30, 30))
    image[0, 0] = 5.0  # 0.5 and 99.5 percentiles both 0
    scale = IntensityScale.from_image(image)
    assert (scale.low, scale.high) == (0.0, 5.0)
    np.testing.assert_allclose(scale.from_units(scale.to_units(image)), image)


# ------------------------------------------------------------------------------------------------- fit/enhance
def test_fit_recovers_geometry_and_builds_a_library(pair, model):
    assert len(model.geometries) == 1
    g = model.geometries[0]
    assert np.max(np.abs(np.subtract(g.offset_yx, pair.offset_yx))) < 0.5
    assert g.rotation_deg == pytest.approx(pair.rotation_deg, abs=0.2)
    assert np.allclose(g.factor_yx, 2.0, atol=0.02)
    assert model.scale == 2 and model.library.patch_size == 9
    assert 0 < len(model.library) <= CONFIG.library.size
    assert np.all(model.library.category_sizes() >= 1)
    assert model.noise_sigma > 0


@pytest.mark.parametrize("method", METHODS)
def test_enhance_every_method_returns_scaled_shape_in_lr_units(pair, model, method):
    out = enhance(pair.lr, model, method=method)
    assert out.shape == (256, 320) and out.dtype == np.float64
    assert np.all(np.isfinite(out))
    lr_range = np.percentile(pair.lr, 99.5) - np.percentile(pair.lr, 0.5)
    assert abs(out.mean() - pair.lr.mean()) < 0.05 * lr_range  # LR units, not library units (0-255)
    assert abs(out.std() - pair.lr.std()) < 0.5 * pair.lr.std()


def test_enhance_bicubic_is_the_baseline_and_needs_a_scale():
    lr = np.random.default_rng(1).normal(size=(20, 24))
    np.testing.assert_array_equal(enhance(lr, None, method="bicubic", scale=3), upsample_bicubic(lr, 3))
    with pytest.raises(ValueError, match="scale"):
        enhance(lr, None, method="bicubic")
    with pytest.raises(ValueError, match="model"):
        enhance(lr, None, method="paired")


def test_enhance_sigma_n_changes_the_nlm_strength(pair, model):
    sub = pair.lr[:40, :48]
    a = enhance(sub, model, method="paired-faithful", sigma_n=1.0)
    b = enhance(sub, model, method="paired-faithful", sigma_n=20.0)
    assert np.abs(a - b).max() > 1e-6
    np.testing.assert_array_equal(a, enhance(sub, model, method="paired-faithful"))  # default σ_n = 1


def test_enhance_rejects_unknown_method_listing_the_methods(pair, model):
    with pytest.raises(ValueError) as info:
        enhance(pair.lr, model, method="lanczos")
    for method in METHODS:
        assert method in str(info.value)


def test_incremental_fit_keeps_quota_and_adds_geometry(pair, model):
    second = syn.make_pair(rng=np.random.default_rng(4), lr_shape=(128, 160), factor=2.0, rotation_deg=-0.5,
                           noise="low")
    grown = fit(second.lr, [(second.hr, 2.0)], config=CONFIG, model=model)
    assert len(grown.library) <= CONFIG.library.size
    assert np.all(grown.library.category_sizes() <= CONFIG.library.quota)
    np.testing.assert_array_equal(grown.library.hr_centroids, model.library.hr_centroids)  # not rebuilt
    assert grown.library.seen.sum() > model.library.seen.sum()
    assert len(grown.geometries) == 2 and grown.geometries[0] == model.geometries[0]
    assert np.max(np.abs(np.subtract(grown.geometries[1].offset_yx, second.offset_yx))) < 0.5
    assert grown.intensity == model.intensity and grown.noise_sigma == model.noise_sigma
    assert len(model.geometries) == 1  # the input model is unchanged
    assert enhance(second.lr, grown, method="paired").shape == (256, 320)


def test_mismatched_scale_is_rejected(pair):
    with pytest.raises(ValueError, match="scale") as info:
        fit(pair.lr, [(pair.hr, 1.5)], config=CONFIG)
    assert isinstance(info.value, ImageError)


def test_fit_config_validation_and_default_patch_size():
    for bad in (1, 9, 2.5):
        with pytest.raises(ValueError, match="scale"):
            FitConfig(scale=bad)
    assert default_patch_size(2) == 9 and default_patch_size(4) == 9  # the paper's n at every scale
    assert FitConfig(scale=3).library_config.patch_size == 9

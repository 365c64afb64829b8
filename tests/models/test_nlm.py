"""Tests of refscope.models.nlm against naive per-query / per-pixel implementations of Algorithm 2 (eqs. 2-3)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from refscope.models import synthetic as syn
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig, PairedLibrary
from refscope.models.nlm import PairedConfig, nlm_average, reconstruct_original, reconstruct_paired, reconstruct_paired_faithful
from refscope.models.noise import estimate_noise_sigma
from refscope.models.patches import extract_patches, patch_grid
from refscope.models.pipeline import IntensityScale
from refscope.models.registration import PairGeometry, overlap_box, resample_hr_to_lr_grid


# ------------------------------------------------------------------------------------------------ nlm_average
def _naive_nlm(queries, keys, values, temperature, top_k=None):
    """Eq. 2 weights w_l = exp(-||q - k_l||² / T) over all (or the top_k nearest) keys, normalised; eq. 3."""
    est, nearest = [], []
    for q in queries:
        d = np.array([np.sum((q - k) ** 2) for k in keys])
        use = np.arange(len(keys)) if top_k is None else np.argsort(d, kind="stable")[:top_k]
        w = np.exp(-d[use] / temperature)
        w = w / w.sum()
        est.append(sum(wl * values[l] for wl, l in zip(w, use)))
        nearest.append(d.min())
    return np.array(est), np.array(nearest)


@pytest.mark.parametrize("top_k", [None, 1, 3, 12, 50])
def test_nlm_average_equals_naive_eq2_eq3(top_k):
    rng = np.random.default_rng(0)
    queries, keys, values = rng.normal(size=(7, 4)), rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
    est, nearest = nlm_average(queries, keys, values, temperature=2.5, top_k=top_k)
    exp_est, exp_nearest = _naive_nlm(queries, keys, values, 2.5, top_k)
    assert est.shape == (7, 3) and nearest.shape == (7,)
    np.testing.assert_allclose(est, exp_est, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nearest, exp_nearest, rtol=1e-10, atol=1e-12)


def test_nlm_average_top_k_one_is_nearest_neighbour_and_large_distances_do_not_underflow():
    keys = np.array([[0.0], [100.0], [101.0]])
    values = np.array([[1.0], [2.0], [3.0]])
    queries = np.array([[100.2], [1000.0]])  # the second is 8e5 (squared) from every key: exp underflows naively
    est, nearest = nlm_average(queries, keys, values, temperature=1.0)
    assert np.all(np.isfinite(est))
    np.testing.assert_allclose(est[1], [3.0], atol=1e-12)  # 899² vs 900²: all weight on the nearest key
    np.testing.assert_allclose(nearest, [0.2 ** 2, 899.0 ** 2])
    est1, _ = nlm_average(queries, keys, values, temperature=1e6, top_k=1)
    np.testing.assert_array_equal(est1[:, 0], [2.0, 3.0])


# ------------------------------------------------------------------------------- Algorithm 2, per-pixel oracle
N = 3  # patch size of the tiny oracle problems


def _tiny_problem(n_categories):
    """A 6x7 LR image (0-40) and a library of 30 3x3 pairs whose keys resemble its upsampled patches."""
    rng = np.random.default_rng(7)
    lr = ndimage.gaussian_filter(rng.uniform(0, 40, (6, 7)), 0.7) * 2.0
    up = upsample_bicubic(lr, 2)
    ys, xs = rng.integers(0, up.shape[0], 30), rng.integers(0, up.shape[1], 30)
    padded = np.pad(up, N // 2, mode="reflect")
    keys = np.array([padded[y:y + N, x:x + N].ravel() for y, x in zip(ys, xs)]) + rng.normal(0, 2.0, (30, N * N))
    values = keys + rng.normal(0, 3.0, keys.shape) + rng.uniform(-5, 5, (30, 1))
    # three categories by key brightness (the (k-1)th category stays empty when k = 4)
    order = np.argsort(keys.mean(axis=1))
    categories = np.empty(30, dtype=np.intp)
    categories[order] = np.repeat([0, 1, 2], 10)
    config = LibraryConfig(patch_size=N, n_categories=n_categories, oversample=1, size=30)
    lib = PairedLibrary(config, keys, values, categories, np.zeros((n_categories, N * N)),
                        np.bincount(categories, minlength=n_categories))
    return lr, lib


def _naive_algorithm2(lr, lib, sigma_n, *, original=False, restrict=True):
    """Per output pixel: reflect-padded n x n patch Q of the bicubic upsampling; nearest category by the mean
    KEY patch (HR patch for `original`); eq. 2 weights over that category's keys (T = 2 n² σ_n²); eq. 3 with
    the HR centre pixels."""
    keys = lib.values.astype(np.float64) if original else lib.keys.astype(np.float64)
    centre = lib.values[:, (N * N) // 2].astype(np.float64)
    cats = [c for c in range(lib.config.n_categories) if np.any(lib.categories == c)]
    means = {c: keys[lib.categories == c].mean(axis=0) for c in cats}
    temperature = 2.0 * N * N * sigma_n ** 2
    up = upsample_bicubic(lr, 2)
    padded = np.pad(up, N // 2, mode="reflect")
    out = np.zeros(up.shape)
    for i in range(up.shape[0]):
        for j in range(up.shape[1]):
            q = padded[i:i + N, j:j + N].ravel()
            best = min(cats, key=lambda c: np.linalg.norm(q - means[c]))
            members = np.flatnonzero(lib.categories == best) if restrict else np.arange(len(keys))
            w = np.array([np.exp(-np.sum((q - keys[l]) ** 2) / temperature) for l in members])
            w /= w.sum()
            out[i, j] = np.sum(w * centre[members])
    return out


@pytest.mark.parametrize("n_categories", [3, 4])
@pytest.mark.parametrize("sigma_n", [2.0, 5.0])
def test_reconstruct_paired_faithful_equals_per_pixel_algorithm2(n_categories, sigma_n):
    lr, lib = _tiny_problem(n_categories)
    got = reconstruct_paired_faithful(lr, lib, scale=2, sigma_n=sigma_n)
    expected = _naive_algorithm2(lr, lib, sigma_n)
    assert got.shape == (12, 14)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # the oracle is sensitive to the category restriction (otherwise this test could not see it)
    assert np.abs(expected - _naive_algorithm2(lr, lib, sigma_n, restrict=False)).max() > 1e-3


@pytest.mark.parametrize("n_categories", [3, 4])
def test_reconstruct_original_uses_hr_patches_for_weights_and_category(n_categories):
    lr, lib = _tiny_problem(n_categories)
    got = reconstruct_original(lr, lib, scale=2, sigma_n=3.0)
    expected = _naive_algorithm2(lr, lib, 3.0, original=True)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.abs(expected - _naive_algorithm2(lr, lib, 3.0)).max() > 1e-3  # differs from the paired variant


# -------------------------------------------------------------------------------------- reconstruct_paired
def _smooth_field(seed, shape):
    f = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5)
    return 128.0 + 60.0 * f / f.std()


def _identity_library(n=5):
    """A library whose HR patches are exactly its upsampled-LR patches (identity mapping, no noise)."""
    up = upsample_bicubic(_smooth_field(0, (24, 28)), 2)
    patches = extract_patches(up, n, dtype=np.float64)
    return PairedLibrary.build(patches, patches, LibraryConfig(patch_size=n, n_categories=4, oversample=20, size=400))


@pytest.mark.parametrize("stride,n_probe", [(1, 1), (2, 2), (3, 4)])
def test_reconstruct_paired_with_identity_library_is_bicubic(stride, n_probe):
    lib = _identity_library()
    test = _smooth_field(1, (20, 22))  # not the training image
    bicubic = upsample_bicubic(test, 2)
    # all 25 PCA dimensions and a negligible ridge: the category maps are the identity up to float32 storage
    cfg = PairedConfig(pca_dims=25, ridge=1e-10, stride=stride, n_probe=n_probe)
    out = reconstruct_paired(test, lib, scale=2, config=cfg, noise_sigma=1.0)
    assert out.shape == (40, 44)
    np.testing.assert_allclose(out, bicubic, atol=1e-3)
    # the default ridge shrinks weak directions a little: still within 2 % of the image contrast
    out = reconstruct_paired(test, lib, scale=2, noise_sigma=1.0)
    assert np.sqrt(np.mean((out - bicubic) ** 2)) < 0.02 * bicubic.std()


def test_reconstruct_paired_returns_support_map():
    lib = _identity_library()
    test = _smooth_field(2, (16, 18))
    out, support = reconstruct_paired(test, lib, scale=2, noise_sigma=1.0, return_support=True)
    assert out.shape == support.shape == (32, 36)
    assert np.all(np.isfinite(support)) and np.all(support >= 0)


def test_paired_library_from_synthetic_pair_beats_bicubic_outside_the_reference():
    pair = syn.make_pair(rng=np.random.default_rng(0), lr_shape=(96, 128), factor=2.0, hr_fraction=0.4, noise="low")
    geometry = PairGeometry(pair.offset_yx, pair.factor_yx, pair.rotation_deg)  # the true geometry
    box = overlap_box(geometry, pair.lr.shape, pair.hr.shape)
    (y0, y1), (x0, x1) = box
    units = IntensityScale.from_image(pair.lr)
    hr_grid = units.to_units(resample_hr_to_lr_grid(pair.hr, geometry, box, 2))
    lr_up = upsample_bicubic(units.to_units(pair.lr[y0:y1, x0:x1]), 2)
    centres = patch_grid(lr_up.shape, 2)
    lib = PairedLibrary.build(extract_patches(hr_grid, 9, centres), extract_patches(lr_up, 9, centres),
                              LibraryConfig(patch_size=9, n_categories=6, oversample=5, size=600))
    lr_units = units.to_units(pair.lr)
    out = units.from_units(reconstruct_paired(lr_units, lib, scale=2, noise_sigma=estimate_noise_sigma(lr_units)))
    bicubic = upsample_bicubic(pair.lr, 2)
    truth = pair.truth_on_lr_grid(2)
    outside = np.ones(truth.shape, dtype=bool)
    outside[2 * y0:2 * y1, 2 * x0:2 * x1] = False  # the LR area with no HR reference

    def rmse(a, mask):
        return float(np.sqrt(np.mean((a - truth)[mask] ** 2)))

    assert rmse(out, outside) < 0.9 * rmse(bicubic, outside)
    assert rmse(out, ~outside) < 0.9 * rmse(bicubic, ~outside)


@pytest.mark.parametrize("kwargs,name", [(dict(sigma_n=0.0), "sigma_n"), (dict(ridge=-1.0), "ridge"),
                                         (dict(stride=0), "stride"), (dict(pca_dims=0), "pca_dims"),
                                         (dict(n_probe=0), "n_probe")])
def test_paired_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PairedConfig(**kwargs)

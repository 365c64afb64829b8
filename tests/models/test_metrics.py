"""Tests of refscope.models.metrics against hand formulas, naive re-implementations and known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.transform import downscale_local_mean

from refscope.models import metrics as m
from refscope.models.errors import ImageError
from refscope.models.synthetic import render_specimen


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return render_specimen((192, 224), rng=np.random.default_rng(7), kind="mixed", feature_px=4.0)


def smooth_image(rng: np.random.Generator, shape=(128, 144), sigma=2.0) -> np.ndarray:
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma)


# ---------------------------------------------------------------------------------------------- validation
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(20, 30\).*\(20, 31\)"):
        m.psnr(np.zeros((20, 30)), np.zeros((20, 31)))
    with pytest.raises(ImageError):
        m.score_all(np.random.rand(32, 32), np.random.rand(33, 32))


def test_rejects_rgb_and_nan():
    with pytest.raises(ImageError):
        m.ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
    bad = np.ones((16, 16))
    bad[3, 3] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        m.psnr(np.random.rand(16, 16), bad)


# -------------------------------------------------------------------------------------------- fit / PSNR
def test_fit_intensity_undoes_affine_contrast(scene):
    est = 3.0 * scene - 7.0
    a, b = m.fit_intensity_coefficients(est, scene)
    assert a == pytest.approx(1 / 3, rel=1e-12) and b == pytest.approx(7 / 3, rel=1e-12)
    np.testing.assert_allclose(m.fit_intensity(est, scene), scene, atol=1e-12)
    assert m.fit_intensity_coefficients(np.full(scene.shape, 4.0), scene) == (0.0, pytest.approx(scene.mean()))


def test_psnr_matches_hand_formula(rng):
    ref = rng.random((40, 50)) * 3.0 + 1.0
    est = ref + rng.normal(0, 0.1, ref.shape)
    mse = np.mean((ref - est) ** 2)
    dr = ref.max() - ref.min()
    assert m.psnr(ref, est) == pytest.approx(10 * math.log10(dr**2 / mse), rel=1e-12)
    assert m.psnr(ref, est, data_range=255.0) == pytest.approx(10 * math.log10(255.0**2 / mse), rel=1e-12)
    with pytest.raises(ValueError):
        m.psnr(ref, est, data_range=0.0)


def test_masked_psnr_matches_hand_formula(rng):
    ref, est = rng.random((30, 30)), rng.random((30, 30))
    mask = rng.random((30, 30)) > 0.5
    dr = ref.max() - ref.min()
    expected = 10 * math.log10(dr**2 / np.mean((ref[mask] - est[mask]) ** 2))
    assert m.masked_psnr(ref, est, mask) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ImageError):
        m.masked_psnr(ref, est, np.zeros_like(mask))


def test_identical_images_score_perfectly(scene):
    s = m.score_all(scene, scene.copy())
    assert s.psnr == math.inf and s.fg_psnr == math.inf and s.bg_psnr == math.inf
    assert s.ssim == pytest.approx(1.0) and s.ms_ssim == pytest.approx(1.0)
    assert s.edge_sim == 1.0
    assert s.frc_mean == pytest.approx(1.0, abs=1e-9) and s.frc_resolution_px == 2.0
    curve = m.frc(scene, scene)
    assert np.all(curve.correlation > 1 - 1e-9)


def test_score_all_fits_intensity_and_uses_reference_range(scene, rng):
    est = 0.5 * scene + 0.2 + rng.normal(0, 0.01, scene.shape)
    fitted = m.score_all(scene, est)
    raw = m.score_all(scene, est, intensity_fit=False)
    assert fitted.psnr == pytest.approx(m.psnr(scene, m.fit_intensity(est, scene)))
    assert fitted.ssim == pytest.approx(m.ssim(scene, m.fit_intensity(est, scene)))
    assert fitted.psnr > raw.psnr + 10
    with pytest.raises(AttributeError):
        fitted.psnr = 0.0  # frozen


# ------------------------------------------------------------------------------------------- (MS-)SSIM
def _ms_ssim_oracle(x, y, weights, data_range):
    """Independent MS-SSIM: skimage SSIM per scale; cs via a huge K1 (luminance term -> 1)."""
    kw = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    n = len(weights)
    w = np.asarray(weights) / np.sum(weights)
    out = 1.0
    for j in range(n):
        if j == n - 1:
            out *= max(structural_similarity(x, y, **kw), 0) ** w[j]
        else:
            out *= max(structural_similarity(x, y, K1=1e5, **kw), 0) ** w[j]
            x = downscale_local_mean(x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2], 2)
            y = downscale_local_mean(y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2], 2)
    return out


def test_ssim_is_wang_settings_of_skimage(scene, rng):
    est = scene + rng.normal(0, 0.05, scene.shape)
    dr = scene.max() - scene.min()
    expected = structural_similarity(scene, est, data_range=dr, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert m.ssim(scene, est) == pytest.approx(expected, rel=1e-12)
    assert m.ms_ssim(scene, est, weights=(1.0,)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", [(192, 224), (50, 60), (23, 30)])
def test_ms_ssim_matches_oracle_and_scale_rule(shape, rng):
    ref = render_specimen(shape, rng=rng, kind="particles", feature_px=3.0)
    est = ndimage.gaussian_filter(ref, 0.8) + rng.normal(0, 0.03, shape)
    n_scales = min(5, 1 + int(math.floor(math.log2(min(shape) / 11))))
    expected = _ms_ssim_oracle(ref, est, m.MS_SSIM_WEIGHTS[:n_scales], ref.max() - ref.min())
    assert m.ms_ssim(ref, est) == pytest.approx(expected, rel=1e-6)


def test_ms_ssim_too_small_image_raises():
    with pytest.raises(ImageError, match="11x11"):
        m.ms_ssim(np.random.rand(10, 40), np.random.rand(10, 40))


def test_ms_ssim_decreases_monotonically_with_noise(scene):
    values = []
    for sigma in (0.0, 0.01, 0.03, 0.1, 0.3):
        noisy = scene + np.random.default_rng(3).normal(0, 1, scene.shape) * sigma
        values.append(m.ms_ssim(scene, noisy))
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:])), values


# --------------------------------------------------------------------------------------------------- FRC
def _frc_naive(a, b):
    h, w = a.shape
    from scipy.signal.windows import tukey

    win = np.outer(tukey(h, 0.25), tukey(w, 0.25))
    fa, fb = np.fft.fft2((a - a.mean()) * win), np.fft.fft2((b - b.mean()) * win)
    n = min(h, w)
    out = []
    for k in range(1, n // 2 + 1):
        num = den_a = den_b = 0.0
        for i in range(h):
            for j in range(w):
                fy, fx = np.fft.fftfreq(h)[i], np.fft.fftfreq(w)[j]
                if round(math.hypot(fy, fx) * n) == k:
                    num += (fa[i, j] * np.conj(fb[i, j])).real
                    den_a += abs(fa[i, j]) ** 2
                    den_b += abs(fb[i, j]) ** 2
        out.append(num / math.sqrt(den_a * den_b))
    return np.array(out)


def test_frc_matches_naive_ring_sums(rng):
    a = rng.normal(size=(16, 20))
    b = a + rng.normal(size=a.shape)
    curve = m.frc(a, b)
    np.testing.assert_allclose(curve.correlation, _frc_naive(a, b), atol=1e-12)
    np.testing.assert_allclose(curve.frequency, np.arange(1, 9) / 16)
    assert curve.frequency.max() <= 0.5


def test_frc_of_two_noise_realisations_falls_and_tracks_blur(rng):
    base = smooth_image(rng, (160, 176), sigma=1.0)
    base /= base.std()

    def pair(blur):
        clean = ndimage.gaussian_filter(base, blur) if blur else base
        clean = clean / clean.std()
        return clean + rng.normal(0, 0.5, base.shape), clean + rng.normal(0, 0.5, base.shape)

    curve = m.frc(*pair(0.0))
    assert curve.correlation[:5].mean() > 0.9
    assert curve.correlation[-10:].mean() < 0.3
    sharp = m.frc_resolution(curve)
    blurred = m.frc_resolution(m.frc(*pair(2.0)))
    assert sharp.crossed and blurred.crossed
    assert blurred.frequency < sharp.frequency - 0.03
    assert blurred.period_px == pytest.approx(1 / blurred.frequency)
    assert m.frc_mean(m.frc(*pair(2.0))) < m.frc_mean(curve)


def test_frc_resolution_interpolates_first_crossing():
    curve = m.FRCCurve(frequency=np.array([0.1, 0.2, 0.3, 0.4]), correlation=np.array([0.9, 0.5, 0.1, 0.6]),
                       n_pixels=np.ones(4, np.int64))
    res = m.frc_resolution(curve, threshold=0.3)
    assert res.frequency == pytest.approx(0.25) and res.period_px == pytest.approx(4.0)
    never = m.frc_resolution(curve, threshold=0.05)
    assert not never.crossed and never.frequency == 0.5


# ---------------------------------------------------------------------------------------- fg / bg PSNR
def _disc_scene(rng):
    yy, xx = np.mgrid[:96, :112]
    disc = (yy - 45.5) ** 2 + (xx - 60.5) ** 2 < 25**2
    ref = np.where(disc, 0.8, 0.2) + rng.normal(0, 0.02, disc.shape)
    specks = ~ndimage.binary_dilation(disc, iterations=3) & (rng.random(disc.shape) < 0.004)
    ref[specks] = 0.9  # isolated bright noise points in the background
    return ref, disc, specks


def test_foreground_mask_on_disc_removes_specks(rng):
    ref, disc, specks = _disc_scene(rng)
    assert specks.sum() > 10
    raw = ref > 0.5
    assert (raw & ~disc).sum() >= specks.sum()  # Otsu alone keeps the specks
    mask = m.foreground_mask(ref)
    assert not (mask & specks).any()
    # Otsu's threshold may fall anywhere in the gap, so allow a one-pixel band around the disc boundary
    assert np.all(mask[ndimage.binary_erosion(disc)]) and not mask[~ndimage.binary_dilation(disc)].any()
    assert (mask != disc).sum() < 0.01 * disc.sum()


def test_fg_bg_psnr_separates_regions(rng):
    ref, disc, _ = _disc_scene(rng)
    noise = np.where(disc, 0.01, 0.1) * rng.normal(size=ref.shape)
    est = ref + noise
    dr = ref.max() - ref.min()
    fg, bg = m.fg_bg_psnr(ref, est)
    mask = m.foreground_mask(ref)
    assert fg == pytest.approx(10 * math.log10(dr**2 / np.mean(noise[mask] ** 2)), rel=1e-12)
    assert bg == pytest.approx(10 * math.log10(dr**2 / np.mean(noise[~mask] ** 2)), rel=1e-12)
    assert fg > bg + 15


# ------------------------------------------------------------------------------------------ edge similarity
def _eq4_naive(b_hr, b_sr):
    diff = hr = sr = 0
    for i in range(b_hr.shape[0]):
        for j in range(b_hr.shape[1]):
            diff += int(b_hr[i, j] != b_sr[i, j])
            hr += int(b_hr[i, j])
            sr += int(b_sr[i, j])
    return 1 - diff / (hr + sr)


@pytest.mark.parametrize("seed", range(5))
def test_edge_similarity_eq4_matches_naive_loop(seed):
    r = np.random.default_rng(seed)
    b_hr, b_sr = r.random((6, 7)) < 0.3, r.random((6, 7)) < 0.3
    b_hr[0, 0] = True
    assert m.edge_similarity_maps(b_hr, b_sr) == pytest.approx(_eq4_naive(b_hr, b_sr), abs=1e-15)
    assert m.edge_similarity_maps(b_hr, b_hr) == 1.0
    assert m.edge_similarity_maps(b_hr, ~b_hr) == pytest.approx(_eq4_naive(b_hr, ~b_hr))
    assert m.edge_similarity_maps(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_canny_finds_disc_boundary_with_relative_threshold():
    yy, xx = np.mgrid[:80, :80]
    radius = np.hypot(yy - 39.5, xx - 39.5)
    img = np.where(radius < 20, 1.0, 0.0)
    for scaled in (img, 1000.0 * img + 5.0):  # thresholds are relative to the max gradient
        edges = m.canny_edges(scaled)
        assert edges.sum() > 100
        assert np.all(np.abs(radius[edges] - 20) < 2.0)
    assert m.edge_similarity(img, 1000.0 * img + 5.0) == 1.0
    assert not m.canny_edges(np.ones((20, 20))).any()


def test_edge_similarity_drops_with_blur_and_noise(scene, rng):
    mild = m.edge_similarity(scene, scene + rng.normal(0, 0.01, scene.shape))
    bad = m.edge_similarity(scene, ndimage.gaussian_filter(scene, 2.5) + rng.normal(0, 0.05, scene.shape))
    assert 1.0 > mild > bad > 0.0

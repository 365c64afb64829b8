"""Tests of refscope.models.synthetic: determinism, geometry, scan physics and speed."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import downscale_local_mean

from refscope.models import synthetic as syn


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ------------------------------------------------------------------------------------------------- specimen
@pytest.mark.parametrize("kind", syn.KINDS)
def test_render_specimen_is_deterministic_and_in_range(kind):
    a = syn.render_specimen((96, 120), rng=np.random.default_rng(5), kind=kind)
    b = syn.render_specimen((96, 120), rng=np.random.default_rng(5), kind=kind)
    c = syn.render_specimen((96, 120), rng=np.random.default_rng(6), kind=kind)
    assert a.shape == (96, 120) and a.dtype == np.float64
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0


@pytest.mark.parametrize("kind", syn.KINDS)
def test_specimen_has_bright_objects_on_dark_background(kind):
    img = syn.render_specimen((384, 384), rng=np.random.default_rng(2), kind=kind)
    assert np.median(img) < 0.3  # mostly background
    assert np.quantile(img, 0.995) > 0.5  # bright objects / rims / membranes
    assert img.std() > 0.03


def test_render_specimen_rejects_unknown_kind():
    with pytest.raises(ValueError, match="particles"):
        syn.render_specimen((64, 64), rng=np.random.default_rng(0), kind="crystals")


def test_render_speed_2048():
    for kind in ("mixed", "fibres"):
        best = math.inf
        for attempt in range(2):  # best of two, to be robust to a busy machine
            t0 = time.perf_counter()
            img = syn.render_specimen((2048, 2048), rng=np.random.default_rng(attempt), kind=kind)
            best = min(best, time.perf_counter() - t0)
        assert img.shape == (2048, 2048)
        assert best < 2.0, f"{kind}: {best:.2f} s"


# ----------------------------------------------------------------------------------------------------- scan
def test_scan_identity_and_block_average_oracles(rng):
    spec = rng.random((40, 60))
    same = syn.scan(spec, field_box=(0, 0, 40, 60), pixel_size=1.0, probe_sigma_px=0.0, dose=None,
                    read_noise=0.0, rng=None)
    np.testing.assert_allclose(same, spec, atol=1e-12)
    # pixel size 2, no blur: each sample lands between four specimen pixels -> the 2x2 block mean
    half = syn.scan(spec, field_box=(0, 0, 20, 30), pixel_size=2.0, probe_sigma_px=0.0, dose=None,
                    read_noise=0.0, rng=None)
    np.testing.assert_allclose(half, downscale_local_mean(spec, 2), atol=1e-12)
    # shifted field: origin (10, 4) -> the specimen crop
    crop = syn.scan(spec, field_box=(10, 4, 12, 16), pixel_size=1.0, probe_sigma_px=0.0, dose=None,
                    read_noise=0.0, rng=None)
    np.testing.assert_allclose(crop, spec[10:22, 4:20], atol=1e-12)


def test_scan_rotation_sense_matches_rot90(rng):
    spec = rng.random((30, 50))
    rotated = syn.scan(spec, field_box=(0, 50, 50, 30), pixel_size=1.0, probe_sigma_px=0.0, rotation_deg=90.0,
                       dose=None, read_noise=0.0, rng=None)
    np.testing.assert_allclose(rotated, np.rot90(spec), atol=1e-9)


def test_scan_noise_statistics_and_uint16(rng):
    spec = np.full((300, 300), 0.5)
    kw = dict(field_box=(0, 0, 300, 300), pixel_size=1.0, probe_sigma_px=0.5)
    shot = syn.scan(spec, **kw, dose=100.0, read_noise=0.0, rng=rng)
    assert shot.mean() == pytest.approx(0.5, abs=0.002)
    assert shot.var() == pytest.approx(0.5 / 100.0, rel=0.05)
    read = syn.scan(spec, **kw, dose=None, read_noise=0.02, rng=rng)
    assert read.std() == pytest.approx(0.02, rel=0.05)
    u16 = syn.scan(spec, **kw, dose=None, read_noise=0.0, rng=None, dtype="uint16")
    assert u16.dtype == np.uint16 and np.all(u16 == 32768)
    with pytest.raises(ValueError, match="rng"):
        syn.scan(spec, **kw, dose=10.0, read_noise=0.0, rng=None)


def test_scan_probe_blur_matches_gaussian_filter(rng):
    spec = rng.random((64, 64))
    blurred = syn.scan(spec, field_box=(16, 16, 16, 16), pixel_size=2.0, probe_sigma_px=1.0, dose=None,
                       read_noise=0.0, rng=None)
    reference = downscale_local_mean(ndimage.gaussian_filter(spec, 2.0, mode="nearest")[16:48, 16:48], 2)
    np.testing.assert_allclose(blurred, reference, atol=1e-9)


# ---------------------------------------------------------------------------------------------------- pairs
def test_make_pair_is_deterministic():
    a = syn.make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128))
    b = syn.make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128))
    c = syn.make_pair(rng=np.random.default_rng(12), lr_shape=(96, 128))
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) and a.offset_yx == b.offset_yx
    assert not np.array_equal(a.lr, c.lr)


@pytest.mark.parametrize("factor, fraction", [(2.0, 0.25), (2.4, 0.2), (3.0, 1 / 9), (4.17, 0.06)])
def test_pair_shapes_and_pixel_sizes(factor, fraction):
    lr_shape = (120, 160)
    p = syn.make_pair(rng=np.random.default_rng(1), lr_shape=lr_shape, factor=factor, hr_fraction=fraction,
                      noise="none", lr_pixel_size_nm=20.0)
    assert p.lr.shape == lr_shape
    side = factor * math.sqrt(fraction)
    assert p.hr.shape == (round(side * lr_shape[0]), round(side * lr_shape[1]))
    assert p.hr_pixel_size_nm == pytest.approx(20.0 / factor)
    assert p.factor_yx == (factor, factor)
    area = (p.hr.shape[0] / factor) * (p.hr.shape[1] / factor) / (lr_shape[0] * lr_shape[1])
    assert area == pytest.approx(fraction, rel=0.03)
    corners = p.hr_to_lr(np.array([[0, 0], [p.hr.shape[0], 0], [0, p.hr.shape[1]], p.hr.shape], float))
    assert corners.min() >= 0 and np.all(corners.max(axis=0) <= lr_shape)


def test_factor_two_quarter_area_has_lr_pixel_count():
    p = syn.make_pair(rng=np.random.default_rng(0), lr_shape=(64, 80), noise="none")
    assert p.hr.shape == p.lr.shape == (64, 80)


def test_lr_to_hr_round_trip_and_convention():
    p = syn.make_pair(rng=np.random.default_rng(4), lr_shape=(96, 128), rotation_deg=6.0, noise="none")
    pts = np.random.default_rng(0).random((10, 2)) * 90
    np.testing.assert_allclose(p.hr_to_lr(p.lr_to_hr(pts)), pts, atol=1e-12)
    np.testing.assert_allclose(p.lr_to_hr(np.array([p.offset_yx])), [[0.0, 0.0]], atol=1e-12)
    reg = pytest.importorskip("refscope.models.registration")
    geom = reg.PairGeometry(offset_yx=p.offset_yx, factor_yx=p.factor_yx, rotation_deg=p.rotation_deg)
    np.testing.assert_allclose(geom.lr_to_hr(pts), p.lr_to_hr(pts), atol=1e-9)


def _hr_on_lr(pair, offset_yx, extra_blur, rotation_deg=None):
    """Sample the (anti-aliased) HR at LR pixel centres mapped through a geometry; return HR and LR values."""
    h, w = pair.lr.shape
    yy, xx = np.mgrid[:h, :w] + 0.5
    rotation = pair.rotation_deg if rotation_deg is None else rotation_deg
    shifted = syn.SyntheticPair(**{**pair.__dict__, "offset_yx": offset_yx, "rotation_deg": rotation})
    uv = shifted.lr_to_hr(np.stack([yy.ravel(), xx.ravel()], 1))
    inside = (uv[:, 0] > 3) & (uv[:, 0] < pair.hr.shape[0] - 3) & (uv[:, 1] > 3) & (uv[:, 1] < pair.hr.shape[1] - 3)
    smooth = ndimage.gaussian_filter(pair.hr, extra_blur)
    vals = ndimage.map_coordinates(smooth, [uv[inside, 0] - 0.5, uv[inside, 1] - 0.5], order=1)
    return vals, pair.lr.ravel()[inside]


@pytest.mark.parametrize("factor, rotation", [(2.0, 0.0), (2.5, 0.0), (2.0, 7.0), (3.0, -4.0)])
def test_hr_is_the_specimen_region_given_by_the_geometry(factor, rotation):
    p = syn.make_pair(rng=np.random.default_rng(8), lr_shape=(128, 160), factor=factor, hr_fraction=0.2,
                      rotation_deg=rotation, noise="low")
    # LR probe is 0.5 LR px = 0.5*factor HR px; the HR probe is 0.6 HR px -> blur the HR by the difference
    extra = math.sqrt((0.5 * factor) ** 2 - 0.6**2)
    hr_vals, lr_vals = _hr_on_lr(p, p.offset_yx, extra)
    good = _corr(hr_vals, lr_vals)
    assert good > 0.9
    wrong_offset = (p.offset_yx[0] + 1.5, p.offset_yx[1] - 1.5)
    assert _corr(*_hr_on_lr(p, wrong_offset, extra)) < good - 0.2
    if rotation:
        assert _corr(*_hr_on_lr(p, p.offset_yx, extra, rotation_deg=-rotation)) < good - 0.2


def test_truth_on_lr_grid_matches_clean_hr():
    p = syn.make_pair(rng=np.random.default_rng(9), lr_shape=(96, 120), factor=2.0, noise="moderate")
    truth = p.truth_on_lr_grid(2.0)
    assert truth.shape == (192, 240)
    hh, ww = p.hr.shape
    oy, ox = (2.0 * v for v in p.offset_yx)  # HR-sized truth pixels: HR origin at 2*offset
    yy, xx = np.mgrid[:hh, :ww] + 0.5
    sampled = ndimage.map_coordinates(truth, [yy + oy - 0.5, xx + ox - 0.5], order=1)
    assert _corr(sampled, p.hr_clean) > 0.99
    assert _corr(p.hr, p.hr_clean) < 0.999  # the noisy HR really is noisy


def test_lr_gain_offset_and_noise_presets():
    base = syn.make_pair(rng=np.random.default_rng(3), lr_shape=(64, 80), noise="none")
    changed = syn.make_pair(rng=np.random.default_rng(3), lr_shape=(64, 80), noise="none", lr_gain_offset=(0.5, 0.1))
    np.testing.assert_allclose(changed.lr, 0.5 * base.lr + 0.1, atol=1e-12)
    noisy = syn.make_pair(rng=np.random.default_rng(3), lr_shape=(64, 80), noise="high")
    assert np.std(noisy.lr - base.lr) > 0.02
    with pytest.raises(ValueError, match="moderate"):
        syn.make_pair(rng=np.random.default_rng(3), noise="loud")


def test_make_pair_rejects_hr_field_that_cannot_fit():
    with pytest.raises(ValueError, match="hr_fraction"):
        syn.make_pair(rng=np.random.default_rng(0), lr_shape=(64, 80), hr_fraction=1.0, rotation_deg=10.0)

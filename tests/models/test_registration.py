"""Synthetic checks of global (registration.py) and local (local_registration.py) registration.

The oracle is a known geometry: a smooth random scene is sampled once on the LR grid (anti-aliased, noisy) and once
through the geometry on the HR grid, and the registration must give that geometry back.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.errors import ImageError, RegistrationError
from refscope.models.local_registration import PAPER_VARIANCE_THRESHOLD, matched_patches, register_local
from refscope.models.registration import (PairGeometry, overlap_box, register_global, resample_hr_to_lr_grid)

Q = 4  # scene px per LR px


def make_scene(rng: np.random.Generator, lr_shape: tuple[int, int]) -> np.ndarray:
    """Smoothed noise plus bright blobs, on a grid Q times finer than the LR frame."""
    h, w = lr_shape[0] * Q, lr_shape[1] * Q
    scene = ndimage.gaussian_filter(rng.normal(size=(h, w)), 2.5 * Q / 2)
    scene /= scene.std()
    blobs = np.zeros((h, w))
    blobs[rng.integers(0, h, 150), rng.integers(0, w, 150)] = 1.0
    blobs = ndimage.gaussian_filter(ndimage.grey_dilation(blobs, size=(2 * Q, 2 * Q)), Q / 2)
    return scene + 4.0 * blobs / blobs.max()


def sample_scene(scene: np.ndarray, yx_lr: np.ndarray, px_scene: float) -> np.ndarray:
    """Scene at LR edge coordinates (..., 2), anti-aliased for a sampling step of ``px_scene`` scene px."""
    sigma = 0.5 * math.sqrt(max(px_scene**2 - 1, 0.0))
    src = ndimage.gaussian_filter(scene, sigma) if sigma > 0 else scene
    return ndimage.map_coordinates(src, np.moveaxis(yx_lr * Q, -1, 0) - 0.5, order=3, mode="nearest")


def grid(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5, indexing="ij")
    return np.stack([yy, xx], axis=-1)


def make_pair(rng: np.random.Generator, geom: PairGeometry, lr_shape=(240, 320), field=(100, 140), noise=0.05):
    scene = make_scene(rng, lr_shape)
    lr = sample_scene(scene, grid(lr_shape), Q)
    lr += noise * lr.std() * rng.normal(size=lr.shape)
    hr_shape = (round(field[0] * geom.factor_yx[0]), round(field[1] * geom.factor_yx[1]))
    hr = sample_scene(scene, geom.hr_to_lr(grid(hr_shape)), Q / min(geom.factor_yx))
    hr = 0.6 * hr + 3.0 + noise * hr.std() * rng.normal(size=hr.shape)   # different contrast and offset
    return scene, lr, hr


# ----------------------------------------------------------------------------------------------- geometry
def test_geometry_round_trip_and_pairs_convention():
    g = PairGeometry((10.25, -3.5), (4.17, 4.16), 2.0)
    pts = np.random.default_rng(0).uniform(-50, 50, size=(7, 3, 2))
    np.testing.assert_allclose(g.hr_to_lr(g.lr_to_hr(pts)), pts, atol=1e-10)
    g0 = PairGeometry((173.0, 227.0), (4.165, 4.161))          # pairs.json: u_hr = (u_lr - offset) * factor
    u = np.array([[200.0, 300.0]])
    np.testing.assert_allclose(g0.lr_to_hr(u), (u - [173.0, 227.0]) * [4.165, 4.161])
    with pytest.raises(ValueError):
        PairGeometry((0, 0), (0.0, 1.0))


def test_positive_rotation_is_counter_clockwise_like_skimage():
    from skimage.transform import rotate
    img = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(120, 120)), 3)
    g = PairGeometry((0.0, 0.0), (1.0, 1.0), 4.0)
    hr = ndimage.map_coordinates(img, np.moveaxis(g.hr_to_lr(grid(img.shape)), -1, 0) - 0.5, order=3)
    ref = rotate(img, 4.0, center=(-0.5, -0.5), order=3)
    assert np.corrcoef(hr[20:100, 20:100].ravel(), ref[20:100, 20:100].ravel())[0, 1] > 0.99


# ------------------------------------------------------------------------------------------- register_global
@pytest.mark.parametrize("factor, offset, rot", [
    (2.4, (61.3, 97.8), 0.0),
    (3.43, (35.6, 120.2), -2.2),
    (4.17, (101.45, 40.05), 2.7),
    (4.17, (20.7, 150.3), -0.6),
])
def test_register_global_recovers_known_geometry(rng, factor, offset, rot):
    true = PairGeometry(offset, (factor, factor * 1.002), rot)
    _, lr, hr = make_pair(rng, true)
    got = register_global(lr, hr, factor=factor, max_rotation_deg=3.0)
    assert np.max(np.abs(np.subtract(got.offset_yx, true.offset_yx))) < 0.3
    assert abs(got.rotation_deg - rot) < 0.3
    assert np.max(np.abs(np.divide(got.factor_yx, true.factor_yx) - 1)) < 0.005
    assert got.score > 0.9
    # the recovered map agrees with the truth everywhere on the HR field to a fraction of an LR pixel
    corners = np.array([[0, 0], [0, hr.shape[1]], [hr.shape[0], 0], list(hr.shape)], float)
    assert np.abs(got.hr_to_lr(corners) - true.hr_to_lr(corners)).max() < 0.3


def test_register_global_refines_a_wrong_nominal_factor(rng):
    true = PairGeometry((50.2, 80.6), (3.2, 3.2), 1.0)
    _, lr, hr = make_pair(rng, true)
    got = register_global(lr, hr, factor=3.2 * 1.012)          # pixel sizes off by 1.2 %
    assert np.max(np.abs(np.divide(got.factor_yx, 3.2) - 1)) < 0.005
    assert np.max(np.abs(np.subtract(got.offset_yx, true.offset_yx))) < 0.3
    fixed = register_global(lr, hr, factor=3.2, refine_scale=False, max_rotation_deg=0.0)
    assert fixed.factor_yx == (3.2, 3.2) and fixed.rotation_deg == 0.0


def test_hr_field_larger_than_lr_frame_is_rejected(rng):
    with pytest.raises(RegistrationError, match=r"HR field \(125\.0 x 125\.0 LR px.*larger than the LR frame"):
        register_global(rng.normal(size=(100, 100)), rng.normal(size=(500, 500)), factor=4.0)


def test_factor_below_one_is_rejected(rng):
    with pytest.raises(RegistrationError, match="HR pixel size must be finer"):
        register_global(rng.normal(size=(100, 100)), rng.normal(size=(50, 50)), factor=0.5)


def test_unrelated_images_are_rejected():
    rng = np.random.default_rng(7)
    lr = make_scene(rng, (200, 260))[::Q, ::Q]
    hr = make_scene(np.random.default_rng(8), (80, 90))[::Q, ::Q]      # different scene, 80x90 HR px
    with pytest.raises(RegistrationError, match=r"does not match any place in the LR frame \(best NCC 0\.\d\d"):
        register_global(lr, ndimage.zoom(hr, 3.0, order=1), factor=3.0)


def test_constant_image_is_an_image_error(rng):
    with pytest.raises(ImageError, match="constant"):
        register_global(rng.normal(size=(100, 100)), np.full((60, 60), 7.0), factor=2.0)


# ------------------------------------------------------------------------------- overlap box and resampling
def test_overlap_box_unrotated_and_rotated():
    g = PairGeometry((173.045, 227.161), (4.164893666979053, 4.161165499618935))
    assert overlap_box(g, (1024, 1536), (1024, 1536)) == ((174, 418), (228, 596))     # pairs.json pair00
    rot = PairGeometry((40.3, 60.7), (3.0, 3.0), 2.5)
    (y0, y1), (x0, x1) = overlap_box(rot, (300, 300), (300, 360))
    edges = np.stack(np.meshgrid(np.arange(y0, y1 + 1), np.arange(x0, x1 + 1), indexing="ij"), -1).astype(float)
    v = rot.lr_to_hr(edges)                                    # every box corner lies inside the HR field
    assert v.min() >= -1e-9 and v[..., 0].max() <= 300 + 1e-9 and v[..., 1].max() <= 360 + 1e-9
    assert (y1 - y0) > 85 and (x1 - x0) > 105                  # and the box is not needlessly small
    with pytest.raises(RegistrationError, match="lies outside the LR frame"):
        overlap_box(PairGeometry((500.0, 10.0), (2.0, 2.0)), (300, 300), (100, 100))
    assert overlap_box(PairGeometry((-5.5, 10.0), (2.0, 2.0)), (300, 300), (100, 100)) == ((0, 44), (10, 60))


@pytest.mark.parametrize("step, phase", [(1, (0, 0)), (2, (0, 0)), (2, (1, 0)), (3, (2, 1))])
def test_subsampled_geometry_maps_each_sub_grid_pixel_where_its_lr_pixel_lies(step, phase):
    g = PairGeometry((173.04, 227.16), (4.165, 4.161), 1.5, score=0.9)
    sub = g.subsampled(step, phase)
    i = np.array([[0, 0], [3, 7], [40, 11]], dtype=np.float64)
    on_sub = sub.lr_to_hr(i + 0.5)                             # sub-grid pixel centres
    on_lr = g.lr_to_hr(step * i + np.asarray(phase) + 0.5)     # the LR pixels they are
    np.testing.assert_allclose(on_sub, on_lr, atol=1e-9)
    assert sub.factor_yx == pytest.approx((step * 4.165, step * 4.161))
    assert (sub.rotation_deg, sub.score) == (1.5, 0.9)


def test_a_sub_grid_of_a_real_scan_resamples_its_hr_where_the_scene_is(rng):
    """The HR sampled (point-wise, as the sub-grid itself is) at the sub-grid's pixels through its geometry matches
    the sub-grid; the geometry of any other phase is a pixel off and matches far worse."""
    true = PairGeometry((30.4, 50.7), (4.17, 4.17), 1.5)
    scene, lr, hr = make_pair(rng, true, noise=0.0)
    lr_sub = lr[1::2, 0::2]
    box = overlap_box(true.subsampled(2, (1, 0)), lr_sub.shape, hr.shape)
    (y0, y1), (x0, x1) = box

    def match(phase):
        out = resample_hr_to_lr_grid(hr, true.subsampled(2, phase), box, 1, antialias=False)
        return np.corrcoef(out.ravel(), lr_sub[y0:y1, x0:x1].ravel())[0, 1]

    right = match((1, 0))
    assert right > 0.99
    assert all(match(phase) < right - 0.1 for phase in [(0, 0), (0, 1), (1, 1)])


@pytest.mark.parametrize("step, phase", [(0, (0, 0)), (1.5, (0, 0)), (2, (2, 0)), (2, (0, -1)), (2, (0,))])
def test_subsampled_geometry_refuses_a_bad_step_or_phase(step, phase):
    with pytest.raises(ValueError, match="step|phase"):
        PairGeometry((0, 0), (4.0, 4.0)).subsampled(step, phase)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_resample_hr_to_lr_grid_matches_the_scene(rng, scale):
    true = PairGeometry((30.4, 50.7), (4.17, 4.17), 1.5)
    scene, _, _ = make_pair(rng, true, noise=0.0)
    hr_shape = (round(100 * 4.17), round(140 * 4.17))
    hr = sample_scene(scene, true.hr_to_lr(grid(hr_shape)), Q / 4.17)
    box = overlap_box(true, (240, 320), hr_shape)
    out = resample_hr_to_lr_grid(hr, true, box, scale)
    (y0, y1), (x0, x1) = box
    assert out.shape == ((y1 - y0) * scale, (x1 - x0) * scale)
    centres = np.array([y0, x0]) + grid(out.shape) / scale    # output pixel centres in LR edge coordinates
    oracle = sample_scene(scene, centres, Q / scale)
    assert np.corrcoef(out.ravel(), oracle.ravel())[0, 1] > 0.99
    with pytest.raises(RegistrationError, match="reaches outside the HR field"):
        resample_hr_to_lr_grid(hr, true, ((y0 - 5, y1), (x0, x1)), scale)


def textured_image(rng, shape=(120, 140)):
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.2) * 40 + 128


def test_register_local_recovers_a_known_displacement(rng):
    hr = textured_image(rng)
    lr = hr.copy()
    region = (slice(30, 90), slice(40, 110))
    lr[region] = np.roll(hr, (1, -2), axis=(0, 1))[region]     # lr(p + d) = hr(p), d = (1, -2), inside region
    lr = 0.8 * lr + 10 + rng.normal(scale=0.5, size=lr.shape)  # contrast change and noise
    m = register_local(hr, lr, patch_size=9, search_radius=2)
    c = m.centres
    inside = (c[:, 0] >= 30 + 6) & (c[:, 0] < 90 - 6) & (c[:, 1] >= 40 + 6) & (c[:, 1] < 110 - 6)
    outside = (c[:, 0] < 30 - 7) | (c[:, 0] >= 90 + 7) | (c[:, 1] < 40 - 7) | (c[:, 1] >= 110 + 7)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert np.all(m.displacements[inside & m.textured] == (1, -2))
    assert np.all(m.displacements[outside] == 0)
    assert m.scores[inside].min() > 0.95
    hp, lp = matched_patches(hr, lr, m, 9)
    assert hp.shape == lp.shape == (len(m), 81)
    k = int(np.flatnonzero(inside)[0])
    (cy, cx), (dy, dx) = m.centres[k], m.displacements[k]
    np.testing.assert_array_equal(hp[k], hr[cy - 4:cy + 5, cx - 4:cx + 5].ravel())
    np.testing.assert_array_equal(lp[k], lr[cy + dy - 4:cy + dy + 5, cx + dx - 4:cx + dx + 5].ravel())
    np.testing.assert_array_equal(m.patches(hr, lr)[1], lp)


def test_untextured_patches_are_skipped(rng):
    hr = textured_image(rng, (80, 160))
    lr = np.roll(hr, (0, 1), axis=(0, 1))
    lr[:, :80] = 128 + rng.normal(scale=0.3, size=(80, 80))    # flat left half: variance << 100 on a 0-255 scale
    lr[0, 0], lr[-1, -1] = 0.0, 255.0                          # intensity range 0..255
    m = register_local(hr, lr, stride=2)
    left = m.centres[:, 1] < 80 - 7
    right = m.centres[:, 1] >= 80 + 7
    assert not m.textured[left].any() and np.all(m.displacements[left] == 0)
    assert m.textured[right].mean() > 0.9 and np.all(m.displacements[right & m.textured] == (0, 1))
    assert np.all(np.diff(np.unique(m.centres[:, 0])) == 2)   # stride honoured
    assert register_local(hr, lr, variance_threshold=0.0).textured.all()
    assert PAPER_VARIANCE_THRESHOLD == pytest.approx(100 / 255**2)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_register_local_equals_brute_force_eq1(rng, zero_mean):
    hr = textured_image(rng, (40, 44))
    lr = ndimage.shift(hr, (0.6, -1.3), order=3, mode="nearest") * 0.9 + rng.normal(scale=2.0, size=hr.shape)
    n, rad = 7, 2
    m = register_local(hr, lr, patch_size=n, search_radius=rad, variance_threshold=0.0, stride=3,
                       zero_mean=zero_mean)

    def patch(img, cy, cx):
        p = img[cy - n // 2:cy + n // 2 + 1, cx - n // 2:cx + n // 2 + 1].ravel()
        return p - p.mean() if zero_mean else p

    for k in range(0, len(m), 7):
        cy, cx = m.centres[k]
        ph = patch(hr, cy, cx)
        scores = {(dy, dx): ph @ patch(lr, cy + dy, cx + dx) / np.linalg.norm(ph) / np.linalg.norm(
            patch(lr, cy + dy, cx + dx)) for dy in range(-rad, rad + 1) for dx in range(-rad, rad + 1)}
        best = max(scores.values())
        assert m.scores[k] == pytest.approx(best, abs=1e-9)
        assert scores[tuple(m.displacements[k])] == pytest.approx(best, abs=1e-9)


def test_register_local_input_errors(rng):
    img = textured_image(rng, (30, 30))
    with pytest.raises(ImageError, match="same shape"):
        register_local(img, img[:-1])
    with pytest.raises(ImageError, match="odd"):
        register_local(img, img, patch_size=8)
    with pytest.raises(ImageError, match="too small"):
        register_local(img[:10], img[:10], patch_size=9, search_radius=2)

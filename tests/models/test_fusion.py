"""Multi-frame fusion: known drift recovered, noise ∝ 1/√N, a moving object not ghosted, finer-grid detail."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.errors import ImageError, RegistrationError
from refscope.models.fusion import (FrameMotion, FusionConfig, count_confidence, fuse_fine, fuse_frames,
                                    register_frame, spline_coefficients, subpixel_diversity, warp_frame)
from refscope.models.metrics import psnr
from refscope.models.simulator import DriftSeries, Optics, drift_series, drift_truth, make_areas
from refscope.models.synthetic import render_specimen

SHAPE = (128, 160)


@pytest.fixture(scope="module")
def specimen() -> np.ndarray:
    rng = np.random.default_rng(3)
    return ndimage.gaussian_filter(render_specimen((200, 240), rng=rng, kind="mixed", feature_px=5.0), 1.0)


def _view(specimen: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    """The field whose content is the reference's moved by ``shift_yx`` (reference: the view at shift 0)."""
    moved = ndimage.shift(specimen, (-shift_yx[0], -shift_yx[1]), order=3, mode="nearest")
    return moved[30:30 + SHAPE[0], 40:40 + SHAPE[1]]


def test_known_subpixel_shift_is_recovered_within_0_1_px(specimen):
    rng = np.random.default_rng(0)
    ref = _view(specimen, (0.0, 0.0)) + rng.normal(0, 0.03, SHAPE)
    for true in [(0.37, -0.81), (-2.6, 3.15), (5.5, 0.2)]:
        mov = _view(specimen, true) + rng.normal(0, 0.03, SHAPE)
        motion = register_frame(ref, mov, config=FusionConfig(max_shift_px=8.0, register_px=96))
        got = motion.shift_yx(SHAPE)
        # the moving frame shows at u what the reference shows at u + true: the specimen moved by +true from it to
        # the reference
        assert abs(got[0] - true[0]) < 0.1 and abs(got[1] - true[1]) < 0.1, (true, got)
        assert abs(motion.rotation_deg) < 0.2


def test_small_rotation_is_recovered():
    rng = np.random.default_rng(1)
    spec = ndimage.gaussian_filter(render_specimen((300, 300), rng=rng, kind="particles", feature_px=5.0), 1.0)
    rotated = ndimage.rotate(spec, 0.8, reshape=False, order=3, mode="nearest")
    ref, mov = spec[70:230, 70:230], rotated[70:230, 70:230]
    motion = register_frame(ref, mov, config=FusionConfig(max_shift_px=6.0, max_rotation_deg=2.0, register_px=128))
    assert abs(abs(motion.rotation_deg) - 0.8) < 0.1
    warped, valid = warp_frame(mov, motion, order=3)
    inner = valid & ndimage.binary_erosion(valid, iterations=4)
    assert np.abs(warped - ref)[inner].mean() < 0.2 * np.abs(mov - ref)[inner].mean()


def test_a_rotation_below_shift_only_px_is_warped_as_the_centre_shift(specimen):
    """A registration-noise rotation (0.02°: 0.07 px at the corners of a 128 x 160 frame) is applied as the shift of
    the frame's centre: the same output as the pure translation; a rotation above the bound is applied."""
    frame = _view(specimen, (0.0, 0.0))
    h, w = SHAPE
    centre = np.array([h / 2.0, w / 2.0])

    def rigid(angle_deg: float, shift_yx: tuple[float, float]) -> FrameMotion:
        a = math.radians(angle_deg)
        matrix = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return FrameMotion(matrix, centre - matrix @ centre + np.asarray(shift_yx), 1.0)

    shift = FrameMotion.translation((-0.4, 0.3))
    plain, _ = warp_frame(frame, shift, order=3)
    tiny = rigid(0.02, tuple(shift.offset))
    as_shift, _ = warp_frame(frame, tiny, order=3, shift_only_px=0.25)
    np.testing.assert_allclose(as_shift, plain, atol=1e-9)
    rotated, _ = warp_frame(frame, tiny, order=3, shift_only_px=0.0)
    assert np.abs(rotated - plain).max() > 1e-4  # applied as a rotation when the bound is 0
    big = rigid(0.5, tuple(shift.offset))  # 0.9 px at the corners: above the bound, applied
    assert np.abs(warp_frame(frame, big, order=3, shift_only_px=0.25)[0] - plain).max() > 1e-2
    with pytest.raises(ValueError, match="shift_only_px"):
        FusionConfig(shift_only_px=-1.0)


@pytest.mark.parametrize("order", [1, 3])
def test_warp_from_kept_spline_coefficients_equals_scipy_resampling(specimen, order):
    """Oracle: SciPy's own resampling of the frame (prefilter at every call). The separable shift and the general
    warp read the frame's spline coefficients computed once (float32) and give the same pixels, also at the
    borders, with the same valid mask."""
    frame = _view(specimen, (0.0, 0.0)) * 1000.0 + 200.0
    h, w = SHAPE
    coef = spline_coefficients(frame, order=order)
    assert coef.dtype == np.float32 and coef.shape == SHAPE
    a = math.radians(0.7)
    rotation = FrameMotion(np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), np.array([1.3, -0.6]))
    for motion in (FrameMotion.translation((0.37, -0.81)), FrameMotion.translation((-5.5, 3.0)), rotation):
        pts = motion.apply(np.stack(np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij"), axis=-1))
        oracle = ndimage.map_coordinates(frame, np.moveaxis(pts, -1, 0) - 0.5, order=order, mode="constant",
                                         cval=0.0, prefilter=order > 1)
        inside = (pts[..., 0] >= 0.5) & (pts[..., 0] <= h - 0.5) & (pts[..., 1] >= 0.5) & (pts[..., 1] <= w - 0.5)
        for coefficients in (None, coef):
            warped, valid = warp_frame(frame, motion, order=order, coefficients=coefficients)
            np.testing.assert_array_equal(valid, inside)
            tol = 1e-9 if coefficients is None else 2e-3  # float32 coefficients: 1e-6 of the 1200-level signal
            np.testing.assert_allclose(warped[valid], oracle[valid], rtol=0, atol=tol)
            assert not warped[~valid].any()
    with pytest.raises(ImageError, match="coefficients"):
        warp_frame(frame, rotation, order=order, coefficients=coef[:-1])


def test_fusing_from_kept_coefficients_equals_fusing_the_frames(specimen):
    """The live window passes older frames' coefficients instead of their pixels: same fused frame and counts."""
    rng = np.random.default_rng(5)
    shifts = [(0.0, 0.0), (0.3, -0.45), (-0.7, 0.2), (1.1, 0.6)]
    frames = [(_view(specimen, s) + rng.normal(0, 0.03, SHAPE)).astype(np.float32) for s in shifts]
    motions = [FrameMotion.translation(s) for s in shifts]
    config = FusionConfig()
    plain = fuse_frames(frames, motions=motions, config=config)
    coefs = [None] + [spline_coefficients(f) for f in frames[1:]]
    cached = fuse_frames([frames[0]] + coefs[1:], motions=motions, coefficients=coefs, config=config)
    np.testing.assert_array_equal(cached.count, plain.count)
    np.testing.assert_allclose(cached.image, plain.image, rtol=0, atol=1e-5)
    assert cached.count.mean() > 3.5  # the shifted frames were fused, not rejected
    with pytest.raises(ValueError, match="coefficient"):
        fuse_frames(frames, motions=motions, coefficients=coefs[:2])


def test_fused_noise_falls_as_one_over_sqrt_n(specimen):
    rng = np.random.default_rng(2)
    sigma = 0.05
    shifts = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.5, 0.5)]
    clean = [_view(specimen, s) for s in shifts]
    frames = [c + rng.normal(0, sigma, SHAPE) for c in clean]
    motions = [FrameMotion.translation(s) for s in shifts]  # shifts are half-pixels: no interpolation blur
    inner = (slice(8, -8), slice(8, -8))
    residual = {}
    for n in (1, 2, 4, 8):
        fused = fuse_frames(frames[:n], motions=motions[:n], noise_sigma=sigma, config=FusionConfig(order=1))
        assert fused.count[inner].mean() > n - 0.01  # pure noise: every frame passes the residual test
        residual[n] = float(np.std((fused.image - clean[0])[inner]))
    for n in (2, 4, 8):
        # bilinear weights at half-pixel shifts lower an older frame's noise a little more than 1/√n predicts
        assert residual[n] <= residual[1] / math.sqrt(n) * 1.05, residual
        assert residual[n] >= residual[1] / math.sqrt(n) * 0.6, residual


def test_moving_object_falls_back_to_the_newest_frame():
    rng = np.random.default_rng(4)
    optics = Optics(lr_shape=(96, 128))
    area = make_areas(["particles"], optics, rng=rng, travel_lr_px=16)[0]
    series = DriftSeries(n_frames=4, object_radius_px=5.0, object_step_px=(2.0, 3.0), object_contrast=0.5)
    drift = drift_series(area, optics, series, rng=rng)
    frames = [f.astype(np.float64) / 65535.0 for f in drift.frames[::-1]]  # newest first
    fused = fuse_frames(frames, config=FusionConfig(max_shift_px=6.0, register_px=64))
    truth = drift_truth(area, optics, series, drift, len(drift.frames) - 1, scale=1)
    yy, xx = np.mgrid[0:96, 0:128] + 0.5
    old = np.zeros((96, 128), bool)  # where the object was in older frames, not now: ghosts would appear there
    for k in range(len(drift.frames) - 1):
        cy, cx = drift.object_yx[k] + drift.field_yx[k] - drift.field_yx[-1]
        old |= np.hypot(yy - cy, xx - cx) < series.object_radius_px
    cy, cx = drift.object_yx[-1]
    now = np.hypot(yy - cy, xx - cx) < series.object_radius_px + 1
    old &= ~now
    newest = frames[0]
    assert np.abs(fused.image - truth)[now].mean() <= np.abs(newest - truth)[now].mean() * 1.05
    assert np.abs(fused.image - truth)[old].mean() <= np.abs(newest - truth)[old].mean() * 1.05
    assert fused.count[now].max() == 1  # the object's place: the newest frame alone
    away = ~ndimage.binary_dilation(now | old, iterations=24)
    assert fused.count[away].mean() > 3.5  # elsewhere all four frames are used
    assert psnr(truth, fused.image, data_range=1.0) > psnr(truth, newest, data_range=1.0) + 3.0


def test_a_slow_brightness_drift_is_matched_and_a_changed_region_still_falls_back(specimen):
    """Two 8-bit scans minutes apart: the older one is brighter by a smooth ramp (charging: +6..+30 grey levels)
    and a bright spot appeared in the newest. Without ``match_intensity`` the ramp fails the residual test almost
    everywhere; with it, the older frame is fused wherever the specimen is the same, the fused frame keeps the
    newest frame's brightness, and the spot is the newest frame's alone (no ghost, no halo of the ramp)."""
    rng = np.random.default_rng(8)
    clean = [np.clip(_view(specimen, s) * 120.0 + 60.0, 0, 255) for s in [(0.0, 0.0), (0.4, -0.3)]]
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    spot = np.hypot(yy - 64, xx - 80) < 7
    newest_clean = np.where(spot, 230.0, clean[0])
    ramp = 6.0 + 24.0 * xx / SHAPE[1]
    newest = np.clip(np.round(newest_clean + rng.normal(0, 1.2, SHAPE)), 0, 255)
    older = np.clip(np.round(clean[1] + ramp + rng.normal(0, 1.2, SHAPE)), 0, 255)
    motions = [None, FrameMotion.translation((0.4, -0.3))]
    plain = fuse_frames([newest, older], motions=motions, config=FusionConfig())
    matched = fuse_frames([newest, older], motions=motions, config=FusionConfig(match_intensity=True))
    inner = (slice(8, -8), slice(8, -8))
    assert (plain.count[inner] == 2).mean() < 0.05
    away = ~ndimage.binary_dilation(spot, iterations=40)
    assert (matched.count[away] == 2).mean() > 0.9
    assert matched.count[spot].max() == 1
    region = np.zeros(SHAPE, bool)
    region[inner] = True
    keep = region & away
    assert abs(float((matched.image - newest_clean)[keep].mean())) < 0.3  # the newest frame's brightness
    assert np.std((matched.image - newest_clean)[keep]) < 0.8 * np.std((newest - newest_clean)[keep])
    assert np.abs(matched.image - newest_clean)[spot].max() <= np.abs(newest - newest_clean)[spot].max()


def test_shot_noise_bright_regions_are_fused_like_dark_ones(specimen):
    """Oracle: two frames that differ by noise only (σ ∝ √signal, SEM shot noise; dark half σ ≈ 1, bright half
    σ ≈ 4.5) must be fused everywhere. One σ for the whole frame (the median, dominated by the dark half) reads
    the bright half's pure noise as changed content and rejects it; the reference's noise curve does not."""
    from refscope.models.noise import estimate_noise_curve

    rng = np.random.default_rng(10)
    clean = _view(specimen, (0.0, 0.0)) * 10.0 + np.where(np.arange(SHAPE[1]) < SHAPE[1] // 2, 20.0, 400.0)
    frames = [clean + rng.normal(0, 1, SHAPE) * np.sqrt(clean / 20.0) for _ in range(2)]
    levels, sigmas = estimate_noise_curve(frames[0], bins=4, min_blocks=64)
    expect = np.sqrt(levels / 20.0)
    np.testing.assert_allclose(sigmas, expect, rtol=0.1)
    motions = [None, FrameMotion.identity()]
    curve = fuse_frames(frames, motions=motions)
    inner = (slice(8, -8), slice(8, -8))
    bright = np.zeros(SHAPE, bool)
    bright[:, SHAPE[1] // 2 + 24:] = True
    bright &= np.isin(np.arange(SHAPE[0]), np.arange(8, SHAPE[0] - 8))[:, None]
    assert (curve.count[inner] == 2).mean() > 0.95
    one_sigma = fuse_frames(frames, motions=motions, noise_sigma=curve.noise_sigma)
    assert (one_sigma.count[bright] == 2).mean() < 0.2  # the old behaviour: the bright half's noise "changed"


def test_noise_of_a_quiet_8_bit_scan_is_not_read_at_the_grey_level_floor():
    """Oracle: the σ the frame was made with (plus the rounding's 1/12 grey level²). The plain Haar MAD reads 0.741
    for every σ from 0.4 to 1 grey level on integer data with a clipped black region; the quantised estimate
    follows σ."""
    from refscope.models.noise import estimate_noise_sigma, estimate_noise_sigma_quantised

    rng = np.random.default_rng(9)
    base = np.add.outer(np.linspace(20, 200, 256), np.linspace(0, 30, 320))
    for sigma in (0.5, 0.7, 1.0, 1.5, 3.0):
        img = np.clip(np.round(base + rng.normal(0, sigma, base.shape)), 0, 255)
        img[:60, :100] = 0  # clipped: no noise there
        truth = math.sqrt(sigma * sigma + 1 / 12)
        assert abs(estimate_noise_sigma_quantised(img) - truth) < 0.08 * truth, sigma
        if sigma <= 1.0:
            assert estimate_noise_sigma(img) == pytest.approx(0.5 / 0.6745)
    smooth = base + rng.normal(0, 0.7, base.shape)  # not integer-valued: the plain estimate on unclipped blocks
    assert estimate_noise_sigma_quantised(smooth) == pytest.approx(0.7, rel=0.08)


def test_scene_change_is_not_fused(specimen):
    rng = np.random.default_rng(5)
    ref = _view(specimen, (0, 0)) + rng.normal(0, 0.03, SHAPE)
    other = rng.normal(0.5, 0.2, SHAPE)
    with pytest.raises(RegistrationError):
        register_frame(ref, other, config=FusionConfig(max_shift_px=6.0, register_px=64))
    fused = fuse_frames([ref, other], config=FusionConfig(max_shift_px=6.0, register_px=64))
    assert fused.count.max() == 1 and np.array_equal(fused.image, ref)


def test_finer_grid_recovers_detail_beyond_one_frame():
    """Four frames at the four half-pixel phases of a pattern above the LR Nyquist limit (0.7 and 0.6 cycles per
    LR px): shift-and-add resolves what one frame (aliased) cannot."""
    scale = 2

    def pattern(y: np.ndarray, x: np.ndarray) -> np.ndarray:  # LR pixel-edge coordinates
        return 0.5 + 0.4 * np.cos(2 * np.pi * 0.7 * x) * np.cos(2 * np.pi * 0.6 * y)

    ys, xs = np.mgrid[0:SHAPE[0], 0:SHAPE[1]] + 0.5
    shifts = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)]
    frames = [pattern(ys + sy, xs + sx) for sy, sx in shifts]  # frame content at u = reference content at u + s
    motions = [FrameMotion.translation(s) for s in shifts]
    assert subpixel_diversity(motions, SHAPE, scale=scale) == 1.0
    assert subpixel_diversity(motions[:1], SHAPE, scale=scale) == 0.25
    fy, fx = (np.mgrid[0:SHAPE[0] * scale, 0:SHAPE[1] * scale] + 0.5) / scale
    truth = pattern(fy, fx)
    # an aliased pattern differs between phases on the LR grid: the residual test (for moving content) is off here
    off = FusionConfig(residual_ratio=1e9, pixel_k=1e9)
    fine = fuse_fine(frames, scale=scale, motions=motions, noise_sigma=0.01, kernel_sigma=0.3, config=off)
    single = fuse_fine(frames[:1], scale=scale, motions=motions[:1], noise_sigma=0.01, kernel_sigma=0.3, config=off)
    inner = (slice(8, -8), slice(8, -8))
    assert fine.image.shape == truth.shape
    corr = [np.corrcoef(truth[inner].ravel(), img.image[inner].ravel())[0, 1] for img in (fine, single)]
    assert corr[0] > 0.9 and corr[1] < 0.3, corr


def test_count_confidence_and_errors():
    count = np.array([[1, 4], [2, 4]], dtype=np.uint16)
    conf = count_confidence(np.ones((4, 4)), count, scale=2)
    assert conf[0, 0] == pytest.approx(0.5) and conf[3, 3] == pytest.approx(1.0) and conf[2, 0] == pytest.approx(
        math.sqrt(0.5))
    with pytest.raises(ValueError, match="2x the count map"):
        count_confidence(np.ones((3, 4)), count, scale=2)
    with pytest.raises(ImageError, match="one shape"):
        fuse_frames([np.random.default_rng(0).random((32, 32)), np.random.default_rng(1).random((32, 40))])
    with pytest.raises(ValueError, match="FusionConfig.tile"):
        FusionConfig(tile=2)
    with pytest.raises(ValueError, match="motions"):
        fuse_frames([np.ones((16, 16)) * np.arange(16)], motions=[])


# --- the spectral merge (FusionConfig(merge="spectral"), Hasinoff et al. 2016) ------------------------------------

SPECTRAL = FusionConfig(merge="spectral")
NO_PIXEL_TEST = FusionConfig(merge="spectral", spectral_k=1e9, spectral_dilate_px=0)


def _naive_spectral(ref: np.ndarray, others: list[np.ndarray], sigma: float, c: float, tile: int = 16):
    """Oracle: Hasinoff et al.'s pairwise Wiener merge written out tile by tile in float64 with NumPy's FFT --
    ``(F0 + Σ_z [Fz + A_z (F0 - Fz)]) / N``, ``A_z = |F0 - Fz|² / (|F0 - Fz|² + c σ² Σw²)`` -- overlap-added with
    the analysis window; and the effective count ``1 + Σ_z mean(1 - A_z)`` over the full T x T spectrum."""
    s = tile // 2
    h, w = ref.shape
    ny, nx = -(-h // s) + 1, -(-w // s) + 1
    hp, wp = (ny + 1) * s, (nx + 1) * s

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((s, hp - h - s), (s, wp - w - s)), mode="reflect")

    w1 = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(tile) + 0.5) / tile)
    win = np.outer(w1, w1)
    r, alts = pad(ref), [pad(a) for a in others]
    out, count = np.zeros((hp, wp)), np.zeros((hp, wp))
    for iy in range(ny):
        for ix in range(nx):
            box = (slice(iy * s, iy * s + tile), slice(ix * s, ix * s + tile))
            f0 = np.fft.fft2(win * r[box])
            merged, n_eff = f0.copy(), 1.0
            for a in alts:
                fz = np.fft.fft2(win * a[box])
                d2 = np.abs(f0 - fz) ** 2
                big_a = d2 / (d2 + c * sigma ** 2 * np.sum(win ** 2))
                merged += fz + big_a * (f0 - fz)
                n_eff += np.mean(1 - big_a)
            out[box] += np.fft.ifft2(merged / (1 + len(alts))).real
            count[box] += n_eff * win
    return out[s:s + h, s:s + w], count[s:s + h, s:s + w]


def test_spectral_merge_equals_the_tile_by_tile_oracle():
    """The vectorised merge (batched float32 FFTs, the correction only, overlap-add in four parity groups) gives
    the naive per-tile float64 computation of the same equation, image and effective count, also at the borders of
    a frame that is no multiple of the tile."""
    rng = np.random.default_rng(11)
    h, w = 45, 70
    ramp = np.add.outer(np.linspace(0, 3, h), np.linspace(0, 2, w))
    ref = 10 + ramp + rng.normal(0, 0.5, (h, w))
    others = [10 + ramp + rng.normal(0, 0.5, (h, w)) + (1.5 if i == 1 else 0.0) * (np.arange(w) > 40)
              for i in range(3)]  # the second older frame has a step (changed content) on the right
    fused = fuse_frames([ref] + others, motions=[None] + [FrameMotion.identity()] * 3, noise_sigma=0.5,
                        config=replace(NO_PIXEL_TEST, order=1))
    image, count = _naive_spectral(ref, others, 0.5, NO_PIXEL_TEST.spectral_c)
    np.testing.assert_allclose(fused.image, image, rtol=0, atol=1e-5)  # float32 spectra of a ~13-unit signal
    np.testing.assert_allclose(fused.effective_count, count, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(fused.count, np.maximum(np.rint(count), 1).astype(np.uint16))
    assert fused.count.dtype == np.uint16 and 2.5 < fused.effective_count.mean() < 4.0
    assert 0.0 < fused.rejected_fraction < 0.5


def test_spectral_merge_of_identical_frames_is_the_reference(specimen):
    """Oracle: frames that agree exactly leave nothing to correct -- the output is the reference (the reference is
    never resampled) and every pixel counts all N frames."""
    ref = _view(specimen, (0.0, 0.0)) * 100.0 + 20.0
    for n in (2, 4):
        fused = fuse_frames([ref] * n, motions=[None] + [FrameMotion.identity()] * (n - 1), config=SPECTRAL)
        np.testing.assert_allclose(fused.image, ref, rtol=0, atol=1e-9)
        assert (fused.count == n).all() and np.allclose(fused.effective_count, n, atol=1e-4)
        assert fused.rejected_fraction == pytest.approx(0.0, abs=1e-6)


def _wiener_noise_ratio(n: int, c: float) -> tuple[float, float]:
    """Oracle for pure white noise: the merge's equation on independent complex Gaussian bins of unit variance per frame
    (Monte Carlo, 2·10⁵ bins): the merged bin's noise std relative to one frame's, and the mean weight ``1 - A`` of an
    older frame. A plain mean of n frames would give ``1/√n``; the Wiener weights keep part of each difference."""
    rng = np.random.default_rng(0)
    f = (rng.normal(size=(n, 200_000)) + 1j * rng.normal(size=(n, 200_000))) / math.sqrt(2)
    d = f[0] - f[1:]
    keep = c / (np.abs(d) ** 2 + c)
    merged = f[0] - (keep * d).sum(axis=0) / n
    return float(np.sqrt(np.mean(np.abs(merged) ** 2))), float(keep.mean())


def test_spectral_merge_lowers_pure_noise_by_the_wiener_efficiency():
    """Flat field, N = 4 frames of independent Gaussian noise: the fused noise is the oracle's within 5 % and the
    effective count is ``1 + 3 E[1 - A]`` within 3 %. At c = 8 the oracle is ≈ 0.57σ (1/√4 = 0.5 times an
    efficiency of ≈ 1.14; E[1 - A] = 0.83), so a plain mean (0.5σ, count 4), a merge that drops the older frames
    (1σ) or one that misses the per-bin noise scale fails; at the default c = 64 (≈ 0.50σ) the pixel test's few
    pure-noise rejections cost at most another 5 %."""
    rng = np.random.default_rng(12)
    sigma, n = 2.0, 4
    frames = [np.full(SHAPE, 100.0) + rng.normal(0, sigma, SHAPE) for _ in range(n)]
    motions = [None] + [FrameMotion.identity()] * (n - 1)
    inner = (slice(8, -8), slice(8, -8))
    for config, slack in ((replace(NO_PIXEL_TEST, spectral_c=8.0), 1.0), (SPECTRAL, 1.05)):
        ratio, keep = _wiener_noise_ratio(n, config.spectral_c)
        fused = fuse_frames(frames, motions=motions, noise_sigma=sigma, config=config)
        measured = float(np.std(fused.image[inner])) / sigma
        assert ratio * 0.95 < measured < ratio * 1.05 * slack, (config.spectral_c, measured, ratio)
        expect = 1 + (n - 1) * keep
        assert expect * 0.97 / slack ** 2 < fused.effective_count[inner].mean() < expect * 1.03
    # the noise-level function (no noise_sigma) finds the same σ on a flat field
    config = replace(NO_PIXEL_TEST, spectral_c=8.0)
    estimated = fuse_frames(frames, motions=motions, config=config)
    assert float(np.std(estimated.image[inner])) / sigma == pytest.approx(_wiener_noise_ratio(n, 8.0)[0], rel=0.05)


def _disc_frames(specimen: np.ndarray, n: int, rng: np.random.Generator):
    """A faint disc (radius 6 px, +0.15 = 5σ on a 0..1 specimen, noise σ 0.03) that moves 6 px per frame over a
    static background. Returns (frames newest first, the newest's clean frame, where the disc is now, where it was
    in the older frames only)."""
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    background = _view(specimen, (0.0, 0.0))

    def disc(k: int, radius: float = 6.0) -> np.ndarray:  # k frames older: the disc was 6k px further right
        return np.hypot(yy - 64, xx - (60 + 6 * k)) < radius

    frames = [np.where(disc(k), background + 0.15, background) + rng.normal(0, 0.03, SHAPE) for k in range(n)]
    was = np.zeros(SHAPE, bool)
    for k in range(1, n):
        was |= disc(k)
    return frames, np.where(disc(0), background + 0.15, background), disc(0), was & ~disc(0, 8.0)


def test_spectral_merge_does_not_ghost_a_moving_object(specimen):
    """A faint disc moves between frames. The fused frame must be the reference's there: where the disc is now it
    keeps its brightness (older frames lack it: a ghost dims it), where it was it stays background (a ghost
    brightens it), each within 0.04 of the disc's contrast of what the newest frame alone shows, and its error over
    both regions is no worse than the single frame's (5 %); the background's noise drops. Without the pixel test
    the merge's per-bin weights let the old discs through (a ghost of more than 0.05 of the contrast): this test
    fails if the pixel test is removed."""
    rng = np.random.default_rng(13)
    for n in (2, 4):
        frames, clean, now, was = _disc_frames(specimen, n, rng)
        motions = [None] + [FrameMotion.identity()] * (n - 1)

        def ghost(image: np.ndarray) -> float:  # in units of the disc's contrast, beyond the newest frame's own
            dim = float((image - frames[0])[now].mean()) / 0.15
            bright = float((image - frames[0])[was].mean()) / 0.15
            return max(-dim, bright)

        fused = fuse_frames(frames, motions=motions, config=SPECTRAL)
        assert ghost(fused.image) < 0.04, n
        region = now | was
        single = float(np.sqrt(np.mean((frames[0] - clean)[region] ** 2)))
        assert float(np.sqrt(np.mean((fused.image - clean)[region] ** 2))) <= 1.05 * single, n
        away = ~ndimage.binary_dilation(region, iterations=16)
        away[:8], away[-8:], away[:, :8], away[:, -8:] = False, False, False, False
        assert np.std((fused.image - clean)[away]) < 0.85 * np.std((frames[0] - clean)[away])
        assert ghost(fuse_frames(frames, motions=motions, config=NO_PIXEL_TEST).image) > 0.05, n


def _haar_hh_rms(a: np.ndarray) -> float:
    """RMS of the finest diagonal Haar band: the high-frequency noise of a smooth image."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    hh = (a[0:h:2, 0:w:2] - a[0:h:2, 1:w:2] - a[1:h:2, 0:w:2] + a[1:h:2, 1:w:2]) / 2
    return float(np.sqrt(np.mean(hh ** 2)))


def test_spectral_merge_keeps_the_reference_brightness_yet_averages_the_noise(specimen):
    """The older scan is brighter by a smooth ramp (+6..+30 grey levels, charging): the difference is at the lowest
    frequencies, where the merge takes the reference; its high frequencies are noise, which are averaged. So the
    fused frame keeps the newest frame's brightness (mean within 0.2 grey level) and its high-frequency noise drops
    (< 0.85x; two frames: 0.71 ideal). The tile test cannot: every tile fails, nothing is fused, the noise stays."""
    rng = np.random.default_rng(14)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    clean = _view(specimen, (0.0, 0.0)) * 120.0 + 60.0
    newest = clean + rng.normal(0, 1.2, SHAPE)
    older = clean + 6.0 + 24.0 * xx / SHAPE[1] + rng.normal(0, 1.2, SHAPE)
    motions = [None, FrameMotion.identity()]
    inner = (slice(8, -8), slice(8, -8))
    single = _haar_hh_rms((newest - clean)[inner])
    spectral = fuse_frames([newest, older], motions=motions, config=SPECTRAL)
    assert abs(float((spectral.image - clean)[inner].mean())) < 0.2
    assert _haar_hh_rms((spectral.image - clean)[inner]) < 0.85 * single
    assert spectral.effective_count[inner].mean() > 1.5
    tiles = fuse_frames([newest, older], motions=motions, config=FusionConfig())
    assert (tiles.count[inner] == 2).mean() < 0.05
    assert _haar_hh_rms((tiles.image - clean)[inner]) > 0.97 * single


def test_spectral_merge_from_kept_coefficients_equals_merging_the_frames(specimen):
    """The live window's path (older frames as float32 spline coefficients) gives the same fused frame."""
    rng = np.random.default_rng(15)
    shifts = [(0.0, 0.0), (0.3, -0.45), (-0.7, 0.2), (1.1, 0.6)]
    frames = [(_view(specimen, s) + rng.normal(0, 0.03, SHAPE)).astype(np.float32) for s in shifts]
    motions = [FrameMotion.translation(s) for s in shifts]
    plain = fuse_frames(frames, motions=motions, config=SPECTRAL)
    coefs = [None] + [spline_coefficients(f) for f in frames[1:]]
    cached = fuse_frames([frames[0]] + coefs[1:], motions=motions, coefficients=coefs, config=SPECTRAL)
    np.testing.assert_allclose(cached.image, plain.image, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cached.effective_count, plain.effective_count, rtol=0, atol=1e-3)
    assert plain.effective_count.mean() > 3.0  # the shifted frames were fused


@pytest.mark.parametrize("field, value, match", [
    ("merge", "fft", "'tiles', 'spectral'"),
    ("spectral_c", 0.0, "spectral_c"), ("spectral_c", float("nan"), "spectral_c"),
    ("spectral_c", float("inf"), "spectral_c"),
    ("spectral_k", 0.0, "spectral_k"), ("spectral_dilate_px", -1, "spectral_dilate_px"),
    ("spectral_dilate_px", 1.5, "spectral_dilate_px"), ("spectral_blur_px", -0.5, "spectral_blur_px")])
def test_spectral_config_is_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        FusionConfig(**{"merge": "spectral", field: value})


def test_spectral_merge_needs_an_even_tile_and_tiles_stay_the_default():
    with pytest.raises(ValueError, match="even for merge='spectral'"):
        FusionConfig(merge="spectral", tile=15)
    assert FusionConfig(tile=15).merge == "tiles"  # the tile test takes any tile >= 4
    frames = [np.random.default_rng(i).normal(0, 1, (40, 48)) for i in range(2)]
    default = fuse_frames(frames, motions=[None, FrameMotion.identity()], noise_sigma=1.0)
    assert default.effective_count is None  # the tile test
    assert FusionConfig().merge == "tiles"

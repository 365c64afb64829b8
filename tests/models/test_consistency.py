"""Data consistency (models/consistency.py): forward model recovered on a known degradation, ρ on real pairs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.consistency import (FLAG_RATIO, ForwardModel, data_consistency, fit_forward_model,
                                         merge_forward_models)
from refscope.models.image_ops import upsample_bicubic
from refscope.models.metrics import fit_intensity_coefficients


def _scene(rng: np.random.Generator, shape: tuple[int, int], blur: float = 6.0) -> np.ndarray:
    """Smooth (``blur`` HR px) enough that the wavelet noise estimate of its LR sees the noise, not the texture;
    ``blur = 0``: white, so that every kernel tap is identifiable."""
    scene = rng.random(shape)
    return (ndimage.gaussian_filter(scene, blur) if blur else scene) * 400.0 + 100.0


def _known_model(scale: int) -> ForwardModel:
    """A probe blur over the S x S block plus one HR px of spill on every side, gain 1, offset 20."""
    kernel = np.ones((scale + 2, scale + 2))
    kernel[1:-1, 1:-1] = 4.0
    return ForwardModel(scale, 1, kernel / kernel.sum(), 20.0)


@pytest.mark.parametrize("scale", [2, 4])
def test_fit_recovers_a_known_forward_model(scale, rng):
    truth = _known_model(scale)
    hr = _scene(rng, (96 * scale, 96 * scale), blur=0)
    lr = truth.degrade(hr) + rng.normal(0, 2.0, (96, 96))
    fitted = fit_forward_model([(lr, hr)], scale=scale, radius=1, ridge=1e-6)
    # the HR is first calibrated into LR units against bicubic(LR), as the networks' targets are; that regression
    # dilutes the gain a little, which the kernel's sum takes back: its shape is the truth's
    np.testing.assert_allclose(fitted.kernel / fitted.kernel.sum(), truth.kernel, atol=0.01)
    a, b = fit_intensity_coefficients(hr, upsample_bicubic(lr, scale))
    assert fitted.kernel.sum() * a == pytest.approx(1.0, abs=0.01)
    assert data_consistency(lr, a * hr + b, fitted, sigma=2.0) == pytest.approx(1.0, abs=0.05)


def test_degrade_is_block_aligned():
    """An HR grid constant on each S x S block degrades by a block-mean kernel to exactly the block values."""
    lr = np.arange(12.0).reshape(3, 4)
    model = ForwardModel(3, 0, np.full((3, 3), 1 / 9), 0.0)
    np.testing.assert_allclose(model.degrade(np.kron(lr, np.ones((3, 3)))), lr)


def test_degrade_in_row_blocks_equals_the_whole_grid_with_symmetric_borders(rng):
    model = ForwardModel(3, 2, rng.random((7, 7)), 5.0)
    hr = rng.random((3 * 23, 3 * 17)).astype(np.float32)
    padded = np.pad(hr.astype(np.float64), 2, mode="symmetric")
    expected = np.full((23, 17), 5.0)
    for u in range(7):
        for v in range(7):
            expected += model.kernel[u, v] * padded[u:u + 69:3, v:v + 51:3]
    for rows in (1, 5, 64):
        np.testing.assert_allclose(model.degrade(hr, block_rows=rows), expected, rtol=1e-12)


def test_merge_weights_by_pixels_and_matches_a_joint_fit(rng):
    truth = _known_model(2)
    hr_a, hr_b = _scene(rng, (128, 128), blur=0), _scene(rng, (192, 128), blur=0)
    lr_a = truth.degrade(hr_a) + rng.normal(0, 1.0, (64, 64))
    lr_b = truth.degrade(hr_b) + rng.normal(0, 1.0, (96, 64))
    a, b = fit_forward_model([(lr_a, hr_a)], scale=2), fit_forward_model([(lr_b, hr_b)], scale=2)
    merged, joint = merge_forward_models(a, b), fit_forward_model([(lr_a, hr_a), (lr_b, hr_b)], scale=2)
    assert merged.pixels == joint.pixels == 64 * 64 + 96 * 64
    np.testing.assert_allclose(merged.kernel, joint.kernel, atol=0.01)
    assert merge_forward_models(None, a) is a and merge_forward_models(a, None) is a
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_forward_models(a, ForwardModel(3, 1, np.full((5, 5), 1 / 25), 0.0, 100))


def test_rho_is_one_for_the_truth_and_flags_invented_detail(rng):
    scale, sigma = 2, 3.0
    clean_hr = _scene(rng, (256, 256))
    lr = _known_model(scale).degrade(clean_hr) + rng.normal(0, sigma, (128, 128))
    model = fit_forward_model([(lr, clean_hr)], scale=scale)
    a, b = fit_intensity_coefficients(clean_hr, upsample_bicubic(lr, scale))
    truth = a * clean_hr + b  # the clean HR in LR units, as a served output is
    assert data_consistency(lr, truth, model) == pytest.approx(1.0, abs=0.12)
    assert data_consistency(lr, truth, model, sigma=sigma) == pytest.approx(1.0, abs=0.05)
    invented = truth + 6 * sigma * np.sign(ndimage.gaussian_filter(rng.normal(size=truth.shape), 3.0))
    assert data_consistency(lr, invented, model) > FLAG_RATIO
    assert data_consistency(lr, upsample_bicubic(lr, scale), model) < 1.0


def test_errors_name_the_problem(rng):
    with pytest.raises(ValueError, match="4 x 4"):
        ForwardModel(2, 1, np.ones((3, 3)), 0.0)
    with pytest.raises(ValueError, match="at least one"):
        fit_forward_model([], scale=2)
    with pytest.raises(ValueError, match="2 x the LR region"):
        fit_forward_model([(np.zeros((10, 10)), np.zeros((21, 20)))], scale=2)
    with pytest.raises(ValueError, match="too few"):
        fit_forward_model([(np.zeros((2, 2)), np.zeros((4, 4)))], scale=2)
    with pytest.raises(ValueError, match="not 2 x the input"):
        data_consistency(np.zeros((8, 8)), np.zeros((8, 8)), _known_model(2))


@pytest.mark.realdata
@pytest.mark.parametrize("pair,scale", [("pair07", 2), ("pair00", 4)])
def test_real_references_are_consistent_with_their_lr(shared_data, pair, scale):
    """Learn (1) on the left 75 % of a physical pair; on the right 25 % the HR reference scan itself stays within
    FLAG_RATIO of its LR (ρ near 1), bicubic below 1, and an output carrying the texture of another area is flagged."""
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "sem_pairs" / "aligned"
    lr = tifffile.imread(folder / f"{pair}_lr.tif").astype(np.float64)
    hr = tifffile.imread(folder / f"{pair}_hr_on_lr_grid_x{scale}.tif").astype(np.float64)
    cut = (3 * lr.shape[1] // 4) // 2 * 2
    model = fit_forward_model([(lr[:, :cut], hr[:, :cut * scale])], scale=scale)
    test_lr, test_hr = lr[:, cut:], hr[:, cut * scale:]
    a, b = fit_intensity_coefficients(test_hr, upsample_bicubic(test_lr, scale))
    calibrated = a * test_hr + b
    rho_truth = data_consistency(test_lr, calibrated, model)
    assert 0.7 < rho_truth < FLAG_RATIO, rho_truth
    assert data_consistency(test_lr, upsample_bicubic(test_lr, scale), model) < 1.0
    elsewhere = a * hr[:, :test_hr.shape[1]] + b  # the left of the same reference: real texture, wrong place
    assert data_consistency(test_lr, elsewhere, model) > FLAG_RATIO

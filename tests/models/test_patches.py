"""Tests of refscope.models.patches against naive loops: extraction, grids and overlap-add aggregation."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.patches import aggregate_patches, check_patch_size, extract_patches, pad_for_patches, patch_grid


def _naive_patches(image: np.ndarray, n: int, centres=None) -> np.ndarray:
    """Double loop over a reflect-padded image: the n x n window centred at every (i, j), flattened row-major."""
    half = n // 2
    padded = np.pad(image, half, mode="reflect")
    h, w = image.shape
    if centres is None:
        centres = [(i, j) for i in range(h) for j in range(w)]
    out = []
    for i, j in centres:
        out.append(padded[i:i + n, j:j + n].ravel())  # padded (i + half, j + half) is image (i, j)
    return np.array(out)


def _naive_aggregate(patches, centres, shape, weights=None):
    n = int(round(np.sqrt(patches.shape[1])))
    half = n // 2
    total = np.zeros(shape)
    weight = np.zeros(shape)
    w = np.ones(len(centres)) if weights is None else weights
    for p, (cy, cx), wk in zip(patches, centres, w):
        block = p.reshape(n, n)
        for dy in range(n):
            for dx in range(n):
                y, x = cy - half + dy, cx - half + dx
                if 0 <= y < shape[0] and 0 <= x < shape[1]:
                    total[y, x] += wk * block[dy, dx]
                    weight[y, x] += wk
    return total, weight


# ------------------------------------------------------------------------------------------ check_patch_size
@pytest.mark.parametrize("bad", [-3, 0, 1, 2, 4, 8, 3.5])
def test_check_patch_size_rejects_even_small_and_fractional(bad):
    with pytest.raises(ValueError, match="odd"):
        check_patch_size(bad)


@pytest.mark.parametrize("good", [3, 5, 9, 17])
def test_check_patch_size_accepts_odd_sizes(good):
    assert check_patch_size(good) == good
    assert isinstance(check_patch_size(good), int)


# ------------------------------------------------------------------------------------------ extract_patches
@pytest.mark.parametrize("n", [3, 5])
def test_extract_patches_all_pixels_equals_naive_loop(n):
    img = np.random.default_rng(0).normal(size=(7, 9))
    got = extract_patches(img, n, dtype=np.float64)
    assert got.shape == (7 * 9, n * n)
    np.testing.assert_array_equal(got, _naive_patches(img, n))


def test_extract_patches_at_centres_and_with_precomputed_padding():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(11, 8))
    centres = np.stack([rng.integers(0, 11, 30), rng.integers(0, 8, 30)], axis=1)
    expected = _naive_patches(img, 5, centres)
    np.testing.assert_array_equal(extract_patches(img, 5, centres, dtype=np.float64), expected)
    padded = pad_for_patches(img, 5)
    assert padded.shape == (15, 12)
    np.testing.assert_array_equal(extract_patches(img, 5, centres, padded=padded, dtype=np.float64), expected)


def test_extract_patches_centre_element_is_the_pixel_and_dtype_is_honoured():
    img = np.arange(6 * 7, dtype=np.float64).reshape(6, 7)
    patches = extract_patches(img, 3)
    assert patches.dtype == np.float32
    np.testing.assert_array_equal(patches[:, 4], img.ravel())


# ------------------------------------------------------------------------------------------------ patch_grid
@pytest.mark.parametrize("shape,stride", [((10, 14), 3), ((9, 9), 4), ((5, 7), 1), ((6, 4), 10)])
def test_patch_grid_covers_last_row_and_column(shape, stride):
    grid = patch_grid(shape, stride)
    ys, xs = np.unique(grid[:, 0]), np.unique(grid[:, 1])
    for coords, size in ((ys, shape[0]), (xs, shape[1])):
        assert coords[0] == 0 and coords[-1] == size - 1
        assert np.all(np.diff(coords) >= 1) and np.all(np.diff(coords) <= stride)
        np.testing.assert_array_equal(coords[:-1], np.arange(0, size, stride)[: len(coords) - 1])
    assert len(grid) == len(ys) * len(xs)  # a full tensor grid, no duplicates
    assert len({tuple(c) for c in grid}) == len(grid)


def test_patch_grid_rejects_stride_below_one():
    with pytest.raises(ValueError, match="stride"):
        patch_grid((5, 5), 0)


# ----------------------------------------------------------------------------------------- aggregate_patches
@pytest.mark.parametrize("n,stride", [(3, 1), (5, 1), (5, 3), (3, 3)])
def test_aggregate_of_cut_patches_reconstructs_the_image(n, stride):
    img = np.random.default_rng(2).normal(size=(10, 13))
    centres = patch_grid(img.shape, stride)
    patches = extract_patches(img, n, centres, dtype=np.float64)
    total, weight = aggregate_patches(patches, centres, img.shape)
    assert total.shape == weight.shape == img.shape
    assert np.all(weight > 0)  # stride <= n: every pixel covered
    np.testing.assert_allclose(total / weight, img, rtol=0, atol=1e-12)


def test_aggregate_equals_naive_overlap_add_with_weights():
    rng = np.random.default_rng(3)
    shape = (8, 9)
    centres = np.stack([rng.integers(0, 8, 25), rng.integers(0, 9, 25)], axis=1)
    centres[:3] = [[0, 0], [7, 8], [0, 8]]  # corners: parts of the patch fall outside and are dropped
    patches = rng.normal(size=(25, 25))
    weights = rng.uniform(0.1, 2.0, 25)
    for w in (None, weights):
        total, weight = aggregate_patches(patches, centres, shape, weights=w)
        exp_total, exp_weight = _naive_aggregate(patches, centres, shape, w)
        np.testing.assert_allclose(total, exp_total, atol=1e-12)
        np.testing.assert_allclose(weight, exp_weight, atol=1e-12)


def test_weighted_aggregate_of_cut_patches_still_reconstructs():
    img = np.random.default_rng(4).normal(size=(9, 11))
    centres = patch_grid(img.shape, 2)
    patches = extract_patches(img, 5, centres, dtype=np.float64)
    weights = np.random.default_rng(5).uniform(0.2, 3.0, len(centres))
    total, weight = aggregate_patches(patches, centres, img.shape, weights=weights)
    np.testing.assert_allclose(total / weight, img, atol=1e-12)

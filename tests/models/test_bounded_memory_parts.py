"""The memory-bounded forms equal their whole-image oracles: bicubic at chosen rows/columns, the confidence grid's
patches, matched patches gathered in blocks and as float32, and the candidate cap of Algorithm 1."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.confidence import _patches_of_upsampled
from refscope.models.image_ops import upsample_bicubic, upsample_bicubic_at
from refscope.models.local_registration import matched_patches, register_local
from refscope.models.patches import extract_patches, pad_for_patches


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bicubic_at_rows_and_columns_equals_the_whole_image(scale, rng):
    image = rng.normal(size=(23, 31))
    rows = np.array([0, 5, scale * 23 - 1, 17])
    cols = np.array([scale * 31 - 1, 0, 2, 40 % (scale * 31)])
    np.testing.assert_array_equal(upsample_bicubic_at(image, scale, rows, cols),
                                  upsample_bicubic(image, scale)[np.ix_(rows, cols)])
    with pytest.raises(ValueError, match="rows"):
        upsample_bicubic_at(image, scale, np.array([scale * 23]), cols)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_confidence_patches_equal_patches_of_the_whole_upsampled_frame(scale, rng):
    units = rng.normal(size=(37, 53))
    up = upsample_bicubic(units, scale)
    ys = np.unique(np.r_[np.arange(0, up.shape[0], 3 * scale), up.shape[0] - 1])  # border rows and columns too
    xs = np.unique(np.r_[np.arange(0, up.shape[1], 5 * scale), up.shape[1] - 1])
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    oracle = extract_patches(up, 9, np.stack([gy.ravel(), gx.ravel()], axis=1), padded=pad_for_patches(up, 9),
                             dtype=np.float64)
    np.testing.assert_array_equal(_patches_of_upsampled(units, scale, ys, xs, 9), oracle)


def test_matched_patches_in_blocks_and_float32_equal_one_gather(rng, monkeypatch):
    import refscope.models.local_registration as local

    hr = rng.normal(size=(80, 90))
    lr = hr + 0.1 * rng.normal(size=hr.shape)
    matches = register_local(hr, lr, patch_size=9, search_radius=2, stride=1)
    whole_hr, whole_lr = matched_patches(hr, lr, matches, 9)
    monkeypatch.setattr(local, "_GATHER_BLOCK", 7)  # many blocks, a ragged last one
    hr32, lr32 = matched_patches(hr, lr, matches, 9, dtype=np.float32)
    assert hr32.dtype == np.float32 and len(hr32) == len(matches.centres) > 7
    np.testing.assert_array_equal(hr32, whole_hr.astype(np.float32))
    np.testing.assert_array_equal(lr32, whole_lr.astype(np.float32))


def test_candidates_are_capped_at_k_times_l_before_extraction():
    from refscope.models.library import LibraryConfig
    from refscope.models.pipeline import FitConfig, _candidates

    rng = np.random.default_rng(4)
    lr = rng.normal(100.0, 20.0, (60, 64))
    hr = upsample_bicubic(lr, 2) + rng.normal(0.0, 2.0, (120, 128))
    small = FitConfig(scale=2, library=LibraryConfig(patch_size=9, n_categories=4, oversample=2, size=100))
    hr_p, lr_p = _candidates(lr, hr, small)
    assert len(hr_p) == len(lr_p) == 200 and hr_p.dtype == np.float32
    roomy = FitConfig(scale=2, library=LibraryConfig(patch_size=9, n_categories=4, oversample=20, size=8000))
    assert len(_candidates(lr, hr, roomy)[0]) > 200  # below the cap every candidate is kept

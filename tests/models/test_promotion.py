"""Held-out split and the promotion rule: a worse or broken candidate is never promoted."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.image_ops import upsample_bicubic
from refscope.models.promotion import decide_promotion, held_out_delta_psnr, split_for_validation


def test_split_covers_region_without_overlap(rng):
    lr = rng.random((30, 41))
    hr = rng.random((60, 82))
    split = split_for_validation(lr, hr, scale=2)
    train_lr, train_hr = split.train
    assert train_hr.shape == (2 * train_lr.shape[0], 2 * train_lr.shape[1])
    assert len(split.held_out) == 3
    held_w = split.held_out[0][0].shape[1]
    assert train_lr.shape[1] + held_w == 41
    assert sum(h[0].shape[0] for h in split.held_out) == 30
    for lr_sub, hr_sub in split.held_out:
        assert hr_sub.shape == (2 * lr_sub.shape[0], 2 * lr_sub.shape[1])
    np.testing.assert_array_equal(split.held_out[2][0], lr[20:, 31:])


def test_split_rejects_wrong_grid(rng):
    with pytest.raises(ValueError, match="not 2x"):
        split_for_validation(rng.random((30, 40)), rng.random((61, 80)), scale=2)


def _held_out(rng):
    truth = [np.cumsum(np.cumsum(rng.normal(size=(40, 40)), 0), 1) for _ in range(3)]
    return tuple((t[::2, ::2] + rng.normal(scale=2, size=(20, 20)), t) for t in truth)


def test_bicubic_scores_zero_and_an_oracle_scores_higher(rng):
    held = _held_out(rng)
    assert held_out_delta_psnr(None, held, scale=2) == 0.0
    assert held_out_delta_psnr(lambda x: upsample_bicubic(x, 2), held, scale=2) == pytest.approx(0.0, abs=1e-9)
    truths = {id(lr): hr for lr, hr in held}
    assert held_out_delta_psnr(lambda x: truths[id(x)], held, scale=2) > 1.0


def test_broken_or_worse_candidates_are_not_promoted(rng):
    held = _held_out(rng)
    nan_model = lambda x: np.full((2 * x.shape[0], 2 * x.shape[1]), np.nan)  # noqa: E731
    broken = held_out_delta_psnr(nan_model, held, scale=2)
    assert not decide_promotion(broken, 0.5).promote
    noisy = held_out_delta_psnr(lambda x: upsample_bicubic(x, 2) + rng.normal(scale=50, size=(40, 40)), held, scale=2)
    assert noisy < 0
    decision = decide_promotion(noisy, -1.0)
    assert not decision.promote and "bicubic" in decision.reason
    assert not decide_promotion(0.3, 0.5).promote
    assert decide_promotion(0.6, 0.5).promote
    assert not decide_promotion(0.55, 0.5, margin_db=0.1).promote


def test_a_candidate_must_beat_the_safe_baseline_too() -> None:
    from refscope.models.promotion import decide_promotion

    refused = decide_promotion(0.30, 0.10, baseline_delta_db=0.40)
    assert not refused.promote and "does not beat the safe baseline (+0.40 dB)" in refused.reason
    promoted = decide_promotion(0.45, 0.10, baseline_delta_db=0.40)
    assert promoted.promote and "the safe baseline and bicubic" in promoted.reason
    assert not decide_promotion(0.45, 0.10, baseline_delta_db=0.40, margin_db=0.1).promote
    champion_higher = decide_promotion(0.30, 0.50, baseline_delta_db=0.40)
    assert "does not beat the serving model (+0.50 dB)" in champion_higher.reason
    assert "does not beat bicubic" in decide_promotion(-0.1, -0.2).reason  # no baseline, no champion: as before

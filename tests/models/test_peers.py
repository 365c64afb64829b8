"""Classical peers tuned on a validation strip (models/peers.py)."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.image_ops import upsample_bicubic
from refscope.models.peers import BLUR_SIGMAS, blur_predictor, nlm_predictor, tune, tuned_peers
from refscope.models.promotion import held_out_delta_psnr


def _noisy_pairs(seed: int, n: int = 3, sigma: float = 0.08):
    """(noisy LR, clean HR) of smooth blobs: the HR is the clean bicubic of the clean LR, so denoising pays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        clean = np.clip(np.cumsum(np.cumsum(rng.normal(size=(40, 48)), 0), 1), -50, 50)
        clean = (clean - clean.min()) / np.ptp(clean)
        out.append((clean + rng.normal(0, sigma, clean.shape), upsample_bicubic(clean, 2)))
    return out


def test_tune_picks_the_setting_best_on_validation() -> None:
    validation = _noisy_pairs(1)
    best, scores = tune(lambda s: blur_predictor(s, 2), BLUR_SIGMAS, validation, scale=2)
    assert set(scores) == set(BLUR_SIGMAS) and scores[best] == max(scores.values())
    assert scores[best] == pytest.approx(held_out_delta_psnr(blur_predictor(best, 2), validation, scale=2))
    assert scores[best] > 0.5  # on noisy smooth images a blur clearly beats bicubic
    with pytest.raises(ValueError, match="validation"):
        tune(lambda s: blur_predictor(s, 2), BLUR_SIGMAS, [], scale=2)


def test_tuned_peers_beat_bicubic_on_unseen_noisy_subimages() -> None:
    validation, scored = _noisy_pairs(2), _noisy_pairs(3)
    peers = tuned_peers(validation, scale=2, lr_frame=np.concatenate([lr for lr, _ in validation]))
    assert set(peers) == {"blur", "nlm"}
    for name, (predict, _) in peers.items():
        assert held_out_delta_psnr(predict, scored, scale=2) > 0.5, name
    out = nlm_predictor(1.0, 0.08, 3)(scored[0][0])
    assert out.shape == (120, 144) and np.all(np.isfinite(out))

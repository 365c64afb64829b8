"""Classical peers that every refscope figure is shown beside, each tuned on a validation strip (pure).

* ``blur``: a Gaussian blur of the Keys bicubic output (σ in output pixels) — the cheapest denoiser;
* ``nlm``: scikit-image's non-local means of the LR frame (patch 5, search distance 6, strength ``h = k·σ_n``
  with σ_n the LR noise level), then bicubic (Buades et al., CVPR 2005).

A peer's setting is chosen by :func:`tune` on held-out subimages *inside* the training area (the right quarter
of it, :func:`~refscope.models.promotion.split_for_validation`), never on the scored area, exactly as refscope's own
checkpoints are chosen. BM3D, the strongest classical peer, and the pretrained restorer ``tk-r-em`` (GPL-3,
TensorFlow) are not here: their licences keep them out of the package; ``benchmarks/quality.py`` runs each in its
own environment (``benchmarks/external_peers.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .baseline import baseline_block
from .image_ops import upsample_bicubic
from .noise import estimate_noise_sigma
from .promotion import held_out_delta_psnr

__all__ = ["BLUR_SIGMAS", "NLM_STRENGTHS", "PEERS", "blur_predictor", "nlm_predictor", "tune", "tuned_peers",
           "tuned_blur"]

Predictor = Callable[[np.ndarray], np.ndarray]
#: Candidate Gaussian σ of ``blur``, output pixels.
BLUR_SIGMAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5)
#: Candidate strengths k of ``nlm`` (h = k·σ_n).
NLM_STRENGTHS: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.2)
PEERS = ("blur", "nlm")


def blur_predictor(sigma: float, scale: int) -> Predictor:
    """``lr (h, w) -> (S·h, S·w)``: bicubic, then a Gaussian of ``sigma`` output px (0: bicubic itself); the safe
    baseline's equation (:func:`~.baseline.baseline_block` over the whole frame)."""
    def run(lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr, np.float64)
        return baseline_block(lr, scale=scale, sigma_px=float(sigma), rows=(0, scale * lr.shape[0]),
                              cols=(0, scale * lr.shape[1]))

    return run


def nlm_predictor(strength: float, noise_sigma: float, scale: int) -> Predictor:
    """``lr (h, w) -> (S·h, S·w)``: non-local means of the LR (h = ``strength``·``noise_sigma``), then bicubic."""
    from skimage.restoration import denoise_nl_means

    def run(lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr, np.float64)
        clean = denoise_nl_means(lr, h=strength * noise_sigma, sigma=noise_sigma, patch_size=5, patch_distance=6,
                                 fast_mode=True)
        return upsample_bicubic(clean, scale)

    return run


def tune(make: Callable[[float], Predictor], settings: Sequence[float],
         validation: Sequence[tuple[np.ndarray, np.ndarray]], *, scale: int) -> tuple[float, dict[float, float]]:
    """(best setting, mean validation ΔPSNR over bicubic per setting) of ``make(setting)`` on ``validation``."""
    if not validation or not settings:
        raise ValueError("tuning a peer needs validation subimages and at least one setting")
    scores = {s: held_out_delta_psnr(make(s), validation, scale=scale) for s in settings}
    return max(scores, key=scores.get), scores


def tuned_peers(validation: Sequence[tuple[np.ndarray, np.ndarray]], *, scale: int,
                lr_frame: np.ndarray) -> dict[str, tuple[Predictor, float]]:
    """``{"blur": (predictor, σ), "nlm": (predictor, k)}``, each tuned on ``validation``; σ_n from ``lr_frame``."""
    sigma_n = estimate_noise_sigma(np.asarray(lr_frame, np.float64))
    blur, _ = tune(lambda s: blur_predictor(s, scale), BLUR_SIGMAS, validation, scale=scale)
    nlm, _ = tune(lambda k: nlm_predictor(k, sigma_n, scale), NLM_STRENGTHS, validation, scale=scale)
    return {"blur": (blur_predictor(blur, scale), blur), "nlm": (nlm_predictor(nlm, sigma_n, scale), nlm)}


def tuned_blur(validation: Sequence[tuple[np.ndarray, np.ndarray]], *, scale: int) -> tuple[float, float]:
    """(σ, its mean validation ΔPSNR over bicubic, dB) of the ``blur`` best on ``validation``, bicubic itself
    (σ = 0, 0 dB) among the candidates: the safe baseline of :mod:`.baseline`, never worse than bicubic there."""
    sigma, scores = tune(lambda s: blur_predictor(s, scale), (0.0, *BLUR_SIGMAS), validation, scale=scale)
    return float(sigma), float(scores[sigma])

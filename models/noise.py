"""Noise-level estimation for setting the NLM filtering strength from the data itself."""
from __future__ import annotations

import numpy as np

__all__ = ["estimate_noise_sigma", "correlation_ceiling"]


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white Gaussian noise in (H, W), in the image's units.

    Uses the robust median absolute deviation of the finest diagonal wavelet (Haar) coefficients,
    σ = median(|HH|) / 0.6745 (Donoho & Johnstone 1994), which texture barely affects.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    a = img[0:h:2, 0:w:2]
    b = img[0:h:2, 1:w:2]
    c = img[1:h:2, 0:w:2]
    d = img[1:h:2, 1:w:2]
    hh = (a - b - c + d) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def correlation_ceiling(image: np.ndarray) -> float:
    """Largest zero-mean NCC a noise-free template of the same scene can reach against the noisy (H, W) ``image``.

    With ``image = s + n`` (signal s, white noise n of variance σ² independent of s) and a template ∝ s,
    ``NCC = cov(s + n, s) / (std(s + n) std(s)) = sqrt(1 - σ² / var(image))``; σ from
    :func:`estimate_noise_sigma`. A registration score divided by this ceiling says how well two images agree
    whatever the noise of the fast scan. Returns a value in [0, 1] (0 for a constant or pure-noise image).
    """
    img = np.asarray(image, dtype=np.float64)
    variance = float(img.var())
    if not variance > 0:
        return 0.0
    sigma = estimate_noise_sigma(img)
    return float(np.sqrt(max(0.0, 1.0 - sigma * sigma / variance)))

"""Learning safely from a new reference: held-out split, validation and the promotion decision (pure).

A new physical pair (LR overlap region, HR grid S times finer) is split like the paper's protocol: the left
9 of 3x4 subimages are learned from, the right 3 are held out. A candidate model is promoted only if its mean
ΔPSNR over bicubic on the held-out subimages beats the serving model's, bicubic's (ΔPSNR 0) and the safe
baseline's (:mod:`.baseline`: the tuned blur of bicubic) by ``margin`` dB; otherwise the champion keeps serving
and the reason is recorded.

Models are passed as *predictors*: callables mapping an (h, w) LR array to its (S·h, S·w) reconstruction, so
paired libraries, networks and ONNX sessions are judged by one rule.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .evaluation import COLS, ROWS, split_subimages
from .image_ops import upsample_bicubic
from .metrics import fit_intensity, psnr, ssim

__all__ = ["Predictor", "HeldOutSplit", "split_for_validation", "held_out_delta_psnr", "held_out_scores",
           "summarise_scores", "PromotionDecision", "decide_promotion"]

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HeldOutSplit:
    """train: (LR (h, w), HR grid (S·h, S·w)) of the left 3/4; held_out: the right column's 3 subimage pairs."""

    train: tuple[np.ndarray, np.ndarray]
    held_out: tuple[tuple[np.ndarray, np.ndarray], ...]


def split_for_validation(lr_region: np.ndarray, hr_grid: np.ndarray, *, scale: int) -> HeldOutSplit:
    """Split a pair's overlap region (LR (h, w), HR grid (S·h, S·w)) into training area and held-out subimages."""
    h, w = lr_region.shape
    if hr_grid.shape != (h * scale, w * scale):
        raise ValueError(f"HR grid {hr_grid.shape} is not {scale}x the LR region {lr_region.shape}")
    ys, xs = split_subimages(((0, h), (0, w)))
    x_split = xs[COLS - 1]
    held = tuple((lr_region[ys[r]:ys[r + 1], x_split:], hr_grid[ys[r] * scale:ys[r + 1] * scale, x_split * scale:])
                 for r in range(ROWS))
    return HeldOutSplit((lr_region[:, :x_split], hr_grid[:, : x_split * scale]), held)


def held_out_delta_psnr(predict: Predictor | None, held_out: tuple[tuple[np.ndarray, np.ndarray], ...], *,
                        scale: int) -> float:
    """Mean PSNR gain (dB) of ``predict`` over bicubic on the held-out pairs, after a linear intensity fit.

    ``predict=None`` means bicubic itself and returns 0.0.
    """
    if predict is None:
        return 0.0
    deltas = []
    for lr_sub, hr_sub in held_out:
        base = psnr(hr_sub, fit_intensity(upsample_bicubic(lr_sub, scale), hr_sub))
        est = np.asarray(predict(lr_sub), dtype=np.float64)
        if est.shape != hr_sub.shape:
            raise ValueError(f"predictor returned {est.shape}, expected {hr_sub.shape}")
        if not np.all(np.isfinite(est)):
            return float("-inf")  # a model producing NaN/inf is never promoted
        deltas.append(psnr(hr_sub, fit_intensity(est, hr_sub)) - base)
    return float(np.mean(deltas))


def held_out_scores(predict: Predictor | None, held_out, *, scale: int) -> dict[str, list[float]]:
    """Per held-out subimage: ΔPSNR (dB) and ΔSSIM over bicubic after a linear intensity fit (the measure of
    :func:`held_out_delta_psnr`, plus SSIM); ``predict=None`` is bicubic (zeros). Non-finite output scores -inf.

    Returns ``{"d_psnr_db": [...], "d_ssim": [...]}``, one value per (LR, HR) pair of ``held_out``.
    """
    d_psnr: list[float] = []
    d_ssim: list[float] = []
    for lr_sub, hr_sub in held_out:
        if predict is None:
            d_psnr.append(0.0)
            d_ssim.append(0.0)
            continue
        base = fit_intensity(upsample_bicubic(lr_sub, scale), hr_sub)
        est = np.asarray(predict(lr_sub), dtype=np.float64)
        if est.shape != hr_sub.shape:
            raise ValueError(f"predictor returned {est.shape}, expected {hr_sub.shape}")
        if not np.all(np.isfinite(est)):
            d_psnr.append(-math.inf)
            d_ssim.append(-math.inf)
            continue
        est = fit_intensity(est, hr_sub)
        d_psnr.append(psnr(hr_sub, est) - psnr(hr_sub, base))
        d_ssim.append(ssim(hr_sub, est) - ssim(hr_sub, base))
    return {"d_psnr_db": d_psnr, "d_ssim": d_ssim}


def summarise_scores(per: dict[str, list[float]] | None) -> dict | None:
    """Means of :func:`held_out_scores` (``d_psnr_db``, ``d_ssim``; NaN when empty) with the per-subimage lists."""
    if per is None:
        return None
    return {"d_psnr_db": float(np.mean(per["d_psnr_db"])) if per["d_psnr_db"] else math.nan,
            "d_ssim": float(np.mean(per["d_ssim"])) if per["d_ssim"] else math.nan,
            "per_subimage_d_psnr_db": list(per["d_psnr_db"]), "per_subimage_d_ssim": list(per["d_ssim"])}


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, the held-out ΔPSNR (dB) of candidate and champion, and why."""

    promote: bool
    candidate_delta_db: float
    champion_delta_db: float
    reason: str


def decide_promotion(candidate_delta_db: float, champion_delta_db: float, *, margin_db: float = 0.0,
                     baseline_delta_db: float = 0.0) -> PromotionDecision:
    """Promote only if the candidate beats the champion, bicubic (0 dB) and the safe baseline
    (``baseline_delta_db``, its held-out ΔPSNR on the same subimages) by more than ``margin_db``."""
    bars = {"the serving model": champion_delta_db, "the safe baseline": baseline_delta_db, "bicubic": 0.0}
    loser = max(bars, key=lambda k: (bars[k], k == "bicubic"))  # the highest bar (bicubic on a tie at 0)
    bar = bars[loser] + margin_db
    if not np.isfinite(candidate_delta_db):
        reason = "candidate produced non-finite output on held-out reference area"
        return PromotionDecision(False, candidate_delta_db, champion_delta_db, reason)
    if candidate_delta_db > bar:
        beaten = "bicubic" if baseline_delta_db <= 0 else "the safe baseline and bicubic"
        reason = (f"held-out ΔPSNR {candidate_delta_db:+.2f} dB beats serving model ({champion_delta_db:+.2f} dB) "
                  f"and {beaten}")
        return PromotionDecision(True, candidate_delta_db, champion_delta_db, reason)
    reason = (f"held-out ΔPSNR {candidate_delta_db:+.2f} dB does not beat {loser} "
              f"({bars[loser]:+.2f} dB{f' + {margin_db:.2f} dB margin' if margin_db else ''})")
    return PromotionDecision(False, candidate_delta_db, champion_delta_db, reason)

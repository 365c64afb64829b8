"""Paired t-tests of a method against a baseline over matched samples (subimages), per category (pure).

Paper 002 judges a bring-your-own SR network against bicubic by the mean PSNR/SSIM difference per image
category with a Student t-test; here the samples are matched (the same subimage reconstructed by both), so
the test is the paired one: ``t = mean(d) / (sd(d) / sqrt(n))`` with ``d = a - b`` and ``n - 1`` degrees of
freedom, two-sided ``p = 2 · P(T > |t|)`` (``scipy.stats.t``), the same as ``scipy.stats.ttest_rel``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PairedTTest", "paired_ttest", "ttests_by_category"]


@dataclass(frozen=True)
class PairedTTest:
    """n: pairs; mean_diff: mean of a - b; sd_diff: its sample standard deviation (ddof 1); t, df, p: the
    statistic, degrees of freedom and two-sided p-value (NaN when n < 2, or when every difference is 0)."""

    n: int
    mean_diff: float
    sd_diff: float
    t: float
    df: int
    p: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def significant(self) -> bool:
        """p < 0.05 (two-sided)."""
        return bool(self.p < 0.05)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> PairedTTest:
    """Paired two-sided t-test of ``a`` against ``b`` (same length, matched samples).

    Non-finite pairs are dropped. With identical non-zero differences (sd 0) t is ±inf and p is 0, as in
    SciPy; with all differences 0, t and p are NaN.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return PairedTTest(n, mean, math.nan, math.nan, max(n - 1, 0), math.nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    df = n - 1
    if sd == 0.0:
        if mean == 0.0:
            return PairedTTest(n, 0.0, 0.0, math.nan, df, math.nan)
        return PairedTTest(n, mean, 0.0, math.copysign(math.inf, mean), df, 0.0)
    t = mean / (sd / math.sqrt(n))
    from scipy import stats as _st  # here: scipy.stats costs ~0.4 s to import, a cold `enhance` never needs it

    p = float(2.0 * _st.t.sf(abs(t), df))
    return PairedTTest(n, mean, sd, float(t), df, min(p, 1.0))


def ttests_by_category(a: Sequence[float], b: Sequence[float], categories: Sequence[str], *,
                       include_all: bool = True) -> Mapping[str, PairedTTest]:
    """``{category: paired_ttest(a[cat], b[cat])}`` in first-seen order, plus ``"all"`` (every sample)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    labels = list(categories)
    if not (len(labels) == x.size == y.size):
        raise ValueError(f"need one category per sample: {len(labels)} categories, {x.size} and {y.size} samples")
    out: dict[str, PairedTTest] = {}
    for cat in dict.fromkeys(labels):
        sel = np.array([c == cat for c in labels])
        out[cat] = paired_ttest(x[sel], y[sel])
    if include_all:
        out["all"] = paired_ttest(x, y)
    return out

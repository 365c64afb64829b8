"""Paired t-tests: the same statistic and p-value as scipy.stats.ttest_rel, edge cases, per-category split."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from refscope.models.stats import paired_ttest, ttests_by_category


@pytest.mark.parametrize("n", [2, 3, 12, 40])
def test_matches_scipy_ttest_rel(n: int, rng: np.random.Generator) -> None:
    a = rng.normal(30.0, 2.0, n)
    b = a - rng.normal(0.2, 0.5, n)
    ours = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert ours.n == n and ours.df == n - 1
    assert ours.t == pytest.approx(float(ref.statistic), rel=1e-12)
    assert ours.p == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert ours.mean_diff == pytest.approx(float(np.mean(a - b)))


def test_edge_cases() -> None:
    assert math.isnan(paired_ttest([1.0], [0.0]).p)  # one pair: no variance estimate
    zero = paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(zero.t) and math.isnan(zero.p)
    same = paired_ttest([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # identical non-zero differences: scipy gives inf, 0
    assert same.t == math.inf and same.p == 0.0
    dropped = paired_ttest([1.0, np.nan, 3.0, 4.0], [0.0, 1.0, 2.5, 3.0])
    assert dropped.n == 3
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ttest([1.0, 2.0], [1.0])


def test_by_category(rng: np.random.Generator) -> None:
    a, b = rng.normal(size=10), rng.normal(size=10)
    cats = ["fg"] * 4 + ["bg"] * 6
    out = ttests_by_category(a, b, cats)
    assert list(out) == ["fg", "bg", "all"]
    assert out["fg"].n == 4 and out["bg"].n == 6 and out["all"].n == 10
    assert out["bg"].p == pytest.approx(float(stats.ttest_rel(a[4:], b[4:]).pvalue))
    with pytest.raises(ValueError, match="one category per sample"):
        ttests_by_category(a, b, cats[:-1])

"""fit_network (LR-only bootstrap + fine-tune within a budget), predictors on the 3x4 protocol, standard evaluation."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.evaluation import COLS, split_subimages
from refscope.models.image_ops import upsample_bicubic
from refscope.models.net_fit import (NetFit, PooledSource, fit_network, lr_only_config, net_predictor,
                                     score_predictors, standard_evaluation, subimage_categories)
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.synthetic import make_pair
from refscope.models.training import make_lr_only_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair():
    p = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 128), factor=2.0)
    geometry = register_reference(p.lr, p.hr, factor=2.0, config=FitConfig(scale=2))
    box, hr_grid = training_grids(p.lr, p.hr, geometry, scale=2)
    (y0, y1), (x0, x1) = box
    return p.lr, box, hr_grid, (p.lr[y0:y1, x0:x1], hr_grid)


def test_bootstrap_then_fine_tune(pair) -> None:
    lr, _, _, region = pair
    fit = fit_network([lr], [region], scale=2, budget_s=1.5, seed=1)
    assert isinstance(fit, NetFit) and fit.network == "fullres" and fit.scale == 2  # "auto" at x2
    assert [h["strategy"] for h in fit.history] == ["lr-only", "real-pairs"]
    assert all(h["steps"] > 0 for h in fit.history)
    assert sum(h["seconds"] for h in fit.history) < 4.0
    sr = net_predictor(fit)(lr[:40, :50])
    assert sr.shape == (80, 100) and np.all(np.isfinite(sr))
    assert np.isfinite(np.mean(sr)) and abs(np.mean(sr) - np.mean(lr[:40, :50])) < 0.2 * np.ptp(lr)


def test_strategies_and_warm_start(pair) -> None:
    lr, _, _, region = pair
    boot = fit_network([lr], [], scale=2, budget_s=0.5, strategy="lr-only")
    assert [h["strategy"] for h in boot.history] == ["lr-only"]
    for strategy in ("noise-robust", "synthetic"):
        tuned = fit_network([lr], [region], scale=2, budget_s=0.5, strategy=strategy, init=boot,
                            bootstrap_fraction=0.0)
        assert [h["strategy"] for h in tuned.history] == [strategy]
        assert tuned.normalisation == boot.normalisation  # warm start keeps the units
    with pytest.raises(ValueError, match="needs at least one registered"):
        fit_network([lr], [], scale=2, budget_s=0.5, strategy="real-pairs")
    with pytest.raises(ValueError, match="cannot warm-start"):
        fit_network([lr], [region], scale=3, budget_s=0.5, init=boot)
    with pytest.raises(ValueError, match="unknown strategy"):
        fit_network([lr], [region], scale=2, budget_s=0.5, strategy="magic")


def test_untrained_network_scores_like_bicubic(pair) -> None:
    lr, box, hr_grid, _ = pair
    untrained = fit_network([lr], [], scale=2, budget_s=0.01, strategy="lr-only", lr=1e-12, bootstrap_lr=1e-12)
    report = score_predictors(lr, hr_grid, box, scale=2,
                              predictors={"bic": lambda x: upsample_bicubic(x, 2), "net": net_predictor(untrained)},
                              in_sample=False)
    assert len(report.results) == 2 * 3 and not any(r.in_sample for r in report.results)
    assert all(abs(r.delta.psnr) < 1e-6 for r in report.results if r.method == "bic")
    assert all(abs(r.delta.psnr) < 0.05 for r in report.results if r.method == "net")  # zero-initialised tail
    every = score_predictors(lr, hr_grid, box, scale=2, predictors={"bic": lambda x: upsample_bicubic(x, 2)},
                             all_out_of_sample=True)
    assert len(every.results) == 12 and every.summary()[0]["sample"] == "out"
    cats = subimage_categories(hr_grid, box, 2)
    assert len(cats) == 12 and set(cats.values()) <= {"foreground", "background"}


def test_standard_evaluation(pair) -> None:
    _, box, hr_grid, _ = pair
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    refs = [hr_grid[(ys[r] - y0) * 2:(ys[r + 1] - y0) * 2, (xs[COLS - 1] - x0) * 2:] for r in range(3)]
    rows = standard_evaluation(refs, scale=2, predictors={"same": lambda x: upsample_bicubic(x, 2)},
                               zooms=[0.75, 1.0])
    assert {(r.method, r.zoom) for r in rows} == {(m, z) for m in ("bicubic", "same") for z in (0.75, 1.0)}
    assert all(abs(r.d_psnr) < 1e-9 and r.n == 3 for r in rows)


def test_pooled_source_reuses_pairs(pair) -> None:
    lr = pair[0]
    base = make_lr_only_dataset([lr], 2, 16, config=lr_only_config(2))
    pooled = PooledSource(base, size=8, fresh=0.0)
    x, y = pooled.sample(24, np.random.default_rng(0))
    assert x.shape == (24, 1, 16, 16) and y.shape == (24, 1, 32, 32) and len(pooled.pool) == 8
    assert pooled.kind == "lr-only"


def test_fit_network_hands_its_augmentation_to_the_pairs(pair, monkeypatch) -> None:
    from refscope.models.training import PatchSource

    seen: list[tuple[str, object]] = []
    original = PatchSource.sample

    def spy(self, batch, rng, augment=True):
        seen.append((self.kind, augment))
        return original(self, batch, rng, augment)

    monkeypatch.setattr(PatchSource, "sample", spy)
    lr, _, _, region = pair
    fit_network([lr], [region], scale=2, budget_s=0.4, bootstrap_fraction=0.0, augment="flips")
    assert seen and {a for _, a in seen} == {"flips"}
    seen.clear()
    fit_network([lr], [region], scale=2, budget_s=0.4, bootstrap_fraction=0.0)
    assert seen and {a for _, a in seen} == {"dihedral"}  # the default: every transform of the grid


def test_the_largest_self_ensemble_follows_what_the_last_phase_was_trained_on(pair) -> None:
    """A network fitted on the scan's own orientation serves in 1 pass, on flips in 4, on every transform in 8;
    a blend in the fewest of its members'; a fixed filter and a history from before ``augment`` was recorded in
    any; the exported manifest says the same."""
    from dataclasses import replace

    from refscope.models.net_blend import baseline_fit, blend_fits
    from refscope.models.net_fit import export_netfit, largest_ensemble
    from refscope.models.training import Normalisation

    lr, _, _, region = pair
    fits = {mode: fit_network([lr], [region], scale=2, budget_s=0.3, bootstrap_fraction=0.0, augment=mode)
            for mode in ("none", "flips", "dihedral")}
    assert [fits[m].history[-1]["augment"] for m in fits] == ["none", "flips", "dihedral"]
    assert [largest_ensemble(fits[m]) for m in fits] == [1, 4, 8]
    base = baseline_fit(2, 1.0, Normalisation(0.0, 1.0))
    assert largest_ensemble(base) == 8
    assert largest_ensemble(blend_fits([fits["dihedral"], fits["none"]], (0.5, 0.5))) == 1
    assert largest_ensemble(blend_fits([fits["flips"], base], (0.75, 0.25))) == 4
    old = replace(fits["none"], history=[{k: v for k, v in h.items() if k != "augment"} for h in fits["none"].history])
    assert largest_ensemble(old) == 8
    _, manifest = export_netfit(fits["none"])
    assert manifest.max_ensemble == 1

"""Tests of refscope.models.evaluation: the paper's 3x4 subimage protocol (Sec. IV-A), recomputed by hand."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from refscope.models import synthetic as syn
from refscope.models.evaluation import COLS, ROWS, evaluate_pair, split_subimages
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig
from refscope.models.metrics import score_all
from refscope.models.pipeline import FitConfig, enhance, fit_library, training_grids
from refscope.models.registration import PairGeometry

CONFIG = FitConfig(scale=2, library=LibraryConfig(patch_size=9, n_categories=6, oversample=5, size=600, seed=0))
METHODS3 = ("paired", "paired-faithful", "original")


@pytest.fixture(scope="module")
def pair():
    return syn.make_pair(rng=np.random.default_rng(4), lr_shape=(96, 128), factor=2.0, hr_fraction=0.6, noise="low")


@pytest.fixture(scope="module")
def report(pair):
    return evaluate_pair(pair.lr, pair.hr, factor=2.0, scale=2, config=CONFIG)


def _subimage(pair, geometry, row, col):
    """(LR subimage, reference on the 2x grid) of cell (row, col), cut by hand from the overlap."""
    box, hr_grid = training_grids(pair.lr, pair.hr, geometry, scale=2)
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    sub_lr = pair.lr[ys[row]:ys[row + 1], xs[col]:xs[col + 1]]
    ref = hr_grid[2 * (ys[row] - y0):2 * (ys[row + 1] - y0), 2 * (xs[col] - x0):2 * (xs[col + 1] - x0)]
    return sub_lr, ref


# ------------------------------------------------------------------------------------------- split_subimages
@pytest.mark.parametrize("box", [((3, 50), (7, 90)), ((0, 472), (0, 640)), ((10, 22), (5, 17))])
def test_split_subimages_gives_3x4_edges_covering_the_box(box):
    ys, xs = split_subimages(box)
    assert len(ys) == ROWS + 1 == 4 and len(xs) == COLS + 1 == 5
    assert (ys[0], ys[-1]) == box[0] and (xs[0], xs[-1]) == box[1]
    assert np.all(np.diff(ys) > 0) and np.all(np.diff(xs) > 0)
    # near-equal parts: sizes differ by at most one pixel
    assert np.ptp(np.diff(ys)) <= 1 and np.ptp(np.diff(xs)) <= 1


# --------------------------------------------------------------------------------------------- evaluate_pair
def test_evaluate_pair_returns_9_in_and_3_out_of_sample_per_method(pair, report):
    assert report.scale == 2 and report.factor == 2.0
    assert 0 < report.library_size <= 600
    assert np.max(np.abs(np.subtract(report.geometry.offset_yx, pair.offset_yx))) < 0.5
    for method in METHODS3:
        rows = [r for r in report.results if r.method == method]
        assert len(rows) == 12
        assert sorted((r.row, r.col) for r in rows) == [(i, j) for i in range(3) for j in range(4)]
        assert sum(r.in_sample for r in rows) == 9
        assert all(r.in_sample == (r.col < 3) for r in rows)  # the right column is out-of-sample
    assert {r.method for r in report.results} == set(METHODS3)


def test_delta_is_score_minus_bicubic_recomputed_by_hand(pair, report):
    for row, col in ((0, 0), (2, 3)):  # one in-sample, one out-of-sample subimage
        sub_lr, ref = _subimage(pair, report.geometry, row, col)
        base = score_all(ref, upsample_bicubic(sub_lr, 2))
        for r in (r for r in report.results if (r.row, r.col) == (row, col)):
            for metric, value in asdict(r.delta).items():
                expected = getattr(r.scores, metric) - getattr(base, metric)
                if metric == "frc_resolution_px":  # fewer px = finer = better: positive delta is an improvement
                    expected = -expected
                np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12, err_msg=metric)


def test_scores_come_from_a_library_of_the_left_nine_subimages(pair, report):
    box, hr_grid = training_grids(pair.lr, pair.hr, report.geometry, scale=2)
    (y0, y1), (x0, _) = box
    ys, xs = split_subimages(box)
    train = (pair.lr[y0:y1, x0:xs[3]], hr_grid[:, : 2 * (xs[3] - x0)])
    model = fit_library([train], config=CONFIG)
    assert len(model.library) == report.library_size
    assert model.noise_sigma == pytest.approx(report.noise_sigma)
    sub_lr, ref = _subimage(pair, report.geometry, 1, 3)
    for method in METHODS3:
        (result,) = [r for r in report.results if r.method == method and (r.row, r.col) == (1, 3)]
        expected = score_all(ref, enhance(sub_lr, model, method=method))
        for metric, value in asdict(result.scores).items():
            np.testing.assert_allclose(value, getattr(expected, metric), rtol=1e-9, err_msg=f"{method} {metric}")


def test_summary_and_mean_delta(report):
    rows = report.summary()
    assert [(r["method"], r["sample"]) for r in rows] == [(m, s) for m in METHODS3 for s in ("in", "out")]
    for row in rows:
        assert row["n"] == (9 if row["sample"] == "in" else 3)
        for metric in ("psnr", "ssim", "ms_ssim", "fg_psnr", "bg_psnr", "edge_sim", "frc_mean", "frc_resolution_px"):
            assert "d_" + metric in row and metric in row
        sel = [r for r in report.results if r.method == row["method"] and r.in_sample == (row["sample"] == "in")]
        assert row["d_psnr"] == pytest.approx(np.mean([r.delta.psnr for r in sel]))
        assert row["psnr"] == pytest.approx(np.mean([r.scores.psnr for r in sel]))
        assert report.mean_delta(row["method"], "psnr", in_sample=row["sample"] == "in") == pytest.approx(row["d_psnr"])
    assert np.isnan(report.mean_delta("bicubic"))


def test_bicubic_against_itself_has_zero_deltas_and_out_of_sample_only(pair):
    geometry = PairGeometry(pair.offset_yx, pair.factor_yx, pair.rotation_deg)  # skips registration
    rep = evaluate_pair(pair.lr, pair.hr, factor=2.0, scale=2, methods=("bicubic",), in_sample=False,
                        config=CONFIG, geometry=geometry)
    assert rep.geometry == geometry
    assert len(rep.results) == 3 and all(not r.in_sample and r.col == 3 for r in rep.results)
    for r in rep.results:
        assert all(v == 0.0 or np.isnan(v) for v in asdict(r.delta).values())


def test_unknown_method_raises_before_any_work(pair):
    with pytest.raises(ValueError, match="lanczos"):
        evaluate_pair(pair.lr, pair.hr, factor=2.0, scale=2, methods=("paired", "lanczos"))

"""``refscope evaluate --plot`` (issue 15, item 7): a figure people read -- ΔPSNR and ΔSSIM per method and per
subimage with error bars, the bicubic baseline, and an image panel (LR, bicubic, each method, HR truth) on one crop;
written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refscope.daemon.cli import main
from refscope.daemon.offline.plot import plot_evaluation
from refscope.daemon.images import write_tiff
from refscope.models.evaluation import PANEL_CELL, evaluate_pair
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def pair():
    return make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0)


def test_evaluate_plot_writes_a_readable_png_with_every_panel(pair, tmp_path: Path, capsys) -> None:
    write_tiff(tmp_path / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(tmp_path / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    out = tmp_path / "plots" / "eval.png"
    out.parent.mkdir()
    assert main(["evaluate", str(tmp_path / "lr.tif"), str(tmp_path / "hr.tif"), "--methods", "paired,original",
                 "--plot", str(out), "-q"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["eval.png"]  # atomic: no temporary left beside it
    with Image.open(out) as image:
        image.load()
        assert image.format == "PNG" and image.width >= 900 and image.height >= 600
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # drawn, not blank


def test_the_figure_has_a_bar_per_method_and_baseline_with_error_bars_and_the_image_row(pair) -> None:
    report = evaluate_pair(pair.lr, pair.hr, factor=2.0, scale=2, methods=("paired", "original"))
    assert list(report.panel) == ["LR", "bicubic", "paired", "original", "HR"]
    assert report.panel["LR"].shape == tuple(s // 2 for s in report.panel["HR"].shape)
    figure = plot_evaluation(report, {"lr": "/x/lr.tif", "hr": "/x/hr.tif"})
    psnr, ssim, *images = figure.axes
    assert psnr.get_ylabel() == "ΔPSNR vs bicubic (dB)" and ssim.get_ylabel() == "ΔSSIM vs bicubic"
    labels = [t.get_text() for t in psnr.get_xticklabels()]
    assert labels == ["bicubic\n(baseline)", "paired", "original"]
    # one error bar per (method, in/out-of-sample) drawn: 2 methods x 2 + the baseline's 2
    assert len([c for c in psnr.containers if getattr(c, "errorbar", None) is not None]) == 6
    # every subimage is a dot: 12 per method (9 in-sample + 3 out-of-sample)
    from matplotlib.collections import PathCollection

    assert sum(len(c.get_offsets()) for c in psnr.collections if isinstance(c, PathCollection)) == 2 * 12
    titles = [ax.get_title() for ax in images]
    assert titles[0] == f"LR (subimage r{PANEL_CELL[0]} c{PANEL_CELL[1]})" and titles[1] == "bicubic"
    assert titles[2].startswith("paired\n") and titles[2].endswith(" dB") and titles[-1] == "HR truth"
    assert "hr.tif in lr.tif" in figure._suptitle.get_text()  # noqa: SLF001


def test_a_plot_path_in_a_missing_folder_is_refused_before_the_work(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "lr.tif", "hr.tif", "--plot", str(tmp_path / "no" / "x.png")]) == 2
    assert "--plot" in capsys.readouterr().err

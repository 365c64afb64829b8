"""The figure of ``refscope evaluate --plot``: what each method gains over bicubic, subimage by subimage, and what
it looks like.

Top row: ΔPSNR (dB) and ΔSSIM against bicubic for every method of the report and the bicubic baseline itself
(0 by definition); per method a bar for the mean over the out-of-sample subimages (dark) and over the in-sample
ones (light), an error bar of ± one standard deviation over those subimages, and every subimage as a dot. Bottom
row: one out-of-sample subimage (:data:`~refscope.models.evaluation.PANEL_CELL`) as LR (nearest neighbour), bicubic,
each method and the HR truth, on the same crop and the same grey scale (the truth's 0.5-99.5 % range).

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display, no global state) and
written atomically as PNG.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.evaluation import PANEL_CELL, EvaluationReport

from ..atomic import atomic_write_bytes

__all__ = ["plot_evaluation", "write_evaluation_plot", "METRICS"]

METRICS = (("psnr", "ΔPSNR vs bicubic (dB)"), ("ssim", "ΔSSIM vs bicubic"))
"""The metrics of the top row: (report field, axis label)."""
BASELINE = "bicubic"
_OUT, _IN = "#2a5aa8", "#a9c0e6"


def _values(report: EvaluationReport, method: str, metric: str, in_sample: bool) -> np.ndarray:
    found = [getattr(r.delta, metric) for r in report.results if r.method == method and r.in_sample == in_sample]
    return np.array([v for v in found if math.isfinite(v)], dtype=np.float64)


def plot_evaluation(report: EvaluationReport, settings: dict[str, Any] | None = None) -> Any:
    """The evaluation figure of ``report`` (see the module docstring); returns the matplotlib ``Figure``.

    ``settings`` (as ``refscope evaluate`` records them: ``lr``, ``hr`` file names) titles the figure. The axes
    are, in order: one per metric of :data:`METRICS`, then one per image of ``report.panel`` (none when the report
    kept no images).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = [m for m in dict.fromkeys(r.method for r in report.results) if m != BASELINE]
    names = [BASELINE] + methods
    panel = list(report.panel.items())
    columns = max(2, len(panel))
    figure = Figure(figsize=(max(9.0, 2.3 * columns), 7.6 if panel else 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2 if panel else 1, 2 * columns, height_ratios=[1.1, 1.0] if panel else None)
    half = columns
    for index, (metric, label) in enumerate(METRICS):
        ax = figure.add_subplot(grid[0, index * half:(index + 1) * half])
        _metric_axes(ax, report, names, metric, label)
    if panel:
        _image_row(figure, grid, panel, report)
    settings = settings or {}
    pair = (f"{Path(str(settings['hr'])).name} in {Path(str(settings['lr'])).name}, "
            if settings.get("lr") and settings.get("hr") else "")
    n_out = len({(r.row, r.col) for r in report.results if not r.in_sample})
    n_in = len({(r.row, r.col) for r in report.results if r.in_sample})
    figure.suptitle(f"{pair}x{report.scale} (factor {report.factor:.3g}): {n_out} out-of-sample, {n_in} in-sample "
                    "subimages; bars: mean, error bars: ± 1 SD, dots: subimages")
    return figure


def _metric_axes(ax: Any, report: EvaluationReport, names: list[str], metric: str, label: str) -> None:
    width = 0.38
    rng = np.random.default_rng(0)  # jitter of the dots, the same at every call
    for i, name in enumerate(names):
        for offset, in_sample, color in ((-width / 2, False, _OUT), (width / 2, True, _IN)):
            values = np.zeros(1) if name == BASELINE else _values(report, name, metric, in_sample)
            if values.size == 0:
                continue
            x = i + offset
            spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
            ax.bar(x, float(values.mean()), width=width * 0.92, color=color, edgecolor="black", linewidth=0.5,
                   yerr=spread, capsize=3, error_kw={"linewidth": 0.9})
            if name != BASELINE:
                ax.scatter(x + rng.uniform(-width * 0.25, width * 0.25, values.size), values, s=9, color="black",
                           zorder=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [f"{n}\n(baseline)" if n == BASELINE else n for n in names], fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(label.split(" vs ")[0] + " per method")
    ax.bar(np.nan, np.nan, color=_OUT, label="out-of-sample")  # legend entries
    ax.bar(np.nan, np.nan, color=_IN, label="in-sample")
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", linewidth=0.3)


def _image_row(figure: Any, grid: Any, panel: list[tuple[str, np.ndarray]], report: EvaluationReport) -> None:
    truth = dict(panel).get("HR")
    reference = truth if truth is not None else panel[-1][1]
    low, high = np.percentile(reference, [0.5, 99.5])
    if not high > low:
        low, high = float(reference.min()), float(reference.max()) + 1e-12
    height, width = reference.shape
    row, col = PANEL_CELL
    for index, (name, image) in enumerate(panel):
        ax = figure.add_subplot(grid[1, 2 * index:2 * index + 2])
        # every image spans the same crop: the LR pixels are drawn S times larger (nearest neighbour)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest", extent=(0, width, height, 0))
        ax.set_xticks([])
        ax.set_yticks([])
        if name == "LR":
            title = f"LR (subimage r{row} c{col})"
        elif name == "HR":
            title = "HR truth"
        else:
            scores = [r.delta.psnr for r in report.results if r.method == name and (r.row, r.col) == PANEL_CELL]
            title = name if name == BASELINE or not scores else f"{name}\n{scores[0]:+.2f} dB"
        ax.set_title(title, fontsize=9)


def write_evaluation_plot(path: str | Path, report: EvaluationReport, settings: dict[str, Any] | None = None, *,
                          dpi: int = 110) -> Any:
    """Draw :func:`plot_evaluation` and write it to ``path`` as PNG, atomically; returns the figure."""
    figure = plot_evaluation(report, settings)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return figure

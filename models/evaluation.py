"""The paper's 3x4 subimage protocol for scoring super-resolution on one real LR/HR pair (pure, no I/O).

The overlap of the pair is split into 3 rows x 4 columns of subimages on the LR grid. A library is fitted on
the left 9 (training area) and every method reconstructs each subimage from its LR pixels alone; the 9 are
scored *in-sample*, the right 3 *out-of-sample* (the honest number: what the method does where no reference
was taken). Scores are taken against the HR reference resampled onto the S-times LR grid, after a per-image
linear intensity fit, and reported as differences to bicubic interpolation.

References
----------
Y. Qian et al., IEEE TIP (2020), Sec. IV-A (Fig. 6) and Tables I-IV.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import QualityScores, score_all
from .pipeline import METHODS, FitConfig, enhance, fit_library, register_reference, training_grids
from .registration import PairGeometry

__all__ = ["SubimageScore", "EvaluationReport", "split_subimages", "training_area", "evaluate_pair", "PANEL_CELL"]

ROWS, COLS = 3, 4
PANEL_CELL = (ROWS // 2, COLS - 1)
"""(row, col) of the subimage whose images an :class:`EvaluationReport` keeps for a figure: the middle one of the
out-of-sample column."""


@dataclass(frozen=True)
class SubimageScore:
    """Scores of one method on one subimage; ``delta`` holds the differences to bicubic."""

    method: str
    row: int
    col: int
    in_sample: bool
    scores: QualityScores
    delta: QualityScores


@dataclass
class EvaluationReport:
    """All subimage scores of one pair plus the geometry and settings used."""

    scale: int
    factor: float
    geometry: PairGeometry
    lr_box: tuple[tuple[int, int], tuple[int, int]]
    library_size: int
    noise_sigma: float
    results: list[SubimageScore] = field(default_factory=list)
    panel: dict[str, np.ndarray] = field(default_factory=dict)
    """The images of subimage :data:`PANEL_CELL`, float64 in LR units: ``"LR"`` (h, w), then ``"bicubic"``, each
    method and ``"HR"`` (the truth on the S-times grid), all (S·h, S·w), in that order."""

    def mean_delta(self, method: str, metric: str = "psnr", *, in_sample: bool = False) -> float:
        """Mean difference to bicubic of ``metric`` over the in- or out-of-sample subimages."""
        values = [getattr(r.delta, metric) for r in self.results if r.method == method and r.in_sample == in_sample]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> list[dict]:
        """One row per (method, in/out-of-sample) with the mean delta of every metric."""
        rows = []
        for method in dict.fromkeys(r.method for r in self.results):
            for in_sample in (True, False):
                sel = [r for r in self.results if r.method == method and r.in_sample == in_sample]
                if not sel:
                    continue
                row = {"method": method, "sample": "in" if in_sample else "out", "n": len(sel)}
                for metric in asdict(sel[0].delta):
                    row["d_" + metric] = float(np.mean([getattr(r.delta, metric) for r in sel]))
                    row[metric] = float(np.mean([getattr(r.scores, metric) for r in sel]))
                rows.append(row)
        return rows


def split_subimages(box: tuple[tuple[int, int], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column edges (LR px, absolute) of the 3x4 split of an LR box."""
    (y0, y1), (x0, x1) = box
    return np.linspace(y0, y1, ROWS + 1).round().astype(int), np.linspace(x0, x1, COLS + 1).round().astype(int)


def training_area(lr: np.ndarray, hr_grid: np.ndarray, box: tuple[tuple[int, int], tuple[int, int]], *,
                  scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's training area, the left 9 of the 3x4 subimages of LR ``box``: (LR region, its HR grid).

    ``lr`` is the whole LR frame, ``hr_grid`` the HR reference on the S-times finer grid of ``box``
    (:func:`~refscope.models.pipeline.training_grids`); edges as :func:`split_subimages` (absolute LR px).
    """
    (_, _), (x0, _) = box
    ys, xs = split_subimages(box)
    return lr[ys[0]:ys[-1], xs[0]:xs[COLS - 1]], hr_grid[:, : (xs[COLS - 1] - x0) * scale]


def _diff(a: QualityScores, b: QualityScores) -> QualityScores:
    values = {k: getattr(a, k) - getattr(b, k) for k in asdict(a)}
    # a coarser FRC resolution (more px) is worse: keep the sign convention "positive = better"
    values["frc_resolution_px"] = b.frc_resolution_px - a.frc_resolution_px
    return QualityScores(**values)


def evaluate_pair(lr: np.ndarray, hr: np.ndarray, *, factor: float, scale: int,
                  methods: tuple[str, ...] = ("paired", "paired-faithful", "original"), in_sample: bool = True,
                  config: FitConfig | None = None, geometry: PairGeometry | None = None) -> EvaluationReport:
    """Run the 3x4 protocol on one LR frame (H, W) and HR reference; ``factor`` = LR px size / HR px size.

    ``geometry`` skips the global registration (e.g. a known one). Bicubic is always the baseline.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    config = config or FitConfig(scale=scale)
    lr = np.asarray(lr, dtype=np.float64)
    hr = np.asarray(hr, dtype=np.float64)
    if geometry is None:
        geometry = register_reference(lr, hr, factor=factor, config=config)
    box, hr_grid = training_grids(lr, hr, geometry, scale=scale)
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    train_lr, train_hr = training_area(lr, hr_grid, box, scale=scale)
    model = fit_library([(train_lr, train_hr)], config=config, geometries=[geometry])
    report = EvaluationReport(scale, float(factor), geometry, box, len(model.library), model.noise_sigma)
    for row in range(ROWS):
        for col in range(COLS):
            is_train = col < COLS - 1
            if is_train and not in_sample:
                continue
            sub_lr = lr[ys[row]:ys[row + 1], xs[col]:xs[col + 1]]
            ref = hr_grid[(ys[row] - y0) * scale:(ys[row + 1] - y0) * scale,
                          (xs[col] - x0) * scale:(xs[col + 1] - x0) * scale]
            bicubic = enhance(sub_lr, model, method="bicubic")
            base = score_all(ref, bicubic)
            keep = (row, col) == PANEL_CELL
            if keep:
                report.panel.update(LR=sub_lr.copy(), bicubic=bicubic)
            for method in methods:
                estimate = enhance(sub_lr, model, method=method)
                scores = score_all(ref, estimate)
                report.results.append(SubimageScore(method, row, col, is_train, scores, _diff(scores, base)))
                if keep:
                    report.panel[method] = estimate
            if keep:
                report.panel["HR"] = np.array(ref)
    return report

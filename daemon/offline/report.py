"""Evaluation reports of ``refscope evaluate``: a text table, JSON, CSV and a PNG bar chart (atomic writes)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict

import numpy as np

from refscope.models.evaluation import EvaluationReport

from ..atomic import atomic_write_bytes, atomic_write_json

__all__ = ["format_table", "write_json", "write_csv", "write_plot"]

_COLUMNS = (("d_psnr", "dPSNR dB"), ("d_ssim", "dSSIM"), ("d_ms_ssim", "dMS-SSIM"), ("d_edge_sim", "dEdge"),
            ("d_frc_mean", "dFRC"), ("d_fg_psnr", "fg dPSNR"), ("d_bg_psnr", "bg dPSNR"))


def _baseline_rows(report: EvaluationReport) -> list[dict]:
    """Bicubic rows (absolute PSNR, zero differences) recovered from the first method's scores - deltas."""
    rows = []
    first = report.results[0].method if report.results else None
    for sample in (True, False):
        sel = [r for r in report.results if r.method == first and r.in_sample == sample]
        if sel:
            psnr = float(np.mean([r.scores.psnr - r.delta.psnr for r in sel]))
            rows.append({"method": "bicubic", "sample": "in" if sample else "out", "n": len(sel), "psnr": psnr,
                         **{key: 0.0 for key, _ in _COLUMNS}})
    return rows


def format_table(report: EvaluationReport) -> str:
    """Plain-text table: one row per (method, in/out-of-sample), bicubic first; d* = method - bicubic."""
    rows = _baseline_rows(report) + [r for r in report.summary() if r["method"] != "bicubic"]
    rows.sort(key=lambda r: (r["sample"] != "in", r["method"] != "bicubic"))
    head = f"{'method':<16}{'sample':>7}{'n':>3}{'PSNR dB':>9}" + "".join(f"{t:>10}" for _, t in _COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[k]:>10.3f}" if math.isfinite(r[k]) else f"{'n/a':>10}" for k, _ in _COLUMNS)
        lines.append(f"{r['method']:<16}{r['sample']:>7}{r['n']:>3}{r['psnr']:>9.2f}{cells}")
    return "\n".join(lines)


def _finite(value):
    """JSON-safe copy: NaN/inf -> None (strict JSON has neither), tuples -> lists."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str, report: EvaluationReport, settings: dict) -> None:
    """Every subimage score, the summary (bicubic rows included), geometry and settings; NaN stored as null."""
    document = {"settings": settings, "scale": report.scale, "factor": report.factor,
                "geometry": asdict(report.geometry), "lr_box": report.lr_box, "library_size": report.library_size,
                "noise_sigma": report.noise_sigma,
                "summary": _baseline_rows(report) + [r for r in report.summary() if r["method"] != "bicubic"],
                "results": [asdict(r) for r in report.results]}
    atomic_write_json(path, _finite(document))


def write_csv(path: str, report: EvaluationReport, settings: dict) -> None:
    """The summary rows (mean score and mean difference to bicubic of every metric) as CSV."""
    rows = report.summary()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["method"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def write_plot(path: str, report: EvaluationReport, settings: dict) -> None:
    """PNG figure of ``report``: per-subimage ΔPSNR/ΔSSIM with error bars for every method and the bicubic
    baseline, and an image panel (LR, bicubic, each method, HR truth on one crop); :mod:`refscope.daemon.offline.plot`."""
    from .plot import write_evaluation_plot  # matplotlib: only when a figure is drawn

    write_evaluation_plot(path, report, settings)

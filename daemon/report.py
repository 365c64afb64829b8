"""Evaluation reports of ``refscope evaluate``: a text table, JSON, CSV and a PNG bar chart (atomic writes)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict

import numpy as np

from refscope.models.evaluation import EvaluationReport

from .atomic import atomic_write_bytes, atomic_write_json

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
    """PNG bar chart of the mean PSNR gain over bicubic per method (dark: out-of-sample, light: in-sample)."""
    from PIL import Image, ImageDraw, ImageFont  # Pillow comes with scikit-image

    methods = list(dict.fromkeys(r.method for r in report.results))
    bars = [(m, s, report.mean_delta(m, "psnr", in_sample=s)) for m in methods for s in (False, True)]
    bars = [b for b in bars if math.isfinite(b[2])]
    width, height, top, bottom, left = 200 + 150 * len(methods), 420, 50, 60, 60
    span = max([abs(v) for *_, v in bars] + [0.05]) * 1.25
    to_y = lambda v: top + (span - v) / (2 * span) * (height - top - bottom)  # noqa: E731
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 12), f"PSNR gain over bicubic (dB), x{report.scale}; dark = out-of-sample", fill="black",
              font=font)
    for i, method in enumerate(methods):
        x0 = left + 40 + 150 * i
        for j, sample in enumerate((False, True)):
            value = next((v for m, s, v in bars if m == method and s == sample), None)
            if value is None:
                continue
            color = ((40, 90, 170) if value >= 0 else (190, 60, 50)) if not sample else (160, 185, 225)
            bx = x0 + 50 * j
            draw.rectangle([bx, min(to_y(0), to_y(value)), bx + 44, max(to_y(0), to_y(value))], fill=color)
            draw.text((bx, to_y(value) + (-16 if value >= 0 else 4)), f"{value:+.2f}", fill="black", font=font)
        draw.text((x0, height - bottom + 10), method, fill="black", font=font)
    draw.line([left, to_y(0), width - 20, to_y(0)], fill="black", width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())

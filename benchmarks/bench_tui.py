"""Speed of the TUI's half-block renderer (:func:`refscope.tui.render.render_halfblock`).

A 1280x944 frame (the enhanced output at S = 2 of a 640x472 LR frame) is rendered into views of the sizes the
TUI's panes have (58x22 cells at 120x40, 38x11 at 80x24, and a 60x40 reference), for uint16 noise (the worst
case for run-length merging: almost every cell differs from its neighbour) and a smooth float32 image, at
zoom 1 and zoom 4. Each figure is the median (and p90) of ``--runs`` timed renders after one warm-up render
(which also fills the style cache). Target: < 10 ms median for 1280x944 -> ~60x40 cells.

    python benchmarks/bench_tui.py              # 50 runs, writes the "tui" section of RESULTS.md
    python benchmarks/bench_tui.py --no-write   # print only

Not a test: the figures depend on the machine (and on anything else running on it).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from refscope.tui.render import render_halfblock
from refscope.tui.simulator import synthetic_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_section  # noqa: E402 - benchmarks/ is not a package

SECTION = "tui"
FRAME_SHAPE = (944, 1280)
VIEWS = [(60, 40), (58, 22), (38, 11)]


def time_render(frame: np.ndarray, width: int, height: int, runs: int, zoom: float = 1.0) -> tuple[float, float]:
    """(median, p90) of ``runs`` renders, milliseconds."""
    render_halfblock(frame, width, height, zoom=zoom)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        render_halfblock(frame, width, height, zoom=zoom)
        times.append(time.perf_counter() - t0)
    ms = 1000 * np.asarray(times)
    return float(np.median(ms)), float(np.percentile(ms, 90))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed renders per case (default 50)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    frames = {
        "uint16 noise": (np.random.default_rng(0).random(FRAME_SHAPE) * 65535).astype(np.uint16),
        "float32 smooth": synthetic_frame(FRAME_SHAPE, 1),
    }
    t0 = time.perf_counter()
    render_halfblock(frames["uint16 noise"], 60, 40, palette="confidence", levels=48)  # a cold style cache
    cold_ms = 1000 * (time.perf_counter() - t0)
    rows = []
    for name, frame in frames.items():
        for width, height in VIEWS:
            for zoom in (1.0, 4.0):
                median, p90 = time_render(frame, width, height, args.runs, zoom)
                rows.append((name, f"{width}x{height}", zoom, median, p90))
                print(f"{name:15s} {width}x{height:<3d} zoom {zoom:g}: median {median:.2f} ms, p90 {p90:.2f} ms")
    reference = next(r for r in rows if r[0] == "uint16 noise" and r[1] == "60x40" and r[2] == 1.0)
    lines = [
        "## TUI renderer (`benchmarks/bench_tui.py`)",
        "",
        f"`render_halfblock` of a {FRAME_SHAPE[1]}x{FRAME_SHAPE[0]} frame into terminal cells (half blocks, "
        f"2 pixel rows per cell), median / p90 of {args.runs} runs after a warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}.",
        "",
        f"**1280x944 -> 60x40 cells: {reference[3]:.2f} ms median** (target < 10 ms). First render with a cold "
        f"style cache: {cold_ms:.1f} ms.",
        "",
        "| frame | view (cells) | zoom | median ms | p90 ms |",
        "|---|---|---|---|---|",
        *[f"| {n} | {v} | {z:g} | {m:.2f} | {p:.2f} |" for n, v, z, m, p in rows],
        "",
        "Views: 60x40 reference; 58x22 and 38x11 are the panes' insides at 120x40 and 80x24 terminals.",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

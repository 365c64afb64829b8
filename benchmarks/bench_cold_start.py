"""Cold one-frame ``refscope enhance``: overhead beyond the compute, and peak memory, for a 1536x1024 FEI frame.

Fits the paired model once (x2: raw 96336e… 5000x LR + f63c41… 12000x HR of the 2020-02-13 session, x2.4) into a
temporary state folder, then runs ``refscope enhance STATE c2da01…5000x_D.tif -o out.tif`` as a user does: a fresh
process each time (Python start, imports, model load, ONNX Runtime session, read, enhance, write, exit).

* the first call exports the model to ONNX (PyTorch) and stores it in ``STATE/onnx-cache/``;
* the next ``--runs`` calls are the everyday cold start: the cache is there.

Per call: wall time of the process, the compute (the seconds the serving engine reports for the frame, printed
on enhance's line), overhead = wall - compute, and the peak resident memory of the process (``ru_maxrss`` from
``wait4``). Also the interpreter start and the import of the CLI alone. Targets (issue 15, item 5): overhead
≤ 2 s on the 2-core development machine, peak memory ≤ 1 GB. Writes the ``cold-start`` section of
benchmarks/RESULTS.md.

    nice -n 19 .venv/bin/python benchmarks/bench_cold_start.py [--runs 5] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402

RAW = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs" / "raw"
LR, HR, FRAME = "96336e__NiO_DC_5000x_E.tif", "f63c41__NiO_DC_12000x_D.tif", "c2da01__NiO_DC_5000x_D.tif"
REFSCOPE = Path(sys.executable).with_name("refscope")
TARGET_OVERHEAD_S = 2.0
TARGET_RSS_MB = 1024.0
_COMPUTE = re.compile(r"\), ([0-9.]+) s$", re.MULTILINE)


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one child process (its own ``ru_maxrss``, from ``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{err.read()}")
        return wall, usage.ru_maxrss / 1024.0, out.read()


def enhance_once(state: Path, out: Path) -> dict[str, float]:
    wall, rss, stdout = timed([str(REFSCOPE), "enhance", str(state), str(RAW / FRAME), "-o", str(out)])
    match = _COMPUTE.search(stdout)
    if match is None:
        raise SystemExit(f"no compute time on enhance's line: {stdout!r}")
    compute = float(match.group(1))
    return {"wall_s": wall, "compute_s": compute, "overhead_s": wall - compute, "rss_mb": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold calls with the ONNX cache in place (default 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if not (RAW / FRAME).is_file():
        raise SystemExit(f"{RAW}: the sem_pairs data is not there (set REFSCOPE_SHARED_DATA)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refscope-cold-") as tmp:
        state = Path(tmp) / "state"
        subprocess.run([str(REFSCOPE), "fit", str(RAW / LR), str(RAW / HR), "-o", str(state), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        python_start = min(timed([sys.executable, "-c", "pass"])[0] for _ in range(3))
        imports = min(timed([sys.executable, "-c", "import refscope.daemon.cli"])[0] for _ in range(3))
        first = enhance_once(state, Path(tmp) / "first.tif")
        runs = [enhance_once(state, Path(tmp) / f"run{i}.tif") for i in range(args.runs)]
    overhead = statistics.median(r["overhead_s"] for r in runs)
    worst_overhead = max(r["overhead_s"] for r in runs)
    compute = statistics.median(r["compute_s"] for r in runs)
    wall = statistics.median(r["wall_s"] for r in runs)
    rss = max(r["rss_mb"] for r in [first, *runs])
    load = os.getloadavg()[0]
    lines = [
        "## Cold start and memory of one-frame `refscope enhance` (`benchmarks/bench_cold_start.py`, issue 15)",
        "",
        f"Command: `nice -n 19 .venv/bin/python benchmarks/bench_cold_start.py --runs {args.runs}` — "
        f"{time.perf_counter() - started:.0f} s on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')} (1-min load average {load:.1f} at the end: "
        "the machine was shared). One real 1536x1024 uint16 FEI frame (c2da01… 5000x) enhanced x2 by "
        "`refscope enhance STATE IN.tif -o OUT.tif` in a fresh process each time, the paired model fitted on "
        "another frame of the session (96336e… 5000x + f63c41… 12000x). Overhead = process wall time - the compute "
        "the serving engine reports for the frame.",
        "",
        "| call | wall (s) | compute (s) | overhead (s) | peak RSS (MB) |",
        "|---|---|---|---|---|",
        f"| first (exports the model to ONNX, fills `onnx-cache/`) | {first['wall_s']:.2f} | {first['compute_s']:.2f} "
        f"| {first['overhead_s']:.2f} | {first['rss_mb']:.0f} |",
        f"| cold, cache in place (median of {args.runs}) | {wall:.2f} | {compute:.2f} | {overhead:.2f} "
        f"(worst {worst_overhead:.2f}) | {max(r['rss_mb'] for r in runs):.0f} |",
        "",
        f"Within the overhead: Python start {python_start:.2f} s, `import refscope.daemon.cli` {imports:.2f} s "
        "(both the fastest of 3).",
        "",
        f"Targets (issue 15, item 5): overhead {overhead:.2f} s (≤ {TARGET_OVERHEAD_S:.0f} s: "
        f"{'met' if overhead <= TARGET_OVERHEAD_S else 'NOT met'}); peak memory {rss:.0f} MB (≤ "
        f"{TARGET_RSS_MB:.0f} MB: {'met' if rss <= TARGET_RSS_MB else 'NOT met'}). When the issue was filed one "
        "call took 8–12 s for 0.6 s of compute (an ONNX export at every call) and peaked at 3.2 GB. What removed the "
        "rest: the ONNX cache in the state folder (no PyTorch after the first call); the static ONNX checks (and "
        "the ~0.5 s import of the `onnx` package they need) run when an export enters the cache, not at every "
        "load; `scipy.signal` and `scipy.stats` (~0.8 s of imports, used only by FRC and the t-tests) are imported "
        "where they are used; tiled serving under `serve.max_memory_mb` bounds the memory.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("cold-start", text)
    return 0 if overhead <= TARGET_OVERHEAD_S and rss <= TARGET_RSS_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Batch benchmark: ``refscope batch`` on Dask vs the single-process ``refscope enhance`` path.

Fits a paired library on a synthetic pair, writes ``--frames`` LR frames of 640x472 (1280x944 output) and one
3-D TIFF stack of as many 640x472 slices, then times, ``--reps`` times each on fresh output folders (best run
reported), the whole command as a user runs it (model export, reading, writing included), the paths interleaved so that they
share the machine's changing load:

* ``refscope enhance STATE frames/ -o OUT`` -- the single-process baseline (ServingEngine, ONNX Runtime on all
  cores); for the stack, ``enhance`` of its slices saved as separate frames (it cannot read stacks);
* ``refscope batch STATE frames/ -o OUT`` with the local threads scheduler (the default, ``--workers`` = cores);
* ``refscope batch ... --scheduler tcp://...`` on a ``LocalCluster`` of 2 single-threaded worker processes started
  beforehand (its start-up time is reported separately; ``--scheduler processes`` pays it on every run);
* a resumed re-run of the threads batch (everything already done: skipped).

Throughput is output Mpx per second of wall time, and ratios are against the single-process path measured in the
same run. The outputs are also compared with enhance's (max difference in float32 ulp of the frame maximum,
share of bit-identical pixels). Writes the ``batch`` section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_batch.py [--frames 16] [--reps 3] [--no-write]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

from refscope.daemon.cli import main
from refscope.daemon.images import read_image, write_tiff
from refscope.models.synthetic import make_pair

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402 - benchmarks/ is not a package

LR_SHAPE = (472, 640)  # (H, W): 1280x944 output at S = 2


def _quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _once(argv: list[str], out: Path | None) -> float:
    """Wall time in seconds of ``refscope argv`` (into a fresh ``out`` unless None)."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    code = _quiet_main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"refscope {' '.join(argv)} failed with exit code {code}")
    return seconds


def _agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[float, float]:
    """(max |diff| in float32 ulp of each frame's maximum, share of identical pixels) over all frames."""
    ulps = [float(np.max(np.abs(a.astype(np.float64) - b)) / np.spacing(np.abs(b).max())) for a, b in zip(ours, theirs)]
    same = sum(int(np.count_nonzero(a == b)) for a, b in zip(ours, theirs)) / sum(b.size for b in theirs)
    return max(ulps), same


def run(args: argparse.Namespace, work: Path) -> dict:
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(192, 256), factor=2.0)
    write_tiff(work / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(work / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    state = work / "state"
    assert _quiet_main(["fit", str(work / "lr.tif"), str(work / "hr.tif"), "-o", str(state)]) == 0
    frames, slices = work / "frames", work / "slices"
    frames.mkdir()
    slices.mkdir()
    images = [make_pair(rng=np.random.default_rng(100 + i), lr_shape=LR_SHAPE, factor=2.0).lr.astype(np.float32)
              for i in range(args.frames)]
    for i, image in enumerate(images):
        write_tiff(frames / f"frame_{i:03d}.tif", image, pixel_size_nm=10.0)
        write_tiff(slices / f"slice_{i:03d}.tif", image[::-1], pixel_size_nm=10.0)
    stack = work / "stack.tif"
    tifffile.imwrite(stack, np.stack([image[::-1] for image in images]), imagej=True,
                     resolution=(100.0, 100.0), metadata={"unit": "micron", "axes": "ZYX"})
    out_px = args.frames * 4 * LR_SHAPE[0] * LR_SHAPE[1]

    from distributed import LocalCluster

    start = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    startup = time.perf_counter() - start
    batch = ["batch", str(state)]
    tcp = ["--scheduler", cluster.scheduler_address]
    paths = {  # name -> (argv, fresh output folder or None to keep it)
        "frames enhance": (["enhance", str(state), str(frames), "-o", str(work / "e_frames")], work / "e_frames"),
        "frames threads": (batch + [str(frames), "-o", str(work / "t_frames")], work / "t_frames"),
        "frames resume": (batch + [str(frames), "-o", str(work / "t_frames")], None),
        "frames cluster": (batch + [str(frames), "-o", str(work / "c_frames")] + tcp, work / "c_frames"),
        "stack enhance": (["enhance", str(state), str(slices), "-o", str(work / "e_stack")], work / "e_stack"),
        "stack threads": (batch + [str(stack), "-o", str(work / "t_stack")], work / "t_stack"),
        "stack cluster": (batch + [str(stack), "-o", str(work / "c_stack")] + tcp, work / "c_stack"),
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    try:
        _once(batch + [str(frames), "-o", str(work / "warm")] + tcp, None)  # workers import refscope once
        for _ in range(args.reps):  # interleaved, so that the paths share the machine's (changing) load
            for name, (argv, out) in paths.items():
                runs[name].append(_once(argv, out))
    finally:
        cluster.close()
    theirs = [read_image(work / "e_frames" / f"frame_{i:03d}_x2.tif").data for i in range(args.frames)]
    agree = {name: _agreement([read_image(work / name / f"frame_{i:03d}_x2.tif").data for i in range(args.frames)],
                              theirs) for name in ("t_frames", "c_frames")}
    volume = tifffile.imread(work / "t_stack" / "stack_x2.tif")
    agree["t_stack"] = _agreement(list(volume), [read_image(work / "e_stack" / f"slice_{i:03d}_x2.tif").data
                                                 for i in range(args.frames)])
    times = {name: min(values) for name, values in runs.items()}
    spread = {name: max(values) / min(values) for name, values in runs.items()}
    return {"times": times, "spread": spread, "startup_s": startup, "out_px": out_px, "agree": agree}


def render(result: dict, args: argparse.Namespace, seconds: float) -> str:
    times, px = result["times"], result["out_px"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Batch reprocessing on Dask (`refscope batch`, issue 8)",
        "",
        f"Command: `python benchmarks/bench_batch.py --frames {args.frames} --reps {args.reps}` — {seconds:.0f} s "
        f"on {platform.platform()} ({os.cpu_count()} cores, load average {load:.1f} at the end: shared with other "
        f"work), {datetime.now(timezone.utc):%Y-%m-%d}.",
        f"Inputs: {args.frames} LR frames of 640x472 (1280x944 output, S = 2, paired library) and one 3-D TIFF stack "
        f"of {args.frames} such slices; {px / 1e6:.1f} Mpx of output each. Whole commands timed (model export, "
        f"reading, writing included), paths interleaved, best of {args.reps} (worst/best in the last column: the "
        "machine is shared); ratios against `refscope enhance` in the same run.",
        "",
        "| input | path | wall s | output Mpx/s | vs enhance | worst/best |",
        "|---|---|---|---|---|---|",
    ]
    names = {"enhance": "`refscope enhance` (single process, ORT on all cores)",
             "threads": "`refscope batch` (threads, default)",
             "cluster": "`refscope batch --scheduler tcp://…` (LocalCluster, 2 processes x 1 thread)",
             "resume": "`refscope batch` re-run (all outputs done: skipped)"}
    for key in ("frames enhance", "frames threads", "frames cluster", "frames resume", "stack enhance",
                "stack threads", "stack cluster"):
        what, path = key.split()
        base = times[f"{what} enhance"]
        rate = px / times[key] / 1e6 if path != "resume" else float("nan")
        ratio = f"x{base / times[key]:.2f}" if path != "resume" else "—"
        label = names[path] if what == "frames" or path != "enhance" else "`refscope enhance` of the slices as frames"
        lines.append(f"| {what} | {label} | {times[key]:.1f} | {rate:.2f} | {ratio} | {result['spread'][key]:.2f} |"
                     .replace("| nan |", "| — |"))
    agree = result["agree"]
    lines += [
        "",
        f"LocalCluster start-up (2 worker processes): {result['startup_s']:.1f} s, not included above (`--scheduler "
        "processes` pays it on every run). Agreement with enhance's files: max |diff| "
        + ", ".join(f"{name} {ulp:.0f} ulp ({same:.4%} identical)" for name, (ulp, same) in agree.items()) + ".",
        f"Local scheduler: in this run the LocalCluster ran at x{times['frames threads'] / times['frames cluster']:.2f} "
        f"(frames) and x{times['stack threads'] / times['stack cluster']:.2f} (stack) the speed of the threads "
        "scheduler, start-up excluded. Threads stay the default: single-threaded ONNX Runtime sessions on `cores` "
        "Dask threads (ORT releases the GIL) need no worker start-up and no serialisation of inputs and results; "
        "`--scheduler processes` or a `tcp://` cluster is for more machines than this one. `enhance` runs one "
        "ORT session on all cores, frame after frame; batch runs blocks of several frames concurrently on "
        "single-threaded sessions and overlaps reading and writing with compute.",
    ]
    return "\n".join(lines)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="frames and stack slices (default 16)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per path, best reported (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refscope-bench-batch-") as tmp:
        result = run(args, Path(tmp))
    section = render(result, args, time.perf_counter() - start)
    print(section)
    if not args.no_write:
        write_section("batch", section)
        print(f"\nwrote the batch section of {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main_bench()

"""Soak: the simulated microscope feeds ``refscope daemon`` at a rate it sustains, for a fixed time.

The daemon runs as its own process (``python -m refscope.daemon.cli.daemon``, resuming a learned model saved in
its state folder, so every frame goes through the ONNX ``paired`` model, the quality monitor, the catalogue and
the atomic output writer). :class:`~refscope.daemon.offline.simulate.SimulatedMicroscope` writes its LR frames into
the watched folder. Measured, per frame and over time:

* **lost output frames**: every LR frame written has exactly one output TIFF and is ``enhanced`` in the
  catalogue; nothing is counted under ``errors_by_reason``;
* **memory**: the daemon's resident set (``VmRSS``) sampled twice a second; its growth from the end of the
  warm-up (the first quarter of the run: ONNX sessions, caches and windows filling) to the end must stay
  under 5 %;
* **latency**: input file closed (its mtime) to output file written (its mtime), per frame; after the warm-up,
  the p99 of the second half must not exceed twice that of the first half (plus 0.25 s, one scheduling hiccup
  on a shared machine), i.e. no backlog building up.

:func:`run_soak` is the whole measurement; ``benchmarks/bench_reliability.py --soak-s 600`` runs it for ten minutes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.offline.simulate import SimulatedMicroscope, SimulatorConfig
from refscope.models.simulator import Optics, Session
from test_faults import save_initial_model
from test_restart import DaemonProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_daemon import rss_kib  # noqa: E402 - benchmarks/ is not a package; one reader of VmRSS

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")

RSS_GROWTH_LIMIT = 0.05
LATENCY_RATIO_LIMIT = 2.0
LATENCY_SLACK_S = 0.25


@dataclass
class SoakResult:
    """What one soak measured (times in seconds, memory in KiB)."""

    duration_s: float
    interval_s: float
    lr_shape: tuple[int, int]
    frames: int = 0  # LR frames the simulator wrote
    outputs: int = 0  # output TIFFs
    lost: int = 0  # LR frames without their output
    extra: int = 0  # outputs that are not the one output of an LR frame (duplicates)
    enhanced_in_catalogue: int = 0
    latencies: list[float] = field(default_factory=list)  # per frame, in acquisition order
    warm_frames: int = 0  # frames of the warm-up, left out of the latency comparison
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the first frame, KiB)
    warm_rss: int = 0
    final_rss: int = 0
    status: dict = field(default_factory=dict)  # the daemon's status at the end
    exit_code: int | None = None
    drain_s: float = 0.0

    @property
    def rss_growth(self) -> float:
        """(final - warm) / warm resident memory."""
        return (self.final_rss - self.warm_rss) / self.warm_rss

    def latency_halves(self) -> tuple[dict[str, float], dict[str, float]]:
        """p50/p99/max of the post-warm-up frames, first half and second half."""
        steady = self.latencies[self.warm_frames:]
        half = len(steady) // 2
        first, second = ({"p50": float(np.percentile(part, 50)), "p99": float(np.percentile(part, 99)),
                          "max": float(np.max(part))} for part in (steady[:half], steady[half:]))
        return first, second


def run_soak(work: Path, *, duration_s: float, interval_s: float, lr_shape: tuple[int, int] = (96, 128),
             warmup_fraction: float = 0.25, progress: bool = False) -> SoakResult:
    """Feed a daemon process (resuming a learned model) with simulated LR frames every ``interval_s`` for
    ``duration_s`` seconds; wait for the last outputs; stop it (SIGTERM) and measure (see the module docstring)."""
    watch, out = work / "in", work / "out"
    watch.mkdir(parents=True)
    save_initial_model(out / ".refscope-state")
    result = SoakResult(duration_s=duration_s, interval_s=interval_s, lr_shape=lr_shape)
    daemon = DaemonProcess(watch, out, work / "daemon.log")
    sim = SimulatedMicroscope(SimulatorConfig(optics=Optics(lr_shape=lr_shape), session=Session(scene_change_s=None),
                                              frame_interval_s=interval_s, out_dir=watch, seed=7))
    try:
        sim.start()
        t0 = time.monotonic()
        warm_at = warmup_fraction * duration_s
        next_report = 60.0
        while (now := time.monotonic() - t0) < duration_s:
            kib = rss_kib(daemon.proc.pid)
            assert kib is not None and daemon.proc.poll() is None, "the daemon exited"
            result.rss.append((now, kib))
            if not result.warm_rss and now >= warm_at:
                result.warm_rss = kib
            if progress and now >= next_report:
                print(f"  soak {now:.0f} s: {sim.stats().frames} frames, RSS {kib / 1024:.0f} MiB", flush=True)
                next_report += 60.0
            time.sleep(0.5)
        sim.stop()
        result.frames = sim.stats().frames
        result.final_rss = result.rss[-1][1]
        start = time.monotonic()
        while len(list(out.glob("*_x2.tif"))) < result.frames and time.monotonic() - start < 60:
            time.sleep(0.2)
        result.drain_s = time.monotonic() - start
        result.status = daemon.status()
    finally:
        sim.stop()
        result.exit_code = daemon.terminate() if daemon.proc.poll() is None else daemon.proc.returncode
    inputs = sorted(watch.glob("frame_*_LR.tif"))
    assert len(inputs) == result.frames
    result.outputs = len(list(out.glob("*.tif")))
    for path in inputs:
        output = out / f"{path.stem}_x2.tif"
        if output.exists():
            result.latencies.append(output.stat().st_mtime - path.stat().st_mtime)
    result.lost = result.frames - len(result.latencies)
    result.extra = result.outputs - len(result.latencies)
    result.warm_frames = round(warmup_fraction * len(result.latencies))
    with Catalogue.in_state_dir(out / ".refscope-state") as catalogue:
        result.enhanced_in_catalogue = catalogue.counts().frames.get("enhanced", 0)
    return result


def check_soak(result: SoakResult) -> None:
    """The soak's pass criteria (see the module docstring)."""
    assert result.exit_code == 0
    assert result.frames > 0 and result.lost == 0 and result.extra == 0, (result.frames, result.lost, result.extra)
    assert result.enhanced_in_catalogue == result.frames
    assert result.status["errors_by_reason"] == {}, result.status["errors_by_reason"]
    assert result.rss_growth < RSS_GROWTH_LIMIT, (result.warm_rss, result.final_rss)
    first, second = result.latency_halves()
    limit = max(LATENCY_RATIO_LIMIT * first["p99"], first["p99"] + LATENCY_SLACK_S)
    assert second["p99"] <= limit, f"latency p99 rose from {first['p99']:.3f} s to {second['p99']:.3f} s"


@pytest.mark.slow  # 16 s of feeding plus start-up and drain; `make test` runs "not slow"
def test_soak_short(tmp_path: Path) -> None:
    result = run_soak(tmp_path, duration_s=16.0, interval_s=0.25)
    first, second = result.latency_halves()
    print(f"soak: {result.frames} frames in {result.duration_s:g} s, lost {result.lost}, RSS "
          f"{result.warm_rss / 1024:.0f} -> {result.final_rss / 1024:.0f} MiB ({100 * result.rss_growth:+.2f} %), "
          f"latency p99 {first['p99']:.3f} -> {second['p99']:.3f} s")
    check_soak(result)

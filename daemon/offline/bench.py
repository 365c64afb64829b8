"""``refscope bench``: serving speed on this machine, each figure a ratio to a baseline timed in the same run.

For an output frame of the given size it times

* the exact NumPy reference of the paired model (``pipeline.enhance``), the baseline;
* the same model served as the daemon serves it (:class:`~refscope.daemon.serve.engine.ServingEngine`: ONNX Runtime);
* every registered neural network (untrained weights: speed does not depend on them) through ONNX Runtime,

and prints p50/p99 latency (s), output megapixels/s, the speed-up over the baseline and the agreement of the
served output with the exact one (PSNR(exact, served) in dB). The model is the one in STATE_DIR, or one fitted
on a synthetic pair. Detailed real-data figures: ``benchmarks/bench_serving.py``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refscope.models.metrics import psnr
from refscope.models.networks import NETWORKS, build_network
from refscope.models.pipeline import FitConfig, FittedModel, enhance, fit
from refscope.models.synthetic import make_pair
from refscope.models.training import Normalisation, export_network

from ..config import ModelConfig, ServeConfig
from ..serve.runtime import OnnxModel, RuntimeConfig
from ..serve.engine import ServingEngine

__all__ = ["NETWORKS", "Timing", "timed", "synthetic_model", "bench_frame", "run_bench", "format_timings"]


@dataclass(frozen=True)
class Timing:
    """Latencies (s) of one path on one frame size; ``agreement_db`` = PSNR(exact, this output)."""

    name: str
    seconds: tuple[float, ...]
    output_px: int
    agreement_db: float | None = None

    @property
    def p50(self) -> float:
        return float(np.percentile(self.seconds, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.seconds, 99))

    @property
    def mpx_per_s(self) -> float:
        return self.output_px / 1e6 / self.p50


def timed(fn: Callable[[], np.ndarray], runs: int, *, warmup: int = 1) -> tuple[list[float], np.ndarray]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; returns (seconds, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, np.asarray(result)


def synthetic_model(*, scale: int = 2, seed: int = 0) -> tuple[FittedModel, np.ndarray]:
    """A paired model fitted on a synthetic SEM pair, and that pair's LR frame (to tile into test frames)."""
    pair = make_pair(rng=np.random.default_rng(seed), lr_shape=(256, 320), factor=float(scale))
    return fit(pair.lr, [(pair.hr, float(scale))], config=FitConfig(scale=scale)), pair.lr


def bench_frame(lr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) LR test frame made by reflect-tiling ``lr``."""
    reps = (-(-shape[0] // lr.shape[0]), -(-shape[1] // lr.shape[1]))
    tiles = np.block([[np.flip(lr, axis=tuple(a for a, r in ((0, i % 2), (1, j % 2)) if r)) for j in range(reps[1])]
                      for i in range(reps[0])])
    return np.ascontiguousarray(tiles[: shape[0], : shape[1]])


def run_bench(model: FittedModel, frame: np.ndarray, *, runs: int = 5, baseline_runs: int = 1,
              networks: tuple[str, ...] = tuple(NETWORKS)) -> list[Timing]:
    """Time the exact baseline, the served paired model and each network on ``frame`` (LR, (H, W))."""
    scale = model.scale
    out_px = scale * scale * frame.size
    base_s, exact = timed(lambda: enhance(frame, model, method="paired"), baseline_runs, warmup=0)
    results = [Timing("paired, exact NumPy (baseline)", tuple(base_s), out_px)]
    engine = ServingEngine(ModelConfig(scale=scale, method="paired"), ServeConfig())
    engine.set_model(model, version=1)
    served_s, served = timed(lambda: engine.enhance(frame).image, runs)
    span = float(np.ptp(exact))
    results.append(Timing(f"paired, served ({engine.describe().get('backend', 'onnx')})", tuple(served_s), out_px,
                          psnr(exact, served.astype(np.float64), data_range=span)))
    norm = Normalisation(offset=float(frame.min()), scale=1.0 / max(float(np.ptp(frame)), 1e-12))
    for name in networks:
        net = build_network(name, scale=scale, seed=0)
        model_bytes, manifest = export_network(net, norm, kind=name)
        session = OnnxModel(model_bytes, manifest, RuntimeConfig(providers=("CPUExecutionProvider",)))
        net_s, _ = timed(lambda: session.run(frame), runs)
        results.append(Timing(f"{name} network, ONNX Runtime", tuple(net_s), out_px))
    return results


def format_timings(timings: list[Timing], *, shape_out: tuple[int, int]) -> str:
    """Plain-text table; speed-ups are against the first row (the exact baseline)."""
    base = timings[0].p50
    head = f"{'path':<38}{'p50 s':>9}{'p99 s':>9}{'Mpx/s':>9}{'x baseline':>12}{'PSNR vs exact':>15}"
    lines = [f"output {shape_out[1]}x{shape_out[0]} px", head, "-" * len(head)]
    for t in timings:
        agree = f"{t.agreement_db:.1f} dB" if t.agreement_db is not None else "-"
        lines.append(f"{t.name:<38}{t.p50:>9.3f}{t.p99:>9.3f}{t.mpx_per_s:>9.2f}{base / t.p50:>12.1f}{agree:>15}")
    return "\n".join(lines)

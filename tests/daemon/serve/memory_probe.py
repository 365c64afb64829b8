"""Measure what enhancing one frame costs (run as a script, in a fresh process, by test_memory_budget.py).

``python memory_probe.py S H W`` fits a small paired model at scale S on a synthetic pair, then enhances an
(H, W) frame through :class:`~refscope.daemon.serve.engine.ServingEngine` with ONNX Runtime (and once more with
bicubic), and prints one JSON line: the budget's shares, the resident size just before enhancing, the peak
resident size while enhancing (VmHWM, reset first) and the output shape.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def _status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    scale, height, width = (int(v) for v in sys.argv[1:4])
    from refscope.daemon.config import ModelConfig, ServeConfig
    from refscope.daemon.serve.engine import ServingEngine
    from refscope.models.library import LibraryConfig
    from refscope.models.pipeline import FitConfig, fit
    from refscope.models.synthetic import make_pair

    pair = make_pair(rng=np.random.default_rng(0), lr_shape=(96, 112), factor=float(scale))
    model = fit(pair.lr, [(pair.hr, float(scale))],
                config=FitConfig(scale=scale, library=LibraryConfig(patch_size=9, size=1000, oversample=4)))
    engine = ServingEngine(ModelConfig(scale=scale, method="paired"), ServeConfig(intra_op_threads=2))
    frame = np.random.default_rng(1).normal(1000.0, 200.0, (height, width)).astype(np.float32)
    engine.enhance(frame[:64, :64])  # the first frame's shape is known to the warm-up from here on
    engine.set_model(model, 1)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
    result = engine.enhance(frame)
    peak = _status("VmHWM")
    backend, out_shape = result.backend, result.image.shape
    del result
    engine.set_method("bicubic")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before_bicubic = _status("VmRSS")
    engine.enhance(frame)
    peak_bicubic = _status("VmHWM")
    budget = engine.budget
    print(json.dumps({"total": budget.total_bytes, "workspace": budget.workspace_bytes, "before": before,
                      "peak": peak, "before_bicubic": before_bicubic, "peak_bicubic": peak_bicubic,
                      "backend": backend, "out_shape": list(out_shape)}))


if __name__ == "__main__":
    main()

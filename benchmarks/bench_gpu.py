"""The GPU paths on a machine that has one: ONNX Runtime serving through CUDA/TensorRT and prior training on CUDA.

    python benchmarks/bench_gpu.py [--runs 10] [--train-s 15] [--parts serving,refusals,training]
                                   [--out gpu_results.json]

Checks, each against the CPU in the same run:

1. **Serving** (:class:`refscope.daemon.serve.served_model.ServedModel`, the daemon's path): every shipped prior
   exported to ONNX, loaded with the product's automatic provider choice (TensorRT -> CUDA -> CPU, the active
   providers *verified*), run on a real LR crop whose S-times output is 1280x944 (the crop of
   ``bench_net_serving.py``) whole and tiled as the daemon tiles it; p50 seconds on the GPU and on the CPU
   provider, their ratio, and the largest difference between the GPU and CPU outputs relative to the output's
   range. An explicit request for a provider the runtime cannot activate must be refused with
   :class:`~refscope.daemon.serve.runtime.GpuProviderError` (the silent CPU fallback the runtime exists to catch).
   Beside it, in a fresh process, what a bare ``onnxruntime.InferenceSession`` asked for CUDA gets *without*
   :func:`~refscope.daemon.serve.runtime.preload_gpu_libraries` (part ``bare``).
2. **Training** (:func:`refscope.models.training.train`, the prior's recipe): steps per second of the x4 prior's
   network on CUDA and on one CPU thread, and their ratio.

Without CUDA or onnxruntime-gpu it says what is missing and checks what it can. Writes ``--out`` (JSON) and prints
the table; the figures belong in ``benchmarks/RESULTS.md`` with the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_net_serving import OUTPUT, lr_frame, p50  # noqa: E402

from refscope.daemon.learn.prior_store import SHIPPED_PRIORS, load_prior  # noqa: E402
from refscope.daemon.serve.runtime import CPU, CUDA, TENSORRT, GpuProviderError, RuntimeConfig  # noqa: E402
from refscope.daemon.serve.served_model import onnx_model  # noqa: E402
from refscope.models.net_fit import export_netfit  # noqa: E402
from refscope.models.ort_import import import_onnxruntime  # noqa: E402
from refscope.models.prior import frame_normalisation  # noqa: E402

PRIORS = (("compact", 2), ("fullres", 3), ("fullres", 4), ("compact", 4))
TILE = 128


def environment() -> dict:
    ort = import_onnxruntime()
    env = {"python": platform.python_version(), "machine": f"{platform.node()} ({platform.machine()})",
           "torch": torch.__version__, "torch_cuda": torch.cuda.is_available(),
           "onnxruntime": ort.__version__, "ort_device": ort.get_device(),
           "ort_available_providers": list(ort.get_available_providers())}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def serving(frame: np.ndarray, runs: int) -> list[dict]:
    """One row per shipped prior: GPU vs CPU provider on the same crop, whole and tiled."""
    rows = []
    for network, scale in PRIORS:
        fit = load_prior(network, scale, SHIPPED_PRIORS)
        if fit is None:
            continue
        crop = np.ascontiguousarray(frame[:OUTPUT[0] // scale, :OUTPUT[1] // scale])
        data, manifest = export_netfit(replace(fit, normalisation=frame_normalisation(frame)))
        served = onnx_model(data, manifest, method="net")
        row: dict = {"network": network, "scale": scale, "lr_input": list(crop.shape)}
        try:
            cpu = served.loaded(RuntimeConfig(providers=(CPU,)))
            auto = served.loaded(RuntimeConfig(warmup_shape=crop.shape))
        except Exception as exc:                                 # reported, the other checks still run
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        row["active_providers"] = list(auto.providers)
        tile = served.tile(crop.shape, max_tile=TILE)
        reference = cpu.enhance(crop, tile=tile)
        span = float(np.ptp(reference)) or 1.0
        for name, model in (("auto", auto), ("cpu", cpu)):
            row[f"{name}_whole_p50_s"] = p50(lambda m=model: m.enhance(crop, tile=max(crop.shape)), runs)[0]
            row[f"{name}_tiled_p50_s"] = p50(lambda m=model: m.enhance(crop, tile=tile), runs)[0]
        row["tile"] = tile
        row["speedup_whole"] = row["cpu_whole_p50_s"] / row["auto_whole_p50_s"]
        row["speedup_tiled"] = row["cpu_tiled_p50_s"] / row["auto_tiled_p50_s"]
        row["max_rel_diff_vs_cpu"] = float(np.max(np.abs(auto.enhance(crop, tile=tile) - reference)) / span)
        row["max_rel_diff_tiled_vs_whole"] = float(
            np.max(np.abs(auto.enhance(crop, tile=tile) - auto.enhance(crop, tile=max(crop.shape)))) / span)
        rows.append(row)
    return rows


def refusals() -> dict:
    """An explicit request for each GPU provider: active, or refused with GpuProviderError (never a silent CPU)."""
    fit = load_prior("compact", 2, SHIPPED_PRIORS)
    data, manifest = export_netfit(fit)
    served = onnx_model(data, manifest, method="net")
    out = {}
    for provider in (TENSORRT, CUDA):
        try:
            model = served.loaded(RuntimeConfig(providers=(provider, CPU), require_gpu=True))
            out[provider] = {"active": list(model.providers)}
        except GpuProviderError as exc:
            out[provider] = {"refused": str(exc)[:300]}
        except Exception as exc:                                 # anything else is a defect: report it whole
            out[provider] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    return out


BARE = ("import sys, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], providers=[sys.argv[2], "
        "'CPUExecutionProvider']); print(s.get_providers())")


def bare_sessions() -> dict:
    """Providers a fresh process's plain InferenceSession gets for each GPU provider, no preload (stderr tail)."""
    data, _ = export_netfit(load_prior("compact", 2, SHIPPED_PRIORS))
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compact-x2.onnx"
        path.write_bytes(data)
        for provider in (TENSORRT, CUDA):
            done = subprocess.run([sys.executable, "-c", BARE, str(path), provider], capture_output=True, text=True,
                                  timeout=300)
            out[provider] = {"active": done.stdout.strip(), "stderr_tail": done.stderr.strip()[-600:]}
    return out


def training(seconds: float) -> dict:
    """Steps per second of the x4 prior recipe (fullres, patch 32, batch 16, L2) on CUDA and on one CPU thread."""
    from sem_pairs import load_pair, prior_pairs

    from refscope.models.networks import build_network
    from refscope.models.prior import IDENTITY, PriorConfig, PriorPair, prior_regions
    from refscope.models.training import TrainConfig, make_real_pair_dataset, train

    torch.set_num_threads(1)
    pairs = []
    for name in prior_pairs(4, []):
        p = load_pair(name)
        lr_region, hr_grid = p.region(4)
        pairs.append(PriorPair(p.lr, lr_region, hr_grid, name))
    recipe = PriorConfig(budget_s=seconds)
    source = make_real_pair_dataset(prior_regions(pairs, 4), 4, recipe.patch, normalisation=IDENTITY,
                                    intensity_fit=False)
    out = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        net = build_network("fullres", scale=4, seed=0)
        config = TrainConfig(strategy="real-pairs", loss=recipe.loss, patch=recipe.patch, batch=recipe.batch,
                             lr=recipe.lr, steps=10 ** 9, device=device)
        result = train(net, config, source, budget_s=seconds)
        out[device] = {"steps": result.steps, "seconds": result.seconds, "steps_per_s": result.steps / result.seconds,
                       "loss_last": float(np.mean(result.losses[-50:]))}
    if "cuda" in out:
        out["speedup"] = out["cuda"]["steps_per_s"] / out["cpu"]["steps_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--train-s", type=float, default=15.0)
    parser.add_argument("--parts", default="bare,serving,refusals,training", help="comma-separated parts to run")
    parser.add_argument("--out", type=Path, default=Path("gpu_results.json"))
    args = parser.parse_args(argv)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "environment": environment()}
    print(json.dumps(results["environment"], indent=1), flush=True)
    frame, source = lr_frame()
    results["input"] = source
    parts = {"bare": bare_sessions, "serving": lambda: serving(frame, args.runs), "refusals": refusals,
             "training": lambda: training(args.train_s)}
    for name in args.parts.split(","):
        step = parts[name]
        try:
            results[name] = step()
        except Exception:
            results[name] = {"error": traceback.format_exc()[-2000:]}
        print(name, json.dumps(results[name], indent=1), flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

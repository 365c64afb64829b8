"""Serving speed of the networks refscope serves: a 1280x944 output through ONNX Runtime, as the product serves it.

For S = 2, 3, 4 the shipped prior of every network (``compact`` and ``fullres``; ``auto`` picks one per S) is
exported to ONNX in a real LR frame's units and run by :func:`refscope.daemon.offline.net.onnx_runner` -- the same
ONNX Runtime session options, tiles (offline memory budget) and context (the network's own halo, recorded in its
manifest) as ``refscope enhance`` and the live daemon -- on an LR crop of the size whose S-times output is 1280x944 (a real FEI LR frame of
``../shared/data/sem_pairs/raw`` when present, else a synthetic one). In the same run it times Keys bicubic
(:func:`refscope.models.image_ops.upsample_bicubic`) on the same crop, the baseline every served frame is compared
with. Target (issue 12): the served network's 1280x944 output in at most 0.5 s on this 2-core CPU.

    .venv/bin/python benchmarks/bench_net_serving.py [--runs 7] [--threads 0] [--no-write]

Writes the section ``net_serving`` of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402

from refscope.daemon.learn.prior_store import SHIPPED_PRIORS, load_prior  # noqa: E402
from refscope.daemon.offline.net import onnx_runner  # noqa: E402
from refscope.models.image_ops import upsample_bicubic  # noqa: E402
from refscope.models.net_fit import export_netfit  # noqa: E402
from refscope.models.network_names import resolve_network  # noqa: E402
from refscope.models.networks import count_parameters  # noqa: E402
from refscope.models.prior import frame_normalisation  # noqa: E402

OUTPUT = (944, 1280)
TARGET_S = 0.5
RAW = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs" / "raw"
LR_FILE = "3b9a58__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.5WD_032.tif"


def lr_frame() -> tuple[np.ndarray, str]:
    """A real FEI LR frame (float64) when the shared data is here, else a synthetic SEM-like one."""
    path = RAW / LR_FILE
    if path.exists():
        from refscope.daemon.images import read_image

        return read_image(path).data.astype(np.float64), f"real FEI LR frame {LR_FILE}"
    from refscope.models.synthetic import make_pair

    pair = make_pair(rng=np.random.default_rng(0), lr_shape=(600, 800), factor=2.0, hr_fraction=0.3)
    return pair.lr, "synthetic LR frame (../shared/data absent)"


def p50(fn, runs: int) -> tuple[float, float]:
    """(median, worst) seconds of ``runs`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    frame, source = lr_frame()
    rows = []
    for scale in (2, 3, 4):
        h, w = OUTPUT[0] // scale, OUTPUT[1] // scale
        crop = np.ascontiguousarray(frame[:h, :w])
        bicubic_s, _ = p50(lambda: upsample_bicubic(crop, scale), args.runs)
        served = resolve_network("auto", scale)
        for network in ("compact", "fullres"):
            prior = load_prior(network, scale, SHIPPED_PRIORS)
            if prior is None:
                print(f"x{scale} {network}: no shipped prior, skipped", flush=True)
                continue
            fit = replace(prior, normalisation=frame_normalisation(frame))
            model_bytes, manifest = export_netfit(fit)
            run = onnx_runner(model_bytes, manifest, threads=args.threads)
            out = run(crop)
            assert out.shape == (scale * h, scale * w), out.shape
            median, worst = p50(lambda: run(crop), args.runs)
            row = {"scale": scale, "network": network, "served": network == served, "lr": f"{w}x{h}",
                   "params": count_parameters(fit.build()), "p50": median, "worst": worst, "bicubic": bicubic_s,
                   "mpx_s": OUTPUT[0] * OUTPUT[1] / median / 1e6}
            rows.append(row)
            print(f"x{scale} {network:8s}{' (auto)' if row['served'] else '       '} {w}x{h} -> 1280x944: "
                  f"p50 {median:.3f} s (worst {worst:.3f}), {row['mpx_s']:.1f} Mpx/s; bicubic {bicubic_s:.3f} s",
                  flush=True)
    served_rows = [r for r in rows if r["served"]]
    lines = [
        "## Serving the networks: a 1280x944 output through ONNX Runtime (`benchmarks/bench_net_serving.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_net_serving.py --runs {args.runs} --threads {args.threads}` — "
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other work), {time.strftime('%Y-%m-%d')}. "
        f"Input: {source}, cropped so that the S-times output is 1280x944. Each shipped prior exported to ONNX and "
        "run by `refscope.daemon.offline.net.onnx_runner` (the tiles and halo of `refscope enhance` and the "
        f"daemon); median of {args.runs} runs after a warm-up. Target: the served (`auto`) network ≤ "
        f"{TARGET_S} s.",
        "",
        "| S | network | served by `auto` | LR input | parameters | p50 s | worst s | output Mpx/s | bicubic s | "
        "network / bicubic |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['network']} | {'yes' if r['served'] else 'no'} | {r['lr']} | "
                     f"{r['params'] / 1e3:.0f} k | {r['p50']:.3f} | {r['worst']:.3f} | {r['mpx_s']:.1f} | "
                     f"{r['bicubic']:.3f} | {r['p50'] / r['bicubic']:.1f}x |")
    met = all(r["p50"] <= TARGET_S for r in served_rows)
    lines += ["", f"Served networks within {TARGET_S} s at every S: **{'yes' if met else 'no'}** (slowest "
              f"{max(r['p50'] for r in served_rows):.3f} s)." if served_rows else ""]
    if not args.no_write:
        write_section("net_serving", "\n".join(lines))
    print("\n".join(lines))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""What the daemon serves before it has learned anything: the shipped prior (``serve.prior``) against bicubic.

    python benchmarks/bench_prior_first.py [--seeds 3] [--priors DIR]

The frames go through :class:`~refscope.daemon.serve.engine.ServingEngine` with the prior set as the daemon sets
it at start (:meth:`~refscope.daemon.serve.engine.ServingEngine.set_prior`; one pass, as served) and are scored
against the clean truth, PSNR after a linear intensity fit, 16 output px border left out, Δ vs bicubic of the same
frame:

1. **SEM, simulated** (:func:`refscope.models.simulator.drift_series`, default optics and noise, ``mixed``
   specimen, 256x320 LR, x2; truth :func:`~refscope.models.simulator.drift_truth`);
2. **STEM, simulated** (:func:`refscope.models.simulator.stem_lattice` scanned by
   :func:`~refscope.models.simulator.scan_stem` at the default :class:`~refscope.models.simulator.StemOptics`
   dose, x2; truth: the noise-free scan at half the pixel size without jitter or scan noise) -- a modality the
   prior never saw.

Real SEM pairs: the ``prior`` column of ``benchmarks/quality.py`` (leave-one-out priors, the pair's scored
quarter) is the same measurement on real data. ``--priors DIR`` serves priors from another folder (the
``REFSCOPE_PRIORS`` layout).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

from refscope.daemon.config import ModelConfig, ServeConfig
from refscope.daemon.learn.prior_store import load_served_prior
from refscope.daemon.serve.engine import ServingEngine
from refscope.models.image_ops import upsample_bicubic
from refscope.models.metrics import fit_intensity, psnr
from refscope.models.simulator import (DriftSeries, Optics, StemOptics, drift_series, drift_truth, make_areas,
                                       scan_stem, stem_lattice)

SCALE = 2
BORDER = 16


def score(truth: np.ndarray, estimate: np.ndarray) -> float:
    t, e = truth[BORDER:-BORDER, BORDER:-BORDER], estimate[BORDER:-BORDER, BORDER:-BORDER]
    return psnr(t, fit_intensity(e, t), data_range=float(np.ptp(t)))


def sem_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    optics = Optics()
    area = make_areas(["mixed"], optics, rng=rng)[0]
    series = DriftSeries(n_frames=1, object_start=(0.8, 0.8))
    drift = drift_series(area, optics, series, rng=rng)
    return drift.frames[0].astype(np.float32), drift_truth(area, optics, series, drift, 0, scale=SCALE)


def stem_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    optics = StemOptics()
    rows, cols = optics.lr_shape
    size = (rows * optics.lr_pixel_nm * 1.2, cols * optics.lr_pixel_nm * 1.2)
    specimen = stem_lattice(size, optics, rng=rng)
    centre = (size[0] / 2, size[1] / 2)
    lr = scan_stem(specimen, optics, centre_nm=centre, shape=optics.lr_shape, pixel_nm=optics.lr_pixel_nm,
                   dose=optics.dose, rng=rng)
    truth = scan_stem(specimen, optics, centre_nm=centre, shape=(SCALE * rows, SCALE * cols),
                      pixel_nm=optics.lr_pixel_nm / SCALE, dose=None, rng=None, jitter=False, scan_noise=False)
    return lr.astype(np.float32), truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--priors", type=Path, help="a priors folder (REFSCOPE_PRIORS layout) instead of the shipped")
    args = parser.parse_args(argv)
    prior = load_served_prior(SCALE, args.priors)
    if prior is None:
        print(f"no x{SCALE} prior to serve", file=sys.stderr)
        return 2
    engine = ServingEngine(ModelConfig(scale=SCALE), ServeConfig())
    engine.set_prior(*prior)
    print(f"x{SCALE}, {platform.machine()} ({os.cpu_count()} cores), prior {prior[1].kind}; PSNR dB vs the clean "
          "truth (linear intensity fit)\n")
    print("| case | seed | bicubic | served (prior) | Δ | self-ensemble |\n|---|---|---|---|---|---|")
    deltas: dict[str, list[float]] = {}
    for name, case in (("SEM, simulated", sem_case), ("STEM, simulated", stem_case)):
        for seed in range(args.seeds):
            lr, truth = case(seed)
            served = engine.enhance(lr)
            assert served.model_name == "prior", served.model_name
            base = score(truth, upsample_bicubic(lr, SCALE))
            got = score(truth, served.image)
            deltas.setdefault(name, []).append(got - base)
            print(f"| {name} | {seed} | {base:.2f} | {got:.2f} | {got - base:+.2f} | {engine.describe()['self_ensemble']} |")
    for name, values in deltas.items():
        print(f"\n{name}: mean Δ {np.mean(values):+.2f} dB, worst {min(values):+.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

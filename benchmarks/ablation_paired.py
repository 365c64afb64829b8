"""Ablation of the default ``paired`` reconstruction on the real x2.4 and x4.17 SEM pairs (out-of-sample).

Each row changes one design choice of refscope's default against the paper's faithful settings, so every
change is measured: patch size suited to the scale, library size, PCA dimensions of the keys, one global vs
per-category regression, and the NLM blend over nearest categories. Same protocol as benchmarks/quality.py
(left 9 of 3x4 subimages train, right 3 scored, intensity fit, Δ vs Keys bicubic).

    .venv/bin/python benchmarks/ablation_paired.py [--pairs pair00,pair16,pair07,pair11]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from refscope.daemon.images import read_image
from refscope.models.library import LibraryConfig
from refscope.models.nlm import PairedConfig
from refscope.models.pipeline import FitConfig, default_patch_size, enhance, fit_library, register_reference, training_grids
from refscope.models.promotion import held_out_delta_psnr, split_for_validation

sys.path.insert(0, os.path.dirname(__file__))
from quality import DATA  # noqa: E402  (benchmarks share the data location)
from results_md import write_section  # noqa: E402



def variants(scale: int) -> list[tuple[str, LibraryConfig, PairedConfig, str]]:
    n = default_patch_size(scale)
    default = PairedConfig()
    return [
        ("paper: Algorithm 2 (n=9, L=8000, σ_n=1, centre pixel)", LibraryConfig(patch_size=9), default, "paired-faithful"),
        ("default paired (n=9, L=8000, PCA 32, ridge per category, blend 2)", LibraryConfig(patch_size=n), default, "paired"),
        ("  … patch covering 4 LR px (n=4S+1)", LibraryConfig(patch_size=4 * scale + 1), default, "paired"),
        ("  … library L=2000", LibraryConfig(patch_size=n, size=2000), default, "paired"),
        ("  … PCA 16 dims", LibraryConfig(patch_size=n), replace(default, pca_dims=16), "paired"),
        ("  … PCA 64 dims", LibraryConfig(patch_size=n), replace(default, pca_dims=64), "paired"),
        ("  … one global regression (k=1)", LibraryConfig(patch_size=n, n_categories=1), default, "paired"),
        ("  … nearest category only (no NLM blend)", LibraryConfig(patch_size=n), replace(default, n_probe=1), "paired"),
        ("  … blend every category (full NLM weights, no top-k)", LibraryConfig(patch_size=n),
         replace(default, n_probe=LibraryConfig().n_categories), "paired"),
        ("  … query stride 3 (fewer, less overlapping patches)", LibraryConfig(patch_size=n), replace(default, stride=3),
         "paired"),
        ("  … query stride 1 (every output pixel)", LibraryConfig(patch_size=n), replace(default, stride=1), "paired"),
        ("  … query stride 2 (the default before one query per LR pixel)", LibraryConfig(patch_size=n),
         replace(default, stride=2), "paired"),
    ]


def run_pair(pair: dict) -> dict:
    lr = read_image(DATA / "raw" / pair["lr_file"]).data.astype(np.float64)
    hr_image = read_image(DATA / "raw" / pair["hr_file"])
    factor = read_image(DATA / "raw" / pair["lr_file"]).pixel_size_nm / hr_image.pixel_size_nm
    scale = min(int(math.floor(factor + 1e-6)), 4)
    hr = hr_image.data.astype(np.float64)
    geometry = register_reference(lr, hr, factor=factor, config=FitConfig(scale=scale))
    box, hr_grid = training_grids(lr, hr, geometry, scale=scale)
    (y0, y1), (x0, x1) = box
    split = split_for_validation(lr[y0:y1, x0:x1], hr_grid, scale=scale)
    rows, cache = [], {}
    for name, lib_cfg, paired_cfg, method in variants(scale):
        if lib_cfg not in cache:
            cache[lib_cfg] = fit_library([split.train], config=FitConfig(scale=scale, library=lib_cfg))
        model = replace(cache[lib_cfg], paired=paired_cfg, _regressors=None)
        start = time.perf_counter()
        delta = held_out_delta_psnr(lambda x: enhance(x, model, method=method), split.held_out, scale=scale)
        rows.append({"variant": name, "delta_psnr_db": delta, "seconds": time.perf_counter() - start})
    return {"pair": pair["pair"], "factor": factor, "scale": scale, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="pair00,pair16,pair07,pair11")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    pairs = [p for p in json.loads((DATA / "pairs.json").read_text()) if p["pair"] in args.pairs.split(",")]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_pair, pairs))
    names = [r["variant"] for r in results[0]["rows"]]
    lines = ["## Ablation of the default paired mode (issue 2)", "",
             f"Command: `python benchmarks/ablation_paired.py --pairs {args.pairs}` — "
             f"{(time.perf_counter() - start) / 60:.1f} min on {platform.node()} ({os.cpu_count()} cores), "
             f"{time.strftime('%Y-%m-%d')}. Out-of-sample ΔPSNR (dB) vs bicubic, right 3 of 3x4 subimages.", "",
             "| variant | " + " | ".join(f"{r['pair']} x{r['factor']:.2f}" for r in results) + " | mean |",
             "|---|" + "---|" * (len(results) + 1)]
    for i, name in enumerate(names):
        values = [r["rows"][i]["delta_psnr_db"] for r in results]
        lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in values) + f" | {np.mean(values):+.2f} |")
    section = "\n".join(lines)
    print(section)
    write_section("ablation", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

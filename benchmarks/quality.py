"""Real-data quality benchmark: the 3x4 subimage protocol on every physically acquired SEM pair.

Reads the raw FEI TIFFs of ../shared/data/sem_pairs (pixel sizes from their metadata), registers each HR
reference with refscope's own global registration, and scores every method out-of-sample (and in-sample)
against bicubic after a per-image intensity fit. Writes a section of benchmarks/RESULTS.md and a JSON file.

    .venv/bin/python benchmarks/quality.py [--pairs pair00,pair07] [--jobs 2] [--no-in-sample]
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
from pathlib import Path

import numpy as np

from refscope.daemon.tiff_io import read_image
from refscope.models.evaluation import evaluate_pair
from refscope.models.pipeline import FitConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402

DATA = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs"
METHODS = ("paired", "paired-faithful", "original")


def run_pair(pair: dict, in_sample: bool) -> dict:
    lr = read_image(DATA / "raw" / pair["lr_file"])
    hr = read_image(DATA / "raw" / pair["hr_file"])
    factor = lr.pixel_size_nm / hr.pixel_size_nm
    scale = min(int(math.floor(factor + 1e-6)), 4)
    start = time.perf_counter()
    report = evaluate_pair(lr.data, hr.data, factor=factor, scale=scale, methods=METHODS, in_sample=in_sample,
                           config=FitConfig(scale=scale))
    g = report.geometry
    true_off = np.array(pair["offset_yx_lr_px"])
    return {"pair": pair["pair"], "factor": factor, "scale": scale, "seconds": time.perf_counter() - start,
            "library_size": report.library_size, "noise_sigma": report.noise_sigma,
            "offset_error_lr_px": float(np.max(np.abs(np.array(g.offset_yx) - true_off))),
            "summary": report.summary()}


def _row(res: dict, method: str, sample: str) -> dict | None:
    return next((r for r in res["summary"] if r["method"] == method and r["sample"] == sample), None)


def render(results: list[dict], command: str, elapsed: float) -> str:
    lines = ["## Real-data quality (paired library, issue 2)", "",
             f"Command: `{command}` — {elapsed / 60:.1f} min on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}.",
             "Protocol: 3x4 subimages of the overlap, library from the left 9, scored on the right 3 (out) and the 9 "
             "(in), per-image linear intensity fit, Δ vs Keys bicubic. Raw FEI files, refscope's own registration. "
             "x10 pairs are scored at S=4 (output scale capped at 4).", "",
             "| pair | factor | S | method | out ΔPSNR dB | out ΔSSIM | out Δedge | out ΔPSNR fg/bg | in ΔPSNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for method in METHODS:
            out, ins = _row(res, method, "out"), _row(res, method, "in")
            lines.append(f"| {res['pair']} | {res['factor']:.2f} | {res['scale']} | {method} | {out['d_psnr']:+.2f} | "
                         f"{out['d_ssim']:+.3f} | {out['d_edge_sim']:+.3f} | {out['d_fg_psnr']:+.2f}/{out['d_bg_psnr']:+.2f} | "
                         + (f"{ins['d_psnr']:+.2f} |" if ins else "– |"))
    lines += ["", "Mean out-of-sample ΔPSNR (dB) by factor group:", "",
              "| group | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    groups = {"x2.4 + x4.17 (issue 2 target)": lambda r: round(r["factor"], 1) in (2.4, 4.2),
              "x4.17": lambda r: round(r["factor"], 1) == 4.2, "x2.4": lambda r: round(r["factor"], 1) == 2.4,
              "all pairs": lambda r: True}
    for name, pick in groups.items():
        sel = [r for r in results if pick(r)]
        if sel:
            means = [np.mean([_row(r, m, "out")["d_psnr"] for r in sel]) for m in METHODS]
            lines.append(f"| {name} ({len(sel)}) | " + " | ".join(f"{v:+.2f}" for v in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", help="comma-separated pair names (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-in-sample", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if not (DATA / "pairs.json").is_file():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2
    pairs = json.loads((DATA / "pairs.json").read_text())
    if args.pairs:
        wanted = set(args.pairs.split(","))
        pairs = [p for p in pairs if p["pair"] in wanted]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_pair, pairs, [not args.no_in_sample] * len(pairs)))
    elapsed = time.perf_counter() - start
    command = "python benchmarks/quality.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    section = render(results, command.strip(), elapsed)
    print(section)
    if not args.no_write:
        write_section("quality", section)
        (HERE / "quality_results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

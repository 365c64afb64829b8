"""STEM quality benchmark (issue 19): atomic-resolution STEM images, a STEM-realistic fast scan, the peers beside.

    .venv/bin/python benchmarks/quality_stem.py [--scale 2] [--jobs 2] [--budget-s 90] [--no-bm3d] [--no-write]

There are no physical STEM LR/HR pairs here, so the LR frame is simulated from each real image with refscope's STEM
scan model (:func:`refscope.models.simulator.scan_stem`): the image, lightly smoothed (σ = 1 px: the probe, and
independence of the LR noise from the HR's), is the specimen; the fast scan samples it at S-times coarser pixel
centres (point sampling, no averaging) with Poisson dose, per-line jitter and per-line gain/offset. The real image
itself is the HR reference (noisy, as a real reference is).

Images: the SrTiO3 TIA SER and Berkeley EMD of ``../shared/data/vendor_formats`` (read through refscope's own
readers) and ``../shared/data/hr_only/stem_atomic`` (Au nanoparticle, Se-implanted MoS2, SrTiO3 ADF crop). The
protocol, the peers and refscope's methods are those of ``benchmarks/quality.py``: learn from the left 9 of 3x4
subimages, score the right 3, every setting and checkpoint chosen on the validation strip inside the training area;
``prior+ft`` starts from the shipped x``S`` prior (trained on SEM pairs only, so it never saw these images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import (OURS, PEERS, bicubic_scores, ensure_peers_env, our_models, peer_predictors, score,  # noqa: E402
                     scored_subimages)
from results_md import write_section  # noqa: E402
from sem_pairs import LoadedPair  # noqa: E402

from refscope.daemon.learn.prior_store import SHIPPED_PRIORS  # noqa: E402
from refscope.daemon.images import read_image  # noqa: E402
from refscope.models.simulator import StemOptics, scan_stem  # noqa: E402

SHARED = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
IMAGES = {
    "SrTiO3 HAADF (TIA SER)": SHARED / "vendor_formats" / "ncem_16_STOimage_1.ser",
    "SrTiO3 (Berkeley EMD)": SHARED / "vendor_formats" / "ncem_Acquisition_18.emd",
    "Au nanoparticle HAADF": SHARED / "hr_only" / "stem_atomic" / "Au_nanoparticle_HAADF.tif",
    "MoS2 Se-implanted HAADF": SHARED / "hr_only" / "stem_atomic" / "MoS2_Se_implanted_HAADF_survey.tif",
    "SrTiO3 ADF crop": SHARED / "hr_only" / "stem_atomic" / "SrTiO3_ADF_crop_atomap.tif",
}
MAX_HR_SIDE = 1024  # a larger image is cropped at its centre (the Au survey is 2048²)
DOSE = 60.0  # electrons per LR pixel at full signal: a fast scan


def stem_case(name: str, path: Path, scale: int, seed: int = 0) -> LoadedPair:
    """(real image = HR, simulated fast STEM scan = LR) as a :class:`LoadedPair` whose overlap is the whole LR frame."""
    image = read_image(path).data.astype(np.float64)
    h, w = image.shape
    if max(h, w) > MAX_HR_SIDE:
        y0, x0 = max(0, (h - MAX_HR_SIDE) // 2), max(0, (w - MAX_HR_SIDE) // 2)
        image = image[y0:y0 + MAX_HR_SIDE, x0:x0 + MAX_HR_SIDE]
    rows, cols = image.shape[0] // scale, image.shape[1] // scale
    hr = image[: rows * scale, : cols * scale]
    lo, hi = np.percentile(hr, [0.5, 99.5])
    specimen = np.clip((ndimage.gaussian_filter(hr, 1.0) - lo) / (hi - lo), 0.0, 1.0)
    optics = StemOptics(lr_shape=(rows, cols), lr_pixel_nm=float(scale), specimen_nm=1.0, probe_sigma_nm=0.0,
                        dose=DOSE, line_jitter_px=0.15, scan_noise=0.02)
    lr = scan_stem(specimen, optics, centre_nm=(hr.shape[0] / 2, hr.shape[1] / 2), shape=(rows, cols),
                   pixel_nm=float(scale), dose=DOSE, rng=np.random.default_rng(seed))
    box = ((0, rows), (0, cols))
    return LoadedPair(name, (path.name, path.name), float(scale), scale, lr, {scale: box}, {scale: hr})


def run_image(name: str, path: str, scale: int, budget_s: float, with_bm3d: bool) -> dict:
    start = time.perf_counter()
    p = stem_case(name, Path(path), scale)
    scored = scored_subimages(p, scale)
    predictors, validation, info = our_models(p, scale, SHIPPED_PRIORS, budget_s)
    result = {"image": name, "file": Path(path).name, "scale": scale, "lr_shape": list(p.lr.shape), "info": info,
              "methods": {}}
    baselines = bicubic_scores(scored)
    for method in OURS:
        result["methods"][method] = score(scored, [predictors[method](lr) for lr, _ in scored], baselines)
    for method, res in peer_predictors(p.lr, validation, scored, scale, with_bm3d).items():
        result["methods"][method] = score(scored, res["scored"], baselines) | {"setting": str(res["setting"])}
    result["seconds"] = time.perf_counter() - start
    return result


def render(results: list[dict], command: str, elapsed: float, scale: int, budget_s: float) -> str:
    have = [m for m in list(PEERS) + list(OURS) if all(m in r["methods"] for r in results)]
    lines = ["## STEM quality: atomic-resolution images, simulated fast scan (issue 19, `benchmarks/quality_stem.py`)", "",
             f"Command: `{command}` — {elapsed / 60:.1f} min on {platform.node() or 'this machine'} ({os.cpu_count()} "
             f"cores, {platform.machine()}, shared), {time.strftime('%Y-%m-%d')}. S = {scale}; LR = the real image "
             f"smoothed (σ 1 px), point sampled every {scale} px with Poisson dose {DOSE:g} e⁻/px at full signal, "
             "0.15 px line jitter, 2 % line gain noise; HR = the real image. Protocol, peers and methods as "
             f"`benchmarks/quality.py` (fine-tuning {budget_s:g} s; `prior` = the shipped SEM prior, never saw STEM). "
             "ΔPSNR dB vs bicubic, right quarter scored:", "",
             "| image | LR | " + " | ".join(have) + " | best chose |", "|---|---|" + "---|" * (len(have) + 1)]
    for r in results:
        lines.append(f"| {r['image']} | {r['lr_shape'][1]}x{r['lr_shape'][0]} | "
                     + " | ".join(f"{r['methods'][m]['d_psnr']:+.2f}" for m in have) + f" | {r['info']['best_choice']} |")
    for label, fn in (("mean", np.mean), ("worst", np.min)):
        lines.append(f"| **{label}** | | " + " | ".join(f"**{fn([r['methods'][m]['d_psnr'] for r in results]):+.2f}**"
                                                       for m in have) + " | |")
    lines += ["", "| mean | " + " | ".join(have) + " |", "|---|" + "---|" * len(have),
              "| ΔSSIM | " + " | ".join(f"{np.mean([r['methods'][m]['d_ssim'] for r in results]):+.4f}" for m in have) + " |",
              "| FRC period px | " + " | ".join(f"{np.mean([r['methods'][m]['frc_px'] for r in results]):.2f}"
                                               for m in have) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=90.0)
    parser.add_argument("--no-bm3d", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    present = {k: v for k, v in IMAGES.items() if v.is_file()}
    if not present:
        print(f"no STEM image found under {SHARED}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with_bm3d = not args.no_bm3d and ensure_peers_env()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_image, list(present), [str(v) for v in present.values()], [args.scale] * len(present),
                                [args.budget_s] * len(present), [with_bm3d] * len(present)))
    command = ".venv/bin/python benchmarks/quality_stem.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command.strip(), time.perf_counter() - start, args.scale, args.budget_s)
    print(section)
    if not args.no_write:
        write_section("quality_stem", section)
        (HERE / "quality_stem_results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

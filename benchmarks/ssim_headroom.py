"""How much SSIM the LR could carry on the scored quarters, and how well each subimage is registered (issue 12).

    .venv/bin/python benchmarks/ssim_headroom.py [--pairs pair00,pair07]

Two tables on the right-hand column of each scored pair's 3x4 split (the quarter ``quality.py`` scores), seconds:

1. **Headroom.** ΔPSNR / ΔSSIM over bicubic (per-image linear intensity fit) of bicubic applied to a *noise-free*
   LR: the HR grid blurred by a Gaussian of σ = S/4 fine px and point-sampled at the LR pixel centres. That LR still
   holds a little of the HR's own noise, so the figure is an optimistic bound on what denoising the LR can give.
2. **Local registration.** The (dy, dx) shift in fine px, to 1/20 px (phase correlation), between bicubic(LR) and
   the HR grid blurred to the LR band (σ = S/2 fine px), for each of the 12 subimages: how far the two scans moved
   against each other locally, beyond the global registration the pairs are resampled with.

Results: ``benchmarks/RESULTS.md``, "The ΔSSIM still missing".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import column_subimages, scored_subimages  # noqa: E402
from sem_pairs import SCORED, LoadedPair, load_pair  # noqa: E402

from refscope.models.evaluation import COLS, ROWS  # noqa: E402
from refscope.models.image_ops import upsample_bicubic  # noqa: E402
from refscope.models.metrics import score_all  # noqa: E402


def clean_lr(hr_grid: np.ndarray, scale: int, lr_shape: tuple[int, int]) -> np.ndarray:
    """The HR grid (S·h, S·w) blurred by σ = S/4 fine px and sampled at the centres of the (h, w) LR pixels."""
    centre = scale // 2
    blurred = ndimage.gaussian_filter(hr_grid, scale / 4)
    return blurred[centre::scale, centre::scale][: lr_shape[0], : lr_shape[1]]


def headroom(p: LoadedPair) -> tuple[float, float]:
    """(mean ΔPSNR dB, mean ΔSSIM) of bicubic of the clean LR over bicubic of the real LR, scored quarter."""
    deltas = []
    for lr, ref in scored_subimages(p, p.scale):
        base = score_all(ref, upsample_bicubic(lr, p.scale))
        bound = score_all(ref, upsample_bicubic(clean_lr(ref, p.scale, lr.shape), p.scale))
        deltas.append((bound.psnr - base.psnr, bound.ssim - base.ssim))
    return float(np.mean([d[0] for d in deltas])), float(np.mean([d[1] for d in deltas]))


def local_shifts(p: LoadedPair) -> np.ndarray:
    """(ROWS, COLS, 2) shift in fine px of the HR against bicubic(LR) in every subimage of the overlap."""
    s = p.scale
    out = np.zeros((ROWS, COLS, 2))
    for c in range(COLS):
        for r, (lr, hr) in enumerate(column_subimages(p, s, c)):
            shift, _, _ = phase_cross_correlation(ndimage.gaussian_filter(hr.astype(np.float64), s / 2),
                                                  upsample_bicubic(lr.astype(np.float64), s), upsample_factor=20,
                                                  normalization=None)
            out[r, c] = shift
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", help="comma-separated pair names (default: the six scored pairs)")
    args = parser.parse_args(argv)
    pairs = {name: load_pair(name) for name in (args.pairs.split(",") if args.pairs else SCORED)}
    print("| pair | S | clean LR, bicubic: ΔPSNR dB | ΔSSIM |\n|---|---|---|---|")
    for name, p in pairs.items():
        d_psnr, d_ssim = headroom(p)
        print(f"| {name} | {p.scale} | {d_psnr:+.2f} | {d_ssim:+.4f} |", flush=True)
    print(f"\nlocal shift (dy, dx) fine px per subimage, rows top to bottom, column {COLS} scored:")
    for name, p in pairs.items():
        shifts = local_shifts(p)
        print(f"{name}: max |shift| {np.abs(shifts).max():.2f} px, scored column max "
              f"{np.abs(shifts[:, -1]).max():.2f} px")
        for row in shifts:
            print("   " + "  ".join(f"{dy:+.2f},{dx:+.2f}" for dy, dx in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

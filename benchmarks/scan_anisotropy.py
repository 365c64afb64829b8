"""Is a raster scan's LR frame the same along x and y? The evidence behind training on the scan's own orientation.

    .venv/bin/python benchmarks/scan_anisotropy.py [--pairs pair00,pair07]

For each scored pair's whole LR frame: the correlation of neighbouring pixels of its residual (the frame minus its
5 x 5 median, 8 px border dropped) along x (the fast scan axis) and along y (line to line), and the ratio of the
frame's mean power at high horizontal frequencies (|fx| > 1/4 cycle/px, |fy| <= 3 bins) to that at high vertical
ones. A detector that lags along the fast axis smooths along x (correlation up, high-fx power down); a network
trained on patches flipped and turned at random cannot learn that difference. Results: ``benchmarks/RESULTS.md``,
"The scan's own orientation".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sem_pairs import SCORED, load_pair  # noqa: E402


def anisotropy(frame: np.ndarray) -> tuple[float, float, float]:
    """(residual neighbour correlation along x, along y, high-fx / high-fy power) of one (H, W) frame."""
    image = np.asarray(frame, dtype=np.float64)
    residual = (image - ndimage.median_filter(image, 5))[8:-8, 8:-8]
    along_x = np.corrcoef(residual[:, :-1].ravel(), residual[:, 1:].ravel())[0, 1]
    along_y = np.corrcoef(residual[:-1].ravel(), residual[1:].ravel())[0, 1]
    power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
    h, w = power.shape
    cy, cx = h // 2, w // 2
    high_fx = power[cy - 3:cy + 4, cx + w // 4:].mean()
    high_fy = power[cy + h // 4:, cx - 3:cx + 4].mean()
    return float(along_x), float(along_y), float(high_fx / high_fy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", help="comma-separated pair names (default: the six scored pairs)")
    args = parser.parse_args(argv)
    print("| pair | S | LR frame | residual correlation along x | along y | high-fx / high-fy power |\n"
          "|---|---|---|---|---|---|")
    for name in args.pairs.split(",") if args.pairs else SCORED:
        p = load_pair(name)
        along_x, along_y, ratio = anisotropy(p.lr)
        print(f"| {name} | {p.scale} | {p.lr.shape[1]}x{p.lr.shape[0]} | {along_x:+.3f} | {along_y:+.3f} | "
              f"{ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

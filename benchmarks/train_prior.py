"""Train refscope's pretrained EM priors from the physical SEM pairs of ../shared/data/sem_pairs.

    .venv/bin/python benchmarks/train_prior.py [--scales 2,3,4] [--budget-s 300] [--exclude pair00,...] [--out DIR]
                                               [--network auto] [--device cpu|cuda]
                                               [--unpaired ../shared/data/sem_unpaired/raw [--unpaired-crop 96]]
                                               [--ssim-weight 0.01] [--subsample-lr 2]

For every S, the ``--network`` (default ``auto``: the network served at S,
:data:`refscope.models.network_names.AUTO_NETWORK`) is trained on every pair whose factor allows S (an x10 pair
gives S = 2, 3, 4 grids), minus ``--exclude`` and every pair sharing a raw frame with them (leave-one-out priors for
the quality benchmark: a pair is never scored by a model that saw its images). The right quarter of every pair's
overlap is held out and the best checkpoint on it is kept (:func:`refscope.models.prior.train_prior`).
``--unpaired DIR`` adds one physical-style pair per HR-only frame of DIR (a random crop of ``--unpaired-crop`` LR px
a side, scanned S times coarser by :func:`refscope.models.prior.scanned_pair`; measured not to help yet, see
``benchmarks/RESULTS.md``). ``--subsample-lr K`` adds, for every pair too coarse for S whose LR sub-grid of step K
allows it (an x2.4 pair at S = 4), its K² sub-grids ``lr[py::K, px::K]`` against the same HR: physical scans K times
coarser, since an SEM point-samples (:func:`sem_pairs.load_subsampled_pairs`; measured not to help either).
``--device cuda`` trains on a GPU. Writes ``<out>/<network>-x<S>/`` (the state folder
:mod:`refscope.daemon.learn.prior_store` loads) and its ``card.json`` (data, licence, budget, steps, best checkpoint,
device, machine). Default ``--out``: the package's shipped folder ``daemon/learn/priors``.

The data: Thermo Fisher/FEI Versa 3D, 5 kV ETD secondary electrons, lung cells on an insert, Feb 2020; source
GitHub Advanced-Vision-and-Learning-Lab/SEM_Images_Lacunarity, MIT licence (Mohan & Peeples). Only the trained
weights are shipped, never the images.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sem_pairs import load_pair, load_subsampled_pairs, prior_pairs, subsampled_prior_pairs  # noqa: E402

from refscope.daemon.atomic import atomic_write_json  # noqa: E402
from refscope.daemon.state.net_store import save_net  # noqa: E402
from refscope.models.prior import PriorConfig, PriorPair, ScanDegradation, scanned_pair, train_prior  # noqa: E402

DEFAULT_OUT = HERE.parent / "daemon" / "learn" / "priors"
#: w of the structural term L2 + w (1 − SSIM) of the shipped priors: chosen on the leave-one-out priors' validation
#: strips (+0.03 dB, +0.005 SSIM over plain L2; benchmarks/RESULTS.md, "Where and how the priors are trained").
SSIM_WEIGHT = 0.01
SOURCE = ("Thermo Fisher/FEI Versa 3D, 5 kV, ETD secondary electrons, 30 us dwell; lung cells on an insert, Feb 2020; "
          "GitHub Advanced-Vision-and-Learning-Lab/SEM_Images_Lacunarity (MIT licence; Mohan & Peeples, SPIE "
          "Medical Imaging), as ../shared/data/sem_pairs")


def unpaired_pairs(folder: Path, scale: int, crop_lr: int, seed: int) -> tuple[list[PriorPair], list[str]]:
    """One scanned pair per HR-only frame of ``folder`` (a random ``crop_lr``-LR-px crop of each, seeded)."""
    from refscope.daemon.images import read_image

    rng = np.random.default_rng(seed + 1000 * scale)
    pairs, files = [], []
    side = crop_lr * scale
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff")):
        image = np.asarray(read_image(path).data, dtype=np.float64)
        if min(image.shape) < side:
            continue
        y = int(rng.integers(0, image.shape[0] - side + 1))
        x = int(rng.integers(0, image.shape[1] - side + 1))
        pairs.append(scanned_pair(image[y:y + side, x:x + side], scale, rng=rng, name=path.name))
        files.append(path.name)
    return pairs, files


def train_scale(scale: int, budget_s: float, exclude: list[str], out: Path, seed: int = 0,
                network: str = "auto", device: str = "cpu", unpaired: Path | None = None,
                unpaired_crop: int = 96, ssim_weight: float = SSIM_WEIGHT, subsample_lr: int = 0) -> Path:
    names = prior_pairs(scale, exclude)
    if not names:
        raise SystemExit(f"no pair allows x{scale} once {exclude} and the pairs sharing their frames are left out")
    pairs, files = [], []
    for name in names:
        p = load_pair(name)
        lr_region, hr_grid = p.region(scale)
        pairs.append(PriorPair(p.lr, lr_region, hr_grid, name))
        files.extend(p.files)
    subsampled: list[str] = []
    if subsample_lr > 1:
        for name in subsampled_prior_pairs(scale, exclude, subsample_lr):
            for p in load_subsampled_pairs(name, subsample_lr):
                lr_region, hr_grid = p.region(scale)
                pairs.append(PriorPair(p.lr, lr_region, hr_grid, p.name))
                subsampled.append(p.name)
            files.extend(p.files)
    scanned: list[str] = []
    if unpaired is not None:
        extra, scanned = unpaired_pairs(unpaired, scale, unpaired_crop, seed)
        pairs.extend(extra)
        files.extend(scanned)
    print(f"x{scale}: training {network} on {', '.join(names + subsampled)} for {budget_s:g} s", flush=True)
    fit = train_prior(pairs, scale=scale, config=PriorConfig(budget_s=budget_s, seed=seed, network=network,
                                                                  device=device, ssim_weight=ssim_weight))
    folder = out / f"{fit.network}-x{scale}"
    save_net(folder, fit, sources=files)
    card = {"network": fit.network, "scale": scale, "pairs": names, "excluded": exclude, "data": SOURCE,
            "licence_of_data": "MIT",
            "degradation": ("none: physical LR/HR pairs (point-sampled, noisy LR scans)"
                            + (f", plus the {subsample_lr}x{subsample_lr} LR sub-grids of pairs too coarse for "
                               f"x{scale} (coarser physical scans)" if subsampled else "")
                            + ("" if not scanned else
                               f", plus {len(scanned)} HR-only frames scanned S times coarser "
                               f"({ScanDegradation()}; {unpaired_crop} LR px crops)")),
            "subsampled_pairs": subsampled,
            "unpaired_frames": scanned,
            "loss": "L2 against the noisy HR grid (Noise2Noise)" + (f" + {ssim_weight:g} (1 - SSIM)" if ssim_weight
                                                                      else ""), "budget_s": budget_s,
            "steps": fit.history[0]["steps"], "seconds": round(fit.history[0]["seconds"], 1), "seed": seed,
            "best_step": fit.history[0].get("best_step"),
            "best_validation_d_psnr_db": fit.history[0].get("best_validation_d_psnr_db"),
            "validation_curve": fit.history[0].get("validation_curve"),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device_name(device),
            "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
            "command": " ".join(["benchmarks/train_prior.py"] + sys.argv[1:]),
            "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(folder / "card.json", card)
    print(f"x{scale}: {card['steps']} steps in {card['seconds']} s, best on the held-out strips at step "
          f"{card['best_step']} ({card['best_validation_d_psnr_db']} dB) -> {folder}", flush=True)
    return folder


def device_name(device: str) -> str:
    """What the card records of the training device: ``cpu``, or the GPU's own name."""
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="training seconds per scale (1 thread; the shipped priors: 300 s on one CPU thread)")
    parser.add_argument("--exclude", default="", help="comma-separated pairs a leave-one-out prior must not see")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", default="auto",
                        help="auto (the network served at each scale) or a registered name")
    parser.add_argument("--device", default="cpu", help="torch device of the training steps: cpu, cuda or cuda:N")
    parser.add_argument("--unpaired", type=Path, help="a folder of HR-only frames to add as scanned pairs")
    parser.add_argument("--unpaired-crop", type=int, default=96, help="LR px a side of each HR-only frame's crop")
    parser.add_argument("--ssim-weight", type=float, default=SSIM_WEIGHT,
                        help="w of the structural term L2 + w (1 - SSIM) (default 0.01, as the shipped priors; 0: L2)")
    parser.add_argument("--subsample-lr", type=int, default=0,
                        help="add the K x K LR sub-grids of pairs too coarse for S (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    exclude = [e for e in args.exclude.split(",") if e]
    for scale in (int(s) for s in args.scales.split(",")):
        train_scale(scale, args.budget_s, exclude, args.out, args.seed, args.network, args.device, args.unpaired,
                    args.unpaired_crop, args.ssim_weight, args.subsample_lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train refscope's pretrained EM priors from the physical SEM pairs of ../shared/data/sem_pairs.

    .venv/bin/python benchmarks/train_prior.py [--scales 2,3,4] [--steps auto|N|0] [--budget-s S] [--exclude ...]
                                               [--out DIR]
                                               [--network auto] [--device cpu|cuda]
                                               [--unpaired ../shared/data/sem_unpaired/raw [--unpaired-crop 96]]
                                               [--ssim-weight 0.01] [--loss l2|l1] [--subsample-lr 2]

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
The schedule is counted in Adam steps (``--steps auto``: :data:`RECIPE_STEPS`, what 300 s on one CPU thread made
of the shipped priors; the last quarter of the steps at a quarter of the rate), so that a GPU or a busy machine
trains the same recipe; ``--budget-s`` is then only a wall-clock cap (default 1,800 s; the card says
``cut_by_budget`` if it stopped first). ``--steps 0`` trains for ``--budget-s`` seconds instead (default 300), the
last quarter of the *time* at the lower rate, as the priors before this recipe were trained.
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
from refscope.models.training import AUGMENTATIONS  # noqa: E402

DEFAULT_OUT = HERE.parent / "daemon" / "learn" / "priors"
#: w of the structural term L2 + w (1 − SSIM) of the shipped priors: chosen on the leave-one-out priors' validation
#: strips (+0.03 dB, +0.005 SSIM over plain L2; benchmarks/RESULTS.md, "Where and how the priors are trained").
SSIM_WEIGHT = 0.01
#: Adam steps of the shipped priors' recipe per S: what 300 s on one CPU thread of this repository's machine made of
#: them (3,824 / 1,870 / 1,632, rounded; the cards say so), as a step count any device reproduces.
RECIPE_STEPS = {2: 3800, 3: 1900, 4: 1600}
TIME_BUDGET_S = 300.0
"""Seconds of a time-scheduled prior (``--steps 0``), as the priors before the step recipe."""
STEP_CAP_S = 1800.0
"""Wall-clock cap of a step-scheduled prior unless ``--budget-s`` says otherwise."""
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


def recipe_steps(scale: int, steps: str | int) -> int:
    """The step count of ``--steps`` at ``scale``: ``"auto"`` -> :data:`RECIPE_STEPS`, an integer as given (0: train
    by time). Exits with a message for ``auto`` at an S the recipe has no count for."""
    if str(steps) != "auto":
        try:
            n = int(steps)
        except ValueError:
            n = -1
        if n < 0:
            raise SystemExit(f"--steps must be auto, 0 (train by time) or a positive count, got {steps}")
        return n
    if scale not in RECIPE_STEPS:
        raise SystemExit(f"the recipe has no step count for x{scale} (only x{', x'.join(map(str, RECIPE_STEPS))}); "
                         f"give --steps N, or --steps 0 to train for --budget-s seconds")
    return RECIPE_STEPS[scale]


def train_scale(scale: int, budget_s: float, exclude: list[str], out: Path, seed: int = 0,
                network: str = "auto", device: str = "cpu", unpaired: Path | None = None,
                unpaired_crop: int = 96, ssim_weight: float = SSIM_WEIGHT, subsample_lr: int = 0,
                loss: str = "l2", steps: int = 0, augment: str = "dihedral") -> Path:
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
    schedule = f"{steps} steps (cap {budget_s:g} s)" if steps else f"{budget_s:g} s"
    print(f"x{scale}: training {network} on {', '.join(names + subsampled)} for {schedule}", flush=True)
    fit = train_prior(pairs, scale=scale, config=PriorConfig(budget_s=budget_s, steps=steps, seed=seed,
                                                                  network=network, device=device,
                                                                  ssim_weight=ssim_weight, loss=loss,
                                                                  augment=augment))
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
            "loss": f"{loss.upper()} against the noisy HR grid (Noise2Noise)" + (f" + {ssim_weight:g} (1 - SSIM)"
                                                                              if ssim_weight else ""),
            "augment": augment, "budget_s": budget_s, "schedule": fit.history[0]["schedule"],
            "cut_by_budget": fit.history[0].get("cut_by_budget", False),
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
    parser.add_argument("--steps", default="auto",
                        help="Adam steps per scale: auto (the recipe's count at each S, RECIPE_STEPS), N, or 0 to "
                             "train for --budget-s seconds")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"with --steps 0: training seconds per scale (default {TIME_BUDGET_S:g}, as the priors "
                             f"before the step recipe); otherwise a wall-clock cap (default "
                             f"{STEP_CAP_S:g})")
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
    parser.add_argument("--loss", choices=("l2", "l1"), default="l2",
                        help="the pixel loss against the noisy HR (default l2, as the shipped priors)")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="dihedral",
                        help="random transforms of the patch pairs (default dihedral, as the shipped priors; "
                             "none: the scans' own orientation)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    exclude = [e for e in args.exclude.split(",") if e]
    for scale in (int(s) for s in args.scales.split(",")):
        steps = recipe_steps(scale, args.steps)
        budget_s = args.budget_s if args.budget_s is not None else (STEP_CAP_S if steps else TIME_BUDGET_S)
        train_scale(scale, budget_s, exclude, args.out, args.seed, args.network, args.device, args.unpaired,
                    args.unpaired_crop, args.ssim_weight, args.subsample_lr, args.loss, steps, args.augment)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ablation of the session fine-tune of a prior (issue 12): settings side by side on the same priors and pairs.

    python benchmarks/ablation_fine_tune.py --priors DIR [--variants base,avg0.995] [--pairs pair00,...]
                                            [--budget-s 120] [--seeds 0,1,2] [--with-net [--net-channels C | --companion]]
                                            [--jobs 12] [--json F]

Each (pair, variant) fine-tunes the pair's leave-one-out prior (``DIR/excl-<pair>``, trained by
``benchmarks/train_prior.py`` as ``benchmarks/quality.py`` trains them) on the left 9 subimages of the pair's overlap
for ``--budget-s`` seconds on 1 thread (0: the prior alone, no fine-tune), keeping the best checkpoint on the
validation strip (the right quarter of the training area), exactly as ``quality.py``'s ``prior+ft``; the variants
differ only in the settings they give :func:`refscope.models.prior.fine_tune` (:data:`VARIANTS`). Reported per
pair: the validation strip's ΔPSNR and ΔSSIM of the kept checkpoint (what a choice among variants may look at)
and, for the record, ΔPSNR / ΔSSIM over bicubic on the
scored right column (one pass, no self-ensemble, no blend). With several ``--seeds``, :func:`combinations` also
scores the outputs of the seeds' fine-tunes averaged, and blended with the pair's paired library (self-ensemble of
:data:`ENSEMBLE` passes). With ``--with-net``, :func:`with_net` blends each variant's fine-tune with a network
trained from scratch on the same training area: at the served network's size, ``--net-channels`` wide, or
(``--companion``) the product's companion, ``quality.py``'s ``net``; and scores the ways of serving of
:data:`WITH_BASELINE` with the safe baseline's share mixed in (:mod:`refscope.models.net_blend`). Jobs run concurrently, one
process each: give every job its own core (``--jobs``) or the budget buys fewer steps for all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import bicubic_scores, prior_dir, score, scored_subimages, session_net, training_area  # noqa: E402
from sem_pairs import SCORED, load_pair  # noqa: E402

from refscope.models.net_blend import BASELINE_WEIGHTS, baseline_fit, blend_outputs, companion_kwargs  # noqa: E402
from refscope.models.peers import tuned_blur  # noqa: E402
from refscope.models.promotion import held_out_delta_psnr  # noqa: E402
from refscope.models.self_ensemble import DIHEDRAL  # noqa: E402

ENSEMBLE = 4
"""Self-ensemble passes of the outputs combined by :func:`combinations` (what ``best`` serves at S = 2, 3)."""
SERVED_BLENDS = {"ft×1": (1, None), "ft×2": (2, None), "blend×1": (1, "same"), "blend×1, net flipped": (1, "flipped"),
                 "blend×2": (2, "same"), "blend×2, net flipped": (2, "flipped")}
"""What :func:`with_net` also scores as a server could run it: (passes, how the network sees them) -- the fine-tune
alone over the first n transforms of :data:`~refscope.models.self_ensemble.DIHEDRAL`, or one graph holding both
networks run n times, the from-scratch network on the same transforms (``"same"``) or on the next n of them
(``"flipped"``: the graph flips its input in y before that network, so two passes see four orientations)."""
WITH_BASELINE = ("ft×2", "ft×4", "blend×1", "blend×2", "blend×4")
"""Ways of serving (:data:`SERVED_BLENDS`, ``ft×4``, ``blend×4``) that :func:`with_net` also scores mixed with the
safe baseline, ``(1 - u) · served + u · baseline`` with ``u`` of
:data:`~refscope.models.net_blend.BASELINE_WEIGHTS` chosen on the validation strip after ``w`` (as a daemon round
chooses them): the baseline is the product's layer (:func:`~refscope.models.net_blend.baseline_fit`) at the σ
:func:`~refscope.models.peers.tuned_blur` picks on the validation strip."""
BLEND_WEIGHTS = (0.0, 0.25, 0.5)
"""Candidate weights of the paired library in :func:`combinations`' blends."""
NET_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
"""Candidate weights of the from-scratch network in :func:`with_net`'s blends."""

VARIANTS: dict[str, dict] = {
    "base": {},                                   # FINE_TUNE as shipped: L1 + 0.01 (1 - SSIM), patches as scanned
    "dihedral": {"augment": "dihedral"},          # FINE_TUNE before: patches flipped and turned at random
    "l2": {"loss": "l2", "ssim_weight": 0.0},     # plain L2 (FINE_TUNE before the structural term)
    "l2-ssim0.01": {"loss": "l2"},                # L2 + 0.01 (1 - SSIM) (FINE_TUNE before L1)
    "l1": {"ssim_weight": 0.0},                   # plain L1 (the session net's loss, fit_network's default)
    "l1-ssim0.03": {"ssim_weight": 0.03},
    "l1-ssim0.1": {"ssim_weight": 0.1},
    "l1-ssim0.3": {"ssim_weight": 0.3},
    "avg0.99": {"average": 0.99},                 # checkpoints of the weights' moving average, ~100 steps
    "avg0.995": {"average": 0.995},               # ~200 steps
    "hr-gauss0.5": {"hr_filter": ("gaussian", 0.5)},  # the HR targets low-passed (σ fine px); validation stays noisy
    "hr-nlm": {"hr_filter": ("nlm", 0.8)},        # the HR targets denoised by NLM (h = 0.8 σ of the HR)
    "ssim0.002": {"loss": "l2", "ssim_weight": 0.002},  # L2 + w (1 - SSIM) against the noisy HR (training.ssim_loss)
    "ssim0.01": {"loss": "l2", "ssim_weight": 0.01},
    "ssim0.02": {"loss": "l2", "ssim_weight": 0.02},
    "ssim0.05": {"loss": "l2", "ssim_weight": 0.05},
    "l2-ssim0.01-boot0.3": {"loss": "l2", "bootstrap_fraction": 0.3},  # 30 % of the budget on LR-only pairs first
    "l1-boot0.3": {"ssim_weight": 0.0, "bootstrap_fraction": 0.3},
    "lr1e-4": {"lr": 1e-4},                       # FINE_TUNE's Adam rate (2e-4) halved / doubled
    "lr4e-4": {"lr": 4e-4},
    "sp1e-3": {"anchor_weight": 1e-3},            # L2-SP: α Σ (w − w_prior)² added to the loss
    "sp1e-2": {"anchor_weight": 1e-2},
    "sp1e-1": {"anchor_weight": 1e-1},
    "flips": {"augment": "flips"},                # patches flipped in y and/or x only, never transposed
    "no-aug": {"augment": "none"},                # as scanned (= base since it was kept)
    "align": {"hr_align": "bicubic"},             # HR targets warped onto bicubic(LR) (locally_aligned_targets)
    "align-prior": {"hr_align": "prior"},         # ... onto the prior's output
}
"""Settings (keywords of :func:`refscope.models.prior.fine_tune`) of each variant, on top of ``FINE_TUNE``.
Results: RESULTS.md, "Ablation: checkpoints of the fine-tune's weight average" (not kept: ``FINE_TUNE`` has no
average), "Ablation: denoised HR targets" (not kept), "Ablation: a structural term" (kept: ``ssim_weight`` 0.01)
and "Ablation: L1 or L2 in the fine-tune" (kept: ``loss`` L1; the bootstrap not kept); the learning rates in
"The ΔSSIM still missing" (flat: ``lr`` 2e-4 stays), as L2-SP toward the prior (worse at every α: not kept). The first three were
measured when ``FINE_TUNE`` was plain L2."""


def run(pair: str, variant: str, priors: str, budget_s: float, seed: int) -> dict:
    import torch

    from refscope.daemon.learn.prior_store import load_prior
    from refscope.models.net_fit import net_predictor
    from refscope.models.prior import fine_tune, frame_normalisation

    torch.set_num_threads(1)
    p = load_pair(pair)
    scale = p.scale
    _, _, split = training_area(p, scale)
    prior = load_prior("auto", scale, prior_dir(Path(priors), [pair]))
    settings = dict(VARIANTS[variant])
    train_lr, train_hr = split.train
    if "hr_filter" in settings:  # denoised targets: less variance, some bias; the checkpoint is chosen on noisy HR
        train_hr = filtered_targets(train_hr, *settings.pop("hr_filter"))
    if "hr_align" in settings:  # the HR targets warped onto the LR's own geometry, block by block
        from refscope.models.image_ops import upsample_bicubic

        how = settings.pop("hr_align")
        ref = (upsample_bicubic(np.asarray(train_lr, np.float64), scale) if how == "bicubic" else
               net_predictor(replace(prior, normalisation=frame_normalisation(p.lr)))(train_lr))
        train_hr = locally_aligned_targets(np.asarray(ref, np.float64), train_hr, scale)
    start = time.perf_counter()
    if budget_s > 0:
        tuned = fine_tune(prior, [p.lr], [(train_lr, train_hr)], budget_s=budget_s, validation=list(split.held_out),
                          seed=seed, **settings)
    else:  # the prior alone, in the frame's own units
        tuned = replace(prior, normalisation=frame_normalisation(p.lr))
    took = time.perf_counter() - start
    predict = net_predictor(tuned)
    scored = scored_subimages(p, scale)
    held = list(split.held_out)
    outputs = oriented_outputs(predict, held, scored)  # the first transform is the identity: one pass
    result = score(scored, [o[0] for o in outputs["scored"]], bicubic_scores(scored))
    on_validation = score(held, [o[0] for o in outputs["validation"]], bicubic_scores(held))
    last = tuned.history[-1]
    by_passes = {n: validation_score([o[:n].mean(0) for o in outputs["validation"]], held, scale)
                 for n in (1, 2, ENSEMBLE)}  # the self-ensemble: first n transforms of DIHEDRAL, averaged
    row = {"pair": pair, "variant": variant, "seed": seed, "scale": scale,
           "validation_d_psnr": (last.get("best_validation_d_psnr_db") if budget_s > 0  # the keeper's measure
                                 else held_out_delta_psnr(predict, held, scale=scale)),
           "validation_d_ssim": on_validation["d_ssim"],
           "best_step": last.get("best_step"), "steps": last["steps"], "seconds": round(took, 1),
           "scored_d_psnr": result["d_psnr"], "scored_d_ssim": result["d_ssim"], "frc_px": result["frc_px"],
           **{f"validation_d_psnr_x{n}": value for n, value in by_passes.items()}}
    return row, outputs


def oriented_outputs(predict, held_out, scored) -> dict:
    """``predict``'s outputs on the validation and scored subimages, each an (:data:`ENSEMBLE`, H, W) stack: one
    output per transform of :data:`~refscope.models.self_ensemble.DIHEDRAL` (mapped back), in that order."""
    def stack(lr: np.ndarray) -> np.ndarray:
        return np.stack([t.invert(predict(np.ascontiguousarray(t.apply(lr)))) for t in DIHEDRAL[:ENSEMBLE]])

    return {"validation": [stack(lr) for lr, _ in held_out], "scored": [stack(lr) for lr, _ in scored]}


def run_net(pair: str, budget_s: float, seed: int, network_kwargs: dict | None = None) -> dict:
    """The session network from scratch on the pair's training area (:func:`quality.session_net`, its network built
    with ``network_kwargs``) for ``budget_s`` on 1 thread: its :func:`oriented_outputs`."""
    import torch

    from refscope.models.net_fit import net_predictor

    torch.set_num_threads(1)
    p = load_pair(pair)
    _, _, split = training_area(p, p.scale)
    net = session_net(split, p.scale, budget_s, seed, network_kwargs)
    return oriented_outputs(net_predictor(net), split.held_out, scored_subimages(p, p.scale))


def validation_score(outputs: list[np.ndarray], held_out, scale: int) -> float:
    """Mean ΔPSNR over bicubic on the validation subimages ``held_out`` of ``outputs`` computed beforehand (one
    S-times output per subimage, in order)."""
    it = iter(outputs)
    return held_out_delta_psnr(lambda _: next(it), held_out, scale=scale)


def with_net(pair: str, tuned: dict, net: dict) -> dict[str, dict]:
    """The fine-tune's outputs blended with the from-scratch network's, ``(1 - w) · ft + w · net`` with ``w`` of
    :data:`NET_WEIGHTS` chosen on the validation strip: validation ΔPSNR and the scored ΔPSNR / ΔSSIM of the
    fine-tune alone, the network alone and the chosen blend (all self-ensembled over :data:`ENSEMBLE` passes), then
    of each way of serving in :data:`SERVED_BLENDS` (``tuned`` and ``net``: :func:`oriented_outputs`), and of those
    in :data:`WITH_BASELINE` with the safe baseline's share (``… + base``)."""
    from refscope.models.net_fit import net_predictor
    from refscope.models.training import Normalisation

    p = load_pair(pair)
    _, _, split = training_area(p, p.scale)
    scored = scored_subimages(p, p.scale)
    baselines = bicubic_scores(scored)

    def val_score(outputs: list[np.ndarray]) -> float:
        return validation_score(outputs, split.held_out, p.scale)

    def served(key: str, passes: int, net_sees: str | None, w: float) -> list[np.ndarray]:
        first = slice(0, passes)
        other = first if net_sees == "same" else slice(passes, 2 * passes)
        return blend_outputs([[a[first].mean(0) for a in tuned[key]], [b[other].mean(0) for b in net[key]]],
                             (1 - w, w))

    def chosen(passes: int, net_sees: str | None) -> dict:
        weights = NET_WEIGHTS if net_sees else (0.0,)
        by_w = {w: val_score(served("validation", passes, net_sees, w)) for w in weights}
        w = max(by_w, key=by_w.get)
        return {"validation": by_w[w], "w": w} | score(scored, served("scored", passes, net_sees, w), baselines)

    sigma, _ = tuned_blur(list(split.held_out), scale=p.scale)
    base = net_predictor(baseline_fit(p.scale, sigma, Normalisation(0.0, 1.0)))
    base_out = {"validation": [base(lr) for lr, _ in split.held_out], "scored": [base(lr) for lr, _ in scored]}

    def with_baseline(passes: int, net_sees: str | None) -> dict:
        w = chosen(passes, net_sees)["w"]

        def mixed(key: str, u: float) -> list[np.ndarray]:
            return blend_outputs([served(key, passes, net_sees, w), base_out[key]], (1 - u, u))

        by_u = {u: val_score(mixed("validation", u)) for u in BASELINE_WEIGHTS}
        u = max(sorted(by_u), key=by_u.get)
        return {"validation": by_u[u], "w": w, "u": u, "sigma": sigma} | score(scored, mixed("scored", u), baselines)

    ways = SERVED_BLENDS | {f"ft×{ENSEMBLE}": (ENSEMBLE, None), f"blend×{ENSEMBLE}": (ENSEMBLE, "same")}
    out = {f"ft×{ENSEMBLE}": chosen(ENSEMBLE, None),
           f"net×{ENSEMBLE}": {"validation": val_score([b.mean(0) for b in net["validation"]])}
           | score(scored, [b.mean(0) for b in net["scored"]], baselines),
           "blend": chosen(ENSEMBLE, "same")}
    out |= {name: chosen(passes, net_sees) for name, (passes, net_sees) in SERVED_BLENDS.items()}
    return out | {f"{name} + base": with_baseline(*ways[name]) for name in WITH_BASELINE}


def filtered_targets(hr: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """The HR training grid low-passed (``"gaussian"``, σ = ``amount`` fine px) or denoised by non-local means
    (``"nlm"``, scikit-image, h = ``amount`` σ with σ the HR's wavelet noise estimate)."""
    from scipy import ndimage

    from refscope.models.noise import estimate_noise_sigma

    hr = np.asarray(hr, dtype=np.float64)
    if kind == "gaussian":
        return ndimage.gaussian_filter(hr, amount, mode="reflect")
    if kind == "nlm":
        from skimage.restoration import denoise_nl_means

        sigma = estimate_noise_sigma(hr)
        return denoise_nl_means(hr, h=amount * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    raise ValueError(f"unknown target filter {kind!r}")


def locally_aligned_targets(reference: np.ndarray, hr: np.ndarray, scale: int, block_lr: int = 48,
                            step_lr: int = 24) -> np.ndarray:
    """The HR training grid (S·h, S·w) warped onto ``reference`` (an S-times image of the LR, on the LR's own
    geometry): the shift of the HR, blurred to the LR band (σ = S/2 fine px), against ``reference`` in Hann-windowed
    blocks of ``block_lr`` LR px every ``step_lr`` (phase correlation to 1/20 px), clipped to ±2 fine px,
    median-filtered over 3 x 3 blocks, interpolated linearly between block centres and applied by cubic
    resampling. Experiment only (RESULTS.md, "The ΔSSIM still missing": not kept)."""
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    size, step = block_lr * scale, step_lr * scale
    height, width = hr.shape
    ys = list(range(0, max(height - size, 0) + 1, step))
    xs = list(range(0, max(width - size, 0) + 1, step))
    blurred = ndimage.gaussian_filter(np.asarray(hr, np.float64), scale / 2)
    window = np.outer(np.hanning(size), np.hanning(size))
    field = np.zeros((len(ys), len(xs), 2))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            ref, moving = reference[y:y + size, x:x + size], blurred[y:y + size, x:x + size]
            field[i, j], _, _ = phase_cross_correlation((ref - ref.mean()) * window,
                                                        (moving - moving.mean()) * window,
                                                        upsample_factor=20, normalization=None)
    field = np.clip(field, -2.0, 2.0)
    field = np.stack([ndimage.median_filter(field[..., k], size=3, mode="nearest") for k in range(2)], -1)
    rows = np.interp(np.arange(height), np.array(ys) + size / 2, np.arange(len(ys)))
    cols = np.interp(np.arange(width), np.array(xs) + size / 2, np.arange(len(xs)))
    grid = np.meshgrid(rows, cols, indexing="ij")
    dy, dx = (ndimage.map_coordinates(field[..., k], grid, order=1, mode="nearest") for k in range(2))
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return ndimage.map_coordinates(np.asarray(hr, np.float64), [yy - dy, xx - dx], order=3, mode="reflect")


def combinations(pair: str, runs: list[tuple[dict, dict]]) -> dict[str, dict]:
    """Outputs of several fine-tunes of one pair (different seeds) averaged pixel by pixel, and each blended with
    the pair's paired library ``w · paired + (1 - w) · net`` with ``w`` chosen on the validation strip
    (:data:`BLEND_WEIGHTS`): validation and scored ΔPSNR / ΔSSIM of every combination (self-ensemble of
    :data:`ENSEMBLE` passes everywhere)."""
    from refscope.models.pipeline import FitConfig, enhance, fit_library

    p = load_pair(pair)
    scale = p.scale
    train_lr, train_hr, split = training_area(p, scale)
    scored = scored_subimages(p, scale)
    baselines = bicubic_scores(scored)
    library = fit_library([(train_lr, train_hr)], config=FitConfig(scale=scale))
    lib_val = [enhance(lr, library, method="paired") for lr, _ in split.held_out]
    lib_sc = [enhance(lr, library, method="paired") for lr, _ in scored]

    def val_score(outputs: list[np.ndarray]) -> float:
        return validation_score(outputs, split.held_out, scale)

    out: dict[str, dict] = {}
    for k in range(1, len(runs) + 1):
        val = [np.mean([r[1]["validation"][i].mean(0) for r in runs[:k]], axis=0) for i in range(len(split.held_out))]
        sc = [np.mean([r[1]["scored"][i].mean(0) for r in runs[:k]], axis=0) for i in range(len(scored))]
        out[f"net×{ENSEMBLE}, {k} seed(s)"] = {"validation": val_score(val)} | score(scored, sc, baselines)
        by_w = {w: val_score([w * a + (1 - w) * b for a, b in zip(lib_val, val)]) for w in BLEND_WEIGHTS}
        w = max(by_w, key=by_w.get)
        out[f"net×{ENSEMBLE}, {k} seed(s) + paired"] = ({"validation": by_w[w], "w": w}
                                                      | score(scored, [w * a + (1 - w) * b for a, b in zip(lib_sc, sc)],
                                                              baselines))
    return out


def table(rows: list[dict], variants: list[str], key: str, fmt: str) -> str:
    pairs = sorted({r["pair"] for r in rows})
    by = {(r["pair"], r["variant"]): r for r in rows}
    lines = ["| pair | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for pair in pairs:
        lines.append(f"| {pair} | " + " | ".join(format(by[pair, v][key], fmt) if (pair, v) in by else "–"
                                                   for v in variants) + " |")
    means = [np.mean([by[p, v][key] for p in pairs if (p, v) in by]) for v in variants]
    lines.append("| **mean** | " + " | ".join(f"**{format(m, fmt)}**" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", required=True, help="leave-one-out priors of quality.py (excl-<pair>/...)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--pairs", default=",".join(SCORED))
    parser.add_argument("--budget-s", type=float, default=120.0, help="fine-tune seconds; 0: score the prior alone")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; with several, their outputs are also "
                        "averaged and blended with the library (combinations)")
    parser.add_argument("--with-net", action="store_true", help="also train the session network from scratch on "
                        "each pair (seed of the first) and blend it with each variant's fine-tune (with_net)")
    parser.add_argument("--net-channels", type=int, help="feature channels of the from-scratch network of "
                        "--with-net (default: the network's own)")
    parser.add_argument("--companion", action="store_true", help="--with-net trains the product's companion "
                        "(refscope.models.net_blend.companion_kwargs at each pair's scale) instead")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    pairs = args.pairs.split(",")
    for pair in pairs:  # register each pair once (cached) before the workers start
        load_pair(pair)
    seeds = [int(v) for v in args.seeds.split(",")]
    jobs = [(pair, v, seed) for pair in pairs for v in variants for seed in seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(run, [j[0] for j in jobs], [j[1] for j in jobs], [args.priors] * len(jobs),
                             [args.budget_s] * len(jobs), [j[2] for j in jobs]))
        net_kwargs = [companion_kwargs("auto", load_pair(pair).scale) if args.companion
                      else {"channels": args.net_channels} if args.net_channels else None for pair in pairs]
        nets = (dict(zip(pairs, pool.map(run_net, pairs, [args.budget_s] * len(pairs), [seeds[0]] * len(pairs),
                                         net_kwargs)))
                if args.with_net else {})
        combined = {}
        for v in variants if nets else ():
            firsts = [next(d[1] for d in done if d[0]["pair"] == pair and d[0]["variant"] == v
                           and d[0]["seed"] == seeds[0]) for pair in pairs]
            blended = dict(zip(pairs, pool.map(with_net, pairs, firsts, [nets[pair] for pair in pairs])))
            combined[f"{v} + net"] = blended
        if len(seeds) > 1:
            for v in variants:
                per_pair = {pair: [d for d in done if d[0]["pair"] == pair and d[0]["variant"] == v] for pair in pairs}
                results = pool.map(combinations, pairs, [per_pair[pair] for pair in pairs])
                combined[v] = dict(zip(pairs, results))
    rows = [d[0] for d in done if d[0]["seed"] == seeds[0]]
    elapsed = time.perf_counter() - start
    print(f"{len(jobs)} fine-tunes of {args.budget_s:g} s, {args.jobs} at a time, in {elapsed / 60:.1f} min on "
          f"{platform.machine()} ({os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps({"rows": [d[0] for d in done], "combined": combined, "budget_s": args.budget_s,
                                         "jobs": args.jobs, "machine": platform.machine(), "cores": os.cpu_count()},
                                        indent=1))
    for title, key, fmt in (("validation strip ΔPSNR dB (the choice)", "validation_d_psnr", "+.3f"),
                            ("validation strip ΔSSIM (the choice)", "validation_d_ssim", "+.4f"),
                            ("scored ΔPSNR dB (record)", "scored_d_psnr", "+.3f"),
                            ("scored ΔSSIM (record)", "scored_d_ssim", "+.4f"),
                            ("steps", "steps", ".0f"), ("best step", "best_step", ".0f"),
                            *((f"validation strip ΔPSNR dB, self-ensemble of {n} (record)", f"validation_d_psnr_x{n}",
                               "+.3f") for n in (1, 2, ENSEMBLE))):
        print(f"\n{title} (seed {seeds[0]})\n" + table(rows, variants, key, fmt))
    for v, by_pair in combined.items():
        names = list(next(iter(by_pair.values())))
        for key in ("validation", "d_psnr", "d_ssim"):
            print(f"\n{v}: combinations, {key}\n| pair | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
            for pair, res in by_pair.items():
                print(f"| {pair} | " + " | ".join(f"{res[n][key]:+.4f}" for n in names) + " |")
            print("| **mean** | " + " | ".join(f"**{np.mean([r[n][key] for r in by_pair.values()]):+.4f}**"
                                             for n in names) + " |")
        print("weight chosen: " + ", ".join(f"{pair} {[res[n]['w'] for n in names if 'w' in res[n]]}"
                                            for pair, res in by_pair.items()))
        if any("u" in r for res in by_pair.values() for r in res.values()):
            print("baseline share chosen: " + ", ".join(f"{pair} {[res[n]['u'] for n in names if 'u' in res[n]]}"
                                                        for pair, res in by_pair.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

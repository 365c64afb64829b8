"""Multi-frame fusion of the live LR frames before enhancement (issue 16): what it gains, and what it costs.

    python benchmarks/bench_fusion.py [--json F] [--seed N] [--skip-zeiss] [--skip-latency] [--net-budget-s T]
                                      [--ns 2,4,8]
    python benchmarks/bench_fusion.py --choose F   # the spectral merge's settings, swept on validation series

1. **Simulator, truth known** (:func:`refscope.models.simulator.drift_series`, default optics and noise: 256x320
   LR frames, dose 300, read noise 0.01, line jitter 0.1 px, slow sub-pixel drift, a bright disc moving 2.9 px per
   frame). An HR reference (x2) of the field's centre is scanned with frame 7; the model is fitted on the LR
   frame it pairs with -- single-frame: frame 7; fused: frames 7..7-N+1 fused (what the daemon pairs with) -- and
   ``best`` is the daemon's promotion rule without the background network: the paired library if it beats bicubic on
   the reference's held-out quarter, else bicubic. Scored on frame 15 (fused with 15..15-N+1) against the clean
   specimen of frame 15's field at x2 (:func:`~refscope.models.simulator.drift_truth`): PSNR / SSIM over the
   frame (8 LR px border left out), the same inside the moving object's region (where it is now and where it was
   during the window), and the FRC resolution against the truth (1/7 threshold, output px). Rows: bicubic and
   ``best`` of one frame, ``best`` of the fused frame (N = 1, 2, 4, 8) by the tile test and (``spectral:`` rows) by
   the spectral merge (:data:`SPECTRAL`), and the finer-grid shift-and-add
   (:func:`~refscope.models.fusion.fuse_fine`, N = 2, 4, 8). The spectral merge's settings were chosen by
   :func:`choose` (``--choose``) on other simulated series. The ceiling row, ``best`` of the noise-free frame
   (fitted on the clean frame 7, applied to the clean frame 15), is what fusing ever more frames tends to.
   ``--net-budget-s T``: ``best`` is the daemon's network instead (the shipped x2 prior fine-tuned T s), spectral
   merge only, for the window lengths ``--ns``.
2. **Real Zeiss pair** (``../shared/data/hr_only/zeiss_sem/ZEISS_SEM_multipage.tif``, two InLens scans of one area 3
   min apart): the registered shift (rigid, and the block field of the slow-scan distortion), the noise of one
   frame and of the fused frame by the wavelet (Haar MAD) estimate :func:`~refscope.models.noise.
   estimate_noise_sigma` and by the finest diagonal Haar band on flat pixels, the share of pixels fused (the
   spectral merge: the older scan's mean weight), and the FRC of the two registered scans (the fused frame's
   independent halves).
3. **Latency** of the daemon's serve step on 640x472 LR frames: :class:`~refscope.daemon.serve.fusion_window.
   FusionWindow.add` (one registration + window-1 warps and tests) and the enhancement by the serving engine's
   paired model (ONNX Runtime), per frame, median of 12 frames after 4 warm-up frames; then the fusion alone,
   tile test and spectral merge alternating, CPU time per frame (3 runs each).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from refscope.models.fusion import FusionConfig, fuse_fine, fuse_frames, register_frame, subpixel_diversity
from refscope.models.image_ops import upsample_bicubic
from refscope.models.metrics import frc, frc_resolution, masked_psnr, psnr, ssim
from refscope.models.noise import estimate_noise_sigma
from refscope.models.pipeline import FitConfig, enhance, fit_library, register_reference, training_grids
from refscope.models.promotion import held_out_delta_psnr, split_for_validation
from refscope.models.simulator import (DriftSeries, Optics, State, drift_series, drift_truth, make_areas, scan_hr)

HERE = Path(__file__).resolve().parent
ZEISS = HERE.parent.parent / "shared" / "data" / "hr_only" / "zeiss_sem" / "ZEISS_SEM_multipage.tif"
SCALE = 2
NS = (1, 2, 4, 8)
FIT_AT, SCORE_AT = 7, 15
SPECTRAL = FusionConfig(merge="spectral")
"""The spectral merge as measured here: ``FusionConfig``'s spectral defaults (c, pixel test k, dilation, blur),
chosen on this simulator's rows (see :func:`choose`); never tuned on the Zeiss pair."""


def _best(lr: np.ndarray, hr: np.ndarray, net_budget_s: float = 0.0) -> tuple[object, dict]:
    """The daemon's rule without the network: paired if it beats bicubic on the held-out quarter, else bicubic.
    With ``net_budget_s`` > 0, the rule with the network instead: the shipped x2 prior fine-tuned for that many
    seconds (1 thread) on the reference's training part, best checkpoint on its held-out quarter (the prior
    itself included), as :func:`refscope.models.prior.fine_tune` runs in the daemon."""
    cfg = FitConfig(scale=SCALE)
    geometry = register_reference(lr, hr, factor=float(SCALE), config=cfg)
    box, grid = training_grids(lr, hr, geometry, scale=SCALE)
    (y0, y1), (x0, x1) = box
    split = split_for_validation(lr[y0:y1, x0:x1], grid, scale=SCALE)
    if net_budget_s > 0:
        import torch

        from refscope.daemon.learn.prior_store import load_prior
        from refscope.models.net_fit import net_predictor
        from refscope.models.prior import fine_tune

        torch.set_num_threads(1)
        tuned = fine_tune(load_prior("auto", SCALE), [lr], [split.train], budget_s=net_budget_s,
                          validation=list(split.held_out))
        delta = tuned.history[-1]["best_validation_d_psnr_db"]  # the kept checkpoint's, on the held-out quarter
        return net_predictor(tuned, threads=1), {"chose": "prior+ft", "held_out_delta_db": round(float(delta), 3),
                                                 "box": box}
    model = fit_library([split.train], config=cfg)
    delta = held_out_delta_psnr(lambda x: enhance(x, model), split.held_out, scale=SCALE)
    chosen = "paired" if delta > 0 else "bicubic"
    predict = (lambda x: enhance(x, model)) if chosen == "paired" else (lambda x: upsample_bicubic(x, SCALE))
    return predict, {"chose": chosen, "held_out_delta_db": round(float(delta), 3), "box": box}


def _scores(truth: np.ndarray, est: np.ndarray, mask: np.ndarray) -> dict:
    b = 8 * SCALE
    inner = (slice(b, -b), slice(b, -b))
    res = frc_resolution(frc(truth[inner], est[inner]))
    return {"psnr": round(psnr(truth[inner], est[inner], data_range=1.0), 3),
            "ssim": round(ssim(truth[inner], est[inner], data_range=1.0), 4),
            "object_psnr": round(masked_psnr(truth, est, mask, data_range=1.0), 3),
            "frc_period_px": round(res.period_px, 3)}


@dataclass
class _Series:
    """One simulated series, registered: what every row of :func:`simulator` is computed from."""

    frames: list[np.ndarray]
    motions: dict[int, list]  # anchor frame -> its window's motions (None for the anchor itself)
    hr: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    clean_lr: np.ndarray
    clean_fit_lr: np.ndarray
    lr_shape: tuple[int, int]
    registration_s: list[float]
    shift_error_px: list[float]

    def window(self, anchor: int, n: int) -> tuple[list[np.ndarray], list]:
        return [self.frames[anchor - i] for i in range(n)], self.motions[anchor][:n]


def _series(seed: int) -> _Series:
    rng = np.random.default_rng(seed)
    optics = Optics()
    area = make_areas(["mixed"], optics, rng=rng)[0]
    series = DriftSeries(n_frames=16, object_start=(0.8, 0.8))
    drift = drift_series(area, optics, series, rng=rng)
    frames = [f.astype(np.float64) / 65535.0 for f in drift.frames]
    h, w = optics.lr_shape
    per_lr = optics.lr_pixel_nm / area.specimen_nm
    top = np.array(drift.origin_px) + drift.field_yx[FIT_AT] * per_lr
    stage = (area.origin_m[0] + (top[1] + w * per_lr / 2) * area.specimen_nm * 1e-9,
             area.origin_m[1] + (top[0] + h * per_lr / 2) * area.specimen_nm * 1e-9)
    hr = scan_hr([area], State(0, stage, 1.0, 0.0, 0.0), optics, rng, centre_xy_m=stage,
                 lr_box_shape=(h // 2, w // 2)).astype(np.float64) / 65535.0
    truth = drift_truth(area, optics, series, drift, SCORE_AT, scale=SCALE)
    # the object's region: where it is in frame 15 and where it was in the frames fused with it (ghosts)
    fy, fx = (np.mgrid[0:h * SCALE, 0:w * SCALE] + 0.5) / SCALE
    mask = np.zeros(truth.shape, bool)
    for k in range(SCORE_AT - max(NS) + 1, SCORE_AT + 1):
        cy, cx = drift.object_yx[k] + drift.field_yx[k] - drift.field_yx[SCORE_AT]
        mask |= np.hypot(fy - cy, fx - cx) < series.object_radius_px + 1.5
    cfg = FusionConfig()
    reg_s, motions = [], {}
    for anchor in (FIT_AT, SCORE_AT):
        ref = frames[anchor]
        motions[anchor] = [None]
        for k in range(anchor - 1, anchor - max(NS), -1):
            t0 = time.perf_counter()
            motions[anchor].append(register_frame(ref, frames[k], config=cfg))
            reg_s.append(time.perf_counter() - t0)
    shift_err = [float(np.hypot(*(np.array(m.shift_yx((h, w))) - (drift.field_yx[SCORE_AT - i] - drift.field_yx[SCORE_AT]))))
                 for i, m in enumerate(motions[SCORE_AT]) if m is not None]
    clean_lr = drift_truth(area, optics, series, drift, SCORE_AT, scale=1)  # no noise: what fusion tends to
    clean_fit_lr = drift_truth(area, optics, series, drift, FIT_AT, scale=1)
    return _Series(frames, motions, hr, truth, mask, clean_lr, clean_fit_lr, (h, w), reg_s, shift_err)


def _fused_rows(sim: _Series, config: FusionConfig, n: int, prefix: str = "",
                net_budget_s: float = 0.0) -> tuple[dict, float]:
    """Rows ``{prefix}bicubic of fused N=n`` and ``{prefix}fused N=n then best`` (the library fitted on the fused
    frame the daemon would pair with), and the seconds the scored fusion took."""
    fit_frames, fit_motions = sim.window(FIT_AT, n)
    score_frames, score_motions = sim.window(SCORE_AT, n)
    fused_fit = fuse_frames(fit_frames, motions=fit_motions, config=config)
    predict, info = _best(fused_fit.image, sim.hr, net_budget_s)
    t0 = time.perf_counter()
    fused = fuse_frames(score_frames, motions=score_motions, config=config)
    took = time.perf_counter() - t0
    return {f"{prefix}bicubic of fused N={n}": _scores(sim.truth, upsample_bicubic(fused.image, SCALE), sim.mask),
            f"{prefix}fused N={n} then best": dict(_scores(sim.truth, predict(fused.image), sim.mask),
                                                   chose=info["chose"], mean_count=round(fused.mean_count, 2),
                                                   mean_effective_count=round(_effective(fused), 2))}, took


def _single_rows(sim: _Series, net_budget_s: float = 0.0) -> dict:
    predict1, info1 = _best(sim.frames[FIT_AT], sim.hr, net_budget_s)
    clean_predict, clean_info = _best(sim.clean_fit_lr, sim.hr, net_budget_s)  # what fusing ever more perfect frames tends to
    frame = sim.frames[SCORE_AT]
    return {"bicubic of the noise-free frame (ceiling)": _scores(sim.truth, upsample_bicubic(sim.clean_lr, SCALE),
                                                                 sim.mask),
            "best of the noise-free frame (ceiling of fused then best)": dict(
                _scores(sim.truth, clean_predict(sim.clean_lr), sim.mask), chose=clean_info["chose"]),
            "bicubic, 1 frame": _scores(sim.truth, upsample_bicubic(frame, SCALE), sim.mask),
            "best, 1 frame": dict(_scores(sim.truth, predict1(frame), sim.mask), chose=info1["chose"])}


def _deltas(rows: dict) -> None:
    base = rows["best, 1 frame"]
    for row in rows.values():
        row["d_psnr"] = round(row["psnr"] - base["psnr"], 3)
        row["d_object_psnr"] = round(row["object_psnr"] - base["object_psnr"], 3)


def simulator(seed: int, spectral: FusionConfig = SPECTRAL, net_budget_s: float = 0.0,
              ns: Sequence[int] = NS[1:]) -> dict:
    """The simulator's rows for the fused ``ns``; ``net_budget_s`` > 0: ``best`` with the network (:func:`_best`),
    spectral merge only (each row fine-tunes a network)."""
    sim = _series(seed)
    h, w = sim.lr_shape
    cfg = FusionConfig()
    rows = _single_rows(sim, net_budget_s)
    timings: dict[str, float] = {}
    merges = (("spectral: ", spectral),) if net_budget_s > 0 else (("", cfg), ("spectral: ", spectral))
    for n in ns:
        for prefix, config in merges:
            more, took = _fused_rows(sim, config, n, prefix, net_budget_s)
            rows.update(more)
            timings[f"{config.merge} N={n}"] = took
        score_frames, score_motions = sim.window(SCORE_AT, n)
        fine = fuse_fine(score_frames, scale=SCALE, motions=score_motions, config=cfg)
        rows[f"finer grid N={n}"] = dict(_scores(sim.truth, fine.image, sim.mask),
                                         diversity=subpixel_diversity(score_motions, (h, w), scale=SCALE))
    _deltas(rows)
    return {"rows": rows, "registration_s_median": round(statistics.median(sim.registration_s), 4),
            "fuse_s": {key: round(s, 4) for key, s in timings.items()},
            "spectral_config": _spectral_settings(spectral),
            "shift_error_px_max": round(max(sim.shift_error_px), 4), "lr_shape": [h, w]}


def _spectral_settings(config: FusionConfig) -> dict:
    return {k: getattr(config, k) for k in ("spectral_c", "spectral_k", "spectral_dilate_px", "spectral_blur_px",
                                            "tile")}


CHOOSE_SEEDS = (101, 102, 103)
"""Validation series for :func:`choose`: other simulated areas and drifts than the reported seed's."""
CHOOSE_GRID = [dict(spectral_c=c, spectral_k=k, spectral_dilate_px=r, spectral_blur_px=b)
               for c in (8.0, 16.0, 32.0, 64.0, 128.0)
               for k, r, b in ((3.0, 1, 0.0), (3.5, 1, 0.0), (4.0, 1, 0.0), (4.0, 2, 0.0), (4.5, 2, 0.0),
                               (8.0, 1, 1.0))]
CHOOSE_TIE_DB = 0.02
"""Mean gains within this of the best are taken as equal (the simulator cannot tell them apart)."""


def choose(grid: Sequence[dict] = tuple(CHOOSE_GRID), seeds: Sequence[int] = CHOOSE_SEEDS) -> dict:
    """Sweep the spectral merge's settings on validation series (never the reported seed, never the Zeiss pair).

    For each setting and seed: ``fused N then best`` for N = 2, 4, 8 against the seed's single-frame ``best``.
    Allowed: the object region at or above single-frame ``best`` in every (seed, N). Among the allowed settings
    whose mean PSNR gain is within :data:`CHOOSE_TIE_DB` of the best one (:func:`_pick`): the cheaper first (no
    blur before the pixel test: the blur costs ~3 ms per older frame, ~9 ms of the live window's 100 ms), then the
    largest worst-case object-region gain. The tile test's figures on the same series are recorded beside them."""
    sims = {seed: _series(seed) for seed in seeds}
    singles = {seed: _single_rows(sim)["best, 1 frame"] for seed, sim in sims.items()}

    def measure(config: FusionConfig) -> dict:
        gains, objects = [], []
        for seed, sim in sims.items():
            for n in NS[1:]:
                row = _fused_rows(sim, config, n)[0][f"fused N={n} then best"]
                gains.append(row["psnr"] - singles[seed]["psnr"])
                objects.append(row["object_psnr"] - singles[seed]["object_psnr"])
        return {"mean_d_psnr": round(float(np.mean(gains)), 3), "min_d_object_psnr": round(float(np.min(objects)), 3),
                "d_psnr": [round(g, 3) for g in gains], "d_object_psnr": [round(o, 3) for o in objects]}

    tiles = measure(FusionConfig())
    results = []
    for setting in grid:
        results.append(dict(setting=setting, **measure(FusionConfig(merge="spectral", **setting))))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"seeds": list(seeds), "order": [f"seed {s} N={n}" for s in seeds for n in NS[1:]], "tiles": tiles,
            "results": results, "chosen": _pick(results)}


def _pick(results: Sequence[dict]) -> dict | None:
    """:func:`choose`'s rule over its per-setting results."""
    allowed = [r for r in results if r["min_d_object_psnr"] >= 0.0]
    if not allowed:
        return None
    top = max(r["mean_d_psnr"] for r in allowed)
    return max((r for r in allowed if r["mean_d_psnr"] >= top - CHOOSE_TIE_DB),
               key=lambda r: (r["setting"].get("spectral_blur_px", 0.0) == 0.0, r["min_d_object_psnr"]))


def _effective(fused) -> float:
    """Mean frames per pixel: the spectral merge's effective count, the tile test's count."""
    return float((fused.effective_count if fused.effective_count is not None else fused.count).mean())


def _hf_rms(image: np.ndarray, mask: np.ndarray) -> float:
    """RMS of the finest diagonal Haar coefficients ``HH`` over the 2x2 blocks inside ``mask``: on flat regions
    this is the noise (signal has almost no power there); the same estimator for every image compared."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    q = [image[0:h:2, 0:w:2], image[0:h:2, 1:w:2], image[1:h:2, 0:w:2], image[1:h:2, 1:w:2]]
    m = [mask[0:h:2, 0:w:2], mask[0:h:2, 1:w:2], mask[1:h:2, 0:w:2], mask[1:h:2, 1:w:2]]
    inside = m[0] & m[1] & m[2] & m[3]
    return float(np.sqrt(np.mean(((q[0] - q[1] - q[2] + q[3]) / 2.0)[inside] ** 2)))


def zeiss() -> dict | None:
    if not ZEISS.is_file():
        return None
    from scipy import ndimage

    from refscope.daemon.images import read_frames
    from refscope.models.fusion import warp_frame
    from refscope.models.noise import estimate_noise_sigma_quantised

    pages = [np.asarray(f.data, dtype=np.float64) for f in read_frames(ZEISS)]
    newest, older = pages[1], pages[0]
    cfg = FusionConfig(register_px=512)  # a 2048x1536 scan of smooth structures: register on a larger centre
    rigid = register_frame(newest, older, config=cfg)
    t0 = time.perf_counter()
    blocks = register_frame(newest, older, config=cfg, blocks=(4, 4))
    block_s = time.perf_counter() - t0
    out = {"shape": list(newest.shape), "rigid_shift_yx": [round(v, 2) for v in rigid.shift_yx(newest.shape)],
           "rigid_rotation_deg": round(rigid.rotation_deg, 3), "rigid_ncc": round(rigid.score, 3),
           "block_field_y_px": [round(float(blocks.field[..., 0].min()), 2), round(float(blocks.field[..., 0].max()), 2)],
           "block_field_x_px": [round(float(blocks.field[..., 1].min()), 2), round(float(blocks.field[..., 1].max()), 2)],
           "block_registration_s": round(block_s, 2)}
    unclipped = (newest > newest.min()) & (newest < newest.max())
    flat = unclipped & (ndimage.gaussian_gradient_magnitude(newest, 2.0) < 2.0)  # grey levels per px
    out["clipped_share"] = round(1.0 - float(unclipped.mean()), 3)
    out["flat_share"] = round(float(flat.mean()), 3)
    out["noise_single_haar_mad"] = round(estimate_noise_sigma(newest), 3)  # the uint8 floor: 0.5 / 0.6745
    out["noise_single_quantised"] = round(estimate_noise_sigma_quantised(newest), 3)
    out["noise_older_quantised"] = round(estimate_noise_sigma_quantised(older), 3)
    single_hf = _hf_rms(newest, flat)
    for name, motion, match in (("rigid", rigid, False), ("blocks", blocks, False), ("blocks_matched", blocks, True)):
        fused = fuse_frames([newest, older], motions=[None, motion],
                            config=FusionConfig(register_px=512, match_intensity=match))
        both = fused.count == 2
        out[name] = {"fused_share": round(float(both.mean()), 3),
                     "fused_share_unclipped": round(float(both[unclipped].mean()), 3),
                     "test_sigma": round(fused.noise_sigma, 3),
                     "noise_ratio_haar_mad": round(estimate_noise_sigma(fused.image) / estimate_noise_sigma(newest), 3),
                     "hf_ratio_flat": round(_hf_rms(fused.image, flat) / single_hf, 3),
                     "hf_ratio_unclipped": round(_hf_rms(fused.image, unclipped) / _hf_rms(newest, unclipped), 3),
                     "hf_ratio_flat_fused_px": round(_hf_rms(fused.image, flat & both) / _hf_rms(newest, flat & both),
                                                     3) if (flat & both).any() else None}
    # the spectral merge (SPECTRAL's settings, chosen on the simulator): every pixel is fused in part; and, to show
    # what its pixel test costs on this pair, the same merge without it (not a setting: it ghosts moving objects)
    spectral = replace(SPECTRAL, register_px=512)
    for name, motion, config in (("rigid_spectral", rigid, spectral), ("blocks_spectral", blocks, spectral),
                                 ("blocks_spectral_no_pixel_test", blocks,
                                  replace(spectral, spectral_k=1e9, spectral_dilate_px=0))):
        t0 = time.perf_counter()
        fused = fuse_frames([newest, older], motions=[None, motion], config=config)
        took = time.perf_counter() - t0
        older_weight = fused.effective_count - 1.0  # the older scan's share: 1 fused in full, 0 not at all
        out[name] = {"older_weight_mean": round(float(older_weight.mean()), 3),
                     "older_weight_unclipped": round(float(older_weight[unclipped].mean()), 3),
                     "older_weight_flat": round(float(older_weight[flat].mean()), 3),
                     "rejected_fraction": round(fused.rejected_fraction, 3),
                     "hf_ratio_flat": round(_hf_rms(fused.image, flat) / single_hf, 3),
                     "hf_ratio_unclipped": round(_hf_rms(fused.image, unclipped) / _hf_rms(newest, unclipped), 3),
                     "mean_change_unclipped": round(float((fused.image - newest)[unclipped].mean()), 3),
                     "fuse_s": round(took, 2)}
    # the two registered scans' difference on flat, unclipped pixels where they were fused, slow brightness
    # drift removed: what each scan's noise is when measured against the other (2σ² for independent noise)
    warped, valid = warp_frame(older, blocks, order=3)
    matched = fuse_frames([newest, older], motions=[None, blocks],
                          config=FusionConfig(register_px=512, match_intensity=True))
    from refscope.models.fusion import _intensity_offset

    d = warped - newest
    d = d - _intensity_offset(d, valid, cfg.tile)
    sel = flat & valid & (matched.count == 2)
    out["pair_difference_sigma_per_scan"] = round(float(np.std(d[sel])) / np.sqrt(2.0), 3)
    # how far from pure noise each unclipped 16 px tile is: mean(d²) / (2 mean σ²) with σ from the noise curve
    # (1 = noise only; the test keeps tiles <= residual_ratio = 2)
    from refscope.models.fusion import _tile_mean
    from refscope.models.noise import estimate_noise_curve

    levels, sigmas = estimate_noise_curve(newest)
    var = np.interp(newest, levels, sigmas) ** 2
    use = valid & unclipped
    excess = _tile_mean(d * d, use, cfg.tile) / (2.0 * _tile_mean(var, use, cfg.tile))
    full = _tile_mean(use.astype(np.float64), np.ones_like(use), cfg.tile) > 0.99
    out["tile_excess_quantiles_10_25_50_75_90"] = [round(float(v), 2) for v in
                                                   np.nanquantile(excess[full], [0.1, 0.25, 0.5, 0.75, 0.9])]
    out["noise_curve"] = {"levels": [round(float(v), 1) for v in levels], "sigmas": [round(float(v), 3) for v in sigmas]}
    out["blocks_matched"]["fused_share_flat"] = round(float((matched.count == 2)[flat].mean()), 3)
    m = int(cfg.max_shift_px) + 8  # inside every registered shift
    inner = (slice(m, -m), slice(m, -m))
    out["frc_halves_period_px"] = round(frc_resolution(frc(newest[inner], warped[inner])).period_px, 3)
    return out


def latency(seed: int) -> dict:
    from refscope.daemon.config import ModelConfig, ServeConfig
    from refscope.daemon.serve.engine import ServingEngine
    from refscope.daemon.serve.fusion_window import FusionWindow

    rng = np.random.default_rng(seed)
    optics = Optics(lr_shape=(472, 640))
    area = make_areas(["mixed"], optics, rng=rng, travel_lr_px=16)[0]
    series = DriftSeries(n_frames=16)
    frames = drift_series(area, optics, series, rng=rng).frames
    h, w = optics.lr_shape
    cx = area.origin_m[0] + area.image.shape[1] / 2 * area.specimen_nm * 1e-9
    cy = area.origin_m[1] + area.image.shape[0] / 2 * area.specimen_nm * 1e-9
    hr = scan_hr([area], State(0, (cx, cy), 1.0, 0.0, 0.0), optics, rng, centre_xy_m=(cx, cy),
                 lr_box_shape=(h // 4, w // 4))
    from refscope.models.pipeline import fit

    model = fit(frames[0], [(hr, float(SCALE))], config=FitConfig(scale=SCALE))
    engine = ServingEngine(ModelConfig(scale=SCALE, method="paired"), ServeConfig())
    engine.set_model(model, 1)
    window = FusionWindow(enabled=True, window=4)
    fuse_s, fuse_cpu_s, model_s, total_s = [], [], [], []
    for i, frame in enumerate(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        fused = window.add(frame, t=float(i), stage_xy_m=(0.0, 0.0), pixel_size_nm=optics.lr_pixel_nm)
        t1, c1 = time.perf_counter(), time.process_time()
        result = engine.enhance(fused.image)
        t2 = time.perf_counter()
        if i >= 4:
            fuse_s.append(t1 - t0)
            fuse_cpu_s.append(c1 - c0)
            model_s.append(t2 - t1)
            total_s.append(t2 - t0)
    out = {"lr_shape": [h, w], "window": 4, "backend": result.backend,
           "fusion_ms_median": round(1e3 * statistics.median(fuse_s), 1),
           "fusion_ms_max": round(1e3 * max(fuse_s), 1),
           "fusion_cpu_ms_median": round(1e3 * statistics.median(fuse_cpu_s), 1),
           "load_average_1min": round(os.getloadavg()[0], 2),
           "model_ms_median": round(1e3 * statistics.median(model_s), 1),
           "frames_per_s": round(1.0 / statistics.median(total_s), 2)}
    # the fusion alone, both merges, alternating (3 runs each, per-frame median of each run): the CPU time above
    # includes ONNX Runtime's spinning threads after each model call; the fusion's own work is single-threaded
    runs: dict[str, list[float]] = {"tiles": [], "spectral": []}
    for _ in range(3):
        for merge, config in (("tiles", FusionConfig()), ("spectral", SPECTRAL)):
            alone = FusionWindow(enabled=True, window=4, model_config=config)
            cpu = []
            for i, frame in enumerate(frames):
                c0 = time.process_time()
                alone.add(frame, t=float(i), stage_xy_m=(0.0, 0.0), pixel_size_nm=optics.lr_pixel_nm)
                if i >= 4:
                    cpu.append(time.process_time() - c0)
            runs[merge].append(round(1e3 * statistics.median(cpu), 1))
    out["fusion_alone_cpu_ms"] = {merge: {"runs": r, "median": statistics.median(r)} for merge, r in runs.items()}
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--skip-zeiss", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--net-budget-s", type=float, default=0.0,
                        help="simulator rows with best = the shipped prior fine-tuned this many seconds (1 thread) "
                             "instead of the paired library; spectral merge only")
    parser.add_argument("--ns", default=",".join(map(str, NS[1:])), help="fused window lengths of the simulator rows")
    parser.add_argument("--choose", type=Path, metavar="JSON",
                        help="only sweep the spectral merge's settings on the validation series and write them here "
                             "(about 20 minutes)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.choose is not None:
        from refscope.daemon.atomic import atomic_write_json

        swept = choose()
        swept["wall_s"] = round(time.perf_counter() - start, 1)
        atomic_write_json(args.choose, swept, indent=1)
        print(json.dumps(swept["chosen"]))
        return 0
    results = {"simulator": simulator(args.seed, net_budget_s=args.net_budget_s,
                                      ns=[int(v) for v in args.ns.split(",")])}
    results["zeiss"] = None if args.skip_zeiss else zeiss()
    results["latency"] = None if args.skip_latency else latency(args.seed)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(results, indent=1)
    print(text)
    print(file=sys.stderr)
    if args.json is not None:
        from refscope.daemon.atomic import atomic_write_json

        atomic_write_json(args.json, results, indent=1)
    sim = results["simulator"]["rows"]
    for prefix in ("", "spectral: "):
        row = sim.get(f"{prefix}fused N=4 then best")
        if row is None:
            continue
        print(f"{prefix}fused N=4 then best: {row['d_psnr']:+.2f} dB over single-frame best "
              f"(object region {row['d_object_psnr']:+.2f} dB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

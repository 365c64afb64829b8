"""Real-data quality benchmark (issue 12): refscope's methods beside the classical and pretrained peers, per pair.

    .venv/bin/python benchmarks/quality.py [--pairs pair00,pair07] [--jobs 2] [--budget-s 120]
        [--priors /tmp/refscope-priors] [--prior-budget-s S] [--no-texture-shift] [--no-bm3d] [--no-tkrem]
        [--peers-only] [--no-write]

Protocol (the 3x4 subimage split of each pair's overlap, refscope's own registration of the raw FEI files):
learn from the left 9 subimages (75 % of the overlap), score the right 3 (out of sample), per-image linear intensity
fit, Δ vs Keys bicubic. Every hyper-parameter and checkpoint is chosen on a *validation strip inside the training
area*: the right quarter of the training area (its 3 held-out subimages, :func:`split_for_validation`), never on the
scored columns. Scores: ΔPSNR, ΔSSIM and the FRC resolution (px of the S-times grid at the 1/7 crossing against the
noisy HR; Δ positive = finer) per pair, the mean and the worst pair.

Methods (all in this run):
- peers: ``blur`` (Gaussian of the bicubic output, σ on validation), ``nlm`` (scikit-image non-local means of the LR
  then bicubic, strength on validation), ``bm3d`` (the ``bm3d`` package on the LR or on the bicubic output, variant
  and strength on validation; run in the benchmark's own environment ``benchmarks/peers/.venv``, created here,
  because its licence keeps it out of the product), ``tk-r-em`` (the pretrained EM restoration networks of the
  ``tk_r_em`` package on the LR, then bicubic; network and placement on validation; GPL-3 and TensorFlow, so it
  runs in its own environment ``benchmarks/peers/tkrem/.venv``, created here: :mod:`external_peers`). A peer
  whose environment cannot be created is left out, saying so on stderr;
- refscope: ``paired`` (the session library), ``net`` (the companion: the smaller session network trained from
  scratch for ``--budget-s``, LR-only bootstrap then the pairs, :func:`refscope.models.net_blend.companion_network`),
  ``prior`` (the pretrained prior alone, trained without this pair or any pair sharing a frame with it),
  ``prior+ft`` (that prior fine-tuned on the training area for ``--budget-s``, checkpoint chosen on the validation
  strip), ``prior+ft+net`` (the two blended as a daemon round blends them, the companion's weight chosen on the
  validation strip, :func:`~refscope.models.net_blend.choose_blend`), ``prior+ft+net+base`` (that network with its
  share of the safe baseline, chosen on the validation strip as a daemon round chooses it,
  :func:`~refscope.models.net_blend.choose_baseline_share`: the network a round would serve) and ``best`` (what the
  product serves: among bicubic, paired and that network, the one with the best validation ΔPSNR, self-ensembled
  with as many passes as fit 0.5 s for a 1280x944 output, pulled toward the safe baseline where it is not trusted).

Texture shift: for each pair, every refscope model fitted on it enhances the scored columns of the other pair of the
same S (different specimen area, texture no reference showed); that prior is trained without either pair.

``--peers-only`` scores the peers alone (no refscope fitting, no priors, no texture shift) and writes its own
section of RESULTS.md (``quality12_peers``) and ``quality_peers_results.json``.

Leave-one-out priors are trained by ``benchmarks/train_prior.py`` into ``--priors`` (``excl-<pairs>/<network>-x<S>``,
the network ``auto`` serves at S)
when missing, by that script's recipe (its step count at each S; ``--prior-budget-s`` caps it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from external_peers import BM3D_ENV, TKREM_ENV, ensure_env, tkrem_peer  # noqa: E402
from results_md import write_section  # noqa: E402
from sem_pairs import DATA, SCORED, LoadedPair, load_pair  # noqa: E402

from refscope.models.evaluation import COLS, ROWS, split_subimages  # noqa: E402
from refscope.models.image_ops import upsample_bicubic  # noqa: E402
from refscope.models.metrics import fit_intensity, psnr, score_all  # noqa: E402
from refscope.models.noise import estimate_noise_sigma  # noqa: E402
from refscope.models.peers import tune, tuned_peers  # noqa: E402
from refscope.models.pipeline import FitConfig, enhance, fit_library  # noqa: E402
from refscope.models.promotion import split_for_validation  # noqa: E402
from refscope.models.safe_blend import choose_safe_baseline  # noqa: E402
from refscope.models.self_ensemble import ENSEMBLE_SIZES, ensemble_run, ensemble_size_for  # noqa: E402

PARTNER = {"pair00": "pair16", "pair16": "pair00", "pair07": "pair11", "pair11": "pair07",
           "pair08": "pair09", "pair09": "pair08"}
PEERS_ENV = BM3D_ENV.path
PEERS = ("blur", "nlm", "bm3d", "tk-r-em")
OURS = ("paired", "net", "prior", "prior+ft", "prior+ft×2", "prior+ft×4", "prior+ft×8", "prior+ft+net",
        "prior+ft+net+base", "best, no blend", "best")
SHIFT_METHODS = ("paired", "net", "prior", "prior+ft", "prior+ft+net", "prior+ft+net+base", "best, no blend", "best")
SERVE_BUDGET_S = 0.5
"""Seconds the served network may take for a 1280x944 output (issue 12, item 5): the self-ensemble size of ``best``
is the largest whose passes fit (:func:`refscope.models.self_ensemble.ensemble_size_for`)."""
BM3D_MULT = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


# ------------------------------------------------------------------------------------------------ data
def column_subimages(p: LoadedPair, scale: int, column: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 3 (LR subimage, HR reference) of ``column`` (0..COLS-1) of the overlap's 3x4 split at ``scale``."""
    box = p.boxes[scale]
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    c = column
    return [(p.lr[ys[r]:ys[r + 1], xs[c]:xs[c + 1]],
             p.grids[scale][(ys[r] - y0) * scale:(ys[r + 1] - y0) * scale, (xs[c] - x0) * scale:(xs[c + 1] - x0) * scale])
            for r in range(ROWS)]


def scored_subimages(p: LoadedPair, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The right column's 3 (LR subimage, HR reference) of the overlap at ``scale``."""
    return column_subimages(p, scale, COLS - 1)


def choose(candidates: dict, validation, scale: int):
    """(name, validation ΔPSNR per candidate) of the candidate predictor best on the validation subimages."""
    return tune(candidates.__getitem__, list(candidates), validation, scale=scale)


# ------------------------------------------------------------------------------------------------ peers
def bm3d_batch(images: list[np.ndarray], sigmas: list[float]) -> list[list[np.ndarray]]:
    """BM3D of every image at every σ, in the peers environment (one process for the whole batch)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.npz"
        np.savez(src, sigmas=np.array(sigmas), **{f"i{k}": im for k, im in enumerate(images)})
        code = ("import sys, numpy as np, bm3d\nz = np.load(sys.argv[1]); s = z['sigmas']\n"
                "out = {f'{k}_{j}': bm3d.bm3d(z[k].astype(np.float64), float(v)).astype(np.float32)"
                " for k in z.files if k != 'sigmas' for j, v in enumerate(s)}\nnp.savez(sys.argv[2], **out)\n")
        dst = Path(tmp) / "out.npz"
        subprocess.run([str(PEERS_ENV / "bin" / "python"), "-c", code, str(src), str(dst)], check=True)
        z = np.load(dst)
        return [[z[f"i{k}_{j}"] for j in range(len(sigmas))] for k in range(len(images))]


def ensure_peers_env() -> bool:
    """The BM3D environment, created if missing; False (said on stderr) when it cannot be."""
    return ensure_env(BM3D_ENV)


def ensure_tkrem_env() -> bool:
    """The tk-r-em environment (TensorFlow 2.12 CPU, ``tk_r_em`` without deps), created if missing; False (said on
    stderr) when it cannot be."""
    return ensure_env(TKREM_ENV)


def peer_predictors(lr_frame: np.ndarray, validation, scored, scale: int, with_bm3d: bool,
                    with_tkrem: bool = False) -> dict:
    """For each peer: its setting chosen on the validation subimages and its outputs on the scored ones (blur and
    NLM are the package's own, :mod:`refscope.models.peers`; BM3D and tk-r-em run in their own environments)."""
    out = {name: {"setting": setting, "scored": [predict(lr) for lr, _ in scored]}
           for name, (predict, setting) in tuned_peers(validation, scale=scale, lr_frame=lr_frame).items()}
    if with_bm3d:
        sigma = estimate_noise_sigma(lr_frame)
        subs = [lr for lr, _ in validation] + [lr for lr, _ in scored]
        nv = len(validation)
        sig = [m * sigma for m in BM3D_MULT]
        on_lr = bm3d_batch(subs, sig)
        on_up = bm3d_batch([upsample_bicubic(lr, scale) for lr in subs], [0.7 * s for s in sig])
        outputs = {}
        for j, m in enumerate(BM3D_MULT):
            outputs[("lr", m)] = [upsample_bicubic(on_lr[i][j].astype(np.float64), scale) for i in range(len(subs))]
            outputs[("up", m)] = [on_up[i][j].astype(np.float64) for i in range(len(subs))]
        val = {k: float(np.mean([psnr(ref, fit_intensity(outputs[k][i], ref))
                                 - psnr(ref, fit_intensity(upsample_bicubic(lr, scale), ref))
                                 for i, (lr, ref) in enumerate(validation)])) for k in outputs}
        best = max(val, key=val.get)
        out["bm3d"] = {"setting": f"{best[0]} x{best[1]}", "scored": outputs[best][nv:]}
    if with_tkrem:
        try:
            tk = tkrem_peer(lr_frame, validation, scored, scale)
        except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
            print(f"tk-r-em failed ({exc}); it is left out of this pair", file=sys.stderr)
        else:
            out["tk-r-em"] = tk
    return out


# ------------------------------------------------------------------------------------------------ ours
def prior_dir(priors: Path, exclude: list[str]) -> Path:
    return priors / ("excl-" + "+".join(sorted(exclude)))


def ensure_prior(priors: Path, exclude: list[str], scale: int, budget_s: float | None) -> Path:
    """The leave-one-out prior's folder, trained by ``train_prior.py``'s recipe if missing (``budget_s``: its
    ``--budget-s``, the wall-clock cap of the step recipe; None: the script's default)."""
    from refscope.daemon.learn.prior_store import prior_folder

    root = prior_dir(priors, exclude)
    if prior_folder("auto", scale, root) is None:
        cap = [] if budget_s is None else ["--budget-s", str(budget_s)]
        subprocess.run([sys.executable, str(HERE / "train_prior.py"), "--scales", str(scale), *cap,
                        "--exclude", ",".join(exclude), "--out", str(root)], check=True)
    return root


def training_area(p: LoadedPair, scale: int):
    """(LR, HR grid, :func:`split_for_validation` of them) of the pair's left 9 subimages; ``split.held_out`` is the
    validation strip (its right quarter)."""
    train_lr, train_hr = p.region(scale, columns=(0, COLS - 1))
    return train_lr, train_hr, split_for_validation(train_lr, train_hr, scale=scale)


def session_net(split, scale: int, budget_s: float, seed: int = 0, network_kwargs: dict | None = None):
    """The ``net`` column: the session network trained from scratch on the training area's ``split.train``
    (:func:`refscope.models.net_blend.companion_network`: LR-only bootstrap on that area, then the pairs, L1, no
    checkpoint choice) for ``budget_s`` seconds."""
    from refscope.models.net_blend import companion_network

    return companion_network([split.train[0]], [split.train], scale=scale, budget_s=budget_s, seed=seed,
                             network_kwargs=network_kwargs)


def our_models(p: LoadedPair, scale: int, priors_root: Path, budget_s: float, seed: int = 0,
               ensembles: dict[str, int] | None = None):
    """Fit paired, net (the companion), prior, prior+ft and their blend on the pair's training area; returns
    predictors, the validation strip and the validation choice. ``ensembles``: self-ensemble passes of ``best``
    when it serves one network (``"network"``) or the blend (``"blend"``), each with a share of the safe baseline
    (``"network+base"``, ``"blend+base"``): the keys of :func:`serving_pass_s`."""
    import torch

    from refscope.daemon.learn.prior_store import load_prior
    from refscope.models.net_blend import choose_baseline_share, choose_blend, companion_kwargs
    from refscope.models.net_fit import largest_ensemble, net_predictor
    from refscope.models.peers import tuned_blur
    from refscope.models.prior import fine_tune, frame_normalisation

    torch.set_num_threads(1)
    ensembles = dict.fromkeys(("network", "blend", "network+base", "blend+base"), 1) | dict(ensembles or {})
    train_lr, train_hr, split = training_area(p, scale)
    validation = list(split.held_out)
    library = fit_library([(train_lr, train_hr)], config=FitConfig(scale=scale))
    library.safe = choose_safe_baseline(library, [train_lr], validation)  # as the daemon's learner chooses it
    predictors = {"paired": lambda x: enhance(x, library, method="paired")}
    companion = session_net(split, scale, budget_s, seed, companion_kwargs("auto", scale))
    predictors["net"] = net_predictor(companion)
    prior = load_prior("auto", scale, priors_root)
    norm = frame_normalisation(p.lr)
    predictors["prior"] = net_predictor(replace(prior, normalisation=norm))
    start = time.perf_counter()
    tuned = fine_tune(prior, [p.lr], [split.train], budget_s=budget_s, validation=validation, seed=seed)
    fine_tune_s = time.perf_counter() - start
    predictors["prior+ft"] = net_predictor(tuned)
    for n in ENSEMBLE_SIZES[1:]:
        predictors[f"prior+ft×{n}"] = partial(ensemble_run, predictors["prior+ft"], n=n, align=2)
    network, weight, by_weight = choose_blend(tuned, companion, validation)  # as a daemon round chooses it
    predictors["prior+ft+net"] = net_predictor(network)
    sigma, _ = tuned_blur(validation, scale=scale)  # the safe baseline's σ, as a daemon round tunes it
    network, share, by_share = choose_baseline_share(network, validation, sigma_px=sigma)
    predictors["prior+ft+net+base"] = net_predictor(network)
    network_name = "prior+ft" + ("+net" if weight else "") + ("+base" if share else "")  # what it holds
    predictors.setdefault(network_name, predictors["prior+ft+net+base"])
    name, val = choose({"bicubic": lambda x: upsample_bicubic(x, scale), "paired": predictors["paired"],
                        network_name: predictors[network_name]}, validation, scale)
    passes = min(ensembles[("blend" if weight else "network") + ("+base" if share else "")],
                 largest_ensemble(network))  # the passes that fit the serving budget, of those the network allows
    served = f"{name}×{passes}" if name.startswith("prior+ft") and passes > 1 else name
    if served not in predictors and name != "bicubic":
        predictors[served] = partial(ensemble_run, predictors[name], n=passes, align=2)
    predictors["best, no blend"] = predictors[served] if name != "bicubic" else (lambda x: upsample_bicubic(x, scale))
    blends: list[dict] = []
    predictors["best"] = (safe_blended(predictors[served], library, blends) if name != "bicubic"
                          else predictors["best, no blend"])
    info = {"best_choice": served, "validation": val, "fine_tune_s": fine_tune_s, "safe_baseline": library.safe.to_dict(),
            "safe_blend": blends, "self_ensemble": passes, "companion_weight": weight,
            "companion_validation": by_weight, "baseline_share": share, "baseline_sigma_px": sigma,
            "baseline_validation": by_share,
            "fine_tune_best_step": tuned.history[-1].get("best_step"), "fine_tune_steps": tuned.history[-1]["steps"],
            "net_steps": [h["steps"] for h in companion.history]}
    return predictors, validation, info


def safe_blended(predict, library, record: list[dict]):
    """``predict`` pulled toward the library's safe baseline as the daemon serves it
    (:func:`refscope.models.safe_blend.blend_with_library`); what each call's blend did is appended to ``record``."""
    from refscope.models.safe_blend import blend_with_library

    def run(lr: np.ndarray) -> np.ndarray:
        out = np.array(predict(lr), dtype=np.float32)
        _, summary = blend_with_library(out, lr, library)
        record.append({"blended_share": summary.blended_share, "baseline_share": summary.baseline_share})
        return out.astype(np.float64)

    return run


def serving_pass_s(scale: int, runs: int = 5) -> dict[str, float]:
    """Median seconds of one pass of what ``best`` may serve at ``scale``, exported to ONNX and served as the
    product serves it (:func:`refscope.daemon.offline.net.onnx_runner`, every core) on a real LR crop whose
    S-times output is 1280x944 (the crop and timing of ``bench_net_serving.py``): ``"network"`` the shipped prior
    (the fine-tuned networks have its architecture), ``"blend"`` it blended with a companion-sized network
    (:func:`refscope.models.net_blend.blend_fits`), and each of the two with a share of the safe baseline at the
    largest σ :func:`~refscope.models.peers.tuned_blur` may choose (``"network+base"``, ``"blend+base"``,
    :func:`~refscope.models.net_blend.with_baseline`). Measured before the pairs run, so that no other work
    shares the cores."""
    from bench_net_serving import OUTPUT, lr_frame, p50

    from refscope.daemon.learn.prior_store import SHIPPED_PRIORS, load_prior
    from refscope.daemon.offline.net import onnx_runner
    from refscope.models.net_blend import blend_fits, companion_kwargs, with_baseline
    from refscope.models.net_fit import NetFit, export_netfit
    from refscope.models.networks import build_network
    from refscope.models.peers import BLUR_SIGMAS
    from refscope.models.prior import frame_normalisation

    frame, _ = lr_frame()
    fit = load_prior("auto", scale, SHIPPED_PRIORS)
    fit = replace(fit, normalisation=frame_normalisation(frame))
    kwargs = companion_kwargs(fit.network, scale)
    companion = build_network(fit.network, scale=scale, seed=1, **kwargs)
    blend = blend_fits([fit, NetFit(fit.network, scale, companion.state_dict(), fit.normalisation, kwargs)],
                       [0.5, 0.5])
    crop = np.ascontiguousarray(frame[:OUTPUT[0] // scale, :OUTPUT[1] // scale])
    out = {}
    for name, served in (("network", fit), ("blend", blend), ("network+base", with_baseline(fit, max(BLUR_SIGMAS), 0.1)),
                         ("blend+base", with_baseline(blend, max(BLUR_SIGMAS), 0.1))):
        run = onnx_runner(*export_netfit(served), threads=0)
        out[name] = p50(lambda: run(crop), runs)[0]
    return out


def bicubic_scores(subs) -> list:
    """The bicubic baseline's scores on each (LR, reference) subimage, computed once per set of subimages."""
    return [score_all(ref, upsample_bicubic(lr, ref.shape[0] // lr.shape[0])) for lr, ref in subs]


def score(subs, estimates: list[np.ndarray], baselines: list) -> dict:
    """Mean Δ to bicubic (``baselines``: :func:`bicubic_scores` of ``subs``) of ``estimates`` on ``subs``."""
    rows = []
    for (_, ref), est, b in zip(subs, estimates, baselines):
        s = score_all(ref, est)
        rows.append({"d_psnr": s.psnr - b.psnr, "d_ssim": s.ssim - b.ssim, "frc_px": s.frc_resolution_px,
                     "frc_px_bicubic": b.frc_resolution_px})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"per_sub": [r["d_psnr"] for r in rows]}


def run_pair(name: str, priors: str, budget_s: float, with_bm3d: bool, texture_shift: bool,
             with_tkrem: bool = False, peers_only: bool = False,
             ensembles: dict[int, dict[str, int]] | None = None) -> dict:
    start = time.perf_counter()
    p = load_pair(name)
    scale = p.scale
    scored = scored_subimages(p, scale)
    baselines = bicubic_scores(scored)
    passes = (ensembles or {}).get(scale)  # self-ensemble passes of the network and of the blend at this scale
    if peers_only:
        validation, info = list(training_area(p, scale)[2].held_out), {}
    else:
        predictors, validation, info = our_models(p, scale, prior_dir(Path(priors), [name]), budget_s,
                                                  ensembles=passes)
    result = {"pair": name, "factor": p.factor, "scale": scale, "info": info, "methods": {}}
    if not peers_only:
        for method in OURS:
            result["methods"][method] = score(scored, [predictors[method](lr) for lr, _ in scored], baselines)
    peers = peer_predictors(p.lr, validation, scored, scale, with_bm3d, with_tkrem)
    for method, res in peers.items():
        result["methods"][method] = score(scored, res["scored"], baselines) | {"setting": str(res["setting"])}
    if "tk-r-em" in peers:  # every setting on the scored subimages, for the record only (the peer is the choice)
        tk = peers["tk-r-em"]
        result["tkrem_settings"] = {k: {"validation_d_psnr": tk["validation"][k]}
                                    | score(scored, v, baselines) for k, v in tk["candidates"].items()}
    if texture_shift and not peers_only and name in PARTNER:
        other = load_pair(PARTNER[name])
        shift_root = prior_dir(Path(priors), sorted([name, other.name]))
        shifted, _, shift_info = our_models(p, scale, shift_root, budget_s, seed=1, ensembles=passes)
        target = scored_subimages(other, scale)
        target_baselines = bicubic_scores(target)
        result["shift"] = {"onto": other.name, "info": shift_info,
                           "methods": {m: score(target, [shifted[m](lr) for lr, _ in target], target_baselines)
                                       for m in SHIFT_METHODS}}
    result["seconds"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------ report
def render(results: list[dict], command: str, elapsed: float, budget_s: float) -> str:
    """The RESULTS.md section of a run: per-pair ΔPSNR and ΔSSIM of every method every pair has, mean and worst,
    FRC, the strongest peer per pair and on the mean (every peer in :data:`PEERS` counts, tk-r-em included) and,
    when refscope's methods ran, `best` against it and the texture shift."""
    methods = list(PEERS) + list(OURS)
    have = [m for m in methods if all(m in r["methods"] for r in results)]
    ours = "best" in have
    title = ("refscope beside the peers" if ours else "the peers alone (`--peers-only`, no refscope method)")
    tuning = (f" Fine-tuning budget {budget_s:g} s on 1 thread; each `prior` was trained without the scored pair or "
              "any pair sharing a raw frame with it." if ours else "")
    lines = [f"{'##' if ours else '###'} Real-data quality: {title} (issue 12, `benchmarks/quality.py`)", "",
             f"Command: `{command}` — {elapsed / 60:.1f} min on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, {platform.machine()}, shared with other work; 1 thread per pair), "
             f"{time.strftime('%Y-%m-%d')}.",
             "Protocol: 3x4 subimages of each overlap (refscope's own registration of the raw FEI files); learn from "
             "the left 9, score the right 3, per-image linear intensity fit, Δ vs Keys bicubic (positive = better; "
             "FRC period: px of the S-grid at the 1/7 FRC crossing against the noisy HR, smaller = finer). Every "
             "setting and checkpoint chosen on the right quarter of the training area (validation strip), never on "
             f"the scored columns.{tuning}", ""]
    for label, key, fmt in (("ΔPSNR dB", "d_psnr", "{:+.2f}"), ("ΔSSIM", "d_ssim", "{:+.4f}")):
        lines += [f"{label} per pair:", "", "| pair | S | " + " | ".join(have) + " |", "|---|---|" + "---|" * len(have)]
        for r in results:
            lines.append(f"| {r['pair']} | {r['scale']} | "
                         + " | ".join(fmt.format(r["methods"][m][key]) for m in have) + " |")
        for name, fn in (("mean", np.mean), ("worst", np.min)):
            cells = [fmt.format(fn([r["methods"][m][key] for r in results])) for m in have]
            lines.append(f"| **{name}** | | " + " | ".join(f"**{c}**" for c in cells) + " |")
        lines.append("")
    bicubic_frc = np.mean([r["methods"][have[0]]["frc_px_bicubic"] for r in results]) if have else float("nan")
    lines += ["FRC (mean over pairs):", "", "| | " + " | ".join(have) + " |", "|---|" + "---|" * len(have),
              "| FRC period px | " + " | ".join(f"{np.mean([r['methods'][m]['frc_px'] for r in results]):.2f}"
                                               for m in have) + " |",
              f"| (bicubic FRC px) | {bicubic_frc:.2f} |" + " |" * (len(have) - 1)]
    peers = [m for m in PEERS if m in have]
    if peers and ours:
        lines += ["", "Per pair: the strongest peer, `best` against it, what `best` served, and the peers' settings:", "",
                  "| pair | strongest peer | its ΔPSNR | best ΔPSNR | best − peer | best chose "
                  "| fine-tune s (best step / steps) | peer settings |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            top = max(peers, key=lambda m: r["methods"][m]["d_psnr"])
            i = r["info"]
            lines.append(f"| {r['pair']} | {top} | {r['methods'][top]['d_psnr']:+.2f} | {r['methods']['best']['d_psnr']:+.2f} | "
                         f"{r['methods']['best']['d_psnr'] - r['methods'][top]['d_psnr']:+.2f} | {chose(i)} | "
                         f"{i['fine_tune_s']:.0f} ({i['fine_tune_best_step']}/{i['fine_tune_steps']}) | "
                         + ", ".join(f"{m} {r['methods'][m].get('setting')}" for m in peers) + " |")
    elif peers:
        lines += ["", "Per pair: the strongest peer and the peers' settings (chosen on the validation strip):", "",
                  "| pair | strongest peer | its ΔPSNR | peer settings |", "|---|---|---|---|"]
        for r in results:
            top = max(peers, key=lambda m: r["methods"][m]["d_psnr"])
            lines.append(f"| {r['pair']} | {top} | {r['methods'][top]['d_psnr']:+.2f} | "
                         + ", ".join(f"{m} {r['methods'][m].get('setting')}" for m in peers) + " |")
    if peers:
        strongest = max(peers, key=lambda m: np.mean([r["methods"][m]["d_psnr"] for r in results]))
        peer_mean = np.mean([r["methods"][strongest]["d_psnr"] for r in results])
        line = f"Strongest peer on the mean: {strongest} ({peer_mean:+.2f} dB)"
        if ours:
            best_mean = np.mean([r["methods"]["best"]["d_psnr"] for r in results])
            line += f"; best {best_mean:+.2f} dB ({best_mean - peer_mean:+.2f} dB over it)"
        lines += ["", line + "."]
    settings = sorted({k for r in results for k in r.get("tkrem_settings", {})})
    if "tk-r-em" in have and all("tkrem_settings" in r for r in results):
        lines += ["", "tk-r-em by setting on the scored subimages (ΔPSNR dB; for the record only — the peer is the "
                  "setting chosen on the validation strip):", "",
                  "| pair | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for r in results:
            row = r["tkrem_settings"]
            lines.append(f"| {r['pair']} | " + " | ".join(f"{row[k]['d_psnr']:+.2f}" if k in row else "–"
                                                        for k in settings) + " |")
    shifts = [r for r in results if "shift" in r]
    if shifts:
        lines += ["", "Texture shift (model fitted on the pair, scored on the other pair of the same S; ΔPSNR dB):", "",
                  "| fitted on | scored on | " + " | ".join(SHIFT_METHODS) + " | best chose | blended share |",
                  "|---|---|" + "---|" * (len(SHIFT_METHODS) + 2)]
        for r in shifts:
            s = r["shift"]
            lines.append(f"| {r['pair']} | {s['onto']} | " + " | ".join(
                f"{s['methods'][m]['d_psnr']:+.2f}" if m in s["methods"] else "–" for m in SHIFT_METHODS)
                + f" | {chose(s['info'])} | {blended_share(s['info']):.4f} |")
    if ours:
        lines += ["", "Safe blend (`best` is the served model pulled toward the safe baseline where it is not "
                  "trusted, as the daemon serves it; `best, no blend` the model alone): share of scored output "
                  "pixels the baseline contributed to, per pair: "
                  + ", ".join(f"{r['pair']} {blended_share(r['info']):.4f}" for r in results) + "."]
    return "\n".join(lines)


def chose(info: dict) -> str:
    """What ``best`` served, with the companion's weight and the baseline's share when it served the network."""
    weight, share = info.get("companion_weight"), info.get("baseline_share")
    parts = [f"w {weight:g}"] if weight else []
    parts += [f"u {share:g}"] if share else []
    return info["best_choice"] + (f" ({', '.join(parts)})" if parts and "+net" in info["best_choice"] else "")


def blended_share(info: dict) -> float:
    """Mean share of output pixels the safe baseline contributed to over the calls recorded in ``info``."""
    shares = [b["blended_share"] for b in info.get("safe_blend", [])]
    return float(np.mean(shares)) if shares else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", help="comma-separated pair names (default: the six scored pairs)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=120.0, help="fine-tuning seconds per model (1 thread)")
    parser.add_argument("--priors", default="/tmp/refscope-priors", help="leave-one-out priors (trained if missing)")
    parser.add_argument("--prior-budget-s", type=float, default=None,
                        help="--budget-s of train_prior.py for missing priors (a cap on its step recipe)")
    parser.add_argument("--no-bm3d", action="store_true", help="leave BM3D out (its environment is not made)")
    parser.add_argument("--no-tkrem", action="store_true",
                        help="leave tk-r-em out (its TensorFlow environment, about 1.5 GB, is not made)")
    parser.add_argument("--peers-only", action="store_true",
                        help="score the peers alone: no refscope fitting, no priors, no texture shift; writes the "
                             "quality12_peers section and quality_peers_results.json")
    parser.add_argument("--no-texture-shift", action="store_true")
    parser.add_argument("--no-in-sample", action="store_true", help=argparse.SUPPRESS)  # accepted, as before
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--from-json", nargs=2, metavar=("COMMAND", "MINUTES"),
                        help="re-render RESULTS.md from quality_results.json of the run COMMAND that took MINUTES")
    args = parser.parse_args(argv)
    section_name, json_name = ("quality12_peers", "quality_peers_results.json") if args.peers_only else \
        ("quality12", "quality_results.json")
    if args.from_json:
        results = json.loads((HERE / json_name).read_text())
        write_section(section_name, render(results, args.from_json[0], 60 * float(args.from_json[1]), args.budget_s))
        return 0
    if not (DATA / "pairs.json").is_file():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2
    names = args.pairs.split(",") if args.pairs else list(SCORED)
    priors = Path(args.priors)
    start = time.perf_counter()
    with_bm3d = not args.no_bm3d and ensure_peers_env()
    with_tkrem = not args.no_tkrem and ensure_tkrem_env()
    needed = set() if args.peers_only else {(tuple([n]), load_pair(n).scale) for n in names}
    if not args.no_texture_shift and not args.peers_only:
        needed |= {(tuple(sorted([n, PARTNER[n]])), load_pair(n).scale) for n in names if n in PARTNER}
    passes = {} if args.peers_only else {s: serving_pass_s(s) for s in sorted({load_pair(n).scale for n in names})}
    ensembles = {s: {k: ensemble_size_for(t, SERVE_BUDGET_S) for k, t in by.items()} for s, by in passes.items()}
    print("served, one pass for a 1280x944 output: " + ", ".join(
        f"x{s} {k} {t:.3f} s -> self-ensemble of {ensembles[s][k]}" for s, by in passes.items()
        for k, t in by.items()), flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(ensure_prior, [priors] * len(needed), [list(e) for e, _ in needed], [s for _, s in needed],
                      [args.prior_budget_s] * len(needed)))
        n = len(names)
        results = list(pool.map(run_pair, names, [str(priors)] * n, [args.budget_s] * n, [with_bm3d] * n,
                                [not args.no_texture_shift] * n, [with_tkrem] * n, [args.peers_only] * n,
                                [ensembles] * n))
    elapsed = time.perf_counter() - start
    command = ".venv/bin/python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command.strip(), elapsed, args.budget_s)
    print(section)
    if not args.no_write:
        write_section(section_name, section)
        (HERE / json_name).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The neural side of the ``refscope`` command line (kept out of :mod:`refscope.daemon.cli`, which only parses and dispatches).

::

    refscope fit LR.tif HR.tif... -o STATE_DIR --method net [--budget-s N] [--network compact|emsr]
    refscope train STATE_DIR LR.tif [HR.tif ...] --strategy real-pairs|noise-robust|lr-only|synthetic
    refscope enhance STATE_DIR IN... --method net|best
    refscope evaluate LR.tif HR.tif --method net [--budget-s N] | --model any.onnx | --protocol standard

``fit --method net`` registers every reference, splits each overlap into its training area (left 9 of the 3x4
subimages) and 3 held-out subimages (right column), fits the paired library on the training areas for
validation (and, as ``fit`` always does, on the whole overlaps for serving), trains the network
(:func:`refscope.models.net_fit.fit_network`: LR-only bootstrap on the LR frame, then the training areas) within
the budget, scores network, library and bicubic on the held-out subimages and records the winner in
``best.json`` (:func:`refscope.models.promotion.decide_promotion`: the network must beat both the library and
bicubic). The pairs are kept in the state folder, so ``refscope train`` can go on learning with any strategy;
a retrained network replaces the saved one only when it beats it on the held-out subimages.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from refscope.models.errors import RefscopeModelError
from refscope.models.evaluation import COLS, EvaluationReport, evaluate_pair, split_subimages, training_area
from refscope.models.image_ops import upsample_bicubic
from refscope.models.network_names import resolve_network
from refscope.models.pipeline import METHODS, FitConfig, FittedModel, enhance, fit_library, training_grids
from refscope.models.promotion import decide_promotion, held_out_scores, split_for_validation, summarise_scores
from refscope.models.stats import ttests_by_category
# refscope.models.net_fit (PyTorch) is imported inside the functions that train or run a network, so that
# `refscope enhance --method paired` and `--help` do not pay for importing PyTorch.

from ..atomic import atomic_write_json
from ..errors import InputFileError, StateError
from ..learn.prior_store import load_prior, prior_folder
from ..state.model_store import load_model
from ..state.net_store import (SessionPairs, finite_json, has_net, load_best, load_net, load_pairs, load_served, save_best,
                        save_net, save_pairs)
from ..state.store import has_state
from ..images import LoadedImage

__all__ = ["DEFAULT_BUDGET_S", "choose_best", "fit_session_net", "resolve_method",
           "onnx_runner", "model_runner", "served_net", "cmd_train", "cmd_evaluate", "infer_onnx_scale"]

log = logging.getLogger("refscope.cli")
DEFAULT_BUDGET_S = 240.0
NET_METHODS = ("net", "best")


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


# ----------------------------------------------------------------------------------------------- validation
def choose_best(net: dict | None, paired: dict | None, *, margin_db: float = 0.0) -> tuple[str, str]:
    """(best, reason) from held-out scores: the network wins only if its mean ΔPSNR beats the library's and
    bicubic's (0 dB) by more than ``margin_db``; otherwise the library if it beats bicubic, else bicubic."""
    paired_db = paired["d_psnr_db"] if paired else 0.0
    fallback = "paired" if paired and paired_db > 0 else "bicubic"
    if net is None:
        return fallback, "no network"
    decision = decide_promotion(net["d_psnr_db"], paired_db if paired else 0.0, margin_db=margin_db)
    reason = decision.reason.replace("the serving model", "the paired library").replace("serving model",
                                                                                         "paired library")
    if not paired:
        reason = reason.replace("paired library", "bicubic")
    return ("net" if decision.promote else fallback), reason


def _scores_doc(net: dict | None, paired: dict | None) -> dict:
    doc = {"bicubic": {"d_psnr_db": 0.0, "d_ssim": 0.0}}
    if paired is not None:
        doc["paired"] = paired
    if net is not None:
        doc["net"] = net
    return doc


def _print_scores(best: str, reason: str, scores: dict, n: int) -> None:
    print(f"held-out validation on {n} subimage(s) (mean Δ vs bicubic):")
    for name in ("net", "paired", "bicubic"):
        if name in scores:
            s = scores[name]
            mark = "   <- best" if name == best else ""
            print(f"  {name:<8} ΔPSNR {s['d_psnr_db']:+.3f} dB  ΔSSIM {s['d_ssim']:+.4f}{mark}")
    print(f"best: {best} ({reason})")


# ----------------------------------------------------------------------------------------------- fit --method net
def split_pairs(regions: list[tuple[np.ndarray, np.ndarray]], *, scale: int, sources: list[list[str]],
                pairs: SessionPairs | None = None) -> SessionPairs:
    """Split every (LR region, HR grid) into its training area and 3 held-out subimages; append to ``pairs``."""
    pairs = pairs or SessionPairs(scale)
    for (lr_region, hr_grid), src in zip(regions, sources):
        split = split_for_validation(lr_region, hr_grid, scale=scale)
        pairs.add(split.train, split.held_out, src)
    return pairs


def as_served(fit, lr_frames: list[np.ndarray], pairs: SessionPairs, *, network: str, strategy: str,
              budget_s: float, seed: int, companion: bool = True, baseline_share: bool = True) -> tuple:
    """``fit`` as the product serves a trained network (the daemon's rounds do the same,
    :mod:`refscope.daemon.learn.train_round`): with ``companion`` (``real-pairs`` strategy only) a smaller network
    trained from scratch on ``pairs.train`` for another ``budget_s`` and blended in, its weight chosen on
    ``pairs.held_out`` (:func:`~refscope.models.net_blend.choose_blend`; 0: the network alone); with
    ``baseline_share`` a share of the safe baseline (bicubic blurred by the σ tuned on the same subimages) mixed in
    (:func:`~refscope.models.net_blend.choose_baseline_share`; 0: the networks alone). Returns (the fit to save,
    ``{"companion_steps", "companion_weight", "baseline_share"}``, None where a part was not tried)."""
    from refscope.models.net_blend import choose_baseline_share, choose_blend, companion_kwargs, companion_network
    from refscope.models.peers import tuned_blur

    weight = partner_steps = share = None
    if companion and strategy == "real-pairs" and pairs.train:
        partner = companion_network(lr_frames, list(pairs.train), scale=pairs.scale, network=network,
                                    budget_s=budget_s, seed=seed + 1,
                                    network_kwargs=companion_kwargs(network, pairs.scale))
        fit, weight, _ = choose_blend(fit, partner, list(pairs.held_out))
        partner_steps = [h["steps"] for h in partner.history]
    if baseline_share and pairs.held_out:
        sigma, _ = tuned_blur(list(pairs.held_out), scale=pairs.scale)
        fit, share, _ = choose_baseline_share(fit, list(pairs.held_out), sigma_px=sigma)
    return fit, {"companion_steps": partner_steps, "companion_weight": weight, "baseline_share": share}


def fit_session_net(state_dir: str | Path, lr_frames: list[np.ndarray], pairs: SessionPairs, *, budget_s: float,
                    network: str = "auto", strategy: str = "real-pairs", seed: int = 0,
                    library_config: FitConfig | None = None, sources: list[str] = (),
                    bootstrap_fraction: float = 0.3, use_prior: bool = True, companion: bool = True,
                    baseline_share: bool = True) -> dict:
    """Train the network on ``pairs.train``, validate network / paired library (fitted on the same training areas)
    / bicubic on ``pairs.held_out``, save network, pairs and ``best.json``; returns the ``best.json`` document.

    With ``use_prior`` and a shipped prior for (network, S) (:mod:`refscope.daemon.learn.prior_store`), the network is the prior
    fine-tuned on the pairs, its checkpoint chosen on the held-out subimages; otherwise LR-only bootstrap then
    the pairs. With ``companion`` (and the ``real-pairs`` strategy) a smaller network is then trained from scratch
    for another ``budget_s`` and the network saved is the two blended, the weight chosen on the held-out
    subimages (:mod:`refscope.models.net_blend`, as the daemon's rounds do; weight 0: the network alone). With
    ``baseline_share`` a share of the safe baseline is mixed into what is saved, chosen on the held-out subimages
    (:func:`~refscope.models.net_blend.choose_baseline_share`, as the rounds do; 0: the networks alone)."""
    from refscope.models.net_fit import fit_network, net_predictor
    from refscope.models.prior import fine_tune

    scale = pairs.scale
    network = resolve_network(network, scale)
    config = library_config or FitConfig(scale=scale)
    start = time.perf_counter()
    try:
        validation_library = fit_library(list(pairs.train), config=config)
    except RefscopeModelError as exc:
        log.warning("paired library for validation could not be fitted: %s", exc)
        validation_library = None
    paired = None
    if validation_library is not None:
        paired = summarise_scores(held_out_scores(lambda x: enhance(x, validation_library, method="paired"),
                                          pairs.held_out, scale=scale))
    prior = load_prior(network, scale) if use_prior and strategy == "real-pairs" else None
    if prior is not None:
        fit = fine_tune(prior, lr_frames, list(pairs.train), budget_s=budget_s, validation=list(pairs.held_out),
                        seed=seed)
    else:
        fit = fit_network(lr_frames, list(pairs.train), scale=scale, network=network, budget_s=budget_s,
                          bootstrap_fraction=bootstrap_fraction, strategy=strategy, seed=seed)
    steps = [h["steps"] for h in fit.history]
    fit, served = as_served(fit, lr_frames, pairs, network=network, strategy=strategy, budget_s=budget_s, seed=seed,
                            companion=companion, baseline_share=baseline_share)
    net = summarise_scores(held_out_scores(net_predictor(fit), pairs.held_out, scale=scale))
    net.update({"network": network, "strategy": strategy, "budget_s": budget_s,
                "start": "prior" if prior is not None else "scratch", "steps": steps, **served})
    best, reason = choose_best(net, paired)
    save_net(state_dir, fit, sources=list(sources), validation={"held_out_d_psnr_db": net["d_psnr_db"],
                                                                "held_out_d_ssim": net["d_ssim"]})
    save_pairs(state_dir, pairs)
    document = {"best": best, "reason": reason, "validated": True, "scale": scale,
                "held_out_subimages": len(pairs.held_out), "scores": _scores_doc(net, paired), "command": "fit",
                "seconds": time.perf_counter() - start,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    save_best(state_dir, document)
    return document


def fit_net(args: argparse.Namespace, lr: LoadedImage, refs: list[LoadedImage],
            regions: list[tuple[np.ndarray, np.ndarray]], config: FitConfig) -> None:
    """The network part of ``refscope fit --method net`` (after the paired library was fitted and saved)."""
    _set_threads(args.threads)
    sources = [[str(lr.path), str(hr.path)] for hr in refs]
    pairs = split_pairs(regions, scale=config.scale, sources=sources)
    network = resolve_network(args.network, config.scale)
    start = ("the pretrained prior" if not getattr(args, "no_prior", False) and prior_folder(network, config.scale)
             else "LR-only bootstrap")  # found here, loaded (checksums verified) once by fit_session_net
    print(f"network: {network} x{config.scale}, training {args.budget_s:g} s ({start}, then "
          f"{len(pairs.train)} pair training area(s)), validating on {len(pairs.held_out)} held-out subimages")
    doc = fit_session_net(args.output, [lr.data], pairs, budget_s=args.budget_s, network=network,
                          seed=args.seed, library_config=config,
                          sources=[str(lr.path)] + [str(r.path) for r in refs],
                          use_prior=not getattr(args, "no_prior", False),
                          companion=not getattr(args, "no_companion", False),
                          baseline_share=not getattr(args, "no_baseline_share", False))
    net = doc["scores"]["net"]
    print(f"network trained: {'+'.join(str(s) for s in net['steps'])} steps")
    _print_served(net)
    _print_scores(doc["best"], doc["reason"], doc["scores"], doc["held_out_subimages"])


def _print_served(served: dict) -> None:
    """What :func:`as_served` added to the trained network (its companion, the baseline's share)."""
    if served.get("companion_weight") is not None:
        print(f"companion trained from scratch: {'+'.join(str(s) for s in served['companion_steps'])} steps; served "
              + (f"blended with weight {served['companion_weight']:g}" if served["companion_weight"]
                 else "the network alone (the blend did not help on the held-out subimages)"))
    if served.get("baseline_share"):
        print(f"with a share of {served['baseline_share']:g} of the safe baseline (chosen on the held-out subimages)")


# ----------------------------------------------------------------------------------------------- train
def _state_scale(folder: Path, requested: int | None) -> int | None:
    """The scale of the models already in ``folder`` (which must agree with ``requested`` if given)."""
    scales = {}
    if has_state(folder, "library"):
        scales["paired library"] = load_model(folder).scale
    if has_net(folder):
        scales["network"] = load_served(folder)[1].scale
    stored = load_pairs(folder)
    if stored is not None:
        scales["stored pairs"] = stored.scale
    known = set(scales.values())
    if len(known) > 1:
        raise StateError(f"{folder}: holds models of different scales {scales}")
    if requested is not None and known and requested not in known:
        raise ValueError(f"--scale {requested} does not match the x{known.pop()} models in {folder}")
    return requested if requested is not None else (known.pop() if known else None)


def cmd_train(args: argparse.Namespace) -> int:
    """``refscope train STATE_DIR LR.tif [HR.tif ...] --strategy S``: (re)train the network, gate, save."""
    from refscope.models.net_blend import blend_members
    from refscope.models.net_fit import fit_network, net_predictor
    from refscope.models.prior import fine_tune

    from .files import load_frame, register_pair

    _set_threads(args.threads)
    folder = Path(args.state_dir)
    if folder.exists() and not folder.is_dir():
        raise StateError(f"{folder}: exists and is not a folder; pass a state folder")
    scale = (_state_scale(folder, args.scale) if folder.is_dir() else args.scale) or 2
    flag = "--lr-pixel-size" if args.hr else None
    lr = load_frame(args.lr, pixel_size_nm=args.lr_pixel_size, flag=flag)
    pairs = (load_pairs(folder) if folder.is_dir() else None) or SessionPairs(scale)
    n_old = len(pairs.held_out)
    config = FitConfig(scale=scale)
    for path in args.hr:
        hr = load_frame(path, pixel_size_nm=args.hr_pixel_size, flag="--hr-pixel-size")
        _, geometry = register_pair(lr, hr, config)
        try:
            box, hr_grid = training_grids(lr.data, hr.data, geometry, scale=scale)
        except RefscopeModelError as exc:
            raise InputFileError(f"{hr.path}: {exc}") from exc
        (y0, y1), (x0, x1) = box
        split_pairs([(lr.data[y0:y1, x0:x1], hr_grid)], scale=scale, sources=[[str(lr.path), str(hr.path)]],
                    pairs=pairs)
        print(f"{hr.path}: x{lr.pixel_size_nm / hr.pixel_size_nm:.3g} at LR offset (y, x) = "
              f"({geometry.offset_yx[0]:.2f}, {geometry.offset_yx[1]:.2f}) px, NCC {geometry.score:.3f}")
    if args.strategy != "lr-only" and not pairs.train:
        raise ValueError(f"strategy {args.strategy} needs HR reference pairs: give HR.tif files (or fit the state "
                         f"folder with `refscope fit ... --method net` first), or use --strategy lr-only")
    saved = load_net(folder) if has_net(folder) else None
    old = blend_members(saved)[0] if saved is not None else None  # of a blend, the network the rounds fine-tune
    network = resolve_network(args.network or (old.network if old else "auto"), scale)
    compatible = old is not None and old.network == network and old.scale == scale
    init = old if compatible and not args.from_scratch else None
    boot = 0.0 if (init is not None and args.strategy != "lr-only") else args.bootstrap_fraction
    prior = (load_prior(network, scale) if init is None and args.strategy == "real-pairs" and pairs.train
             and not getattr(args, "no_prior", False) else None)
    origin = " (warm start from the saved network)" if init else " (from the pretrained prior)" if prior else ""
    print(f"training {network} x{scale} with strategy {args.strategy} for {args.budget_s:g} s{origin} on "
          f"{len(pairs.train)} pair training area(s)")
    start = time.perf_counter()
    if prior is not None:
        candidate = fine_tune(prior, [lr.data], list(pairs.train), budget_s=args.budget_s,
                              validation=list(pairs.held_out), seed=args.seed)
    else:
        candidate = fit_network([lr.data], list(pairs.train), scale=scale, network=network, budget_s=args.budget_s,
                                bootstrap_fraction=boot, strategy=args.strategy, seed=args.seed, init=init)
    steps = "+".join(str(h["steps"]) for h in candidate.history)
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s")
    trained_steps = [h["steps"] for h in candidate.history]
    # judged and saved as served, like the saved network it competes with (a blend with companion and baseline)
    candidate, served = as_served(candidate, [lr.data], pairs, network=network, strategy=args.strategy,
                                  budget_s=args.budget_s, seed=args.seed,
                                  companion=not getattr(args, "no_companion", False),
                                  baseline_share=not getattr(args, "no_baseline_share", False))
    _print_served(served)
    best_doc = load_best(folder) if folder.is_dir() else None
    held = pairs.held_out
    if not held:  # nothing to validate against: the network is saved, `--method best` keeps the fallback
        save_net(folder, candidate, sources=[str(lr.path)] + list(args.hr))
        fallback = "paired" if has_state(folder, "library") else "bicubic"
        document = {"best": fallback, "validated": False, "scale": scale, "command": "train",
                    "reason": "no held-out reference subimages to validate the network against; give HR.tif pairs",
                    "scores": {"bicubic": {"d_psnr_db": 0.0, "d_ssim": 0.0}},
                    "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        save_best(folder, document)
        print(f"saved the network to {folder}; not validated (no held-out pairs), so `--method best` serves {fallback}")
        return 0
    cand = summarise_scores(held_out_scores(net_predictor(candidate), held, scale=scale))
    champ = summarise_scores(held_out_scores(net_predictor(saved), held, scale=scale)) if saved is not None else None
    paired = _paired_scores(folder, held, n_old, best_doc, scale)
    replace = champ is None or cand["d_psnr_db"] > champ["d_psnr_db"]
    if replace:
        cand.update({"network": network, "strategy": args.strategy, "budget_s": args.budget_s,
                     "steps": trained_steps, **served})
        save_net(folder, candidate, sources=[str(lr.path)] + list(args.hr),
                 validation={"held_out_d_psnr_db": cand["d_psnr_db"], "held_out_d_ssim": cand["d_ssim"]})
        net = cand
        print(f"candidate network ΔPSNR {cand['d_psnr_db']:+.3f} dB on {len(held)} held-out subimages: saved"
              + (f" (replaces the previous network, {champ['d_psnr_db']:+.3f} dB)" if champ else ""))
    else:
        net = {**champ, **{k: v for k, v in (best_doc or {}).get("scores", {}).get("net", {}).items()
                           if k in ("network", "strategy", "budget_s", "steps", "companion_steps",
                                    "companion_weight", "baseline_share")}}
        print(f"candidate network ΔPSNR {cand['d_psnr_db']:+.3f} dB does not beat the saved network "
              f"({champ['d_psnr_db']:+.3f} dB) on {len(held)} held-out subimages: kept the saved network")
    save_pairs(folder, pairs)
    best, reason = choose_best(net, paired)
    scores = _scores_doc(net, paired)
    scores["candidate"] = {**cand, "strategy": args.strategy, "accepted": bool(replace), **served}
    save_best(folder, {"best": best, "reason": reason, "validated": True, "scale": scale,
                       "held_out_subimages": len(held), "scores": scores, "command": "train",
                       "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    _print_scores(best, reason, scores, len(held))
    return 0


def _paired_scores(folder: Path, held, n_old: int, best_doc: dict | None, scale: int) -> dict | None:
    """Library scores on the held-out subimages: those of the first ``n_old`` as recorded by ``fit`` (a library
    fitted on the training areas only), the newer ones (pairs the saved library never saw) measured now."""
    if not has_state(folder, "library"):
        return None
    recorded = (best_doc or {}).get("scores", {}).get("paired") or {}
    old_p, old_s = recorded.get("per_subimage_d_psnr_db"), recorded.get("per_subimage_d_ssim")
    library = load_model(folder)
    if old_p is None or len(old_p) != n_old or any(v is None for v in old_p):
        new = held_out_scores(lambda x: enhance(x, library, method="paired"), held, scale=scale)
    else:
        fresh = held_out_scores(lambda x: enhance(x, library, method="paired"), held[n_old:], scale=scale)
        new = {"d_psnr_db": list(old_p) + fresh["d_psnr_db"], "d_ssim": list(old_s) + fresh["d_ssim"]}
    return summarise_scores(new)


# ----------------------------------------------------------------------------------------------- enhance
def resolve_method(state_dir: str | Path, method: str | None) -> str:
    """The reconstruction method to run: ``None`` is ``best`` once a network exists, else ``paired``; ``best``
    is the winner recorded in ``best.json`` (``paired`` without one, or ``net`` when there is no library)."""
    folder = Path(state_dir)
    if method is None:
        method = "best" if has_net(folder) else "paired"
    if method != "best":
        return method
    doc = load_best(folder)
    if doc is not None:
        return doc["best"]
    return "paired" if has_state(folder, "library") or not has_net(folder) else "net"


def model_runner(served, *, threads: int = 0):
    """``lr -> sr`` (float32) of a :class:`~refscope.daemon.serve.served_model.ServedModel` (its ONNX session
    loaded here, CPU/GPU as available, ``threads`` per inference), tile by tile inside the offline memory budget
    with the model's own halo and alignment, as the daemon serves it."""
    from ..config import ServeConfig
    from ..config.budget import MemoryBudget
    from ..serve.runtime import RuntimeConfig

    model = served.loaded(RuntimeConfig(intra_op_threads=threads))
    serve = ServeConfig()  # the tiles of live serving: the largest the offline budget holds, serve.tile at most
    workspace = MemoryBudget.offline(serve.max_memory_mb).workspace_bytes

    def run(frame: np.ndarray) -> np.ndarray:
        return model.enhance(frame, tile=model.tile(np.shape(frame), max_tile=serve.tile, workspace_bytes=workspace))

    return run


def onnx_runner(model_bytes: bytes, manifest, *, threads: int = 0):
    """``lr -> sr`` (float32) of ONNX ``model_bytes`` described by ``manifest``, through :func:`model_runner`.
    A manifest that records no halo (an external model, or one exported by an older refscope) is tiled as the
    daemon tiles such a network: ``serve.halo`` of context at even origins."""
    from ..config import ServeConfig
    from ..serve.served_model import onnx_model

    return model_runner(onnx_model(model_bytes, manifest, method="net", fallback=(ServeConfig().halo, 2)),
                        threads=threads)


def served_net(state_dir: str | Path):
    """The session's network in ``state_dir`` as a :class:`~refscope.daemon.serve.served_model.ServedModel`
    (ONNX bytes, manifest, halo and alignment, model id). A manifest saved before refscope recorded the
    network's halo and alignment gets them from the saved network itself (imports PyTorch)."""
    from ..serve.served_model import onnx_model
    from ..state.provenance import model_id

    folder = Path(state_dir)
    data, manifest = load_served(folder)
    fallback = None
    if manifest.halo is None or manifest.align is None:
        network = load_net(folder).build()
        fallback = (int(network.halo), int(getattr(network, "align", 2)))
    return onnx_model(data, manifest, method="net", model_id=model_id(folder, "net"), fallback=fallback)


def enhance_runner(state_dir: str | Path, method: str, *,
                   self_ensemble: int = 1) -> tuple[FittedModel | None, object, int, str]:
    """(paired model or None, runner or None, scale, method) for ``refscope enhance`` (``self_ensemble``: passes
    of the network averaged over flipped and rotated copies; the library and bicubic ignore it)."""
    folder = Path(state_dir)
    if not folder.is_dir():
        raise StateError(f"{folder}: no such state folder; create one with `refscope fit LR.tif HR.tif -o {folder}`")
    if method == "net":
        served = served_net(folder).asked_ensemble(self_ensemble, log)
        return None, model_runner(served), served.scale, method
    if method == "bicubic" and not has_state(folder, "library") and has_net(folder):
        scale = load_served(folder)[1].scale
        return None, lambda frame: upsample_bicubic(frame, scale), scale, method
    model = load_model(folder)
    return model, None, model.scale, method


# ----------------------------------------------------------------------------------------------- evaluate
def infer_onnx_scale(model_bytes: bytes, requested: int | None = None) -> int:
    """The upscaling factor of a single-image SR ONNX model (N, 1, H, W) -> (N, 1, S·H, S·W), from a probe run."""
    from ..serve.runtime import import_onnxruntime

    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise InputFileError(f"cannot load the ONNX model: {' '.join(str(exc).split())[:300]}") from exc
    inp = session.get_inputs()[0]
    errors = []
    for side in (16, 32, 48, 64):
        probe = np.linspace(0, 1, side * side, dtype=np.float32).reshape(1, 1, side, side)
        try:
            out = session.run(None, {inp.name: probe})[0]
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
            continue
        shape = np.shape(out)
        if len(shape) != 4 or shape[2] % side or shape[3] % side or shape[2] // side != shape[3] // side:
            raise InputFileError(f"the ONNX model maps (1, 1, {side}, {side}) to {shape}; refscope needs a "
                                 f"single-image upscaler (N, 1, H, W) -> (N, 1, S*H, S*W)")
        scale = shape[2] // side
        if requested is not None and requested != scale:
            raise ValueError(f"--scale {requested} but the ONNX model upscales x{scale}")
        return int(scale)
    raise InputFileError(f"the ONNX model does not run on a (1, 1, H, W) float32 input: {' '.join(errors[-1:])[:300]}")


def _ttest_rows(report: EvaluationReport, categories: dict, methods: list[str], sample: str) -> list[dict]:
    rows = []
    for method in methods:
        sel = [r for r in report.results if r.method == method and (sample == "all" or r.in_sample == (sample == "in"))]
        if not sel:
            continue
        cats = [categories[(r.row, r.col)] for r in sel]
        for metric in ("psnr", "ssim"):
            a = [getattr(r.scores, metric) for r in sel]
            b = [getattr(r.scores, metric) - getattr(r.delta, metric) for r in sel]
            for cat, test in ttests_by_category(a, b, cats).items():
                rows.append({"method": method, "metric": metric, "category": cat, **test.to_dict()})
    return rows


def _format_ttests(rows: list[dict]) -> str:
    head = f"{'method':<14}{'metric':>7}{'category':>12}{'n':>4}{'mean diff':>11}{'t':>9}{'p':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        unit = " dB" if r["metric"] == "psnr" else ""
        t = f"{r['t']:>9.2f}" if math.isfinite(r["t"]) else f"{'n/a' if math.isnan(r['t']) else r['t']:>9}"
        p = f"{r['p']:>9.3g}" if math.isfinite(r["p"]) else f"{'n/a':>9}"
        star = "  *" if math.isfinite(r["p"]) and r["p"] < 0.05 else ""
        lines.append(f"{r['method']:<14}{r['metric']:>7}{r['category']:>12}{r['n']:>4}"
                     f"{r['mean_diff']:>+8.3f}{unit:<3}{t}{p}{star}")
    return "\n".join(lines)


def _format_subimages(report: EvaluationReport, categories: dict, methods: list[str]) -> str:
    head = (f"{'method':<14}{'row':>4}{'col':>4}{'sample':>7}{'category':>12}{'PSNR bic':>10}{'PSNR':>9}"
            f"{'dPSNR':>8}{'dSSIM':>9}")
    lines = [head, "-" * len(head)]
    for r in report.results:
        if r.method not in methods:
            continue
        lines.append(f"{r.method:<14}{r.row:>4}{r.col:>4}{'in' if r.in_sample else 'out':>7}"
                     f"{categories[(r.row, r.col)]:>12}{r.scores.psnr - r.delta.psnr:>10.2f}{r.scores.psnr:>9.2f}"
                     f"{r.delta.psnr:>+8.3f}{r.delta.ssim:>+9.4f}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace, lr: LoadedImage, hr: LoadedImage) -> int:
    """``refscope evaluate`` with ``--method net``, ``--model F.onnx`` and/or ``--protocol standard``."""
    from refscope.models.net_fit import fit_network, net_predictor, score_predictors, subimage_categories

    from .files import register_pair
    from .report import format_table, write_csv, write_plot

    _set_threads(args.threads)
    start = time.perf_counter()
    factor = lr.pixel_size_nm / hr.pixel_size_nm  # type: ignore[operator]
    model_bytes = None
    if args.model:
        try:
            model_bytes = Path(args.model).read_bytes()
        except OSError as exc:
            raise InputFileError(f"{args.model}: {exc.strerror or exc}") from exc
        try:
            scale = infer_onnx_scale(model_bytes, args.scale)
        except InputFileError as exc:
            raise InputFileError(f"{args.model}: {exc}") from exc
    else:
        scale = args.scale or max(2, min(math.floor(factor * 1.001), 4))
    if factor < scale * 0.999:
        raise InputFileError(f"{hr.path}: the HR reference is only {factor:.3g}x finer than the LR frame, less than "
                             f"the scale x{scale}")
    config = FitConfig(scale=scale)
    _, geometry = register_pair(lr, hr, config)
    box, hr_grid = training_grids(lr.data, hr.data, geometry, scale=scale)
    methods = list(args.methods)
    library_methods = tuple(m for m in methods if m in METHODS and m != "bicubic")
    in_sample = not args.no_in_sample
    if library_methods and args.protocol != "standard":
        report = evaluate_pair(lr.data, hr.data, factor=factor, scale=scale, methods=library_methods,
                               in_sample=in_sample, config=config, geometry=geometry)
    else:
        report = EvaluationReport(scale, float(factor), geometry, box, 0, math.nan)
    predictors: dict = {}
    train_lr, train_hr = training_area(lr.data, hr_grid, box, scale=scale)
    if "net" in methods:
        network = resolve_network(args.network, scale)
        print(f"training {network} x{scale} for {args.budget_s:g} s on the left 9 subimages only ...")
        fit = fit_network([train_lr], [(train_lr, train_hr)], scale=scale, network=network,
                          budget_s=args.budget_s, seed=args.seed)
        predictors["net"] = net_predictor(fit)
    if getattr(args, "peers", False):
        from refscope.models.peers import tuned_peers

        validation = split_for_validation(train_lr, train_hr, scale=scale).held_out
        for name, (predict, setting) in tuned_peers(validation, scale=scale, lr_frame=lr.data).items():
            predictors[name] = predict
            print(f"peer {name}: setting {setting:g} chosen on the right quarter of the training area")
    model_name = None
    if model_bytes is not None:
        from refscope.models.manifest import ModelManifest

        low, high = float(np.min(lr.data)), float(np.max(lr.data))
        offset = low if args.model_offset is None else args.model_offset
        mscale = (1.0 / (high - low)) if args.model_scale is None else args.model_scale
        manifest = ModelManifest(kind="external", scale=scale, input_offset=offset, input_scale=mscale)
        model_name = Path(args.model).stem[:14] or "model"
        if model_name in METHODS or model_name == "net":
            model_name = "model"
        predictors[model_name] = onnx_runner(model_bytes, manifest)
    g = geometry
    print(f"{hr.path} in {lr.path}: x{factor:.3g}, offset (y, x) = ({g.offset_yx[0]:.2f}, {g.offset_yx[1]:.2f}) LR px, "
          f"rotation {g.rotation_deg:+.2f} deg, NCC {g.score:.3f}")
    if args.protocol == "standard":
        return _standard(args, lr, hr, hr_grid, box, scale, library_methods, predictors, model_name,
                         train_lr, train_hr, config, start)
    trained = {k: v for k, v in predictors.items() if k != model_name}
    if trained:
        score_predictors(lr.data, hr_grid, box, scale=scale, predictors=trained, in_sample=in_sample, report=report)
    if model_name:
        score_predictors(lr.data, hr_grid, box, scale=scale, predictors={model_name: predictors[model_name]},
                         all_out_of_sample=True, report=report)
    seconds = time.perf_counter() - start
    print(f"scale x{scale}; differences to bicubic (positive = better), {seconds:.1f} s"
          + (f"; {model_name}: all 12 subimages are out-of-sample (the model never saw this pair)"
             if model_name else ""))
    print(format_table(report))
    categories = subimage_categories(hr_grid, box, scale)
    extra = [m for m in ("net", model_name) if m]
    tests = _ttest_rows(report, categories, extra, "out") if extra else []
    if extra:
        print("\nper subimage (out-of-sample; category: Otsu foreground fraction of the HR reference > 1/2):")
        print(_format_subimages(report, categories, extra))
        print("\npaired t-test against bicubic over the out-of-sample subimages (two-sided; * p < 0.05):")
        print(_format_ttests(tests))
    settings = {"lr": str(lr.path), "hr": str(hr.path), "lr_pixel_size_nm": lr.pixel_size_nm,
                "hr_pixel_size_nm": hr.pixel_size_nm, "protocol": "physical", "methods": methods,
                "model": args.model, "budget_s": args.budget_s if "net" in methods else None,
                "peers": bool(getattr(args, "peers", False)),
                "in_sample": in_sample, "elapsed_s": seconds}
    if args.json:
        from dataclasses import asdict

        from .report import _baseline_rows

        document = {"settings": settings, "scale": scale, "factor": factor, "geometry": asdict(geometry),
                    "lr_box": box, "summary": _baseline_rows(report) + [r for r in report.summary()
                                                                      if r["method"] != "bicubic"],
                    "results": [{**asdict(r), "category": categories[(r.row, r.col)]} for r in report.results],
                    "ttests": tests}
        atomic_write_json(args.json, finite_json(document))
        print(f"wrote {args.json}")
    for path, writer in ((args.csv, write_csv), (args.plot, write_plot)):
        if path:
            writer(path, report, settings)
            print(f"wrote {path}")
    return 0


def _standard(args, lr, hr, hr_grid, box, scale, library_methods, predictors, model_name, train_lr, train_hr,
              config, start) -> int:
    """Paper 001's standard evaluation on the HR reference subimages (right column, or all 12 for a model that
    never saw the pair): nearest-neighbour degraded inputs over a range of zoom levels."""
    from refscope.models.net_fit import standard_evaluation

    if library_methods:
        library = fit_library([(train_lr, train_hr)], config=config)
        for m in library_methods:
            predictors[m] = (lambda method: (lambda x: enhance(x, library, method=method)))(m)
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    cols = range(COLS) if (model_name and len(predictors) == 1) else (COLS - 1,)
    refs = [hr_grid[(ys[r] - y0) * scale:(ys[r + 1] - y0) * scale, (xs[c] - x0) * scale:(xs[c + 1] - x0) * scale]
            for r in range(3) for c in cols]
    rows = standard_evaluation(refs, scale=scale, predictors=predictors, n_zooms=args.zoom_levels)
    seconds = time.perf_counter() - start
    print(f"standard evaluation (paper 001): {len(refs)} HR reference subimage(s) on the x{scale} LR grid, "
          f"nearest-neighbour downscaled by zoom z (pseudo-real targets), inputs degraded x{scale} by nearest "
          f"neighbour; {seconds:.1f} s")
    head = f"{'zoom':>6}{'method':>16}{'n':>4}{'PSNR dB':>9}{'SSIM':>8}{'dPSNR':>9}{'dSSIM':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.zoom:>6.3f}{r.method:>16}{r.n:>4}{r.psnr:>9.2f}{r.ssim:>8.4f}{r.d_psnr:>+9.3f}{r.d_ssim:>+9.4f}")
    if args.json:
        from dataclasses import asdict

        atomic_write_json(args.json, finite_json({"settings": {"lr": str(lr.path), "hr": str(hr.path),
                                                               "protocol": "standard", "scale": scale,
                                                               "model": args.model, "elapsed_s": seconds},
                                                  "standard": [asdict(r) for r in rows]}))
        print(f"wrote {args.json}")
    return 0


__all__ += ["NET_METHODS", "split_pairs", "fit_net", "enhance_runner"]

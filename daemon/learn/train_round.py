"""One round of the background trainer: fine-tune, validate out-of-sample, checkpoint, and save a winner.

Runs in its own process (:func:`round_process_main`, started by :class:`~refscope.daemon.learn.trainer.BackgroundTrainer`)
so that serving never waits for PyTorch; :func:`run_round` is the same work in the calling process (tests).

A round, on the session's pairs stored in the state folder (``pairs.npz``, written by the trainer as the learner
learns each pair):

1. **warm start** from the trainer's checkpoint (``<state_dir>/trainer/net.*``, the previous round's network),
   else from the promoted network (``<state_dir>/net.*``), else from scratch with an LR-only multi-scale
   bootstrap (paper 001) for ``bootstrap_fraction`` of the budget;
2. **fine-tune** for ``budget_s`` seconds on the pairs' training areas with ``strategy``
   (:func:`refscope.models.net_fit.fit_network`) -- or, once that network has learned every pair it knows and the
   **companion** has not (``trainer.companion``), train the companion instead: a smaller network from scratch on
   the same pairs (:func:`refscope.models.net_blend.companion_network`), saved in ``<state_dir>/trainer/companion``;
   the candidate is then the network blended with the companion in one graph, the companion's weight chosen on
   the held-out subimages (:func:`refscope.models.net_blend.choose_blend`; 0: the network alone); and
   (``trainer.baseline_share``) a share of the safe baseline is mixed into that candidate, chosen on the same
   subimages (:func:`refscope.models.net_blend.choose_baseline_share`; 0: the networks alone);
3. **validate** on every held-out subimage of the session's pairs (the right column of each pair's 3x4 split,
   never trained on by library or network): the candidate, the champion named in the spec (the paired library
   as saved in the state folder, or the promoted network) and bicubic, by ΔPSNR over bicubic after a linear
   intensity fit (:func:`refscope.models.promotion.held_out_scores`);
4. **checkpoint** what the round trained (atomically) unless the candidate's output was non-finite, so the next
   round -- also after a restart -- continues from it;
5. **decide** (:func:`refscope.models.promotion.decide_promotion`: beat the champion, bicubic and the safe
   baseline -- the blur of bicubic best on the same subimages, :func:`refscope.models.peers.tuned_blur` -- by
   ``margin_db``) and, on a win, save the network and its ONNX export as the session's network
   (:func:`~refscope.daemon.state.net_store.save_net`, atomic; ``best.json`` is left to the trainer, which serves it).

The result is a :class:`~refscope.daemon.wire.status.TrainingRound` (see :func:`run_round`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.network_names import resolve_network
from refscope.models.pipeline import enhance
from refscope.models.peers import tuned_blur
from refscope.models.promotion import decide_promotion, held_out_scores, summarise_scores

from ..errors import StateError
from .prior_store import load_prior
from ..state.model_store import load_model
from ..state.net_store import NET_STATE_NAME, finite_json, has_net, load_net, load_pairs, save_net
from ..serve.child import die_with_parent
from ..worker import lower_priority
from ..state.store import has_state, state_paths
from ..wire.status import TrainingRound

__all__ = ["CHECKPOINT_DIR", "COMPANION_DIR", "RoundSpec", "run_round", "round_process_main"]

CHECKPOINT_DIR = "trainer"
"""Sub-folder of the state folder holding the trainer's checkpoint (``net.*``) and ``trainer.json``."""
COMPANION_DIR = f"{CHECKPOINT_DIR}/companion"
"""Sub-folder of the state folder holding the companion network (``net.*``) the rounds blend with."""
SESSION_PAIRS_KEY = "session_pairs"
"""Key of the last history entry of a network a round trained: how many of the session's pairs it was trained on."""

_log = logging.getLogger("refscope.trainer")


@dataclass(frozen=True)
class RoundSpec:
    """What one round does (picklable: it crosses into the training process).

    Attributes:
        state_dir: the daemon's state folder (absolute path).
        round_index: 1, 2, ... (also the random seed).
        network, strategy: as ``trainer.network`` / ``trainer.strategy``.
        budget_s: training seconds.
        bootstrap_fraction: share of ``budget_s`` for the LR-only bootstrap when starting from scratch.
        champion: what serves now: ``"paired"`` (the saved library), ``"net"`` (the saved network) or
            ``"bicubic"``.
        margin_db: promotion margin, dB.
        net_version: version the network gets if promoted.
        threads: PyTorch threads; nice: niceness added (process only); idle: train only on spare CPU time
            (``SCHED_IDLE``, see :func:`~refscope.daemon.worker.lower_priority`).
        prior: without a checkpoint or network to continue from, start from the shipped prior (``trainer.prior``).
        companion: train a companion network in the round after the network's (``trainer.companion``; see
            :func:`run_round`).
        baseline_share: mix a share of the safe baseline into the candidate (``trainer.baseline_share``).
    """

    state_dir: str
    round_index: int
    network: str
    strategy: str
    budget_s: float
    bootstrap_fraction: float
    champion: str
    margin_db: float = 0.0
    net_version: int = 1
    threads: int = 1
    nice: int = 0
    idle: bool = False
    prior: bool = True
    companion: bool = True
    baseline_share: bool = True


def _saved_net(folder: Path, spec: RoundSpec, unusable: str) -> Any:
    """The network saved in ``folder`` (a NetFit), or None when there is none or it cannot be loaded (then logged
    as ``unusable``: what the round does without it)."""
    if not has_net(folder):
        return None
    try:
        return load_net(folder)
    except StateError as exc:
        _log.warning("round %d: %s (%s)", spec.round_index, unusable, exc)
        return None


def _warm_start(spec: RoundSpec, scale: int) -> tuple[Any, str | None]:
    """(NetFit or None, where it came from): the checkpoint, else the promoted network (of a promoted blend, its
    first member: the network the rounds fine-tune), if compatible."""
    from refscope.models.net_blend import blend_members

    for folder, name in ((Path(spec.state_dir) / CHECKPOINT_DIR, "checkpoint"), (Path(spec.state_dir), "network")):
        saved = _saved_net(folder, spec, f"{name} unusable for a warm start")
        fit = blend_members(saved)[0] if saved is not None else None
        if fit is not None and (fit.network, fit.scale) == (spec.network, scale):
            return fit, name
    return None, None


def _prior(spec: RoundSpec, scale: int) -> Any:
    """The shipped prior for the round's network and scale, when ``spec.prior`` and the strategy learns from the
    physical pairs; None otherwise. A damaged prior is logged and skipped (the round starts from scratch)."""
    if not spec.prior or spec.strategy != "real-pairs":
        return None
    try:
        return load_prior(spec.network, scale)
    except StateError as exc:
        _log.warning("round %d: the shipped prior is unusable (%s); training from scratch", spec.round_index, exc)
        return None


def _champion_scores(spec: RoundSpec, held_out: list, scale: int) -> dict | None:
    """Held-out scores of the champion named in ``spec`` (None for bicubic or when it cannot be loaded)."""
    from refscope.models.net_fit import net_predictor

    folder = Path(spec.state_dir)
    if spec.champion == "paired" and has_state(folder, "library"):
        library = load_model(folder)
        return summarise_scores(held_out_scores(lambda x: enhance(x, library, method="paired"), held_out, scale=scale))
    if spec.champion == "net" and has_net(folder):
        return summarise_scores(held_out_scores(net_predictor(load_net(folder)), held_out, scale=scale))
    return None


def _stored_companion(spec: RoundSpec, scale: int) -> Any:
    """The companion saved by an earlier round (``<state_dir>/trainer/companion``) if it is usable at ``scale``,
    else None (a damaged one is logged and trained again)."""
    fit = _saved_net(Path(spec.state_dir) / COMPANION_DIR, spec, "the companion is unusable; training it again")
    return fit if fit is not None and fit.scale == scale else None


def _session_pairs(fit: Any, default: int = 0) -> int:
    """How many of the session's pairs ``fit`` was trained on (``default`` when it does not say)."""
    counts = [h[SESSION_PAIRS_KEY] for h in fit.history if isinstance(h, dict) and SESSION_PAIRS_KEY in h]
    return int(counts[-1]) if counts else default


def run_round(spec: RoundSpec) -> TrainingRound:
    """Run one round in this process; returns the result: ``status`` ``"promoted"``, ``"kept"`` or ``"no_data"``
    (nothing to train on: only ``round``, ``network``, ``strategy``, ``champion_kind``, ``net_version``,
    ``reason`` and ``round_s``), the held-out scores of candidate and champion, the warm start, steps, times,
    pairs and sources (see :class:`~refscope.daemon.wire.status.TrainingRound`); non-finite scores are None.

    With ``spec.companion`` (and the ``"real-pairs"`` strategy) a round trains one of two networks: the session
    network (as above) or, when the network has a checkpoint or a promoted version to pair with and the
    companion saved in ``<state_dir>/trainer/companion`` was trained on fewer of the session's pairs than that
    network (or there is none), the **companion**: a smaller network trained from scratch for ``budget_s`` on the same
    pairs (:func:`refscope.models.net_blend.companion_network`). Either way the candidate is the network blended
    with the companion, the weight chosen on the held-out subimages (:func:`~refscope.models.net_blend.choose_blend`;
    0: the network alone). With ``spec.baseline_share`` a share of the safe baseline (the blur of bicubic best on
    the held-out subimages) is mixed into it, chosen on the same subimages
    (:func:`~refscope.models.net_blend.choose_baseline_share`; 0: the networks alone), and the gate judges that
    candidate.
    """
    from refscope.models.net_blend import choose_baseline_share, choose_blend, companion_network, companion_kwargs
    from refscope.models.net_fit import fit_network, net_predictor
    from refscope.models.prior import fine_tune

    start = time.perf_counter()
    pairs = load_pairs(spec.state_dir)
    if pairs is None or not pairs.train or not pairs.held_out:
        return TrainingRound(round=spec.round_index, network=spec.network, strategy=spec.strategy,
                             champion_kind=spec.champion, net_version=spec.net_version, status="no_data",
                             reason="no learned reference pairs yet", round_s=0.0)
    scale = pairs.scale
    spec = replace(spec, network=resolve_network(spec.network, scale))  # "auto": the network served at S
    init, origin = _warm_start(spec, scale)
    with_companion = spec.companion and spec.strategy == "real-pairs"
    companion = _stored_companion(spec, scale) if with_companion else None
    trains_companion = (with_companion and init is not None  # after the network has learned every pair it knows
                        and (companion is None
                             or _session_pairs(companion) < _session_pairs(init, default=len(pairs.train))))
    lr_frames = [lr for lr, _ in pairs.train]
    if trains_companion:  # the network stays as it is; the companion is trained from scratch beside it
        fit = init
        companion = companion_network(lr_frames, list(pairs.train), scale=scale, network=spec.network,
                                      budget_s=spec.budget_s, seed=spec.round_index,
                                      network_kwargs=companion_kwargs(spec.network, scale))
        companion.history[-1][SESSION_PAIRS_KEY] = len(pairs.train)
        trained = companion
    else:
        prior = _prior(spec, scale) if init is None else None
        if prior is not None:
            origin = "prior"
            fit = fine_tune(prior, lr_frames, list(pairs.train), budget_s=spec.budget_s,
                            validation=list(pairs.held_out), seed=spec.round_index)
        else:
            boot = 0.0 if init is not None else spec.bootstrap_fraction
            fit = fit_network(lr_frames, list(pairs.train), scale=scale, network=spec.network,
                              budget_s=spec.budget_s, bootstrap_fraction=boot, strategy=spec.strategy,
                              seed=spec.round_index, init=init)
        if fit.history:
            fit.history[-1][SESSION_PAIRS_KEY] = len(pairs.train)
        trained = fit
    train_s = time.perf_counter() - start
    weight = share = None
    candidate_fit = fit
    if companion is not None:
        candidate_fit, weight, _ = choose_blend(fit, companion, list(pairs.held_out))
    sigma, baseline_db = tuned_blur(list(pairs.held_out), scale=scale)  # the safe baseline on the same subimages
    if spec.baseline_share:
        candidate_fit, share, _ = choose_baseline_share(candidate_fit, list(pairs.held_out), sigma_px=sigma)
    candidate = summarise_scores(held_out_scores(net_predictor(candidate_fit), pairs.held_out, scale=scale))
    champion = _champion_scores(spec, pairs.held_out, scale)
    champion_db = champion["d_psnr_db"] if champion is not None else 0.0
    decision = decide_promotion(candidate["d_psnr_db"], champion_db, margin_db=spec.margin_db,
                                baseline_delta_db=baseline_db)
    finite = bool(np.isfinite(candidate["d_psnr_db"]))
    validation = {"held_out_d_psnr_db": candidate["d_psnr_db"], "held_out_d_ssim": candidate["d_ssim"]}
    checkpoint = Path(spec.state_dir) / CHECKPOINT_DIR
    if trains_companion:
        if finite:  # the next rounds blend with it; a diverged one is trained again
            save_net(Path(spec.state_dir) / COMPANION_DIR, companion, sources=[], validation={},
                     version=str(spec.net_version))
    elif finite:
        save_net(checkpoint, fit, sources=[], validation=validation, version=str(spec.net_version))
    else:  # a diverged candidate is not worth continuing from: the next round starts from the promoted network
        _discard(checkpoint)
    if decision.promote:
        sources = [s for pair in pairs.sources for s in pair]
        save_net(spec.state_dir, candidate_fit, sources=sources, validation=validation,
                 version=str(spec.net_version))
    return TrainingRound(
        round=spec.round_index, network=spec.network, strategy=spec.strategy, champion_kind=spec.champion,
        net_version=spec.net_version, status="promoted" if decision.promote else "kept", reason=decision.reason,
        candidate=finite_json(candidate), champion=finite_json(champion), warm_start=origin,
        steps=tuple(finite_json([h.get("steps") for h in trained.history])), train_s=train_s,
        round_s=time.perf_counter() - start, pairs=len(pairs.train), held_out=len(pairs.held_out),
        sources=tuple(finite_json(pairs.sources)), checkpointed=finite,
        trained="companion" if trains_companion else "network", companion_weight=weight, baseline_share=share)


def _discard(folder: Path) -> None:
    """Remove a checkpoint (its manifest first: without it the checkpoint no longer exists)."""
    weights, manifest = state_paths(folder, NET_STATE_NAME)
    for path in (manifest, weights, weights.with_name(weights.name + ".next"), *folder.glob("net-*.onnx")):
        path.unlink(missing_ok=True)


def round_process_main(spec: RoundSpec, conn: Any, log_level: int = logging.INFO) -> None:
    """Entry point of the training process: lower priority, limit threads, run the round, send the result.

    ``conn`` is the child end of a ``multiprocessing.Pipe``; the :class:`~refscope.daemon.wire.status.TrainingRound`
    (status ``"failed"`` with the error and the spec when the round raised) is sent once. A crash sends nothing; the trainer notices the exit code.
    """
    die_with_parent()
    from ..serve.malloc import return_freed_memory

    return_freed_memory()  # the trainer's share of serve.max_memory_mb: freed batches go back to the system
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[train]: %(message)s")
    lower_priority(spec.nice, idle=spec.idle, where="the training process")
    import torch

    torch.set_num_threads(max(1, spec.threads))
    try:
        result = run_round(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the trainer, which logs and counts it
        _log.exception("round %d failed", spec.round_index)
        result = TrainingRound(round=spec.round_index, status="failed", reason=f"{type(exc).__name__}: {exc}",
                               spec=asdict(spec))
    conn.send(result)
    conn.close()

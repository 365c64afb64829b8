"""The session's fine-tuned network and a companion trained from scratch, served as one (pure: arrays in, weights out).

Why
---
The fine-tuned prior (:func:`refscope.models.prior.fine_tune`) and a smaller network trained from scratch on the
same reference (:func:`companion_network`: LR-only bootstrap, then the pairs, as paper 001 and the session network
before issue 12) start far apart in weight space and err differently; the mean of their outputs is closer to the HR
than either. On the physical SEM pairs, with both trained 120 s on the left 75 % of the overlap, the weight chosen
on the validation strip and each served with the self-ensemble passes that fit 0.5 s for a 1280 x 944 output, the
blend scores +0.645 dB over bicubic on the held-out columns where the fine-tune alone scores +0.615
(``benchmarks/RESULTS.md``, "Serving the fine-tune with a companion network"; in ``benchmarks/quality.py``'s run
+0.643 against +0.614). It is a two-member ensemble of independently
trained networks (Hansen & Salamon, IEEE TPAMI 1990; Lakshminarayanan et al., NeurIPS 2017): its gain is the
members' disagreement, which neither a second seed of the same fine-tune (both stay near the prior) nor the
geometric self-ensemble of one network (:mod:`.self_ensemble`) reaches.

How
---
:func:`blend_fits` makes one :class:`~refscope.models.net_fit.NetFit` of network ``"blend"``
(:class:`~refscope.models.networks.BlendedSR`): one graph that runs every member and sums their weighted outputs,
exported to ONNX and served like any network (its pass costs the members' together). :func:`choose_blend` picks the
companion's weight ``w`` in :data:`COMPANION_WEIGHTS` on held-out reference subimages (ΔPSNR over bicubic after a
linear intensity fit, the promotion gate's measure); ``w = 0`` is the fine-tune alone, served as it is.

The safe baseline as a member
-----------------------------
Both networks learn from a few reference subimages and both overshoot where those did not pin them down; a small
share of the safe baseline (:mod:`refscope.models.baseline`: bicubic blurred by the σ tuned on the held-out
subimages), ``(1 - u) · networks + u · baseline``, shrinks that variance toward an estimate that invents nothing
(the shrinkage of Stein's estimator toward a fixed point; here it is chosen, not derived). :func:`with_baseline`
adds it to the graph as a fixed member (:class:`~refscope.models.networks.BaselineSR`, a few ms per frame) and
:func:`choose_baseline_share` picks ``u`` in :data:`BASELINE_WEIGHTS` on held-out subimages as :func:`choose_blend`
picks ``w``. On the six physical SEM pairs, after the companion blend, it moved the scored quarter's mean ΔPSNR
from +0.643 to +0.655 dB with no pair worse (``u`` 0.1-0.2 on three pairs, 0 on three; in ``quality.py``'s run the
network's one-pass score +0.627 -> +0.639; ``benchmarks/RESULTS.md``, "The safe baseline as a blend member").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .net_fit import NetFit, fit_network, net_predictor
from .network_names import check_scale, resolve_network
from .promotion import held_out_delta_psnr

__all__ = ["COMPANION_WEIGHTS", "COMPANION_BOOTSTRAP", "COMPANION_CHANNELS", "BASELINE_WEIGHTS", "companion_kwargs",
           "companion_network", "blend_fits", "blend_members", "blend_outputs", "choose_blend", "baseline_fit",
           "with_baseline", "choose_baseline_share"]

COMPANION_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
"""Candidate weights of the companion in ``(1 - w) · fine-tune + w · companion`` (0: the fine-tune alone)."""

COMPANION_BOOTSTRAP = 0.3
"""Share of the companion's budget on the LR-only bootstrap before the pairs (:func:`fit_network`'s default)."""

COMPANION_CHANNELS: dict[int, int] = {2: 16, 3: 32, 4: 32}
"""Feature channels of a ``fullres`` companion by scale S (a larger S gets the entry of the largest key): about a
third of the served network's cost at S = 2 and half at S = 3, 4 (ONNX Runtime on two cores, 1280 x 944 output:
0.05 s beside 0.15 s at S = 2; 0.07 beside 0.14 s at S = 3), so the blend keeps two self-ensemble passes within
the 0.5 s frame budget at S = 2, 3 and four at S = 4 (``benchmarks/RESULTS.md``, "Serving the fine-tune with a
companion network")."""

BASELINE_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
"""Candidate shares ``u`` of the safe baseline in ``(1 - u) · networks + u · baseline`` (0: the networks alone)."""

BASELINE = "baseline"
"""Network name of the safe baseline's fixed layer (:data:`~refscope.models.networks.FIXED_NETWORKS`)."""

Region = tuple[np.ndarray, np.ndarray]


def companion_kwargs(network: str, scale: int) -> dict:
    """Constructor keywords of the companion of a ``network`` served at x``scale``: :data:`COMPANION_CHANNELS` for
    ``fullres`` (what ``"auto"`` serves), the network's own defaults otherwise."""
    if resolve_network(network, scale) != "fullres":
        return {}
    return {"channels": COMPANION_CHANNELS[min(check_scale(scale), max(COMPANION_CHANNELS))]}


def companion_network(lr_frames: Sequence[np.ndarray], regions: Sequence[Region], *, scale: int,
                      network: str = "auto", budget_s: float, seed: int = 0,
                      bootstrap_fraction: float = COMPANION_BOOTSTRAP, network_kwargs: dict | None = None) -> NetFit:
    """The companion: ``network`` (built with ``network_kwargs``) trained from scratch for ``budget_s`` seconds,
    first LR-only on ``lr_frames`` (``bootstrap_fraction`` of the time), then on the registered ``regions`` with
    :func:`fit_network`'s defaults (L1, learning rate 1e-3, the last weights: it is judged in the blend, not
    alone)."""
    return fit_network(list(lr_frames), list(regions), scale=scale, network=network, budget_s=budget_s,
                       bootstrap_fraction=bootstrap_fraction, seed=seed, network_kwargs=network_kwargs)


def blend_fits(fits: Sequence[NetFit], weights: Sequence[float]) -> NetFit:
    """One :class:`NetFit` (network ``"blend"``) serving ``Σ_k weights[k] · fits[k]`` in caller's units.

    The blend works in the first member's network units (its normalisation); every other member's input and
    output are mapped through the affine maps between the two normalisations, so members trained in different
    units blend exactly. Members must share the scale; ``weights`` are >= 0 and sum to 1. Its history lists each
    member's network, strategy and training phases.
    """
    if len(fits) < 2 or len(weights) != len(fits):
        raise ValueError(f"a blend needs >= 2 networks and one weight each, got {len(fits)} and {len(weights)}")
    scales = {fit.scale for fit in fits}
    if len(scales) != 1:
        raise ValueError(f"networks of different scales cannot be blended: {sorted(scales)}")
    if any(fit.network == "blend" for fit in fits):
        raise ValueError("a blend cannot be a member of another blend; blend the member networks themselves")
    base = fits[0].normalisation
    members, state = [], {}
    for k, fit in enumerate(fits):
        norm = fit.normalisation
        # x_k = (x - o_k) s_k with x = x_0 / s_0 + o_0;  back: y_0 = (y_k / s_k + o_k - o_0) s_0
        members.append({"network": fit.network, "kwargs": dict(fit.network_kwargs),
                        "input": [norm.scale / base.scale, (base.offset - norm.offset) * norm.scale],
                        "output": [base.scale / norm.scale, (norm.offset - base.offset) * base.scale]})
        state.update({f"members.{k}.{name}": value for name, value in fit.state_dict.items()})
    history = [{"member": k, "network": fit.network, "strategy": fit.strategy, "weight": float(w),
                "phases": list(fit.history)} for k, (fit, w) in enumerate(zip(fits, weights))]
    blend = NetFit("blend", fits[0].scale, state, base,
                   {"members": members, "weights": [float(w) for w in weights]}, fits[0].strategy, history)
    blend.build()  # the weights must fit the members; raises here rather than when served
    return blend


def blend_members(fit: NetFit) -> list[NetFit]:
    """The member networks of a :func:`blend_fits` blend, each with its own weights and normalisation (read back
    from the blend's affine maps), e.g. to continue training the first; ``[fit]`` for a network that is no blend."""
    if fit.network != "blend":
        return [fit]
    base = fit.normalisation
    out = []
    for k, member in enumerate(fit.network_kwargs["members"]):
        gain, shift = (float(v) for v in member["input"])
        scale = gain * base.scale  # x_k = (s_k / s_0) x_0 + (o_0 - o_k) s_k
        norm = type(base)(base.offset - shift / scale, scale)
        prefix = f"members.{k}."
        state = {name[len(prefix):]: value for name, value in fit.state_dict.items() if name.startswith(prefix)}
        record = fit.history[k] if k < len(fit.history) and isinstance(fit.history[k], dict) else {}
        out.append(NetFit(member["network"], fit.scale, state, norm, dict(member.get("kwargs") or {}),
                          str(record.get("strategy", fit.strategy)), list(record.get("phases", []))))
    return out


def blend_outputs(outputs: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """``Σ_k weights[k] · outputs[k][i]`` for every image ``i``: what :func:`blend_fits` serves, from each member's
    outputs computed once (caller's units)."""
    return [sum(w * np.asarray(member[i], dtype=np.float64) for w, member in zip(weights, outputs) if w)
            for i in range(len(outputs[0]))]


def choose_blend(main: NetFit, companion: NetFit, validation: Sequence[Region], *,
                 weights: Sequence[float] = COMPANION_WEIGHTS) -> tuple[NetFit, float, dict[float, float]]:
    """The companion weight best on ``validation`` and what it serves.

    Each member runs once on every (LR, HR) subimage of ``validation``; every ``w`` of ``weights`` is scored as the
    mean ΔPSNR over bicubic of ``(1 - w) · main + w · companion`` after a linear intensity fit
    (:func:`~refscope.models.promotion.held_out_delta_psnr`); a tie keeps the smaller ``w``.

    Returns ``(served, w, scores)``: ``main`` itself when ``w`` is 0, else :func:`blend_fits` of the two;
    ``scores`` maps each ``w`` to its ΔPSNR (dB; -inf for a non-finite output).
    """
    if not validation:
        raise ValueError("choosing a blend weight needs held-out (LR, HR) subimages")
    if not weights or any(not 0 <= w < 1 for w in weights):
        raise ValueError(f"companion weights must lie in [0, 1), got {list(weights)}")
    best, scores = _best_mix(main, companion, validation, weights)
    served = main if best == 0 else blend_fits([main, companion], [1.0 - best, best])
    return served, best, scores


def _best_mix(first: NetFit, second: NetFit, validation: Sequence[Region],
              weights: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The ``w`` of ``weights`` whose ``(1 - w) · first + w · second`` scores best on ``validation`` (each network
    run once per subimage; mean ΔPSNR over bicubic after a linear intensity fit; a tie keeps the smaller ``w``),
    and every ``w``'s score (dB; -inf for a non-finite output)."""
    lrs = [lr for lr, _ in validation]
    outputs = [[net_predictor(fit)(lr) for lr in lrs] for fit in (first, second)]
    scores = {}
    for w in weights:
        mixed = iter(blend_outputs(outputs, (1.0 - w, w)))
        scores[float(w)] = held_out_delta_psnr(lambda _: next(mixed), tuple(validation), scale=first.scale)
    best = max(sorted(scores), key=lambda w: scores[w])  # sorted: the first (smallest) of equal scores
    return best, scores


def baseline_fit(scale: int, sigma_px: float, normalisation) -> NetFit:
    """The safe baseline (bicubic blurred by ``sigma_px`` output px, :class:`~refscope.models.networks.BaselineSR`)
    as a :class:`NetFit` with no weights, in ``normalisation`` (any: the layer is linear with unit gain)."""
    fit = NetFit(BASELINE, check_scale(scale), {}, normalisation, {"sigma_px": float(sigma_px)}, BASELINE, [])
    fit.build()  # a bad σ raises here
    return fit


def _members_and_weights(fit: NetFit) -> tuple[list[NetFit], list[float]]:
    if fit.network != "blend":
        return [fit], [1.0]
    return blend_members(fit), [float(w) for w in fit.network_kwargs["weights"]]


def with_baseline(fit: NetFit, sigma_px: float, share: float) -> NetFit:
    """``(1 - share) · fit + share · baseline`` as one blend (:func:`blend_fits`); ``fit`` itself for share 0.

    A blend's members keep their weights scaled by ``1 - share``; the baseline is the last member, in the first
    member's units. ``fit`` must not hold a baseline already (ValueError: add the share to the networks, not to a
    blend that has one)."""
    if not 0 <= share < 1:
        raise ValueError(f"the baseline's share must lie in [0, 1), got {share!r}")
    if share == 0:
        return fit
    members, weights = _members_and_weights(fit)
    if any(m.network == BASELINE for m in members):
        raise ValueError("this network already holds the safe baseline; add the share to the networks alone")
    base = baseline_fit(fit.scale, sigma_px, members[0].normalisation)
    return blend_fits([*members, base], [*(w * (1.0 - share) for w in weights), float(share)])


def choose_baseline_share(fit: NetFit, validation: Sequence[Region], *, sigma_px: float,
                          shares: Sequence[float] = BASELINE_WEIGHTS) -> tuple[NetFit, float, dict[float, float]]:
    """The share ``u`` of the safe baseline (σ = ``sigma_px`` output px, e.g. :func:`~refscope.models.peers.tuned_blur`'s
    on the same subimages) best on ``validation``, and what it serves.

    ``fit`` and the baseline (the served layer itself, so its border handling is what is scored) run once on every
    (LR, HR) subimage; each ``u`` of ``shares`` is scored as :func:`choose_blend` scores a weight; a tie keeps the
    smaller ``u``. Returns ``(served, u, scores)``: ``fit`` itself when ``u`` is 0, else :func:`with_baseline`.
    """
    if not validation:
        raise ValueError("choosing the baseline's share needs held-out (LR, HR) subimages")
    if not shares or any(not 0 <= u < 1 for u in shares):
        raise ValueError(f"baseline shares must lie in [0, 1), got {list(shares)}")
    best, scores = _best_mix(fit, baseline_fit(fit.scale, sigma_px, fit.normalisation), validation, shares)
    return with_baseline(fit, sigma_px, best), best, scores

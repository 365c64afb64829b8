"""Fit a super-resolution network on the session's own data within a time budget (pure: arrays in, weights out).

:func:`fit_network` is what ``refscope fit --method net`` / ``refscope train`` / ``refscope evaluate --method net``
run, in two phases sharing one :class:`~refscope.models.training.Normalisation` (the LR frames' robust range):

1. **bootstrap** (``bootstrap_fraction`` of the budget): LR-only multi-scale training (Möller/Wagner et al.,
   paper 001, sub-processes 1-3) on the raw LR frames, which needs no reference at all;
2. **fine-tune** (the rest), warm-started from (1): the registered LR/HR reference pairs' training areas
   (``"real-pairs"``: plain ℓ1 against the noisy HR, or ``"noise-robust"``: Khateri et al.'s eq. 16), with the
   learning rate divided by 4 for the last quarter of the phase.

``strategy="lr-only"`` spends the whole budget on (1); ``"synthetic"`` fine-tunes on the HR grids degraded to LR
(EMSR's synthetic II) instead of the physical pairs.

Evaluation helpers for networks and any other single-image predictor: :func:`score_predictors` scores
predictors on the 3x4 subimage protocol of :mod:`refscope.models.evaluation` (reusing its split and
:func:`~refscope.models.metrics.score_all`), :func:`standard_evaluation` runs paper 001's *standard evaluation*
(nearest-neighbour degraded HR references over a range of zoom levels) and :func:`subimage_categories` labels
subimages foreground- or background-dominated (Otsu) for per-category statistics.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .degradations import MultiScaleConfig, resize
from .evaluation import COLS, PANEL_CELL, ROWS, EvaluationReport, SubimageScore, _diff, split_subimages
from .image_ops import upsample_bicubic
from .metrics import QualityScores, fit_intensity_coefficients, foreground_mask, score_all
from .networks import build_network, resolve_network
from .promotion import held_out_delta_psnr
from .registration import PairGeometry
from .self_ensemble import ENSEMBLE_SIZES, ensemble_for_augmentation
from .training import (Normalisation, PatchSource, TrainConfig, export_network, make_lr_only_dataset,
                       make_real_pair_dataset, make_synthetic_dataset, predict, train, warm_start)

__all__ = ["NET_STRATEGIES", "NetFit", "fit_network", "net_predictor", "default_patch", "score_predictors",
           "subimage_categories", "PooledSource", "lr_only_config", "standard_evaluation", "StandardScore",
           "export_netfit", "largest_ensemble", "train_phase", "phase_record", "BestCheckpoint", "checkpointed_phase"]

NET_STRATEGIES = ("real-pairs", "noise-robust", "lr-only", "synthetic")
Predictor = Callable[[np.ndarray], np.ndarray]
Region = tuple[np.ndarray, np.ndarray]


@dataclass
class NetFit:
    """A trained network: ``network`` name and ``network_kwargs`` rebuild it at ``scale``; ``state_dict`` its
    weights; ``normalisation`` the intensity map into network units; ``history`` one dict per training phase
    (strategy, steps, seconds, first/last loss) plus anything the caller adds (e.g. held-out scores)."""

    network: str
    scale: int
    state_dict: dict[str, torch.Tensor]
    normalisation: Normalisation
    network_kwargs: dict = field(default_factory=dict)
    strategy: str = "real-pairs"
    history: list[dict] = field(default_factory=list)

    def build(self) -> nn.Module:
        """The network with these weights, in eval mode."""
        net = build_network(self.network, scale=self.scale, **self.network_kwargs)
        net.load_state_dict(self.state_dict, strict=True)
        return net.eval()


def net_predictor(fit: NetFit, *, threads: int | None = None) -> Predictor:
    """``lr (h, w) -> sr (S·h, S·w)`` in the caller's (LR) units, running the PyTorch network."""
    net = fit.build()

    def run(lr: np.ndarray) -> np.ndarray:
        return predict(net, np.asarray(lr, dtype=np.float64), fit.normalisation)

    return run


def export_netfit(fit: NetFit, **manifest_fields):
    """ONNX bytes and :class:`~refscope.models.manifest.ModelManifest` of a fitted network; the manifest's
    ``max_ensemble`` is :func:`largest_ensemble` of the fit."""
    manifest_fields.setdefault("max_ensemble", largest_ensemble(fit))
    return export_network(fit.build(), fit.normalisation, kind=fit.network, **manifest_fields)


def largest_ensemble(fit: NetFit) -> int:
    """The most self-ensemble passes (:data:`~refscope.models.self_ensemble.ENSEMBLE_SIZES`) under which ``fit``
    is still the model it was trained to be: the transforms its last training phase saw
    (:func:`~refscope.models.self_ensemble.ensemble_for_augmentation` of the phase's ``augment``; phases recorded
    before refscope recorded it were dihedral), the smallest over a blend's members. A network fitted on the
    scan's own orientation (``augment="none"``) serves in 1 pass."""
    if fit.network == "blend":
        return min((_history_ensemble(record.get("phases") or []) for record in fit.history
                    if isinstance(record, Mapping)), default=ENSEMBLE_SIZES[-1])
    return _history_ensemble(fit.history)


def _history_ensemble(history: Sequence[Mapping]) -> int:
    trained = [record for record in history if isinstance(record, Mapping) and record.get("steps")]
    if not trained:  # no training recorded (a fixed filter such as the safe baseline): every transform holds
        return ENSEMBLE_SIZES[-1]
    return ensemble_for_augmentation(str(trained[-1].get("augment", "dihedral")))


class PooledSource(PatchSource):
    """Reuse generated pairs: a pool of up to ``size`` pairs from ``source``; each draw is a fresh pair with
    probability ``fresh`` (always while the pool fills) and a random pooled one otherwise.

    LR-only multi-scale pairs cost about as much to generate (a windowed resize of the frame) as a training
    step of the compact network on one CPU core; pooling with ``fresh = 1/8`` spends most of a time budget on
    steps instead, while the dihedral augmentation of :meth:`PatchSource.sample` varies the reused pairs.
    """

    def __init__(self, source: PatchSource, *, size: int = 512, fresh: float = 0.125) -> None:
        super().__init__(source.scale, source.patch, source.normalisation, source.noise_sigma)
        self.kind, self.source = source.kind, source
        self.size, self.fresh = int(size), float(fresh)
        self.pool: list[tuple[np.ndarray, np.ndarray]] = []

    def _pair(self, rng):
        if len(self.pool) < self.size or rng.random() < self.fresh:
            pair = self.source._pair(rng)
            if len(self.pool) < self.size:
                self.pool.append(pair)
            else:
                self.pool[int(rng.integers(self.size))] = pair
            return pair
        return self.pool[int(rng.integers(len(self.pool)))]


def lr_only_config(scale: int) -> MultiScaleConfig:
    """Default LR-only multi-scale configuration: at S = 2 the noise-preserving nearest-neighbour degradation
    (paper 001's choice for point-scanned images) with sub-processes (1) and (3) (targets from the raw and the
    bicubic-upscaled LR frame, β 1.1-2.0); at S >= 3 all six interpolations with sub-processes (1)-(3).
    Chosen on the physical x2.4 and x4.17 SEM pairs (benchmarks/quality_net.py)."""
    if int(scale) == 2:
        return MultiScaleConfig(alpha=None, beta=(1.1, 2.0), methods=("nearest",))
    return MultiScaleConfig()


def default_patch(scale: int, lr_frames: Sequence[np.ndarray], regions: Sequence[Region], wanted: int = 32) -> int:
    """LR patch side: ``wanted`` shrunk (down to 8) so that an S·p crop fits every LR frame and a p x p crop every
    training region."""
    sides = [min(np.shape(f)) // int(scale) for f in lr_frames] + [min(np.shape(lr)) for lr, _ in regions]
    return int(max(8, min([wanted] + sides)))


def _calibrated(regions: Sequence[Region], scale: int) -> list[Region]:
    """HR grids mapped into LR units (least squares against the bicubic-upsampled LR)."""
    out = []
    for index, (lr, hr) in enumerate(regions):
        lr, hr = np.asarray(lr, np.float64), np.asarray(hr, np.float64)
        if lr.ndim != 2 or hr.shape != (scale * lr.shape[0], scale * lr.shape[1]):
            raise ValueError(f"region {index}: HR grid {hr.shape} must be {scale} x the LR region {lr.shape}")
        a, b = fit_intensity_coefficients(hr, upsample_bicubic(lr, scale))
        out.append((lr, a * hr + b))
    return out


class BestCheckpoint:
    """Keeps the weights with the best mean ΔPSNR over bicubic on held-out validation regions (LR, HR grid) in the
    units of ``norm``, measured by :meth:`consider` and every ``every`` steps through :meth:`on_step` (pass it as
    :func:`~refscope.models.training.train`'s ``on_step``). ``state`` is on the CPU whatever the training device.

    With ``average`` = ``d`` in (0, 1) the candidates are not the training weights but their exponential moving
    average (Polyak-Ruppert averaging, as EMA weights in Tarvainen & Valpola 2017), updated after every step,
    ``θ̄ ← d θ̄ + (1 - d) θ`` over the floating-point parameters and buffers (integer buffers follow the training
    weights), started from the weights at the first :meth:`consider`: a fine-tune on a small, noisy reference
    follows a noisy path, and the average over the last ``≈ 1 / (1 - d)`` steps sits nearer the clean optimum than
    any single point of it. The network itself keeps training on its own weights."""

    def __init__(self, net: nn.Module, norm: Normalisation, validation: Sequence[Region], scale: int,
                 every: int, average: float = 0.0) -> None:
        if every < 1:
            raise ValueError(f"validate_every must be >= 1 step, got {every}")
        if not 0.0 <= average < 1.0:
            raise ValueError(f"the weight average's decay must be in [0, 1) (0: no average), got {average!r}")
        self.net, self.norm, self.every, self.scale = net, norm, int(every), int(scale)
        self.validation = tuple((np.asarray(lr, np.float64), np.asarray(hr, np.float64)) for lr, hr in validation)
        self.score, self.step, self.state = -math.inf, 0, None
        self.curve: list[tuple[int, float]] = []                # (step, validation ΔPSNR) of every measurement
        self.decay = float(average)
        self.average: dict[str, torch.Tensor] | None = None     # θ̄ (decay > 0), on the training device
        self._steps_before = 0

    def _update_average(self) -> None:
        average = self.candidate()
        with torch.no_grad():
            for name, value in self.net.state_dict().items():
                if value.is_floating_point():
                    average[name].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
                else:
                    average[name].copy_(value)

    def candidate(self) -> dict[str, torch.Tensor]:
        """The weights a measurement now scores: the average (``average`` > 0), else the training weights."""
        if self.decay and self.average is None:
            self.average = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return self.average if self.decay else self.net.state_dict()

    def consider(self, step: int) -> None:
        was_training = self.net.training
        weights = self.candidate()
        own = {k: v.detach().clone() for k, v in self.net.state_dict().items()} if self.decay else None
        if own is not None:
            self.net.load_state_dict(weights)
        self.net.eval()
        try:
            score = held_out_delta_psnr(lambda x: predict(self.net, x, self.norm), self.validation, scale=self.scale)
        finally:
            if own is not None:
                self.net.load_state_dict(own)
            self.net.train(was_training)
        self.curve.append((int(step), float(score)))
        if score > self.score or self.state is None:
            self.score, self.step = float(score), int(step)
            self.state = {k: v.detach().cpu().clone() for k, v in weights.items()}

    def on_step(self, step: int, loss: float) -> None:
        self._steps_before += 1
        if self.decay:
            self._update_average()
        if self._steps_before % self.every == 0:
            self.consider(self._steps_before)


def train_phase(net: nn.Module, cfg: TrainConfig, source, budget_s: float, state, lr_tail: float = 0.25,
                on_step=None, steps: int = 0) -> list:
    """Train for ``budget_s`` seconds; the last ``lr_tail`` of the time at a quarter of the learning rate.

    With ``steps`` > 0 the schedule is counted in Adam steps instead: ``steps`` of them, the last ``lr_tail`` of
    them at a quarter of the rate, and ``budget_s`` only a wall-clock cap on the whole phase (whatever is left of
    it when the cap is reached is not trained). A step schedule takes the same path on any device; a time schedule
    takes as many steps as the device makes (``benchmarks/RESULTS.md``, "Where and how the priors are trained").
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (0: the schedule follows the time budget), got {steps}")
    results = []
    if steps:
        tail = int(round(steps * lr_tail))
        spans = [(steps - tail, cfg.lr), (tail, cfg.lr / 4)]
    else:
        spans = ([(budget_s * (1 - lr_tail), cfg.lr), (budget_s * lr_tail, cfg.lr / 4)] if lr_tail
                 else [(budget_s, cfg.lr)])
    start = time.perf_counter()
    # L2-SP: every span pulls toward where the phase started, not where the span did
    anchor = ({k: v.detach().clone() for k, v in (state if state is not None else net.state_dict()).items()}
              if cfg.anchor_weight else None)
    for index, (amount, rate) in enumerate(spans):
        seconds = budget_s - (time.perf_counter() - start) if steps else amount
        if amount <= 0 or seconds <= 0:
            continue
        sub = TrainConfig(**{**cfg.__dict__, "lr": rate, "seed": cfg.seed + 1000 * index, "time_budget_s": None,
                             **({"steps": int(amount)} if steps else {})})
        result = train(net, sub, source, init_state=state, budget_s=seconds, on_step=on_step, anchor=anchor)
        state = result.state_dict
        results.append(result)
    return results


def checkpointed_phase(net: nn.Module, cfg: TrainConfig, source, budget_s: float, state, strategy: str,
                       keeper: BestCheckpoint | None, steps: int = 0) -> tuple[dict | None, dict]:
    """:func:`train_phase` (``steps``: its step schedule, 0 = by time) whose weights are the best of ``keeper``'s
    measurements (None: the last weights). The starting weights (``state``, else the network's own) are a
    candidate, then every ``keeper.every`` steps and the last. Returns (weights, the phase's history record, with
    ``best_step``, ``best_validation_d_psnr_db`` and the ``validation_curve`` of (step, dB) when a keeper chose)."""
    if keeper is not None:
        if state is not None:
            warm_start(net, state)
        keeper.consider(0)  # the starting weights are a candidate
    results = train_phase(net, cfg, source, budget_s, state, on_step=keeper.on_step if keeper else None,
                          steps=steps)
    state = results[-1].state_dict if results else state
    record = phase_record(strategy, results) | {"augment": cfg.augment}
    if keeper is not None:
        keeper.consider(record["steps"])
        state = keeper.state
        record.update(best_step=keeper.step, best_validation_d_psnr_db=keeper.score,
                      validation_curve=[[step, round(score, 4)] for step, score in keeper.curve])
    return state, record


def phase_record(strategy: str, results: list) -> dict:
    losses = [v for r in results for v in r.losses]
    n = max(1, len(losses) // 20)
    return {"strategy": strategy, "steps": int(sum(r.steps for r in results)),
            "seconds": float(sum(r.seconds for r in results)),
            "loss_first": float(np.mean(losses[:n])) if losses else math.nan,
            "loss_last": float(np.mean(losses[-n:])) if losses else math.nan}


def fit_network(lr_frames: Sequence[np.ndarray], regions: Sequence[Region], *, scale: int, network: str = "auto",
                budget_s: float = 240.0, bootstrap_fraction: float = 0.3, strategy: str = "real-pairs",
                seed: int = 0, network_kwargs: Mapping | None = None, init: NetFit | None = None,
                patch: int | None = None, batch: int = 8, lr: float = 1e-3, bootstrap_lr: float = 5e-4,
                loss: str = "l1", ssim_weight: float = 0.0,
                normalisation: Normalisation | None = None,
                multiscale: MultiScaleConfig | None = None,
                validation: Sequence[Region] = (), validate_every: int = 40, average: float = 0.0,
                anchor_weight: float = 0.0, augment: bool | str = "dihedral") -> NetFit:
    """Train ``network`` for x``scale`` within ``budget_s`` seconds: LR-only bootstrap, then fine-tune on pairs.

    Parameters
    ----------
    lr_frames : list of (H, W) arrays
        Raw LR frames (LR units) for the LR-only phase; each needs H, W >= S·patch.
    regions : list of (lr_region (h, w), hr_grid (S·h, S·w))
        Registered training areas (:func:`refscope.models.pipeline.training_grids`), HR in any units (it is
        calibrated into LR units here). May be empty for ``strategy="lr-only"``.
    strategy : str
        ``"real-pairs"`` | ``"noise-robust"`` (fine-tune on the pairs), ``"synthetic"`` (fine-tune on the HR
        grids degraded to LR), ``"lr-only"`` (no fine-tune: the whole budget on phase 1).
    bootstrap_fraction : float
        Share of the budget spent on the LR-only phase (0 skips it; ignored when ``init`` is given and > 0
        still runs it).
    init : NetFit, optional
        Warm start (same network, scale and kwargs); its normalisation is kept unless ``normalisation`` is
        given (a pretrained prior, :mod:`refscope.models.prior`, is applied in the session's own units).
    validation : list of (lr (h, w), hr (S·h, S·w)), optional
        Held-out reference subimages inside the training area (never the scored area). Every
        ``validate_every`` fine-tune steps the network's mean ΔPSNR over bicubic on them
        (:func:`~refscope.models.promotion.held_out_delta_psnr`) is measured, and the best checkpoint, not the
        last, is returned: fine-tuning on a small reference cannot run away (issue 12). The history's last
        entry records ``best_step`` and ``best_validation_d_psnr_db``.
    average : float
        With ``validation``: decay ``d`` in [0, 1) of the exponential moving average of the fine-tune's weights
        that the checkpoints are taken from (:class:`BestCheckpoint`; 0: the training weights themselves).
    seed : int
        Weight initialisation and patch sampling.
    patch, batch, lr, bootstrap_lr, loss
        LR patch side (default: 32, shrunk to fit the data), patches per step, Adam learning rates of the
        fine-tune (1e-3) and LR-only (5e-4) phases (the final phase runs its last quarter at a quarter of
        the rate), and the
        fine-tune loss (``"l1"``). Chosen on the physical x2.4/x4.17 pairs (benchmarks/quality_net.py).
    ssim_weight : float
        Weight of a structural term added to the fine-tune loss (:func:`~refscope.models.training.ssim_loss`).
    anchor_weight : float
        α of the fine-tune's pull toward the weights it starts from (``init``'s, the prior's: L2-SP,
        :attr:`~refscope.models.training.TrainConfig.anchor_weight`; 0 = off).
    augment : bool or str
        The random transforms of the fine-tune's patch pairs (:data:`~refscope.models.training.AUGMENTATIONS`;
        ``"flips"`` keeps the scan's axes).

    Returns
    -------
    NetFit
    """
    if strategy not in NET_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(NET_STRATEGIES)}")
    if not budget_s > 0 or not 0 <= bootstrap_fraction <= 1:
        raise ValueError(f"need budget_s > 0 and 0 <= bootstrap_fraction <= 1, got {budget_s}, {bootstrap_fraction}")
    scale = int(scale)
    network = resolve_network(network, scale)
    if init is not None and (init.network, init.scale) != (network, scale):
        raise ValueError(f"cannot warm-start a {network} x{scale} network from a {init.network} x{init.scale} one")
    lr_frames = [np.asarray(f, dtype=np.float64) for f in lr_frames]
    regions = _calibrated(regions, scale)
    if strategy != "lr-only" and not regions:
        raise ValueError(f"strategy {strategy!r} needs at least one registered LR/HR reference pair")
    if not lr_frames and (strategy == "lr-only" or bootstrap_fraction > 0):
        lr_frames = [lr for lr, _ in regions]
    kwargs = dict(network_kwargs or (init.network_kwargs if init else {}))
    if init is not None:
        norm = normalisation or init.normalisation
    else:
        norm = normalisation or Normalisation.from_images(lr_frames or [lr for lr, _ in regions])
    p = patch or default_patch(scale, lr_frames if (strategy == "lr-only" or bootstrap_fraction > 0) else [],
                               regions if strategy != "lr-only" else [])
    net = build_network(network, scale=scale, seed=seed, **kwargs)
    state = init.state_dict if init is not None else None
    history: list[dict] = []
    start = time.perf_counter()
    boot = budget_s if strategy == "lr-only" else budget_s * bootstrap_fraction
    if boot > 0 and lr_frames:
        source = PooledSource(make_lr_only_dataset(lr_frames, scale, p, normalisation=norm,
                                                   config=multiscale or lr_only_config(scale)))
        cfg = TrainConfig(strategy="lr-only", patch=p, batch=batch, lr=bootstrap_lr, steps=10 ** 9, seed=seed)
        results = train_phase(net, cfg, source, boot, state, lr_tail=0.25 if strategy == "lr-only" else 0.0)
        state = results[-1].state_dict if results else state
        history.append(phase_record("lr-only", results))
    if strategy != "lr-only":
        left = max(budget_s - (time.perf_counter() - start), 0.05 * budget_s)
        if strategy == "synthetic":
            source = make_synthetic_dataset([hr for _, hr in regions], scale, p, normalisation=norm)
        else:
            source = make_real_pair_dataset(regions, scale, p, normalisation=norm, intensity_fit=False)
        cfg = TrainConfig(strategy=strategy, loss=loss, ssim_weight=ssim_weight, patch=p, batch=batch, lr=lr,
                          steps=10 ** 9, seed=seed + 1, anchor_weight=anchor_weight, augment=augment)
        keeper = BestCheckpoint(net, norm, validation, scale, validate_every, average) if validation else None
        state, record = checkpointed_phase(net, cfg, source, left, state, strategy, keeper)
        history.append(record)
    if state is None:
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return NetFit(network, scale, state, norm, kwargs, strategy, history)


# ---------------------------------------------------------------------------------------------- evaluation
def subimage_categories(hr_grid: np.ndarray, box: tuple[tuple[int, int], tuple[int, int]], scale: int,
                        threshold: float = 0.5) -> dict[tuple[int, int], str]:
    """``(row, col) -> "foreground"|"background"``: whether the subimage's HR reference is mostly above the
    pair's Otsu threshold (foreground fraction > ``threshold``), the paper-002-style image category."""
    mask = foreground_mask(hr_grid)
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    out = {}
    for r in range(ROWS):
        for c in range(COLS):
            sub = mask[(ys[r] - y0) * scale:(ys[r + 1] - y0) * scale, (xs[c] - x0) * scale:(xs[c + 1] - x0) * scale]
            out[(r, c)] = "foreground" if sub.mean() > threshold else "background"
    return out


def score_predictors(lr: np.ndarray, hr_grid: np.ndarray, box: tuple[tuple[int, int], tuple[int, int]], *,
                     scale: int, predictors: Mapping[str, Predictor], factor: float = math.nan,
                     geometry: PairGeometry | None = None, in_sample: bool = True, all_out_of_sample: bool = False,
                     report: EvaluationReport | None = None) -> EvaluationReport:
    """Score predictors on the 3x4 subimages of an LR box (same split and metrics as
    :func:`refscope.models.evaluation.evaluate_pair`): each subimage is reconstructed from its LR pixels alone,
    scored against the HR grid after a linear intensity fit, and the differences to bicubic are kept.

    ``all_out_of_sample`` marks all 12 subimages out-of-sample (a model that never saw this pair); otherwise the
    left 9 are in-sample and are skipped unless ``in_sample``. Results are appended to ``report`` if given.
    """
    (y0, _), (x0, _) = box
    ys, xs = split_subimages(box)
    if report is None:
        f = float(factor) if math.isfinite(factor) and factor > 0 else float(scale)
        report = EvaluationReport(int(scale), float(factor), geometry or PairGeometry((0.0, 0.0), (f, f)), box, 0,
                                  math.nan)
    for row in range(ROWS):
        for col in range(COLS):
            is_train = col < COLS - 1 and not all_out_of_sample
            if is_train and not in_sample:
                continue
            sub_lr = lr[ys[row]:ys[row + 1], xs[col]:xs[col + 1]]
            ref = hr_grid[(ys[row] - y0) * scale:(ys[row + 1] - y0) * scale,
                          (xs[col] - x0) * scale:(xs[col + 1] - x0) * scale]
            bicubic = upsample_bicubic(sub_lr, scale)
            base = score_all(ref, bicubic)
            keep = (row, col) == PANEL_CELL
            if keep:  # the figure's image panel (evaluate --plot): kept from evaluate_pair when it ran first
                report.panel.pop("HR", None)
                report.panel.setdefault("LR", sub_lr.copy())
                report.panel.setdefault("bicubic", bicubic)
            for name, pred in predictors.items():
                est = np.asarray(pred(sub_lr), dtype=np.float64)
                if est.shape != ref.shape:
                    raise ValueError(f"{name}: returned {est.shape} for a {sub_lr.shape} input, expected {ref.shape}")
                scores = _scores(ref, est)
                report.results.append(SubimageScore(name, row, col, is_train, scores, _diff(scores, base)))
                if keep:
                    report.panel[name] = est
            if keep:
                report.panel["HR"] = np.array(ref)  # last: the truth closes the row
    return report


def _scores(ref: np.ndarray, est: np.ndarray) -> QualityScores:
    if not np.all(np.isfinite(est)):
        nan = math.nan
        return QualityScores(-math.inf, nan, nan, -math.inf, -math.inf, nan, nan, nan)
    return score_all(ref, est)


@dataclass(frozen=True)
class StandardScore:
    """Standard evaluation of one method at one zoom level: mean PSNR/SSIM and their differences to bicubic."""

    method: str
    zoom: float
    n: int
    psnr: float
    ssim: float
    d_psnr: float
    d_ssim: float


def standard_evaluation(references: Sequence[np.ndarray], *, scale: int, predictors: Mapping[str, Predictor],
                        zooms: Sequence[float] | None = None, n_zooms: int = 4) -> list[StandardScore]:
    """Paper 001's standard evaluation: HR references, and pseudo-real versions nearest-neighbour downscaled by
    a zoom ``z``, are the targets; their nearest-neighbour downscaling by S (noise-preserving) is the input.

    ``zooms`` default to ``n_zooms`` levels evenly spaced from 1/S (the LR's own zoom when the references sit on
    the S-times LR grid) to 1. Returns one :class:`StandardScore` per (zoom, method), bicubic included.
    """
    scale = int(scale)
    zooms = list(zooms) if zooms is not None else list(np.linspace(1.0 / scale, 1.0, n_zooms))
    rows = []
    for z in zooms:
        per: dict[str, list[tuple[float, float]]] = {}
        for ref in references:
            ref = np.asarray(ref, dtype=np.float64)
            h, w = (int(round(ref.shape[0] * z)) // scale, int(round(ref.shape[1] * z)) // scale)
            if min(h, w) < 8:  # every method needs >= 8 LR px per side; scores need >= 11 HR px
                continue
            target = resize(ref, (h * scale, w * scale), "nearest") if z != 1.0 or ref.shape != (h * scale, w * scale) \
                else ref
            lr = resize(target, (h, w), "nearest")
            base = score_all(target, upsample_bicubic(lr, scale))
            per.setdefault("bicubic", []).append((base.psnr, base.ssim))
            for name, pred in predictors.items():
                s = _scores(target, np.asarray(pred(lr), dtype=np.float64))
                per.setdefault(name, []).append((s.psnr, s.ssim))
        if "bicubic" not in per:
            continue
        b = np.array(per["bicubic"])
        for name, values in per.items():
            v = np.array(values)
            rows.append(StandardScore(name, float(z), len(v), float(v[:, 0].mean()), float(v[:, 1].mean()),
                                      float((v[:, 0] - b[:, 0]).mean()), float((v[:, 1] - b[:, 1]).mean())))
    return rows

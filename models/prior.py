"""A pretrained EM prior: one network learned from many sessions' physical LR/HR pairs (pure: arrays in, weights out).

Why
---
A network trained from scratch on one session's reference (a few hundred LR pixels squared) learns little more
than a denoising filter and overfits within minutes; the same small network first trained on *other* sessions'
real pairs and then fine-tuned on this one generalises (issue 12, `benchmarks/RESULTS.md`). :func:`train_prior`
learns that prior; the session then warm-starts from it (:func:`refscope.models.net_fit.fit_network` with
``init=prior`` and the session's own :class:`~refscope.models.training.Normalisation`).

Units
-----
Every pair is mapped into network units by *its own* LR frame's robust range (0.5-99.5 percentiles -> [0, 1],
:meth:`Normalisation.from_images` of the whole LR frame), and its HR grid is calibrated into LR units first
(least squares against the bicubic-upsampled LR, as the paired library does). A prior therefore carries the
identity normalisation ``(offset 0, scale 1)``, and whoever applies it normalises the input frame the same way:
:func:`frame_normalisation`.

Checkpoint
----------
The right-hand strip of every pair's overlap (:func:`refscope.models.promotion.split_for_validation`, a quarter
of it) is held out, and the weights with the best mean ΔPSNR over bicubic on those strips are kept, not the last
ones. A prior trained on a few pairs overfits them: on the physical SEM pairs, priors of ~13 000 steps served
0.1-0.6 dB worse on the pair they never saw than priors of ~2 000 steps (``benchmarks/RESULTS.md``, issue 12),
so how long a prior trains must not decide how good it is.

Loss
----
The prior: plain L2 against the noisy HR grid. With HR noise independent of the LR's, the minimiser is the clean
HR mean (Noise2Noise, Lehtinen et al., ICML 2018, eq. 2), which is what a PSNR against a *noisy* HR rewards too.
The session's fine-tune: L1, whose minimiser is the median (the same clean value where the HR noise is
symmetric: the L1 case of Noise2Noise) and which lets the few pixels where the two scans disagree for physical
reasons -- a thin feature that moved or charged between them, a local registration error -- pull on the weights
far less than L2 lets them; on a single session's reference those pixels are a larger share than in the prior's
pooled pairs. Plus a small structural term, ``0.01 (1 - SSIM)`` (Zhao et al., IEEE TCI 2017, mix L1/L2 and SSIM
losses): a pixel loss alone shrinks local contrast that SSIM measures. The checkpoint is still chosen on ΔPSNR.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .image_ops import upsample_bicubic
from .metrics import fit_intensity_coefficients
from .net_fit import BestCheckpoint, NetFit, checkpointed_phase, fit_network
from .network_names import resolve_network
from .networks import build_network
from .noise import estimate_noise_sigma
from .promotion import split_for_validation
from .synthetic import scan
from .training import Normalisation, TrainConfig, augmentation_name, make_real_pair_dataset

#: How a session fine-tunes a prior (chosen on the validation strips of the physical pairs, issue 12): a small
#: learning rate (a fifth of training from scratch) so the prior is adapted rather than overwritten, L1 (see
#: "Loss" above; on the validation strips +0.018 dB over L2 on the mean, ``benchmarks/RESULTS.md`` "Ablation: L1 or
#: L2 in the fine-tune") plus 0.01 x (1 - SSIM) (:func:`refscope.models.training.ssim_loss`; "Ablation: a
#: structural term"), 16 patches per step, no LR-only bootstrap before the pairs (it cost on the validation strips,
#: same ablation), and the session's patches as scanned, never flipped or turned (``augment="none"``: a raster
#: scan is not symmetric -- the detector lags along the fast axis x, lines follow each other in time along y -- and
#: a network that sees the pairs in their own orientation learns that; +0.08 dB and +0.005 SSIM on the validation
#: strips' mean over patches flipped and turned at random, RESULTS.md "The scan's own orientation"). Such a
#: network is served in one pass: a flipped pass would undo what it learned
#: (:func:`refscope.models.net_fit.largest_ensemble`).
FINE_TUNE = {"lr": 2e-4, "loss": "l1", "batch": 16, "ssim_weight": 0.01, "bootstrap_fraction": 0.0,
             "augment": "none"}

__all__ = ["PriorPair", "PriorConfig", "frame_normalisation", "prior_regions", "train_prior", "fine_tune", "IDENTITY",
           "FINE_TUNE", "ScanDegradation", "scanned_pair"]

#: The normalisation a prior carries: its inputs are already in per-frame network units.
IDENTITY = Normalisation(0.0, 1.0)


@dataclass(frozen=True)
class PriorPair:
    """One physical pair for the prior.

    lr_frame : (H, W) the whole LR frame (its robust range defines the pair's network units).
    lr_region : (h, w) the LR pixels of the overlap box. hr_grid : (S·h, S·w) the HR resampled onto the S-times
    grid of that box (:func:`refscope.models.pipeline.training_grids`), any units. name : for messages.
    """

    lr_frame: np.ndarray
    lr_region: np.ndarray
    hr_grid: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class PriorConfig:
    """How a prior is trained. ``budget_s``: wall-clock seconds. ``steps``: 0 trains for ``budget_s`` (the
    schedule follows the clock: the last quarter of the *time* at ``lr / 4``); N > 0 trains N Adam steps, the last
    quarter of the *steps* at ``lr / 4``, with ``budget_s`` only a cap (the same schedule on any device; the history
    records ``cut_by_budget`` when the cap stopped it first). ``patch``: LR patch side; ``batch``: patches per
    Adam step at learning rate ``lr``; ``loss`` ``"l2"`` (see the
    module docstring), plus ``ssim_weight`` x (1 - SSIM) (:func:`refscope.models.training.ssim_loss`; 0: off).
    ``network``/``network_kwargs``: ``"auto"`` (the network served at the scale) or a
    :data:`refscope.models.networks.NETWORKS` entry. ``device``: the torch device of the steps (``"cuda"`` trains
    many times more steps in the same budget; :class:`~refscope.models.training.TrainConfig`). ``augment``: the
    random transforms of the patch pairs (:data:`~refscope.models.training.AUGMENTATIONS`; ``"none"`` learns the
    scans' own orientation, and the prior then serves in one pass). ``validate_every``:
    steps between two measurements on the held-out strips (module docstring); 0 trains on the whole overlaps and
    keeps the last weights."""

    budget_s: float = 300.0
    steps: int = 0
    network: str = "auto"
    network_kwargs: dict = field(default_factory=dict)
    patch: int = 32
    batch: int = 16
    lr: float = 1e-3
    loss: str = "l2"
    ssim_weight: float = 0.0
    seed: int = 0
    device: str = "cpu"
    validate_every: int = 100
    augment: str = "dihedral"

    def __post_init__(self) -> None:
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0 s, got {self.budget_s}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: train for budget_s), got {self.steps}")
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0 steps (0 = keep the last weights), "
                             f"got {self.validate_every}")
        if self.patch < 8 or self.batch < 1 or not self.lr > 0:
            raise ValueError(f"need patch >= 8, batch >= 1 and lr > 0, got {self.patch}, {self.batch}, {self.lr}")
        augmentation_name(self.augment)


@dataclass(frozen=True)
class ScanDegradation:
    """How an HR-only frame is scanned into a synthetic LR frame (:func:`scanned_pair`); ranges are (low, high),
    drawn uniformly per frame.

    probe_sigma_lr_px: Gaussian probe σ in LR pixels (a fast scan's probe is smaller than its pixel: the LR is
    point-sampled, not pixel-integrated, and aliases). noise_rel: the LR noise σ as a fraction of the frame's
    0.5-99.5 percentile range (the physical pairs' LR frames measure 0.029-0.039 with the wavelet estimate of
    :func:`refscope.models.noise.estimate_noise_sigma`); independent Gaussian noise tops up what the scanned HR
    noise leaves. line_jitter_lr_px: σ of each scan line's shift along x, LR pixels.
    """

    probe_sigma_lr_px: tuple[float, float] = (0.3, 0.6)
    noise_rel: tuple[float, float] = (0.029, 0.040)
    line_jitter_lr_px: float = 0.1

    def __post_init__(self) -> None:
        for name in ("probe_sigma_lr_px", "noise_rel"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"ScanDegradation.{name} must be a (low, high) range with 0 <= low <= high, got "
                                 f"{getattr(self, name)}")
        if self.line_jitter_lr_px < 0:
            raise ValueError(f"line_jitter_lr_px must be >= 0, got {self.line_jitter_lr_px}")


def scanned_pair(hr: np.ndarray, scale: int, *, rng: np.random.Generator,
                 degradation: ScanDegradation = ScanDegradation(), name: str = "") -> PriorPair:
    """A physical-style pair from one HR-only frame: the frame (cropped to a multiple of ``scale``) is the HR grid,
    and its LR is an S-times coarser *scan* of it (:func:`refscope.models.synthetic.scan`: probe blur, point
    sampling at the LR pixel centres, line jitter) plus independent Gaussian noise up to the drawn LR noise level.

    The HR target keeps its own noise (L2 then learns its mean, as for the physical pairs); with the probe blur
    spanning several HR pixels, the LR's share of that noise is small, so LR and target noise are nearly
    independent. Returns a :class:`PriorPair` whose LR frame is the whole synthetic LR.

    Measured (``benchmarks/RESULTS.md``, "GPU paths"): fifteen such pairs added to the physical x4 pairs cost the
    leave-one-out priors 0.01-0.13 dB on the held-out pair's validation strip; the shipped priors do not use them.
    """
    scale = int(scale)
    image = np.asarray(hr, dtype=np.float64)
    rows, cols = image.shape[0] // scale, image.shape[1] // scale
    if image.ndim != 2 or min(rows, cols) < 8:
        raise ValueError(f"HR frame {name or '?'} of shape {image.shape} is too small for an x{scale} pair "
                         "(needs 8 LR px a side)")
    grid = image[: rows * scale, : cols * scale]
    lo, hi = np.percentile(grid, [0.5, 99.5])
    span = float(hi - lo) or 1.0
    d = degradation
    lr = scan((grid - lo) / span, field_box=(0.0, 0.0, rows, cols), pixel_size=float(scale),
              probe_sigma_px=rng.uniform(*d.probe_sigma_lr_px), dose=None, read_noise=0.0, rng=rng,
              line_jitter_px=d.line_jitter_lr_px)
    target = rng.uniform(*d.noise_rel)
    left = estimate_noise_sigma(lr)
    if target > left:
        lr = lr + rng.normal(0.0, float(np.sqrt(target ** 2 - left ** 2)), lr.shape)
    lr = lo + span * lr
    return PriorPair(lr, lr, grid, name)


def frame_normalisation(lr_frame: np.ndarray) -> Normalisation:
    """The per-frame network units a prior expects: the frame's 0.5-99.5 percentile range onto [0, 1]."""
    return Normalisation.from_images([lr_frame])


def prior_regions(pairs: Sequence[PriorPair], scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each pair's (LR region, HR grid) in its own network units, the HR calibrated into LR units first."""
    scale = int(scale)
    out = []
    for pair in pairs:
        lr = np.asarray(pair.lr_region, dtype=np.float64)
        hr = np.asarray(pair.hr_grid, dtype=np.float64)
        if lr.ndim != 2 or hr.shape != (scale * lr.shape[0], scale * lr.shape[1]):
            raise ValueError(f"prior pair {pair.name or '?'}: HR grid {hr.shape} must be {scale} x the LR region "
                             f"{lr.shape}")
        a, b = fit_intensity_coefficients(hr, upsample_bicubic(lr, scale))
        norm = frame_normalisation(pair.lr_frame)
        out.append((norm.apply(lr), norm.apply(a * hr + b)))
    return out


def train_prior(pairs: Sequence[PriorPair], *, scale: int, config: PriorConfig = PriorConfig()) -> NetFit:
    """Train ``config.network`` for x``scale`` on every pair for ``config.steps`` Adam steps, or ``config.budget_s``
    seconds when ``steps`` is 0 (1 thread is the caller's choice); returns a :class:`NetFit` with the :data:`IDENTITY` normalisation and one history entry,
    holding the best checkpoint on the held-out strips (``best_step``, ``best_validation_d_psnr_db`` and the
    ``validation_curve`` of (step, dB) it was chosen from) unless ``config.validate_every`` is 0.

    Raises ``ValueError`` without pairs, or when a pair's LR region is smaller than the patch.
    """
    if not pairs:
        raise ValueError("a prior needs at least one registered LR/HR pair")
    regions = prior_regions(pairs, scale)
    validation: list[tuple[np.ndarray, np.ndarray]] = []
    if config.validate_every:
        splits = [split_for_validation(lr, hr, scale=scale) for lr, hr in regions]
        regions = [split.train for split in splits]
        validation = [sub for split in splits for sub in split.held_out]
    patch = int(min([config.patch] + [min(lr.shape) for lr, _ in regions]))
    if patch < 8:
        small = [p.name for p, (lr, _) in zip(pairs, regions) if min(lr.shape) < 8]
        raise ValueError(f"prior pair(s) {small} have an LR overlap under 8 px; drop them")
    source = make_real_pair_dataset(regions, scale, patch, normalisation=IDENTITY, intensity_fit=False)
    network = resolve_network(config.network, scale)
    net = build_network(network, scale=scale, seed=config.seed, **config.network_kwargs)
    cfg = TrainConfig(strategy="real-pairs", loss=config.loss, ssim_weight=config.ssim_weight, patch=patch,
                      batch=config.batch, lr=config.lr, steps=10 ** 9, seed=config.seed, device=config.device,
                      augment=config.augment)
    keeper = BestCheckpoint(net, IDENTITY, validation, scale, config.validate_every) if validation else None
    state, record = checkpointed_phase(net, cfg, source, config.budget_s, None, "prior", keeper, steps=config.steps)
    record["pairs"] = [p.name for p in pairs]
    record["schedule"] = {"steps": config.steps} if config.steps else {"seconds": config.budget_s}
    if config.steps:
        record["cut_by_budget"] = record["steps"] < config.steps
    return NetFit(network, int(scale), state, IDENTITY, dict(config.network_kwargs), "prior", [record])


def fine_tune(prior: NetFit, lr_frames: Sequence[np.ndarray], regions: Sequence[tuple[np.ndarray, np.ndarray]], *,
              budget_s: float, validation: Sequence[tuple[np.ndarray, np.ndarray]] = (), seed: int = 0,
              **settings) -> NetFit:
    """The session's network: ``prior`` fine-tuned on the session's registered ``regions`` for ``budget_s`` seconds.

    ``lr_frames`` (whole LR frames, or the training areas when only those are at hand) set the session's network
    units (their robust range, as :func:`frame_normalisation`). With ``validation`` (held-out subimages inside
    the training area) the best checkpoint is returned, the prior itself included, so a fine-tune can only help
    on the validation strip (:func:`~refscope.models.net_fit.fit_network`). Settings: :data:`FINE_TUNE`, where
    ``settings`` (keywords of :func:`~refscope.models.net_fit.fit_network`: ``lr``, ``average``, ...) replace them.
    """
    norm = Normalisation.from_images(list(lr_frames))
    return fit_network(list(lr_frames), list(regions), scale=prior.scale, network=prior.network,
                       network_kwargs=prior.network_kwargs, budget_s=budget_s, init=prior,
                       normalisation=norm, validation=validation, seed=seed,
                       **{**FINE_TUNE, **settings})

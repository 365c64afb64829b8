"""Train the networks of :mod:`refscope.models.networks` on the session's data (pure: arrays in, state out).

Four strategies (``TrainConfig.strategy``), each fed by a patch source made here:

* ``"real-pairs"``: physical LR/HR reference pairs, aligned by :func:`refscope.models.pipeline.training_grids`
  (:func:`make_real_pair_dataset`); plain ℓ1/ℓ2 loss against the noisy HR (Khateri et al. eqs. 4-9: a
  zero-mean-noise reference leaves the optimum nearly unchanged).
* ``"noise-robust"``: the same loss on two weight-sharing branches, the LR input y and a noisier copy
  y' = y + N(0, σ'²), with the three-term loss of eq. 16 (:func:`noise_robust_loss`). Any source works.
* ``"lr-only"``: pairs generated from LR frames alone by Wagner et al.'s multi-scale sub-processes
  (:func:`make_lr_only_dataset`, :func:`refscope.models.degradations.multiscale_pair`).
* ``"synthetic"``: HR images degraded to LR (synthetic I/II, :func:`make_synthetic_dataset`).

Intensities: every source normalises with one :class:`Normalisation`, ``x_norm = (x - offset) * scale``, which
maps the 0.5-99.5 percentile range of the training LR (HR for synthetic sources) onto [0, 1]; targets use the
same map, so the output is denormalised with it. Its ``offset`` / ``scale`` are the manifest's
``input_offset`` / ``input_scale`` (:func:`export_network`).

References
----------
M. Khateri et al., IEEE TCI (2024), eq. 16 and Sec. III-B-1. F. Wagner et al. (2024), Sec. 3.2.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .degradations import SYNTHETIC_II, BlurNoise, MultiScaleConfig, multiscale_pair, synthetic_lr
from .image_ops import upsample_bicubic
from .metrics import SSIM_K1, SSIM_K2, SSIM_RADIUS, SSIM_SIGMA, SSIM_WINDOW, fit_intensity_coefficients
from .normalisation import Normalisation
from .noise import estimate_noise_sigma

__all__ = ["STRATEGIES", "AUGMENTATIONS", "augmentation_name", "Normalisation", "TrainConfig", "TrainResult",
           "training_device", "PatchSource", "make_real_pair_dataset", "make_lr_only_dataset", "make_synthetic_dataset", "lp_loss", "ssim_loss",
           "noise_robust_loss", "train", "warm_start",
           "predict", "export_network"]

STRATEGIES = ("real-pairs", "noise-robust", "lr-only", "synthetic")
AUGMENTATIONS = ("dihedral", "flips", "none")
"""Random transforms of each training patch pair (:class:`TrainConfig` ``augment``)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    strategy: one of :data:`STRATEGIES`. loss: ``"l1"`` or ``"l2"`` (mean |e|^p per pixel). patch: LR patch
    side p (targets are S·p). batch: patches per step. lr: Adam learning rate, halved every ``lr_halve_every``
    steps (None = constant). steps: maximum steps; time_budget_s: maximum seconds (None = no limit; the first
    limit reached stops training). augment: one of :data:`AUGMENTATIONS` -- ``"dihedral"`` (or True): random flips
    and 90° rotations (the 8 dihedral transforms); ``"flips"``: flips of y and/or x only (4 transforms; the scan's
    fast axis stays the x axis, so direction-dependent blur and noise of a raster scan are learned as such);
    ``"none"`` (or False): none.
    lambdas: (λ1, λ2, λ3) of eq. 16 (noise-robust only). noisier_sigma: σ of the noise that makes y', network
    units (None = the source's estimated LR noise level); each sample draws σ' = σ·U(noisier_range).
    ssim_weight: weight w of the structural term added to the loss, ``lp + w·(1 - SSIM)`` (:func:`ssim_loss`;
    0 = off). anchor_weight: weight α of ``α · Σ (w − w₀)²`` over every parameter, pulling the weights toward
    where they started (L2-SP, Li, Grandvalet & Davoine, ICML 2018, eq. 3; w₀: :func:`train`'s ``anchor``, else
    its starting weights; 0 = off). grad_clip: max gradient norm (None = off). seed: all sampling randomness
    (NumPy); with the same network initialisation and step count, training is reproducible. device: the torch
    device the steps run on (``"cpu"``, ``"cuda"``, ``"cuda:1"``); patches are sampled on the CPU either way and
    the network is handed back on the CPU.
    """

    strategy: str = "real-pairs"
    loss: str = "l1"
    patch: int = 32
    batch: int = 8
    lr: float = 5e-4
    steps: int = 2000
    time_budget_s: float | None = None
    augment: bool | str = "dihedral"
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noisier_sigma: float | None = None
    noisier_range: tuple[float, float] = (0.0, 1.0)
    lr_halve_every: int | None = None
    ssim_weight: float = 0.0
    anchor_weight: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")
        if self.patch < 4 or self.batch < 1 or self.steps < 0 or not self.lr > 0:
            raise ValueError(f"need patch >= 4, batch >= 1, steps >= 0 and lr > 0; got {self.patch}, {self.batch}, "
                             f"{self.steps}, {self.lr}")
        if not self.ssim_weight >= 0:
            raise ValueError(f"ssim_weight must be >= 0, got {self.ssim_weight}")
        object.__setattr__(self, "augment", augmentation_name(self.augment))  # True/False -> its name
        if not self.anchor_weight >= 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if len(self.lambdas) != 3 or min(self.lambdas) < 0:
            raise ValueError(f"lambdas must be three non-negative weights (eq. 16), got {self.lambdas}")
        low, high = self.noisier_range
        if not 0 <= low <= high:
            raise ValueError(f"noisier_range must satisfy 0 <= low <= high, got {self.noisier_range}")


@dataclass(frozen=True)
class TrainResult:
    """state_dict: trained weights (CPU copies). steps: steps taken. losses: total loss per step. seconds: wall time."""

    state_dict: dict[str, torch.Tensor]
    steps: int
    losses: tuple[float, ...]
    seconds: float


# ------------------------------------------------------------------------------------------------ sources
def augmentation_name(augment: bool | str) -> str:
    """The :data:`AUGMENTATIONS` entry ``augment`` names (True = ``"dihedral"``, False = ``"none"``)."""
    name = ("dihedral" if augment else "none") if isinstance(augment, bool) else augment
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be True, False or one of {', '.join(AUGMENTATIONS)}; got {augment!r}")
    return name


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """One random transform of ``mode`` (``"dihedral"`` or ``"flips"``) applied to the input and target alike."""
    if mode == "dihedral":
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k), np.rot90(y, k)
        return (x[:, ::-1], y[:, ::-1]) if flip else (x, y)
    flip_y, flip_x = bool(rng.integers(2)), bool(rng.integers(2))
    if flip_y:
        x, y = x[::-1], y[::-1]
    return (x[:, ::-1], y[:, ::-1]) if flip_x else (x, y)


class PatchSource:
    """Base of the patch sources: ``sample(batch, rng, augment)`` -> (inputs (B, 1, p, p), targets (B, 1, S·p,
    S·p)), float32 network units. Attributes: ``kind`` (strategy it serves), ``scale``, ``patch``,
    ``normalisation`` and ``noise_sigma`` (estimated LR noise σ, network units)."""

    kind = ""

    def __init__(self, scale: int, patch: int, normalisation: Normalisation, noise_sigma: float) -> None:
        self.scale, self.patch = int(scale), int(patch)
        self.normalisation, self.noise_sigma = normalisation, float(noise_sigma)

    def _pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, batch: int, rng: np.random.Generator, augment: bool | str = True
               ) -> tuple[np.ndarray, np.ndarray]:
        mode = augmentation_name(augment)
        xs, ys = [], []
        for _ in range(batch):
            x, y = self._pair(rng)
            if mode != "none":
                x, y = _augment(x, y, rng, mode)
            xs.append(x)
            ys.append(y)
        return (np.ascontiguousarray(np.stack(xs)[:, None], dtype=np.float32),
                np.ascontiguousarray(np.stack(ys)[:, None], dtype=np.float32))


class _RealPairs(PatchSource):
    kind = "real-pairs"

    def __init__(self, regions, scale, patch, normalisation, noise_sigma) -> None:
        super().__init__(scale, patch, normalisation, noise_sigma)
        self.regions = regions
        counts = np.array([(lr.shape[0] - patch + 1) * (lr.shape[1] - patch + 1) for lr, _ in regions], float)
        self.p = counts / counts.sum()

    def _pair(self, rng):
        lr, hr = self.regions[int(rng.choice(len(self.regions), p=self.p))]
        p, s = self.patch, self.scale
        y, x = int(rng.integers(lr.shape[0] - p + 1)), int(rng.integers(lr.shape[1] - p + 1))
        return lr[y:y + p, x:x + p], hr[s * y:s * (y + p), s * x:s * (x + p)]


class _LROnly(PatchSource):
    kind = "lr-only"

    def __init__(self, frames, scale, patch, normalisation, noise_sigma, config) -> None:
        super().__init__(scale, patch, normalisation, noise_sigma)
        self.frames, self.config = frames, config

    def _pair(self, rng):
        frame = self.frames[int(rng.integers(len(self.frames)))]
        pair = multiscale_pair(frame, self.scale, self.patch, rng=rng, config=self.config)
        return pair.input, pair.target


class _Synthetic(PatchSource):
    kind = "synthetic"

    def __init__(self, images, scale, patch, normalisation, noise_sigma, degradation) -> None:
        super().__init__(scale, patch, normalisation, noise_sigma)
        self.images, self.degradation = images, degradation

    def _pair(self, rng):
        hr = self.images[int(rng.integers(len(self.images)))]
        side = self.scale * self.patch
        y, x = int(rng.integers(hr.shape[0] - side + 1)), int(rng.integers(hr.shape[1] - side + 1))
        target = hr[y:y + side, x:x + side]
        return synthetic_lr(target, self.scale, rng=rng, degradation=self.degradation), target


def _noise(images: Sequence[np.ndarray]) -> float:
    return float(np.median([estimate_noise_sigma(im) for im in images]))


def make_real_pair_dataset(regions: Sequence[tuple[np.ndarray, np.ndarray]], scale: int, patch: int, *,
                           normalisation: Normalisation | None = None, intensity_fit: bool = True) -> PatchSource:
    """Aligned patch pairs from registered reference regions.

    Parameters
    ----------
    regions : list of (lr_region (h, w), hr_grid (S·h, S·w))
        LR overlap boxes and the HR resampled onto their S-times grid, as returned (after cropping the LR
        frame to the box) by :func:`refscope.models.pipeline.training_grids`.
    scale, patch : int
        S and the LR patch side p (each region needs h, w >= p).
    normalisation : Normalisation, optional
        Defaults to the robust range of all LR regions.
    intensity_fit : bool
        Calibrate each HR grid into LR units by least squares against the bicubic-upsampled LR (as the paired
        library does), since LR and HR scans differ in contrast and brightness.
    """
    scale, patch = int(scale), int(patch)
    if not regions:
        raise ValueError("no training region given; register at least one HR reference first")
    checked = []
    for index, (lr, hr) in enumerate(regions):
        lr, hr = np.asarray(lr, dtype=np.float64), np.asarray(hr, dtype=np.float64)
        if lr.ndim != 2 or hr.shape != (scale * lr.shape[0], scale * lr.shape[1]):
            raise ValueError(f"region {index}: HR grid {hr.shape} must be {scale} x the LR region {lr.shape}")
        if min(lr.shape) < patch:
            raise ValueError(f"region {index}: LR region {lr.shape} is smaller than the patch {patch}; "
                             f"use a smaller patch or a larger reference")
        if intensity_fit:
            a, b = fit_intensity_coefficients(hr, upsample_bicubic(lr, scale))
            hr = a * hr + b
        checked.append((lr, hr))
    norm = normalisation or Normalisation.from_images([lr for lr, _ in checked])
    data = [(norm.apply(lr), norm.apply(hr)) for lr, hr in checked]
    return _RealPairs(data, scale, patch, norm, _noise([lr for lr, _ in data]))


def make_lr_only_dataset(frames: Sequence[np.ndarray], scale: int, patch: int, *,
                         config: MultiScaleConfig = MultiScaleConfig(),
                         normalisation: Normalisation | None = None) -> PatchSource:
    """Multi-scale pairs from raw LR frames (H, W) alone; each frame needs H, W >= S·p."""
    if not frames:
        raise ValueError("no LR frame given")
    side = int(scale) * int(patch)
    small = [np.shape(f) for f in frames if min(np.shape(f)) < side]
    if small:
        raise ValueError(f"LR frames {small} are smaller than one {side} px target crop; use a smaller patch")
    norm = normalisation or Normalisation.from_images(frames)
    data = [norm.apply(f).astype(np.float64) for f in frames]
    return _LROnly(data, scale, patch, norm, _noise(data), config)


def make_synthetic_dataset(hr_images: Sequence[np.ndarray], scale: int, patch: int, *,
                           degradation: BlurNoise | None = SYNTHETIC_II,
                           normalisation: Normalisation | None = None) -> PatchSource:
    """Pairs made by degrading HR images (synthetic I: ``degradation=None``; II: :data:`SYNTHETIC_II`).

    The noise levels of ``degradation`` are in network units (the HR's robust range = [0, 1] by default);
    pass the LR frames' :class:`Normalisation` when the served frames are known, so the units agree.
    """
    if not hr_images:
        raise ValueError("no HR image given")
    side = int(scale) * int(patch)
    small = [np.shape(im) for im in hr_images if min(np.shape(im)) < side]
    if small:
        raise ValueError(f"HR images {small} are smaller than one {side} px target crop; use a smaller patch")
    norm = normalisation or Normalisation.from_images(hr_images)
    data = [norm.apply(im).astype(np.float64) for im in hr_images]
    probe = synthetic_lr(data[0], int(scale), rng=np.random.default_rng(0), degradation=degradation)
    return _Synthetic(data, scale, patch, norm, estimate_noise_sigma(probe), degradation)


# ------------------------------------------------------------------------------------------------ losses
def lp_loss(prediction: torch.Tensor, target: torch.Tensor, p: int) -> torch.Tensor:
    """``L_lp(z, ẑ) = mean |z - ẑ|^p`` over all pixels (the paper's ||·||_p^p divided by the pixel count)."""
    diff = prediction - target
    return diff.abs().mean() if p == 1 else (diff * diff).mean()


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``1 - mean SSIM(ẑ, z)`` over the valid (border-free) windows of (B, 1, H, W) tensors.

    Wang et al., IEEE TIP 13(4), 2004, eq. (13), with the Gaussian window (σ 1.5 px, 11 x 11) and constants
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` of :func:`refscope.models.metrics.ssim`; ``L = data_range`` in the
    tensors' units (network units: the LR frame's robust range is 1). Differentiable; patches smaller than the
    window raise ValueError.
    """
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs patches of at least {SSIM_WINDOW} px, got {tuple(prediction.shape)}")
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=prediction.dtype, device=prediction.device)
    g = torch.exp(-taps ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    moments = torch.cat([prediction, target, prediction * prediction, target * target, prediction * target], 1)
    channels = moments.shape[1]
    rows = torch.nn.functional.conv2d(moments, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    blurred = torch.nn.functional.conv2d(rows, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    n = prediction.shape[1]
    mx, my, xx, yy, xy = (blurred[:, i * n:(i + 1) * n] for i in range(5))   # separable window: 22 taps, not 121
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1.0 - ssim_map.mean()


def noise_robust_loss(pred: torch.Tensor, pred_noisier: torch.Tensor, target: torch.Tensor, *,
                      lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0), p: int = 1
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Eq. 16: ``L_T = λ1 L(f(y), x) + λ2 L(f(y'), x) + λ3 L(f(y), f(y'))``.

    Parameters
    ----------
    pred, pred_noisier : (B, 1, S·p, S·p) tensors
        f_θ(y) and f_θ(y') from the same (weight-shared) network.
    target : (B, 1, S·p, S·p) tensor
        The (noisy) HR reference x.
    lambdas : (λ1, λ2, λ3)
        Paper: (1, 1, 1).
    p : int
        1 (ℓ1) or 2 (ℓ2), per :func:`lp_loss`.

    Returns
    -------
    total, (fidelity, noisier_fidelity, consistency)
        The first term fits the clean-branch output to the reference, the second makes the noisier branch fit
        it too (noise robustness), the third ties the two outputs together (the clean branch acts as a
        self-supervised reference for the noisier one). Gradients flow through both branches in every term.
    """
    terms = (lp_loss(pred, target, p), lp_loss(pred_noisier, target, p), lp_loss(pred, pred_noisier, p))
    total = lambdas[0] * terms[0] + lambdas[1] * terms[1] + lambdas[2] * terms[2]
    return total, terms


# ------------------------------------------------------------------------------------------------ training
_KINDS = {"real-pairs": ("real-pairs",), "lr-only": ("lr-only",), "synthetic": ("synthetic",),
          "noise-robust": ("real-pairs", "lr-only", "synthetic")}


def warm_start(network: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``network`` (strict) and return it; a mismatch raises ValueError."""
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"the saved weights do not fit this network ({first}); build the network with the same "
                         f"name, size and scale as the one that was trained, or train from scratch") from None
    return network


def training_device(name: str) -> torch.device:
    """The torch device called ``name``, checked usable; ValueError naming what is missing otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown training device {name!r} ({exc}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"training device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
                             f"device; install a CUDA build of torch or train on 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"training device {name!r} asked for, but torch sees only "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"training device {name!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return device


def train(network: nn.Module, config: TrainConfig, data_source: PatchSource, *,
          init_state: dict[str, torch.Tensor] | None = None, budget_s: float | None = None,
          on_step: Callable[[int, float], bool | None] | None = None,
          anchor: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``network`` in place with Adam on patches from ``data_source``; returns its final weights.

    Parameters
    ----------
    network : nn.Module
        A network of :mod:`refscope.models.networks` with ``scale`` equal to the source's. Left in eval mode.
    config : TrainConfig
    data_source : PatchSource
        From :func:`make_real_pair_dataset` (strategies ``real-pairs``, ``noise-robust``),
        :func:`make_lr_only_dataset` (``lr-only``) or :func:`make_synthetic_dataset` (``synthetic``); the
        noise-robust loss accepts any source.
    init_state : dict, optional
        Warm start from these weights (:func:`warm_start`); the optimiser state starts fresh.
    budget_s : float, optional
        Wall-clock limit in seconds, overriding ``config.time_budget_s``.
    on_step : callable, optional
        ``on_step(step, loss)`` after every step; returning True stops training (e.g. a cancel request).
    anchor : dict, optional
        The weights w₀ that ``config.anchor_weight`` pulls toward (default: the weights training starts from).

    Returns
    -------
    TrainResult
    """
    if data_source.kind not in _KINDS[config.strategy]:
        raise ValueError(f"strategy {config.strategy!r} needs a {' or '.join(_KINDS[config.strategy])} source, got "
                         f"a {data_source.kind!r} one; build it with the matching make_*_dataset function")
    if getattr(network, "scale", data_source.scale) != data_source.scale:
        raise ValueError(f"the network upscales x{network.scale} but the data are x{data_source.scale}")
    if config.ssim_weight and config.patch * data_source.scale < SSIM_WINDOW:
        raise ValueError(f"ssim_weight needs targets of at least {SSIM_WINDOW} px: patch {config.patch} "
                         f"at x{data_source.scale} gives {config.patch * data_source.scale}")
    device = training_device(config.device)
    if init_state is not None:
        warm_start(network, init_state)
    budget = config.time_budget_s if budget_s is None else budget_s
    rng = np.random.default_rng(config.seed)
    p = 1 if config.loss == "l1" else 2
    robust = config.strategy == "noise-robust"
    sigma = data_source.noise_sigma if config.noisier_sigma is None else float(config.noisier_sigma)
    network.to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    anchored = _anchor_pairs(network, anchor, device) if config.anchor_weight else []
    losses: list[float] = []
    network.train()
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            if budget is not None and time.perf_counter() - start >= budget:
                break
            if config.lr_halve_every and step and step % config.lr_halve_every == 0:
                for group in optimiser.param_groups:
                    group["lr"] *= 0.5
            x, y = data_source.sample(config.batch, rng, config.augment)
            inputs, target = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            if robust:
                sig = sigma * rng.uniform(*config.noisier_range, size=(config.batch, 1, 1, 1))
                noisier = torch.from_numpy((x + sig * rng.standard_normal(x.shape)).astype(np.float32)).to(device)
                out = network(torch.cat([inputs, noisier]))
                loss, _ = noise_robust_loss(out[: config.batch], out[config.batch:], target,
                                            lambdas=config.lambdas, p=p)
            else:
                out = network(inputs)
                loss = lp_loss(out, target, p)
                if config.ssim_weight:
                    loss = loss + config.ssim_weight * ssim_loss(out, target)
            if anchored:
                loss = loss + config.anchor_weight * sum(((w - w0) ** 2).sum() for w, w0 in anchored)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimiser.step()
            losses.append(float(loss.detach()))
            if on_step is not None and on_step(step + 1, losses[-1]):
                break
    finally:
        network.eval()
        network.to("cpu")
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    return TrainResult(state, len(losses), tuple(losses), time.perf_counter() - start)


def _anchor_pairs(network: nn.Module, anchor: dict[str, torch.Tensor] | None,
                  device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, its anchor value on ``device``) for every trainable parameter of ``network``."""
    params = dict(network.named_parameters())
    if anchor is not None and not set(params) <= set(anchor):
        raise ValueError(f"the anchor lacks the network's parameters {sorted(set(params) - set(anchor))}")
    source = anchor if anchor is not None else {k: v.detach() for k, v in params.items()}
    return [(w, source[k].detach().to(device).clone()) for k, w in params.items() if w.requires_grad]


def predict(network: nn.Module, lr: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    """Super-resolve one LR frame (H, W) in the caller's units; returns (S·H, S·W) float64 in the same units.
    Runs on whatever device the network's weights are on (a validation during GPU training)."""
    image = np.asarray(lr)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"expected a 2-D LR frame of at least 2 x 2 px, got shape {image.shape}")
    was_training = network.training
    device = next(network.parameters(), torch.empty(0)).device  # the device it is training on (a fixed layer: CPU)
    network.eval()
    try:
        with torch.no_grad():
            out = network(torch.from_numpy(normalisation.apply(image))[None, None].to(device))
    finally:
        network.train(was_training)
    return normalisation.invert(out[0, 0].cpu().numpy())


def export_network(network: nn.Module, normalisation: Normalisation, *, kind: str, **manifest_fields):
    """Export to ONNX with the normalisation in the manifest: returns ``(model_bytes, ModelManifest)``.

    ``kind`` is the manifest kind (the registry name, e.g. ``"compact"``); other keyword arguments go to
    :func:`refscope.models.onnx_export.export_torch_module` (``version``, ``validation``, ``opset``...).
    """
    from .onnx_export import export_torch_module

    return export_torch_module(network, scale=int(network.scale), kind=kind, input_offset=normalisation.offset,
                               input_scale=normalisation.scale, **manifest_fields)

"""Library-based non-local means reconstruction (Qian et al., Algorithm 2, eqs. 2-3) and its variants.

Every method works on an LR image already in library intensity units (see :mod:`refscope.models.intensity`)
and returns an (S·H, S·W) float64 image. Three methods:

* :func:`reconstruct_paired_faithful` — the paper as written: weights from the upsampled-LR keys ``P_r``
  (eq. 2, temperature ``2 n² σ_n²``), value = centre pixel of ``P_h`` (eq. 3), search restricted to the
  category whose mean key is nearest to the query.
* :func:`reconstruct_original` — the original LB-NLM of Sreehari et al.: weights *and* values from ``P_h``.
* :func:`reconstruct_paired` — refscope's default for real, noisy pairs: zero-mean keys, σ matched to the
  measured noise, whole HR patches averaged over all output positions they cover (patch aggregation), search
  over the few nearest categories. See :class:`PairedConfig`.

References
----------
Y. Qian et al., IEEE TIP (2020), Algorithm 2, eqs. (2)-(3). S. Sreehari et al., "Multi-resolution data fusion
for super-resolution electron microscopy", CVPRW (2017).
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np

from .image_ops import upsample_bicubic
from .library import PairedLibrary
from .patches import aggregate_patches, check_patch_size, extract_patches, pad_for_patches, patch_grid

__all__ = ["SIGMA_N_RANGE", "PairedConfig", "PairedRegressors", "fit_paired_regressors", "nlm_average", "reconstruct_paired_faithful", "reconstruct_original", "reconstruct_paired",
           "receptive_radius", "query_alignment", "check_sigma_n"]

SIGMA_N_RANGE = (1e-2, 1e2)
"""Accepted NLM strengths ``sigma_n`` (relative to the measured noise for the paired method, library units for the
centre-pixel methods; default 1). Outside it the weights ``exp(-d² / T)`` degenerate: ``T`` underflows to 0 and
every estimate is NaN (``sigma_n = 5e-324``), or all weights are equal and the result is a blur of the library."""


def check_sigma_n(sigma_n: float, *, name: str = "sigma_n") -> float:
    """``sigma_n`` as a float inside :data:`SIGMA_N_RANGE`; ValueError naming ``name`` and the range otherwise."""
    low, high = SIGMA_N_RANGE
    value = float(sigma_n)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must lie in {low:g}..{high:g} (the NLM strength; 1 is the default), got {sigma_n!r}")
    return value


_CHUNK = 4096  # queries per block: bounds the (chunk, L_category) distance matrix to a few tens of MB


def nlm_average(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, *, temperature: float,
                top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of ``values`` with weights ``exp(-||q - k||² / temperature)`` (eqs. 2-3).

    queries (m, d), keys (L, d), values (L, v) -> (estimates (m, v), nearest squared distance (m,)).
    Weights are normalised per query; the minimum distance is subtracted first, which leaves the normalised
    weights unchanged and avoids underflow. ``top_k`` keeps only the k largest weights per query.
    """
    q = queries.astype(np.float64, copy=False)
    k = keys.astype(np.float64, copy=False)
    dist = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ k.T) + np.einsum("ij,ij->i", k, k)[None, :]
    np.maximum(dist, 0.0, out=dist)
    if top_k is not None and top_k < dist.shape[1]:
        part = np.argpartition(dist, top_k - 1, axis=1)[:, :top_k]
        sub = np.take_along_axis(dist, part, axis=1)
        nearest = sub.min(axis=1)
        w = np.exp(-(sub - nearest[:, None]) / temperature)
        w /= w.sum(axis=1, keepdims=True)
        est = np.einsum("ml,mlv->mv", w, values[part].astype(np.float64))
        return est, nearest
    nearest = dist.min(axis=1)
    w = np.exp(-(dist - nearest[:, None]) / temperature)
    w /= w.sum(axis=1, keepdims=True)
    return w @ values.astype(np.float64, copy=False), nearest


def _nearest_categories(queries: np.ndarray, centroids: np.ndarray, n_probe: int) -> np.ndarray:
    """(m, n_probe) indices of the categories whose centroid is nearest to each query (Euclidean)."""
    finite = np.all(np.isfinite(centroids), axis=1)
    c = np.where(finite[:, None], centroids, 0.0)
    dist = np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * queries.astype(np.float64) @ c.T
    dist[:, ~finite] = np.inf
    if n_probe >= c.shape[0]:
        return np.argsort(dist, axis=1)
    return np.argsort(dist, axis=1)[:, :n_probe]


def _category_restricted(queries: np.ndarray, library: PairedLibrary, keys: np.ndarray, values: np.ndarray,
                         centroids: np.ndarray, *, temperature: float, n_probe: int = 1,
                         top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`nlm_average` per query against the members of its ``n_probe`` nearest categories."""
    out = np.empty((len(queries), values.shape[1]))
    nearest = np.empty(len(queries))
    for start in range(0, len(queries), _CHUNK):
        block = queries[start:start + _CHUNK]
        probes = _nearest_categories(block, centroids, n_probe)
        # group queries by their probe set so each group shares one key matrix
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, probe in enumerate(map(tuple, np.sort(probes, axis=1))):
            groups.setdefault(probe, []).append(row)
        for probe, rows in groups.items():
            members = np.flatnonzero(np.isin(library.categories, probe))
            est, near = nlm_average(block[rows], keys[members], values[members], temperature=temperature,
                                    top_k=top_k)
            out[start + np.asarray(rows)] = est
            nearest[start + np.asarray(rows)] = near
    return out, nearest


def _centre_pixel_nlm(lr: np.ndarray, library: PairedLibrary, keys: np.ndarray, centroids: np.ndarray, *,
                      scale: int, sigma_n: float) -> np.ndarray:
    """Per output pixel: eq. (2) weights over the nearest category's ``keys``, eq. (3) mean of HR centre pixels."""
    n = library.patch_size
    upsampled = upsample_bicubic(lr, scale)
    queries = extract_patches(upsampled, n, padded=pad_for_patches(upsampled, n), dtype=np.float64)
    centre = library.values[:, (n * n) // 2: (n * n) // 2 + 1]
    est, _ = _category_restricted(queries, library, keys, centre, centroids, temperature=2.0 * n * n * sigma_n ** 2)
    return est[:, 0].reshape(upsampled.shape)


def reconstruct_paired_faithful(lr: np.ndarray, library: PairedLibrary, *, scale: int, sigma_n: float = 1.0) -> np.ndarray:
    """Paired LB-NLM exactly as Algorithm 2: per output pixel, eq. (2) weights over the nearest category's
    keys ``P_r`` with temperature ``2 n² σ_n²`` and eq. (3) average of the HR centre pixels.

    lr: (H, W) in library units (0-255 scale: σ_n = 1 means one 255th of the training LR's robust range).
    """
    return _centre_pixel_nlm(lr, library, library.keys, library.key_centroids(), scale=scale, sigma_n=sigma_n)


def reconstruct_original(lr: np.ndarray, library: PairedLibrary, *, scale: int, sigma_n: float = 1.0) -> np.ndarray:
    """Original LB-NLM (Sreehari et al.): weights from the HR patches ``P_h`` themselves, HR centre values,
    nearest category by mean HR patch. Same temperature convention as :func:`reconstruct_paired_faithful`."""
    return _centre_pixel_nlm(lr, library, library.values, library.value_centroids(), scale=scale, sigma_n=sigma_n)


def receptive_radius(scale: int, patch_size: int, stride: int) -> int:
    """LR pixels on each side that an output pixel depends on; the minimum tiling halo.

    Queries within n//2 output px of a pixel contribute to it, and each reads n//2 px further: 2·(n//2) output
    px = 2·(n//2)/S LR px, plus 2 LR px of bicubic support and 1 px for the LR pixel's own extent. (The stride
    does not widen it; it is a parameter so that the bound can be revised without changing callers.)
    """
    half = check_patch_size(patch_size) // 2
    if stride < 1 or scale < 1:
        raise ValueError(f"scale and stride must be >= 1, got {scale!r}, {stride!r}")
    return int(math.ceil(2 * half / scale)) + 3


def query_alignment(scale: int, stride: int) -> int:
    """LR pixels at multiples of which a tile window must start for a strided query lattice anchored at the
    window's origin to fall where an untiled call's lattice falls; the tiling alignment.

    Queries sit every ``stride`` output px, i.e. every ``stride / S`` LR px: a window origin at a multiple of
    ``stride / gcd(S, stride)`` LR px is a whole number of query steps from the frame's origin (1 when the
    stride divides S, as at the default stride = S).
    """
    if stride < 1 or scale < 1:
        raise ValueError(f"scale and stride must be >= 1, got {scale!r}, {stride!r}")
    return int(stride) // math.gcd(int(scale), int(stride))


@dataclass(frozen=True)
class PairedConfig:
    """Options of refscope's default paired reconstruction (each measured on real pairs; benchmarks/RESULTS.md).

    The default replaces the local-*constant* NLM average of eq. (3) by a local-*linear* one: within each
    library category a ridge regression maps the (zero-mean, PCA-reduced) upsampled-LR key patch to the whole
    HR patch, the predictions of the ``n_probe`` nearest categories are blended with NLM weights
    ``exp(-d² / (2 d_pca (sigma_n·σ)²))`` (σ = measured noise), and whole predicted patches are overlap-added
    (patch aggregation). With noisy HR references a least-squares fit averages their noise away instead of
    copying it, which the single-nearest-patch estimate of eq. (3) cannot do.

    sigma_n: NLM strength of the category blend, relative to the measured noise σ of the query.
    stride: spacing of query patches on the output grid (px); each output pixel is covered by ≥ 1 patch. None (the
        default): the scale S, i.e. one query per LR pixel, so the cost per LR pixel does not grow with S
        (:meth:`query_stride`). At S = 4 this costs 0.013-0.017 dB against stride 2 on the real x4.17 pairs and
        serves 4x fewer queries (benchmarks/RESULTS.md, "query stride").
    pca_dims: dimensions kept of the zero-mean key patches (noise-robust matching and regression).
    ridge: Tikhonov weight, relative to the mean eigenvalue of the category's feature covariance.
    n_probe: categories blended per query.
    """

    sigma_n: float = 1.0
    stride: int | None = None
    pca_dims: int = 32
    ridge: float = 1e-3
    n_probe: int = 2

    def __post_init__(self) -> None:
        check_sigma_n(self.sigma_n, name="PairedConfig.sigma_n")
        if not self.ridge > 0:
            raise ValueError(f"PairedConfig.ridge must be > 0, got {self.ridge!r}")
        for name in ("stride", "pca_dims", "n_probe"):
            value = getattr(self, name)
            if name == "stride" and value is None:
                continue
            if int(value) != value or int(value) < 1:
                raise ValueError(f"PairedConfig.{name} must be an integer >= 1, got {value!r}")

    def query_stride(self, scale: int) -> int:
        """Query spacing on the output grid at output scale ``scale`` (px): ``stride``, or S when it is None."""
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        return int(scale) if self.stride is None else int(self.stride)


@dataclass(frozen=True)
class PairedRegressors:
    """Per-category linear maps fitted on a library: features = [(P_r - mean) @ basis - feature_mean, 1].

    basis (n*n, d), feature_mean (d,), centroids (k, d+1) in feature space (inf for empty categories),
    weights (k, d+1, n*n).
    """

    basis: np.ndarray
    feature_mean: np.ndarray
    centroids: np.ndarray
    weights: np.ndarray

    def features(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, n*n) patches -> ((m, d+1) features, (m, 1) patch means)."""
        mean = patches.mean(axis=1, keepdims=True)
        feats = (patches - mean) @ self.basis - self.feature_mean
        return np.hstack([feats, np.ones((len(feats), 1))]), mean


def _ridge(features: np.ndarray, targets: np.ndarray, strength: float) -> np.ndarray:
    gram = features.T @ features
    lam = strength * np.trace(gram) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), features.T @ targets)


def fit_paired_regressors(library: PairedLibrary, config: PairedConfig = PairedConfig()) -> PairedRegressors:
    """Fit the per-category ridge maps of :func:`reconstruct_paired` on a library (k small solves)."""
    keys = library.keys.astype(np.float64)
    key_mean = keys.mean(axis=1, keepdims=True)
    centred = keys - key_mean
    targets = library.values.astype(np.float64) - key_mean
    step = max(1, len(centred) // 20000)
    _, _, vt = np.linalg.svd(centred[::step] - centred[::step].mean(axis=0), full_matrices=False)
    basis = vt[: min(config.pca_dims, vt.shape[0])].T
    proj = centred @ basis
    feature_mean = proj.mean(axis=0)
    feats = np.hstack([proj - feature_mean, np.ones((len(proj), 1))])
    global_weights = _ridge(feats, targets, config.ridge)
    k = library.config.n_categories
    weights = np.repeat(global_weights[None], k, axis=0)
    centroids = library.category_means(feats)
    for c in range(k):
        members = library.categories == c
        if members.sum() >= 3 * feats.shape[1]:  # enough pairs for a stable category-specific fit
            weights[c] = _ridge(feats[members], targets[members], config.ridge)
    return PairedRegressors(basis, feature_mean, centroids, weights)


def reconstruct_paired(lr: np.ndarray, library: PairedLibrary, *, scale: int, config: PairedConfig = PairedConfig(),
                       noise_sigma: float | None = None, regressors: PairedRegressors | None = None,
                       return_support: bool = False):
    """refscope's default paired reconstruction (see :class:`PairedConfig`).

    lr: (H, W) in library units; noise_sigma: σ of the LR noise in library units (estimated from ``lr`` when
    None). Returns (S·H, S·W) float64 and, with ``return_support``, the per-pixel squared feature distance
    to the nearest category centroid (a no-reference measure of how well the library covers the frame).
    """
    n = library.patch_size
    if regressors is None:
        regressors = fit_paired_regressors(library, config)
    if noise_sigma is None:
        from .noise import estimate_noise_sigma
        noise_sigma = estimate_noise_sigma(lr)
    upsampled = upsample_bicubic(lr, scale)
    centres = patch_grid(upsampled.shape, config.query_stride(scale))
    padded = pad_for_patches(upsampled, n)
    dim = regressors.basis.shape[1]
    temperature = 2.0 * dim * (config.sigma_n * max(noise_sigma, 1e-6)) ** 2
    estimates = np.empty((len(centres), n * n))
    nearest = np.empty(len(centres))
    finite = np.all(np.isfinite(regressors.centroids), axis=1)
    cents = np.where(finite[:, None], regressors.centroids, 0.0)
    probe = min(config.n_probe, int(finite.sum()))
    for start in range(0, len(centres), _CHUNK):
        patches = extract_patches(upsampled, n, centres[start:start + _CHUNK], padded=padded, dtype=np.float64)
        feats, mean = regressors.features(patches)
        dist = (np.einsum("ij,ij->i", feats, feats)[:, None] - 2.0 * feats @ cents.T
                + np.einsum("ij,ij->i", cents, cents)[None, :])
        dist[:, ~finite] = np.inf
        order = np.argsort(dist, axis=1)[:, :probe]
        d_near = np.take_along_axis(dist, order, axis=1)
        w = np.exp(-(d_near - d_near[:, :1]) / temperature)
        w /= w.sum(axis=1, keepdims=True)
        block = np.zeros((len(feats), n * n))
        for j in range(probe):
            for c in np.unique(order[:, j]):
                rows = np.flatnonzero(order[:, j] == c)
                block[rows] += w[rows, j:j + 1] * (feats[rows] @ regressors.weights[c])
        estimates[start:start + len(feats)] = block + mean
        nearest[start:start + len(feats)] = np.maximum(d_near[:, 0], 0.0)
    total, weight = aggregate_patches(estimates, centres, upsampled.shape)
    out = total / np.maximum(weight, 1e-12)
    if return_support:
        support, _ = aggregate_patches(np.repeat(nearest[:, None], n * n, axis=1), centres, upsampled.shape)
        return out, support / np.maximum(weight, 1e-12) / (n * n)
    return out

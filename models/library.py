"""The representative paired patch library (Qian et al., Algorithm 1, Sec. III-B).

The library stores L pairs of flattened patches: *keys* ``P_r`` cut from the bicubic-upsampled LR image and
*values* ``P_h`` cut at the matched place of the HR reference resampled onto the same grid. Patches are
grouped in k categories found by k-means on the HR patches; each category keeps at most ``L/k`` members, a
uniform random sample (reservoir) of every candidate ever assigned to it, so that adding a new pair updates
the library incrementally and background patches cannot crowd out edges and texture.

References
----------
Y. Qian, J. Xu, L. F. Drummy, Y. Ding, "Effective Super-Resolution Method for Paired Electron Microscopic
Images", IEEE TIP (2020), Algorithm 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LibraryError
from .patches import check_patch_size

__all__ = ["LibraryConfig", "PairedLibrary", "kmeans"]


@dataclass(frozen=True)
class LibraryConfig:
    """Parameters of Algorithm 1.

    patch_size: n, odd, in output-grid pixels. n_categories: k. oversample: K (K·L candidates are sampled
    before clustering). size: L, the target number of pairs. seed: RNG seed for sampling and k-means.
    """

    patch_size: int = 9
    n_categories: int = 10
    oversample: int = 20
    size: int = 8000
    seed: int = 0

    def __post_init__(self) -> None:
        check_patch_size(self.patch_size)
        if self.n_categories < 1:
            raise ValueError(f"n_categories (k) must be >= 1, got {self.n_categories}")
        if self.oversample < 1:
            raise ValueError(f"oversample (K) must be >= 1, got {self.oversample}")
        if self.size < self.n_categories:
            raise ValueError(f"library size L={self.size} must be at least the number of categories k={self.n_categories}")

    @property
    def quota(self) -> int:
        """Members per category, L/k."""
        return max(1, self.size // self.n_categories)


def kmeans(data: np.ndarray, k: int, *, rng: np.random.Generator, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding on (N, d) data; returns (centroids (k, d), labels (N,)).

    Empty clusters are re-seeded from the points farthest from their centroid, so every returned category has
    at least one member when N >= k.
    """
    data = np.asarray(data, dtype=np.float64)
    n_points = len(data)
    if n_points < k:
        raise LibraryError(f"k-means needs at least k={k} patches, got {n_points}")
    sq = np.einsum("ij,ij->i", data, data)
    centroids = np.empty((k, data.shape[1]))
    centroids[0] = data[rng.integers(n_points)]
    closest = sq - 2 * data @ centroids[0] + centroids[0] @ centroids[0]
    for c in range(1, k):
        prob = np.maximum(closest, 0)
        total = prob.sum()
        idx = rng.choice(n_points, p=prob / total) if total > 0 else rng.integers(n_points)
        centroids[c] = data[idx]
        closest = np.minimum(closest, sq - 2 * data @ centroids[c] + centroids[c] @ centroids[c])
    labels = np.zeros(n_points, dtype=np.intp)
    for _ in range(iterations):
        dist = sq[:, None] - 2 * data @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)[None, :]
        new_labels = np.argmin(dist, axis=1)
        counts = np.bincount(new_labels, minlength=k)
        for empty in np.flatnonzero(counts == 0):
            # move the point farthest from its centroid, never emptying its own cluster
            cost = dist[np.arange(n_points), new_labels].copy()
            cost[counts[new_labels] < 2] = -np.inf
            far = int(np.argmax(cost))
            counts[new_labels[far]] -= 1
            new_labels[far] = empty
            counts[empty] = 1
        sums = np.zeros_like(centroids)
        np.add.at(sums, new_labels, data)
        centroids = sums / counts[:, None]
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, new_labels


class PairedLibrary:
    """L paired patches (keys from the upsampled LR, values from the HR reference) in k categories.

    Attributes
    ----------
    keys : (L, n*n) float32 — upsampled-LR patches P_r.
    values : (L, n*n) float32 — HR patches P_h on the same grid.
    categories : (L,) int — category of each pair.
    hr_centroids : (k, n*n) — k-means centres of the HR patches (used to assign new candidates).
    seen : (k,) int — candidates ever assigned to each category (for reservoir sampling).
    """

    def __init__(self, config: LibraryConfig, keys: np.ndarray, values: np.ndarray, categories: np.ndarray,
                 hr_centroids: np.ndarray, seen: np.ndarray) -> None:
        self.config = config
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.categories = np.asarray(categories, dtype=np.intp)
        self.hr_centroids = np.asarray(hr_centroids, dtype=np.float64)
        self.seen = np.asarray(seen, dtype=np.int64)
        self._rng = np.random.default_rng([config.seed, int(self.seen.sum())])
        dim = config.patch_size ** 2
        if self.keys.shape != self.values.shape or self.keys.ndim != 2 or self.keys.shape[1] != dim:
            raise LibraryError(f"keys {self.keys.shape} and values {self.values.shape} must both be (L, {dim})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, hr_patches: np.ndarray, lr_patches: np.ndarray, config: LibraryConfig) -> "PairedLibrary":
        """Algorithm 1, steps 4-6: sample K·L candidates, k-means them on the HR patches, keep L/k per category.

        ``hr_patches`` and ``lr_patches`` are matched (N, n*n) candidate pairs (after local registration).
        """
        hr_patches, lr_patches = _check_candidates(hr_patches, lr_patches, config)
        rng = np.random.default_rng(config.seed)
        n_pick = min(len(hr_patches), config.oversample * config.size)
        pick = rng.choice(len(hr_patches), size=n_pick, replace=False)
        centroids, labels = kmeans(hr_patches[pick], config.n_categories, rng=rng)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: config.quota]
                               for c in range(config.n_categories)])
        seen = np.bincount(labels, minlength=config.n_categories)
        chosen = pick[keep]
        return cls(config, lr_patches[chosen], hr_patches[chosen], labels[keep], centroids, seen)

    def add(self, hr_patches: np.ndarray, lr_patches: np.ndarray) -> "PairedLibrary":
        """Incrementally add candidate pairs from a new reference; returns a new library (self is unchanged).

        Candidates (subsampled to at most K·L) are assigned to the nearest HR centroid; each category then keeps
        a uniform reservoir sample of all candidates it has ever seen, at most L/k members. No re-clustering.
        """
        hr_patches, lr_patches = _check_candidates(hr_patches, lr_patches, self.config)
        rng = self._rng
        n_pick = min(len(hr_patches), self.config.oversample * self.config.size)
        pick = rng.choice(len(hr_patches), size=n_pick, replace=False)
        new_hr = hr_patches[pick].astype(np.float64)
        dist = (np.einsum("ij,ij->i", new_hr, new_hr)[:, None] - 2 * new_hr @ self.hr_centroids.T
                + np.einsum("ij,ij->i", self.hr_centroids, self.hr_centroids)[None, :])
        labels = np.argmin(dist, axis=1)
        keys, values, cats = [self.keys], [self.values], [self.categories]
        seen = self.seen.copy()
        drop = np.zeros(len(self.keys), dtype=bool)
        quota = self.config.quota
        for c in range(self.config.n_categories):
            incoming = pick[labels == c]
            if len(incoming) == 0:
                continue
            current = np.flatnonzero(self.categories == c)
            total = seen[c] + len(incoming)
            # reservoir of size `quota` over all `total` candidates: how many stored members survive
            n_keep_total = min(quota, total)
            n_from_new = rng.hypergeometric(len(incoming), seen[c], n_keep_total) if seen[c] > 0 else n_keep_total
            n_from_new = min(n_from_new, len(incoming))
            n_old_keep = min(len(current), n_keep_total - n_from_new)
            drop[rng.permutation(current)[n_old_keep:]] = True
            chosen = rng.permutation(incoming)[:n_from_new]
            keys.append(lr_patches[chosen])
            values.append(hr_patches[chosen])
            cats.append(np.full(len(chosen), c, dtype=np.intp))
            seen[c] = total
        keep_old = ~drop
        return PairedLibrary(self.config,
                             np.concatenate([keys[0][keep_old]] + keys[1:]),
                             np.concatenate([values[0][keep_old]] + values[1:]),
                             np.concatenate([cats[0][keep_old]] + cats[1:]),
                             self.hr_centroids, seen)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.keys)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def category_sizes(self) -> np.ndarray:
        """(k,) number of members per category."""
        return np.bincount(self.categories, minlength=self.config.n_categories)

    def category_means(self, patches: np.ndarray) -> np.ndarray:
        """(k, d) mean of the rows of ``patches`` (L, d) in each category; empty categories -> inf."""
        sums = np.zeros((self.config.n_categories, patches.shape[1]))
        np.add.at(sums, self.categories, patches)
        sizes = self.category_sizes()
        out = np.full_like(sums, np.inf)
        out[sizes > 0] = sums[sizes > 0] / sizes[sizes > 0, None]
        return out

    def key_centroids(self) -> np.ndarray:
        """(k, n*n) mean upsampled-LR patch of each category (the paper's nearest-category test); empty -> inf."""
        return self.category_means(self.keys)

    def value_centroids(self) -> np.ndarray:
        """(k, n*n) mean HR patch of each category; empty -> inf."""
        return self.category_means(self.values)

    # ------------------------------------------------------------------ persistence (arrays only; no files)
    def to_arrays(self) -> dict[str, np.ndarray]:
        """All state as named arrays (config included), for a state store to save."""
        c = self.config
        return {"keys": self.keys, "values": self.values, "categories": self.categories,
                "hr_centroids": self.hr_centroids, "seen": self.seen,
                "config": np.array([c.patch_size, c.n_categories, c.oversample, c.size, c.seed], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PairedLibrary":
        """Inverse of :meth:`to_arrays`; raises LibraryError naming a missing array."""
        missing = [name for name in ("keys", "values", "categories", "hr_centroids", "seen", "config") if name not in arrays]
        if missing:
            raise LibraryError(f"library state is missing arrays: {', '.join(missing)}")
        n, k, big_k, size, seed = (int(v) for v in arrays["config"])
        return cls(LibraryConfig(patch_size=n, n_categories=k, oversample=big_k, size=size, seed=seed),
                   arrays["keys"], arrays["values"], arrays["categories"], arrays["hr_centroids"], arrays["seen"])


def _check_candidates(hr_patches: np.ndarray, lr_patches: np.ndarray, config: LibraryConfig) -> tuple[np.ndarray, np.ndarray]:
    hr_patches = np.asarray(hr_patches, dtype=np.float32)
    lr_patches = np.asarray(lr_patches, dtype=np.float32)
    dim = config.patch_size ** 2
    if hr_patches.shape != lr_patches.shape or hr_patches.ndim != 2 or hr_patches.shape[1] != dim:
        raise LibraryError(f"candidate HR {hr_patches.shape} and LR {lr_patches.shape} patches must both be (N, {dim})")
    if len(hr_patches) < config.n_categories:
        raise LibraryError(f"only {len(hr_patches)} candidate patch pairs; need at least k={config.n_categories}. "
                           "Is the HR reference overlap too small?")
    return hr_patches, lr_patches

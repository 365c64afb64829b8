"""The affine map of raw intensities into a network's units (pure NumPy: the daemon serves networks without
PyTorch, :mod:`.training` trains them with it)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Normalisation"]


@dataclass(frozen=True)
class Normalisation:
    """Affine intensity map into network units: ``x_norm = (x - offset) * scale`` (manifest convention)."""

    offset: float
    scale: float

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], percentiles: tuple[float, float] = (0.5, 99.5)
                    ) -> "Normalisation":
        """Map the ``percentiles`` range of all pixels of ``images`` (caller's units) onto [0, 1]."""
        values = np.concatenate([np.asarray(im, dtype=np.float64).ravel() for im in images])
        low, high = np.percentile(values, percentiles)
        if not high > low:
            low, high = float(values.min()), float(values.max())
        if not high > low:
            raise ValueError("the training images are constant; there is nothing to normalise or learn")
        return cls(float(low), float(1.0 / (high - low)))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Caller's units -> network units, float32."""
        return ((np.asarray(image, dtype=np.float64) - self.offset) * self.scale).astype(np.float32)

    def invert(self, image: np.ndarray) -> np.ndarray:
        """Network units -> caller's units, float64."""
        return np.asarray(image, dtype=np.float64) / self.scale + self.offset

"""The safe baseline: what serves where a learned model is not trusted (pure: arrays in, arrays out).

The baseline is the cheapest classical output that cannot invent texture: the Keys bicubic upsampling of the LR
frame, blurred by a Gaussian of σ output px (σ = 0: bicubic itself),

    B = G_σ * bicubic_S(LR)                                                                          (1)

with σ chosen on the held-out quarter of each reference (:func:`~.peers.tuned_blur`): on a noisy fast scan the
blur removes part of the noise and nothing else, so ``B`` is never far from what the microscope showed.
:class:`SafeBaseline` records that choice with the library support level ``q_ref`` of the reference
(:func:`~.confidence.reference_q`), which :mod:`.safe_blend` needs to tell where a frame is unlike every
reference; a :class:`~.pipeline.FittedModel` carries it and the model store saves it.

:func:`baseline_block` computes any block of output pixels of (1) exactly (the bicubic pixels through
:func:`~.image_ops.upsample_bicubic_at`, the Gaussian over a halo of ``ceil(4σ)`` px), so that a frame's
baseline is computed only where it is used and never held whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .image_ops import upsample_bicubic_at

__all__ = ["SafeBaseline", "baseline_block", "TRUNCATE"]

TRUNCATE = 4.0
"""The Gaussian of (1) is cut at this many σ (SciPy's default, so (1) equals ``gaussian_filter`` of the whole
bicubic image)."""


@dataclass(frozen=True)
class SafeBaseline:
    """The safe baseline chosen for one model.

    Attributes:
        sigma_px: σ of the Gaussian of equation (1), output px (>= 0; 0 = bicubic).
        delta_db: the baseline's held-out ΔPSNR over bicubic on the reference it was chosen on, dB (>= 0: σ = 0
            scores 0 and is always a candidate).
        q_ref: library support level of the model's references (the 90th percentile of ``q`` over their LR
            regions, :func:`~.confidence.reference_q`; > 0).
    """

    sigma_px: float
    delta_db: float
    q_ref: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma_px) and self.sigma_px >= 0):
            raise ValueError(f"SafeBaseline.sigma_px must be a finite number >= 0 output px, got {self.sigma_px!r}")
        if not math.isfinite(self.delta_db):
            raise ValueError(f"SafeBaseline.delta_db must be finite, got {self.delta_db!r}")
        if not (math.isfinite(self.q_ref) and self.q_ref > 0):
            raise ValueError(f"SafeBaseline.q_ref must be a finite number > 0, got {self.q_ref!r}")

    def to_dict(self) -> dict[str, float]:
        """JSON-ready fields (the model store's form)."""
        return {"sigma_px": float(self.sigma_px), "delta_db": float(self.delta_db), "q_ref": float(self.q_ref)}

    @classmethod
    def from_dict(cls, data: dict) -> SafeBaseline:
        """Inverse of :meth:`to_dict` (ValueError for missing or invalid fields)."""
        try:
            return cls(float(data["sigma_px"]), float(data["delta_db"]), float(data["q_ref"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a safe baseline needs sigma_px, delta_db and q_ref numbers, got {data!r}") from exc


def baseline_block(lr: np.ndarray, *, scale: int, sigma_px: float, rows: tuple[int, int],
                   cols: tuple[int, int]) -> np.ndarray:
    """Output rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of equation (1) for the (H, W) frame
    ``lr``: float64, equal to ``gaussian_filter(upsample_bicubic(lr, S), sigma_px)[r0:r1, c0:c1]`` (reflecting
    borders). Only the bicubic pixels within ``ceil(4σ)`` of the block are computed."""
    array = np.asarray(lr, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"the LR frame must be 2-D (H, W), got shape {array.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if not (math.isfinite(sigma_px) and sigma_px >= 0):
        raise ValueError(f"sigma_px must be a finite number >= 0, got {sigma_px!r}")
    halo = int(math.ceil(TRUNCATE * sigma_px)) if sigma_px > 0 else 0
    spans = []
    for name, (start, stop), size in (("rows", rows, array.shape[0] * int(scale)),
                                       ("cols", cols, array.shape[1] * int(scale))):
        if not 0 <= start < stop <= size:
            raise ValueError(f"{name} {start}:{stop} are not a non-empty range of the {size} output {name}")
        spans.append((start, stop, max(start - halo, 0), min(stop + halo, size)))
    (r0, r1, rlo, rhi), (c0, c1, clo, chi) = spans
    block = upsample_bicubic_at(array, int(scale), np.arange(rlo, rhi), np.arange(clo, chi))
    if sigma_px > 0:  # pixels the halo covers are exact; at the frame's own edges the block reflects as it does
        for axis in (0, 1):
            block = ndimage.gaussian_filter1d(block, sigma_px, axis=axis, mode="reflect", truncate=TRUNCATE)
    return block[r0 - rlo:r1 - rlo, c0 - clo:c1 - clo]

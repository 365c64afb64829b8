"""Geometric self-ensemble at test time: average a model's outputs over flips and 90° rotations of its input.

A network trained with the dihedral augmentation (random flips and transposes, :mod:`.training`) is only
approximately equivariant to those transforms; its errors differ from one orientation to the next. Averaging the
outputs of the same input seen in ``n`` orientations, each mapped back,

    y = (1/n) Σ_k T_k⁻¹( f( T_k(x) ) ),        T_k ∈ D4 (the 8 symmetries of the square pixel grid),

keeps what every orientation agrees on and averages out the rest (Timofte, Rothe & Van Gool 2016, "Seven ways
to improve example-based single image super resolution", CVPR, §2.1 "enhanced prediction"; Lim et al. 2017, EDSR,
"geometric self-ensemble"). On the real pairs it adds about +0.02 dB (n = 2), +0.035 dB (n = 4) and +0.047 dB
(n = 8) to the fine-tuned prior network (``benchmarks/RESULTS.md``) for ``n`` times the inference.

The transforms act on the last two axes of an array of any leading shape; each is exact (a permutation of
pixels), so a model that is itself equivariant gives back its own output. Because a transform that includes a
transpose swaps height and width, the model must accept both orientations (every fully convolutional network
here does). Every prefix of :data:`DIHEDRAL` of length 1, 2, 4 and 8 is a subgroup: the identity; + the rotation
by 180°; + both flips (no transpose up to 4, so height and width keep their roles); + the 4 with a transpose.

Which ``n`` fits a serving budget is :func:`ensemble_size_for`: the largest allowed size whose ``n`` passes take
no longer than the budget.

Arrays in, arrays out; nothing here keeps state between calls.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Dihedral", "DIHEDRAL", "ENSEMBLE_SIZES", "ensemble_for_augmentation", "ensemble_run",
           "ensemble_size_for"]


@dataclass(frozen=True)
class Dihedral:
    """One symmetry of the pixel grid: optionally transpose (swap y and x), then flip y and/or x.

    ``apply`` maps an image to the transformed one; ``invert`` maps a transformed image back (for an output on a
    finer grid as well: the transforms do not depend on the size).
    """

    transpose: bool
    flip_y: bool
    flip_x: bool

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.swapaxes(array, -2, -1) if self.transpose else array
        if self.flip_y:
            out = out[..., ::-1, :]
        if self.flip_x:
            out = out[..., :, ::-1]
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = array
        if self.flip_x:
            out = out[..., :, ::-1]
        if self.flip_y:
            out = out[..., ::-1, :]
        return np.swapaxes(out, -2, -1) if self.transpose else out


DIHEDRAL: tuple[Dihedral, ...] = (
    Dihedral(False, False, False),  # identity
    Dihedral(False, True, True),    # rotation by 180°
    Dihedral(False, True, False),   # flip y
    Dihedral(False, False, True),   # flip x
    Dihedral(True, False, False),   # transpose
    Dihedral(True, True, True),     # anti-transpose
    Dihedral(True, True, False),    # rotation by 90°
    Dihedral(True, False, True),    # rotation by 270°
)
"""The 8 symmetries of the square grid, in the order :func:`ensemble_run` uses them."""

ENSEMBLE_SIZES: tuple[int, ...] = (1, 2, 4, 8)
"""Ensemble sizes offered: prefixes of :data:`DIHEDRAL`."""


_ENSEMBLE_FOR_AUGMENTATION = {"dihedral": 8, "flips": 4, "none": 1}


def ensemble_for_augmentation(augment: str) -> int:
    """The largest prefix of :data:`DIHEDRAL` a network trained with ``augment``
    (:data:`refscope.models.training.AUGMENTATIONS`) is symmetric under: 8 for ``"dihedral"``, 4 (both flips, no
    transpose) for ``"flips"``, 1 for ``"none"`` -- a network that learned the scan's own orientation would have
    what it learned undone by a flipped pass."""
    try:
        return _ENSEMBLE_FOR_AUGMENTATION[augment]
    except KeyError:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of "
                         f"{', '.join(_ENSEMBLE_FOR_AUGMENTATION)}") from None


def ensemble_run(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int, *, align: int = 1) -> np.ndarray:
    """``(1/n) Σ_k T_k⁻¹(run(T_k(x)))`` over the first ``n`` transforms of :data:`DIHEDRAL`.

    Tiling stays exact: a model whose output depends on where its input starts modulo ``align`` (a stride-2
    network body: ``align = 2``) sees every transformed window anchored at a multiple of ``align`` of the frame,
    because ``x`` is first padded at its far ends (bottom, right; by reflection) to a multiple of ``align`` in
    both axes and the output cropped back. So a window that starts at a multiple of ``align`` of a frame (as
    every tiler here cuts them) gives the pixels the whole padded frame would, whatever the transform.

    Args:
        run: the model: an array of shape (..., H, W) -> its output (..., S·H, S·W) (any S, any dtype).
        x: the input, (..., H, W).
        n: ensemble size, one of :data:`ENSEMBLE_SIZES`; 1 calls ``run(x)`` once and returns its output as is.
        align: the model's grid anchor, input px (>= 1).

    Returns:
        The averaged output in the dtype of ``run``'s output (float32 stays float32; the sum is accumulated in
        float64).
    """
    if n not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble size must be one of {ENSEMBLE_SIZES}, got {n!r}")
    if int(align) != align or align < 1:
        raise ValueError(f"align must be an integer >= 1 input px, got {align!r}")
    if n == 1:
        return run(x)
    h, w = x.shape[-2:]
    pad_y, pad_x = -h % align, -w % align
    if pad_y >= h or pad_x >= w:
        raise ValueError(f"an input of {h}x{w} px is too small to pad to a multiple of align={align}")
    if pad_y or pad_x:
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad_y), (0, pad_x)], mode="reflect")
    total: np.ndarray | None = None
    dtype = None
    for t in DIHEDRAL[:n]:
        out = t.invert(np.asarray(run(np.ascontiguousarray(t.apply(x)))))
        dtype = out.dtype
        total = out.astype(np.float64) if total is None else total + out
    assert total is not None and dtype is not None
    scale_y, scale_x = total.shape[-2] // x.shape[-2], total.shape[-1] // x.shape[-1]
    return (total[..., :scale_y * h, :scale_x * w] / n).astype(dtype, copy=False)


def ensemble_size_for(pass_s: float, budget_s: float, *, max_n: int = 8) -> int:
    """The largest ensemble size ``n`` of :data:`ENSEMBLE_SIZES` (at most ``max_n``) with ``n · pass_s <= budget_s``;
    1 when even two passes do not fit.

    Args:
        pass_s: seconds one pass of the model takes on the frame size the budget is for (> 0).
        budget_s: seconds allowed for the whole ensemble (> 0).
        max_n: largest size considered (one of :data:`ENSEMBLE_SIZES`).
    """
    if not (math.isfinite(pass_s) and pass_s > 0):
        raise ValueError(f"pass_s must be a finite number of seconds > 0, got {pass_s!r}")
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s must be a finite number of seconds > 0, got {budget_s!r}")
    if max_n not in ENSEMBLE_SIZES:
        raise ValueError(f"max_n must be one of {ENSEMBLE_SIZES}, got {max_n!r}")
    fitting = [n for n in ENSEMBLE_SIZES if n <= max_n and n * pass_s <= budget_s]
    return max(fitting) if fitting else 1

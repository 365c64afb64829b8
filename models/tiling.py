"""Seam-free tiled application of an upscaling function to large frames with bounded memory.

A frame of shape (H, W) is cut into cores of at most ``tile`` x ``tile`` pixels. Each core is processed
inside a *window* that adds ``halo`` pixels of real image context on every side. Near the frame border
the window is not padded: it is slid back inside the frame (and clipped to it when the frame is smaller
than a window), so the core is then flush with the true frame edge. Consequently the function sees, around
every output pixel, either at least ``halo`` pixels of genuine neighbours or the very same frame edge that
an untiled call would see, and handles that edge with its own border rule (zero padding for a CNN,
reflection for ``scipy.ndimage``...). For any function whose receptive-field radius is <= ``halo`` the
stitched result therefore equals the untiled ``fn(image)`` up to floating-point rounding, whatever its
border mode. (Reflect-padding the frame instead would only match functions that themselves reflect.)

Every window has the same shape ``(min(H, tile + 2*halo), min(W, tile + 2*halo))``, which keeps
shape-specialised back ends (TensorRT engines, cuDNN algorithm caches) warm.

Coordinates are half-open pixel index ranges ``[start, stop)`` in the input frame.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from .errors import ImageError

__all__ = ["TileBox", "tile_plan", "process_tiled", "memory_bound_bytes", "window_shape", "tile_for_budget",
           "default_workspace_bytes_per_px", "conv_workspace_bytes_per_px", "MIN_BUDGET_TILE", "balanced_tile"]

MIN_BUDGET_TILE = 32
"""Smallest core (input px per side) :func:`tile_for_budget` chooses; below it the halo dominates the cost."""


@dataclass(frozen=True)
class TileBox:
    """One tile of a :func:`tile_plan`, in input-pixel coordinates (half-open ranges).

    Attributes
    ----------
    core : tuple of int
        ``(y0, y1, x0, x1)``: the frame region whose output this tile owns. Cores partition the frame.
    window : tuple of int
        ``(y0, y1, x0, x1)``: the frame region passed to the function; contains ``core`` with at least
        ``halo`` pixels of margin on each side that is not a frame edge.
    """

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the core relative to the window, in input pixels."""
        cy0, cy1, cx0, cx1 = self.core
        wy0, _, wx0, _ = self.window
        return (cy0 - wy0, cy1 - wy0, cx0 - wx0, cx1 - wx0)


def _check_params(tile: int, halo: int, scale: int | None = None) -> None:
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 1:
        raise ValueError(f"tile must be a positive integer number of pixels, got {tile!r}")
    if not isinstance(halo, (int, np.integer)) or isinstance(halo, bool) or halo < 0:
        raise ValueError(f"halo must be a non-negative integer number of pixels, got {halo!r}")
    if scale is not None and (not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1):
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _axis_plan(length: int, tile: int, halo: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """Per-axis ``(core0, core1, win0, win1)`` tuples; every window has the same length and starts at a
    multiple of ``align`` (so that functions whose sampling grid is anchored at the window origin, such as a
    strided patch grid or a stride-2 network body, see the same grid as an untiled call)."""
    if align < 1:
        raise ValueError(f"align must be a positive integer, got {align!r}")
    win = tile + 2 * halo + align - 1
    win += (length - win) % align  # then length - win is a multiple of align: the last window is aligned
    win = min(length, win)
    out = []
    for core0 in range(0, length, tile):
        core1 = min(core0 + tile, length)
        win0 = min((max(core0 - halo, 0) // align) * align, length - win)
        out.append((core0, core1, win0, win0 + win))
    return out


def tile_plan(shape: tuple[int, int], tile: int = 512, halo: int = 16, *, align: int = 1) -> list[TileBox]:
    """Tiles covering a frame of ``shape`` = (H, W), row-major order.

    Parameters
    ----------
    shape : tuple of int
        Frame shape (H, W) in pixels, both >= 1.
    tile : int
        Maximum core size in pixels per side.
    halo : int
        Context margin in pixels kept around each core wherever the core is not at the frame edge.
    align : int
        Every window starts at a multiple of ``align`` input pixels (default 1: anywhere).

    Returns
    -------
    list of TileBox
        ``ceil(H / tile) * ceil(W / tile)`` boxes whose cores partition the frame. All windows share one
        shape: per axis ``min(L, tile + 2*halo + align - 1 + r)`` with ``0 <= r < align`` chosen so the last
        window, flush with the frame edge, is aligned too.
    """
    _check_params(tile, halo)
    if len(shape) != 2 or min(shape) < 1:
        raise ImageError(f"tile_plan needs a 2-D frame shape (H, W) with H, W >= 1, got {tuple(shape)}")
    rows = _axis_plan(int(shape[0]), int(tile), int(halo), int(align))
    cols = _axis_plan(int(shape[1]), int(tile), int(halo), int(align))
    return [
        TileBox(core=(cy0, cy1, cx0, cx1), window=(wy0, wy1, wx0, wx1))
        for (cy0, cy1, wy0, wy1) in rows
        for (cx0, cx1, wx0, wx1) in cols
    ]


def memory_bound_bytes(
    tile: int,
    halo: int,
    scale: int,
    *,
    bytes_per_px: int = 4,
    shape: tuple[int, int] | None = None,
) -> int:
    """Upper bound in bytes of what :func:`process_tiled` holds at once.

    Per tile it holds one input window, ``(tile + 2*halo)**2`` pixels, and the function's output for it,
    ``(scale * (tile + 2*halo))**2`` pixels, each at ``bytes_per_px`` (4 for float32). With ``shape``
    given, the stitched output of ``scale**2 * H * W`` pixels is added. Not counted: the caller's input
    frame and the function's own internal workspace (e.g. network activations inside ONNX Runtime).

    Parameters
    ----------
    tile, halo : int
        As for :func:`process_tiled`, in input pixels.
    scale : int
        Upscaling factor S.
    bytes_per_px : int
        Bytes per pixel of the working dtype.
    shape : tuple of int, optional
        Frame shape (H, W); include the output array in the bound.

    Returns
    -------
    int
        Bytes.
    """
    _check_params(tile, halo, scale)
    win = int(tile) + 2 * int(halo)
    total = (win * win + (int(scale) * win) ** 2) * int(bytes_per_px)
    if shape is not None:
        total += int(scale) ** 2 * int(shape[0]) * int(shape[1]) * int(bytes_per_px)
    return total


def process_tiled(
    image: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    scale: int,
    tile: int = 512,
    halo: int = 16,
    dtype: DTypeLike = np.float32,
    align: int = 1,
) -> np.ndarray:
    """Apply an upscaling ``fn`` to ``image`` window by window and stitch the cores seamlessly.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Real-valued frame, any numeric dtype; each window is copied and cast to ``dtype`` before ``fn``.
    fn : callable
        Maps a (h, w) array of ``dtype`` to a (scale*h, scale*w) array. Called once per tile, always with
        the same window shape (see :func:`tile_plan`); it must not keep references to its input.
    scale : int
        Upscaling factor S of ``fn``.
    tile : int
        Core size in input pixels (default 512).
    halo : int
        Context margin in input pixels (default 16); set it >= the receptive-field radius of ``fn``
        for a seam-free result identical to ``fn(image)``.
    dtype : dtype
        Working and output dtype (default float32).
    align : int
        Window starts are multiples of ``align`` input pixels; needed when ``fn`` samples on a grid anchored at
        its input's origin (the paired library's query grid: ``stride / gcd(S, stride)``; a stride-2 body: 2).

    Returns
    -------
    ndarray, shape (S*H, S*W), ``dtype``

    Raises
    ------
    ImageError
        If ``image`` is not 2-D or ``fn`` returns the wrong shape.

    Notes
    -----
    Peak memory is the output plus one window and one ``fn`` output, :func:`memory_bound_bytes`
    (with ``shape``): for an 8192 x 8192 frame at S = 2, tile 512, halo 16 that is 1 GiB + 5.9 MB.
    """
    _check_params(tile, halo, scale)
    frame = np.asarray(image)
    if frame.ndim != 2:
        raise ImageError(f"process_tiled needs a 2-D (H, W) frame, got an array of shape {frame.shape}")
    if min(frame.shape) < 1:
        raise ImageError(f"process_tiled got an empty frame of shape {frame.shape}")
    s = int(scale)
    height, width = frame.shape
    out = np.empty((s * height, s * width), dtype=dtype)
    for box in tile_plan(frame.shape, int(tile), int(halo), align=int(align)):
        wy0, wy1, wx0, wx1 = box.window
        window = np.array(frame[wy0:wy1, wx0:wx1], dtype=dtype, order="C", copy=True)
        result = np.asarray(fn(window))
        expected = (s * window.shape[0], s * window.shape[1])
        if result.shape != expected:
            raise ImageError(
                f"process_tiled: fn mapped a {window.shape} window to shape {result.shape}, expected {expected}; "
                f"check that scale={s} matches the model"
            )
        ry0, ry1, rx0, rx1 = box.crop
        cy0, cy1, cx0, cx1 = box.core
        out[s * cy0 : s * cy1, s * cx0 : s * cx1] = result[s * ry0 : s * ry1, s * rx0 : s * rx1]
        del window, result
    return out



def window_shape(shape: tuple[int, int], tile: int, halo: int, *, align: int = 1) -> tuple[int, int]:
    """(h, w) of every window :func:`tile_plan` makes for a frame of ``shape`` (the shape to warm a model up on)."""
    box = tile_plan(shape, tile, halo, align=align)[0]
    wy0, wy1, wx0, wx1 = box.window
    return wy1 - wy0, wx1 - wx0


def default_workspace_bytes_per_px(scale: int) -> float:
    """Workspace assumed for a model that does not state its own, bytes per input px of a window.

    Sized for a full-resolution convolution body of 64 channels holding four activations at once, plus the
    upscaled output and its intermediate copies: ``4 · (4·64 + 4·S²)`` (2.3 KB at S = 4). Conservative for
    every network refscope trains (:mod:`refscope.models.networks`), whose bodies have <= 64 channels.
    """
    _check_params(1, 0, scale)
    return 4.0 * (4 * 64 + 4 * int(scale) ** 2)


def conv_workspace_bytes_per_px(module: object, scale: int) -> float:
    """Peak inference memory of a convolutional upscaler, bytes per input px (an upper estimate).

    Takes the widest layer of ``module`` (largest ``out_channels`` / ``out_features`` of any sub-module) as if
    it ran at the input resolution, four such activations alive at once (input, output, a skip and one
    temporary), plus four copies of the S²-times larger output: ``4 · (4·C_max + 4·S²)`` bytes. Modules without
    such layers get :func:`default_workspace_bytes_per_px`. Duck-typed: no PyTorch import.
    """
    widest = 0
    modules = getattr(module, "modules", None)
    if callable(modules):
        for sub in modules():
            for name in ("out_channels", "out_features"):
                value = getattr(sub, name, None)
                if isinstance(value, (int, np.integer)):
                    widest = max(widest, int(value))
    if widest == 0:
        return default_workspace_bytes_per_px(scale)
    return 4.0 * (4 * widest + 4 * int(scale) ** 2)


def tile_for_budget(
    budget_bytes: int,
    *,
    workspace_bytes_per_px: float,
    scale: int,
    halo: int,
    align: int = 1,
    max_tile: int = 4096,
) -> int:
    """The largest core size (input px per side, a multiple of 16, at least :data:`MIN_BUDGET_TILE`) whose
    :func:`process_tiled` working set fits ``budget_bytes``.

    One window of side ``w = tile + 2·halo + align - 1`` (input px) costs ``w² · (workspace + 4 + 4·S²)`` bytes:
    the model's peak workspace per window pixel (``workspace_bytes_per_px``, e.g. the manifest's), the float32
    window copy and the float32 result that :func:`process_tiled` holds before stitching. The stitched output
    frame is not included (the caller owns it: ``4·S²·H·W`` bytes).

    Parameters
    ----------
    budget_bytes : int
        Bytes the tiled computation may use.
    workspace_bytes_per_px : float
        Model workspace per window pixel, bytes (> 0).
    scale, halo, align : int
        As for :func:`process_tiled`.
    max_tile : int
        Upper bound (e.g. the configured ``serve.tile``).

    Returns
    -------
    int
        The tile; :data:`MIN_BUDGET_TILE` (or ``max_tile`` when smaller) when even that exceeds the budget --
        check :func:`memory_bound_bytes`-style costs against the budget before serving when that matters.
    """
    _check_params(max(int(max_tile), 1), halo, scale)
    if not (np.isfinite(workspace_bytes_per_px) and workspace_bytes_per_px > 0):
        raise ValueError(f"workspace_bytes_per_px must be a finite number > 0, got {workspace_bytes_per_px!r}")
    if int(budget_bytes) != budget_bytes or budget_bytes < 0:
        raise ValueError(f"budget_bytes must be a non-negative integer, got {budget_bytes!r}")
    per_px = float(workspace_bytes_per_px) + 4.0 + 4.0 * int(scale) ** 2
    side = int(np.sqrt(float(budget_bytes) / per_px)) - 2 * int(halo) - (int(align) - 1)
    tile = (side // 16) * 16
    return int(min(int(max_tile), max(MIN_BUDGET_TILE, tile)))


def balanced_tile(shape: tuple[int, int], max_tile: int, *, align: int = 1) -> int:
    """The smallest core size that covers ``shape`` = (H, W) with as few tiles as ``max_tile`` does.

    :func:`tile_plan` slides the last window of a row back inside the frame, so a frame 1.05 tiles wide costs two
    full windows; spreading the same number of tiles evenly (``ceil(L / ceil(L / max_tile))`` per axis, the larger
    of the two, rounded up to ``align``) computes up to ~30 % fewer window pixels with no more memory.
    """
    _check_params(max_tile, 0)
    if len(shape) != 2 or min(shape) < 1:
        raise ImageError(f"balanced_tile needs a 2-D frame shape (H, W) with H, W >= 1, got {tuple(shape)}")
    need = max(-(-int(length) // -(-int(length) // int(max_tile))) for length in shape)
    need = -(-need // int(align)) * int(align)
    return int(min(int(max_tile), max(1, need)))

"""What every vendor reader returns, and the checks they share.

A format reader (:mod:`.dm`, :mod:`.emd`, :mod:`.ser`, :mod:`.mrc`) turns one file into a :class:`VendorStack`:
its images as an array of shape (N, H, W) in the stored dtype (N = 1 for a single image; a stack or a series keeps
the file's order) and one :class:`~refscope.daemon.images.vendors._Parsed` (pixel size in nm per axis, acquisition
metadata) for all of them. :func:`~refscope.daemon.images.tiff_read.finish_image` then makes each image a
:class:`~refscope.daemon.images.common.LoadedImage`, exactly as for a TIFF.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ...errors import InputFileError, MissingReaderError
from ..common import MAX_SIDE_PX, _fail, finite_or_none
from ..vendors import _Parsed

__all__ = ["VendorStack", "STACK_BYTES_FACTOR", "VENDOR_EXTRA", "need_module", "check_stack_header",
           "check_pixel_type", "as_stack", "finite_or_none"]  # finite_or_none: from images.common, for the readers

VENDOR_EXTRA = "pip install 'refscope[vendor]'"
"""How to install the optional readers (h5py, mrcfile, nionswift-io)."""

STACK_BYTES_FACTOR = 64
"""A stack or series file may decode to at most this many times ``max_bytes`` (one frame's share) in all."""


@dataclass(frozen=True)
class VendorStack:
    """The images of one file and what the file says about them.

    Attributes:
        data: (N, H, W) pixels in the stored dtype, file order (N = 1 for a single image).
        parsed: pixel size (nm; per axis in ``pixel_size_yx_nm``) and acquisition metadata, shared by all N images.
    """

    data: np.ndarray
    parsed: _Parsed


def need_module(path: Path, module: str, what: str) -> ModuleType:
    """Import the optional reader ``module`` for ``path`` (a ``what`` file), or raise :class:`MissingReaderError`
    naming the file, the format and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingReaderError(f"{path}: is a {what} file; reading it needs the optional reader "
                                 f"{module.split('.')[0]}: {VENDOR_EXTRA}") from exc


def check_pixel_type(path: Path, dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype when refscope can use it (integer or real float), else InputFileError."""
    try:
        found = np.dtype(dtype)
    except TypeError as exc:
        raise _fail(path, f"unsupported pixel type {dtype!r}") from exc
    if found == np.bool_ or found.kind not in "uif":
        raise _fail(path, f"unsupported pixel type {found} (refscope reads integer or real float pixels)")
    return found


def check_stack_header(path: Path, shape: tuple[int, ...], dtype: Any, max_bytes: int | None) -> tuple[int, int, int]:
    """(N, H, W) of a stack from its header, refused before any pixel is read when a side exceeds
    :data:`MAX_SIDE_PX`, it has no pixels, one image decodes to more than ``max_bytes`` or all of them to more than
    :data:`STACK_BYTES_FACTOR` times that."""
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise _fail(path, f"holds data of shape {tuple(shape)}; refscope reads 2-D images or stacks of them")
    count, height, width = (int(s) for s in shape)
    if height > MAX_SIDE_PX or width > MAX_SIDE_PX:
        raise _fail(path, f"image of {height} x {width} px exceeds the limit of {MAX_SIDE_PX} px per side")
    if min(count, height, width) < 1:
        raise _fail(path, f"image has no pixels (shape {tuple(shape)})")
    itemsize = check_pixel_type(path, dtype).itemsize
    if max_bytes is not None:
        one = height * width * itemsize
        if one > max_bytes:
            raise _fail(path, f"image of {height} x {width} px decodes to {one / 2**20:.0f} MB, more than the "
                              f"{max_bytes / 2**20:.0f} MB one input frame may take (serve.max_memory_mb)")
        if one * count > STACK_BYTES_FACTOR * max_bytes:
            raise _fail(path, f"stack of {count} images decodes to {one * count / 2**20:.0f} MB, more than "
                              f"{STACK_BYTES_FACTOR} frames' share ({STACK_BYTES_FACTOR * max_bytes / 2**20:.0f} MB)")
    return count, height, width


def as_stack(path: Path, data: np.ndarray) -> np.ndarray:
    """``data`` (H, W) or (N, H, W) as (N, H, W), refusing other ranks."""
    if data.ndim == 2:
        return data[np.newaxis]
    if data.ndim == 3:
        return data
    raise InputFileError(f"{path}: holds data of shape {data.shape}; refscope reads 2-D images or stacks of them")



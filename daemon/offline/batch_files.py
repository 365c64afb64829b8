"""Files of ``refscope batch`` (:mod:`refscope.daemon.offline.batch`): TIFF stacks in and out, resume records and z-block files.

Stacks
    :func:`probe_input` tells a 3-D TIFF stack (series axes ending ``YX`` with one more axis: ``ZYX``, ``QYX``,
    ``TYX``...) from a 2-D frame from the header alone, and a stack or series in another format (DM, EMD, SER,
    MRC: :mod:`refscope.daemon.images.readers`) from its frames; :func:`read_slices` reads a range of slices as stored;
    :func:`write_stack` writes the enhanced (Z, S·H, S·W) float32 stack as an ImageJ TIFF, slice by slice from
    an iterator (bounded memory), atomically, with the pixel size and provenance :func:`refscope.daemon.images.read_image`
    reads back (``read_image(path, page=z)``).

Progress folder ``.refscope-batch/`` beside the outputs
    ``<output name>.json``: the record of one output, written atomically; its key fields
    (:data:`KEY_FIELDS`: input path, size and mtime in ns, model checksum, scale, stack shape, z-block size)
    must all match for earlier work to count, and ``complete`` with the output's size and mtime marks a finished
    output. ``<output name>.blocks/z<z0>-<z1>.npy``: finished z-blocks of a stack, (z1 - z0, S·H, S·W) float32,
    each written atomically.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..atomic import atomic_writer, to_jsonable
from ..errors import InputFileError

__all__ = ["MIN_BLOCK_PX", "DEFAULT_BLOCK_PX", "PROGRESS_DIR", "RECORD_FORMAT", "KEY_FIELDS", "probe_input",
           "read_slices", "write_stack", "read_record", "same_key", "output_done", "block_ok"]

MIN_BLOCK_PX = 64
"""Smallest ``--block`` accepted, LR px."""
DEFAULT_BLOCK_PX = 256
"""Default block side, LR px: 6 blocks for a 640 x 472 frame, about 11 % of recomputed overlap at depth 7."""

PROGRESS_DIR = ".refscope-batch"
"""Hidden folder beside the outputs holding the resume records and a stack's finished z-blocks."""
RECORD_FORMAT = 1
KEY_FIELDS = ("format", "input", "input_size", "input_mtime_ns", "model", "scale", "shape", "z_block")
"""Record fields that identify the work: earlier outputs and blocks count only when all of them match."""
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _vendor_frames(path: Path) -> list[Any] | None:
    """The frames of a stack or series in another format refscope reads (DM, EMD, SER, MRC), as stored; None for a
    single image or a file it cannot read (read as a 2-D frame, which reports the problem)."""
    from ..images.readers import read_frames

    try:
        frames = read_frames(path, crop_data_bar=False)
    except InputFileError:
        return None
    return frames if len(frames) > 1 else None


def probe_input(path: Path) -> tuple[int, int, int] | None:
    """(Z, H, W) of a 3-D stack -- a TIFF stack, or a stack or series in another format refscope reads (a 3-D DM
    image, a multi-frame SER or Velox EMD, an MRC volume) -- or None for anything else (read as a 2-D frame, which
    reports problems).

    Raises :class:`InputFileError` for a TIFF of another rank (e.g. 4-D) or a stack with slices under 8 px.
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _TIFF_MAGIC:
                frames = _vendor_frames(path)
                if frames is None:
                    return None
                shape = (len(frames), *frames[0].data.shape)
                if min(shape[1:]) < 8:
                    raise InputFileError(f"{path}: stack slices of {shape[1]} x {shape[2]} px are too small "
                                         "(at least 8 px)")
                return shape  # type: ignore[return-value]
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(int(s) for s in series.shape), str(series.axes)
    except Exception:  # noqa: BLE001 - not a readable TIFF: reading it as a frame reports the problem
        return None
    kept = [(s, a) for s, a in zip(shape, axes) if s != 1 or a in "YX"]
    shape, axes = tuple(s for s, _ in kept), "".join(a for _, a in kept)
    if len(shape) == 2 or axes.endswith("S"):
        return None  # a frame (RGB included: reading it as a frame says what is wrong with it)
    if len(shape) != 3 or not axes.endswith("YX"):
        raise InputFileError(f"{path}: has shape {shape} (axes {axes}); refscope batch needs a 2-D frame or a "
                             "3-D (Z, Y, X) stack")
    if min(shape[1:]) < 8:
        raise InputFileError(f"{path}: stack slices of {shape[1]} x {shape[2]} px are too small (at least 8 px)")
    return shape  # type: ignore[return-value]


def read_slices(path: Path, z0: int, z1: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Slices ``z0:z1`` of a stack of ``shape`` as stored, (z1 - z0, H, W); InputFileError for unusable pixels."""
    try:
        with open(path, "rb") as handle:
            tiff = handle.read(4) in _TIFF_MAGIC
        if not tiff:  # another format: its frames, as the reader layer gives them
            frames = _vendor_frames(path) or []
            data = np.stack([f.data for f in frames[z0:z1]]) if frames[z0:z1] else np.empty((0, 0, 0))
        else:
            with tifffile.TiffFile(path) as tif:
                data = np.asarray(tif.asarray(key=slice(z0, z1), series=0))
    except InputFileError:
        raise
    except Exception as exc:  # tifffile raises many types
        raise InputFileError(f"{path}: cannot read slices {z0}-{z1 - 1} ({type(exc).__name__}: {exc})") from exc
    expected = (z1 - z0, *shape[1:])
    if data.size == int(np.prod(expected)):
        data = data.reshape(expected)
    if data.shape != expected:
        raise InputFileError(f"{path}: slices {z0}-{z1 - 1} have shape {data.shape}, expected {expected}")
    if data.dtype == np.bool_ or data.dtype.kind not in "uif":
        raise InputFileError(f"{path}: unsupported pixel type {data.dtype} (integer or real float pixels needed)")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise InputFileError(f"{path}: slices {z0}-{z1 - 1} contain NaN or infinite pixels")
    return data


def write_stack(path: Path, slices: Iterable[np.ndarray], shape: tuple[int, int, int], *,
                pixel_size_nm: float | None, metadata: dict[str, Any]) -> None:
    """Write (Z, H, W) float32 ``slices`` (an iterable of (H, W) arrays) as an ImageJ stack, atomically.

    ``pixel_size_nm`` goes into the resolution tags (``unit=micron``), ``metadata`` into the ImageJ ``Info``
    property under ``"refscope"`` (what :func:`refscope.daemon.images.read_image` returns as ``metadata.extra``).
    """
    info = {"axes": "ZYX", "Info": json.dumps({"refscope": metadata}, default=to_jsonable, allow_nan=False)}
    extra: dict[str, Any] = {}
    if pixel_size_nm is not None:
        info["unit"] = "micron"
        extra["resolution"] = (1e3 / pixel_size_nm, 1e3 / pixel_size_nm)
    with atomic_writer(path, "wb") as handle:
        tifffile.imwrite(handle, (np.asarray(s, dtype=np.float32) for s in slices), shape=shape, dtype=np.float32,
                         imagej=True, metadata=info, **extra)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing or unreadable (then the work is simply redone)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def same_key(record: dict[str, Any] | None, key: dict[str, Any]) -> bool:
    """True when ``record`` describes the same input, model and blocking as ``key``."""
    return record is not None and all(record.get(k) == key.get(k) for k in KEY_FIELDS)


def output_done(record: dict[str, Any] | None, key: dict[str, Any], output: Path) -> bool:
    """True when ``record`` (same key) marks ``output`` complete and the file is there, unchanged."""
    if not same_key(record, key) or not record.get("complete"):  # type: ignore[union-attr]
        return False
    try:
        stat = output.stat()
    except OSError:
        return False
    return stat.st_size == record.get("output_size") and stat.st_mtime_ns == record.get("output_mtime_ns")  # type: ignore[union-attr]


def block_ok(path: Path, shape: tuple[int, int, int]) -> bool:
    """True when ``path`` is a finished z-block of ``shape`` (float32); a missing or broken one is redone."""
    try:
        block = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return block.shape == shape and block.dtype == np.float32

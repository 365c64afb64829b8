"""Write a grayscale array as a calibrated ImageJ TIFF (uint8, uint16 or float32) that Fiji understands, atomically.

Re-exported by :mod:`refscope.daemon.images`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..atomic import atomic_writer, to_jsonable
from .common import _INFO_KEY, _check_pixel_size_arg


def _output_array(path: Path, image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{path}: write_tiff needs a 2-D (H, W) image, got shape {array.shape}")
    if array.dtype in (np.uint8, np.uint16, np.float32):
        out = array
    elif array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise ValueError(f"{path}: cannot write pixel type {array.dtype} (use uint8, uint16 or float32)")
    elif array.dtype.kind in "ui" and array.size and (array.min() < -(2**24) or array.max() > 2**24):
        raise ValueError(f"{path}: {array.dtype} values beyond +-2**24 cannot be stored exactly as float32")
    else:
        with np.errstate(over="ignore"):
            out = array.astype(np.float32)
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: image contains NaN or infinite values (or values beyond the float32 range)")
    return np.ascontiguousarray(out)


def output_pixels(result: np.ndarray, pixel_type: str | None) -> np.ndarray:
    """An enhanced frame in its input's pixel type when that is uint8 or uint16 (rounded and clipped to its range:
    what microscopists keep, 1/2 or 1/4 of float32's size), else float32."""
    if pixel_type in ("uint8", "uint16"):
        top = np.iinfo(pixel_type).max
        return np.clip(np.rint(result), 0, top).astype(pixel_type)
    return np.asarray(result, dtype=np.float32)


def write_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    pixel_size_nm: float | None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a grayscale image as an ImageJ TIFF carrying its pixel size, atomically; a path ending in
    ``.ome.tif``/``.ome.tiff`` gets an OME-TIFF instead (physical pixel size in the OME-XML, ``metadata`` as
    JSON in its Description and as key-value pairs in a MapAnnotation, which OMERO and Fiji's Bio-Formats show).

    Parameters
    ----------
    path : str or PathLike
        Output file; its folder must exist. An existing file is replaced atomically.
    image : ndarray, shape (H, W)
        uint8 and uint16 are written as is; other real dtypes as float32 (integers must lie within +-2**24).
    pixel_size_nm : float or None
        Pixel size in nm, stored as ImageJ resolution tags with ``unit=micron`` (Fiji shows it under
        Image > Properties); None writes an uncalibrated image.
    metadata : mapping, optional
        JSON-serialisable provenance (method, scale, source file...), stored in the ImageJ "Info" property and
        returned by :func:`read_image` as ``metadata.extra``. The keys ``acquired_at`` (ISO string or datetime),
        ``stage_xy_m``, ``dwell_s`` and ``detector`` also fill the corresponding :class:`ImageMetadata` fields.

    Raises
    ------
    ValueError
        Not 2-D, unsupported dtype, non-finite values, invalid ``pixel_size_nm`` or unserialisable metadata.
    """
    target = Path(path)
    data = _output_array(target, image)
    pixel = _check_pixel_size_arg(pixel_size_nm)
    ij_metadata: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if pixel is not None:
        per_micron = 1e3 / pixel
        kwargs["resolution"] = (per_micron, per_micron)
        ij_metadata["unit"] = "micron"
    if metadata:
        try:
            info = json.dumps({_INFO_KEY: dict(metadata)}, allow_nan=False, default=to_jsonable, ensure_ascii=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{target}: metadata is not JSON-serialisable ({exc})") from exc
        ij_metadata["Info"] = info
    if target.name.lower().endswith((".ome.tif", ".ome.tiff")):
        _write_ome(target, data, pixel, metadata)
        return
    with atomic_writer(target, "wb") as handle:
        tifffile.imwrite(handle, data, imagej=True, metadata=ij_metadata, **kwargs)


OME_NAMESPACE = "refscope/acquisition"
"""Namespace of the MapAnnotation carrying the provenance and the source's acquisition metadata."""


def _write_ome(target: Path, data: np.ndarray, pixel_nm: float | None, metadata: Mapping[str, Any] | None) -> None:
    """An OME-TIFF: pixel size in µm in the OME-XML; provenance and acquisition metadata as JSON (Description)
    and as flat key-value strings (MapAnnotation)."""
    ome: dict[str, Any] = {"axes": "YX"}
    kwargs: dict[str, Any] = {}
    if pixel_nm is not None:
        ome.update(PhysicalSizeX=pixel_nm / 1e3, PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_nm / 1e3,
                   PhysicalSizeYUnit="µm")
        kwargs["resolution"] = (1e4 / pixel_nm, 1e4 / pixel_nm)  # pixels per cm (TIFF resolution tags)
        kwargs["resolutionunit"] = "CENTIMETER"
    if metadata:
        try:
            plain = json.loads(json.dumps(dict(metadata), allow_nan=False, default=to_jsonable, ensure_ascii=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{target}: metadata is not JSON-serialisable ({exc})") from exc
        ome["Description"] = json.dumps({_INFO_KEY: plain}, ensure_ascii=True)
        ome["MapAnnotation"] = {"Namespace": OME_NAMESPACE,
                                **{str(k): v if isinstance(v, str) else json.dumps(v) for k, v in plain.items()}}
    with atomic_writer(target, "wb") as handle:
        tifffile.imwrite(handle, data, ome=True, metadata=ome, **kwargs)

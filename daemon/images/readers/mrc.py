"""MRC / MRC2014 files, read with mrcfile (BSD-3-Clause), including Thermo/FEI ``FEI1``/``FEI2`` extended headers.

The pixel size is the voxel size (``cella / mxyz``, Å) of x and y; 0 means uncalibrated. A Thermo/FEI extended
header, when present, gives it more precisely (``Pixel size X|Y``, metres) and the acquisition: ``HT`` (V),
``Dwell time`` (s), ``STEM Detector name``, ``X-Stage``/``Y-Stage`` (m), ``Timestamp`` (days since 1899-12-30)
and the microscope type. A volume or image stack (nz > 1) gives one frame per section, in order. Complex modes
are refused.
"""
from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..common import _clean, _fail, _positive
from ..vendors import _Parsed, square_pixel
from .base import VendorStack, as_stack, check_stack_header, finite_or_none, need_module

__all__ = ["read_mrc", "looks_like_mrc"]

_MAP_AT = 208
_OLE_EPOCH = datetime(1899, 12, 30)


def looks_like_mrc(head: bytes) -> bool:
    """True when ``head`` (the file's first 212+ bytes) carries the MRC2014 ``MAP`` marker at byte 208."""
    return len(head) >= _MAP_AT + 4 and head[_MAP_AT:_MAP_AT + 3] == b"MAP"


def _text(value: Any) -> str:
    return value.decode("latin-1", "replace").strip("\0 ") if isinstance(value, bytes) else str(value).strip()


def _fei(header: Any) -> dict[str, Any]:
    """Fields of the first record of a Thermo/FEI extended header (empty when there is none)."""
    if header is None or not len(header) or header.dtype.names is None:
        return {}
    record = header[0]
    return {name: record[name] for name in header.dtype.names}


def read_mrc(path: Path, max_bytes: int | None) -> VendorStack:
    """The sections of an MRC file as (N, H, W) with the pixel size (nm) and metadata (module doc)."""
    mrcfile = need_module(path, "mrcfile", "MRC")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns about every header oddity; errors are checked below
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise _fail(path, "MRC file holds no data (header only, or truncated)", incomplete=True)
                check_stack_header(path, tuple(mrc.data.shape), mrc.data.dtype, max_bytes)
                data = as_stack(path, np.array(mrc.data))
                voxel = mrc.voxel_size
                fei = _fei(mrc.indexed_extended_header) if mrc.header.exttyp in (b"FEI1", b"FEI2") else {}
    except (OSError, ValueError, TypeError) as exc:
        if str(exc).startswith(str(path)):
            raise
        raise _fail(path, f"cannot be read as an MRC file ({type(exc).__name__}: {exc})") from exc
    x_m, y_m = _positive(fei.get("Pixel size X")), _positive(fei.get("Pixel size Y"))
    if x_m and y_m:
        x_nm, y_nm = _clean(x_m * 1e9), _clean(y_m * 1e9)
    else:
        x_nm = _clean(float(voxel.x) / 10) if _positive(voxel.x) else None  # Å -> nm
        y_nm = _clean(float(voxel.y) / 10) if _positive(voxel.y) else None
    pixel, per_axis = square_pixel(y_nm, x_nm)
    detector = _text(fei.get("STEM Detector name", b"")) or None
    extra: dict[str, Any] = {}
    hv = _positive(fei.get("HT"))
    if hv:
        extra["hv_V"] = hv
    if fei.get("Microscope type") is not None and _text(fei["Microscope type"]):
        extra["instrument"] = _text(fei["Microscope type"])
    stamp = finite_or_none(fei.get("Timestamp"))
    acquired = _OLE_EPOCH + timedelta(days=stamp) if stamp and 0 < stamp < 1e6 else None
    sx, sy = finite_or_none(fei.get("X-Stage")), finite_or_none(fei.get("Y-Stage"))
    illumination = _text(fei.get("Illumination mode", b"")).lower()
    modality = "STEM" if detector or illumination == "probe" else "TEM" if fei else None
    parsed = _Parsed(vendor="mrc", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, detector=detector,
                     dwell_s=_positive(fei.get("Dwell time")) if modality == "STEM" else None, acquired_at=acquired,
                     stage_xy_m=(sx, sy) if sx is not None and sy is not None else None, modality=modality,
                     extra=extra, calibration_note=None if per_axis else "its MRC voxel size is 0 (uncalibrated)")
    return VendorStack(data=data, parsed=parsed)

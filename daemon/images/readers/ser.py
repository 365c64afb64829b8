"""FEI/Thermo TIA series files (``.ser``, with an optional ``.emi`` beside them), written from the published format.

No permissively licensed reader exists, so this one follows the format description FEI published with TIA
("Series File Format", the TIA Serial file, versions 0x0210 and 0x0220): all numbers little-endian.

Header
    ``ByteOrder`` int16 = 0x4949, ``SeriesID`` int16 = 0x0197, ``SeriesVersion`` int16 (0x0210: 4-byte offsets,
    0x0220: 8-byte offsets), ``DataTypeID`` int32 (0x4120: 1-D spectra, 0x4122: 2-D images), ``TagTypeID`` int32
    (0x4152: time tag, 0x4142: time and position tag), ``TotalNumberElements`` int32, ``ValidNumberElements`` int32,
    ``OffsetArrayOffset`` (int32 / int64), ``NumberDimensions`` int32, then that many dimension records (size,
    calibration offset/delta/element, description and units strings) describing the series axes.
Offset arrays at ``OffsetArrayOffset``
    ``TotalNumberElements`` data offsets, then as many tag offsets (int32 / int64 each).
2-D data element at each data offset
    ``CalibrationOffsetX`` f64, ``CalibrationDeltaX`` f64 (metres per pixel), ``CalibrationElementX`` int32, the
    same three for Y, ``DataType`` int16 (1 uint8, 2 uint16, 3 uint32, 4 int8, 5 int16, 6 int32, 7 float32,
    8 float64, 9/10 complex), ``ArraySizeX`` int32, ``ArraySizeY`` int32, then the pixels, x fastest.
Tag at each tag offset
    ``TagTypeID`` int16, 2 bytes of alignment, ``Time`` int32 (unix seconds), and for 0x4142 the stage position x, y (f64, metres).

The ``ValidNumberElements`` images are the frames, in order. The ``.emi`` companion (``X.emi`` for ``X_1.ser``)
holds the microscope conditions as XML (``<ObjectInfo>``); HV, magnification, dwell time and mode are read from
it when present. TIA writes STEM and TEM images alike; a dwell time makes the frame a STEM frame.
"""
from __future__ import annotations

import re
import struct
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..common import _clean, _fail, _positive
from ..vendors import _Parsed, square_pixel
from .base import VendorStack, check_stack_header

__all__ = ["read_ser", "SER_MAGIC", "emi_companion"]

SER_MAGIC = b"\x49\x49\x97\x01"
"""First four bytes of a TIA series file (byte order 0x4949, series ID 0x0197, little-endian)."""
_IMAGES, _SPECTRA = 0x4122, 0x4120
_TAG_TIME, _TAG_TIME_POSITION = 0x4152, 0x4142
_DTYPES = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8", 9: "<c8", 10: "<c16"}
_ELEMENT_HEADER = struct.Struct("<ddiddihii")  # calibration x (offset, delta, element), y (...), type, size x, y


def _unpack(path: Path, handle: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    chunk = handle.read(size)
    if len(chunk) != size:
        raise _fail(path, f"truncated TIA series file (ends at byte {handle.tell()})", incomplete=True)
    return struct.unpack(fmt, chunk)


def emi_companion(path: Path) -> Path | None:
    """The ``.emi`` file that belongs to a ``.ser`` (``X_1.ser`` -> ``X.emi``), if it exists."""
    stem = re.sub(r"_\d+$", "", path.stem)
    for candidate in (path.with_name(stem + ".emi"), path.with_name(stem + ".EMI")):
        if candidate.is_file():
            return candidate
    return None


def _emi_conditions(path: Path) -> dict[str, Any]:
    """HV (V), magnification, dwell (s) and mode from the ``<ObjectInfo>`` XML of the ``.emi`` beside ``path``."""
    emi = emi_companion(path)
    if emi is None:
        return {}
    try:
        raw = emi.read_bytes()[: 64 << 20]
    except OSError:
        return {}
    found: dict[str, Any] = {}
    for tag, key in (("AcceleratingVoltage", "hv_V"), ("Magnification", "magnification"), ("DwellTimePath", "dwell_s")):
        match = re.search(rb"<%s>\s*([0-9.eE+-]{1,40})" % tag.encode(), raw)
        if match:
            found[key] = _positive(match.group(1).decode("latin-1"))
    mode = re.search(rb"<Label>Mode</Label>.{0,200}?<Value>([^<]{1,120})</Value>", raw, re.DOTALL)
    if mode:
        found["mode"] = mode.group(1).decode("latin-1").strip()
    return {k: v for k, v in found.items() if v}


def read_ser(path: Path, max_bytes: int | None) -> VendorStack:
    """The images of a TIA ``.ser`` file as (N, H, W) with the pixel size (nm) and metadata (module doc)."""
    with open(path, "rb") as handle:
        order, series_id, version = _unpack(path, handle, "<hhh")
        if order != 0x4949 or series_id != 0x0197:
            raise _fail(path, "is not a TIA series file (bad byte order or series ID)")
        if version not in (0x0210, 0x0220):
            raise _fail(path, f"TIA series version {version:#06x} is not supported (0x0210 or 0x0220)")
        offset_fmt = "<q" if version >= 0x0220 else "<i"
        data_type, tag_type, total, valid = _unpack(path, handle, "<iiii")
        if data_type == _SPECTRA:
            raise _fail(path, "is a TIA series of spectra, not images; refscope reads images")
        if data_type != _IMAGES:
            raise _fail(path, f"unknown TIA data type {data_type:#06x}")
        (offsets_at,) = _unpack(path, handle, offset_fmt)
        if valid < 1 or total < valid:
            raise _fail(path, f"TIA series holds no image ({valid} valid of {total})", incomplete=valid < 1)
        handle.seek(offsets_at)
        data_offsets = [_unpack(path, handle, offset_fmt)[0] for _ in range(total)][:valid]
        tag_offsets = [_unpack(path, handle, offset_fmt)[0] for _ in range(total)][:valid]
        handle.seek(data_offsets[0])
        head = _unpack(path, handle, _ELEMENT_HEADER.format)
        _, delta_x, _, _, delta_y, _, pixel_type, width, height = head
        if pixel_type not in _DTYPES:
            raise _fail(path, f"unknown TIA pixel type {pixel_type}")
        dtype = np.dtype(_DTYPES[pixel_type])
        check_stack_header(path, (valid, height, width), dtype, max_bytes)
        frames = np.empty((valid, height, width), dtype=dtype.newbyteorder("="))
        for index, offset in enumerate(data_offsets):
            handle.seek(offset)
            element = _unpack(path, handle, _ELEMENT_HEADER.format)
            if element[6:] != head[6:]:
                raise _fail(path, f"TIA image {index} has type/shape {element[6:]}, image 0 has {head[6:]}")
            pixels = np.frombuffer(handle.read(width * height * dtype.itemsize), dtype=dtype)
            if pixels.size != width * height:
                raise _fail(path, f"truncated TIA series file (image {index} of {valid} is incomplete)",
                            incomplete=True)
            frames[index] = pixels.reshape(height, width)
        acquired = stage = None
        if tag_offsets and tag_offsets[0] > 0:
            handle.seek(tag_offsets[0])
            (tag_id,) = _unpack(path, handle, "<h")
            handle.read(2)  # the time field is 4-byte aligned
            (stamp,) = _unpack(path, handle, "<i")
            acquired = datetime.fromtimestamp(stamp) if stamp > 0 else None
            if tag_id == _TAG_TIME_POSITION:
                stage = tuple(float(v) for v in _unpack(path, handle, "<dd"))
    x_nm = _clean(delta_x * 1e9) if _positive(delta_x) else None  # TIA calibrates image axes in metres
    y_nm = _clean(delta_y * 1e9) if _positive(delta_y) else None
    pixel, per_axis = square_pixel(y_nm, x_nm)
    conditions = _emi_conditions(path)
    dwell = conditions.pop("dwell_s", None)
    mode = str(conditions.pop("mode", ""))
    modality = "STEM" if dwell or "STEM" in mode.upper() else "TEM" if mode else None
    parsed = _Parsed(vendor="tia", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, dwell_s=dwell,
                     acquired_at=acquired, stage_xy_m=stage, modality=modality, extra=conditions,  # type: ignore[arg-type]
                     calibration_note=None if per_axis else "its TIA calibration step is not positive")
    return VendorStack(data=frames, parsed=parsed)

"""Gatan DigitalMicrograph DM3 / DM4 files (GMS 1-3), read with nionswift-io's tag parser (Apache-2.0).

The tag tree's ``ImageList`` holds a thumbnail first and the image last (the DM convention nionswift-io follows);
the last entry is read. Its ``ImageData/Calibrations/Dimension`` list gives per axis (x first, then y, then the
stack axis) a ``Scale`` and ``Units``: "nm", "µm", "A" (DM's Ångström) ...; an empty unit means uncalibrated (DM
stores scale 1 then) and gives no pixel size, never 1 nm. A 3-D image (a tilt or time series) is a stack: each
z-slice one frame, in order. Spectra and spectrum images (``Meta Data/Format``) and RGB images are refused.

Metadata: HV (``Microscope Info/Voltage``, V), dwell (``DigiScan/Sample Time``, µs), acquisition date and time
(``DataBar``), stage x/y (``Microscope Info/Stage Position``, µm), imaging mode (``Illumination Mode`` /
``Operation Mode``: STEM when scanning, else TEM), indicated magnification.
"""
from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..common import _clean, _fail, _to_nm
from ..vendors import _Parsed, square_pixel
from .base import VendorStack, as_stack, check_pixel_type, check_stack_header, finite_or_none, need_module

__all__ = ["read_dm"]

_PARSER_LOCK = threading.Lock()  # nionswift-io's parser keeps the file version in module globals
_DM_RGB = 23


def _tree(path: Path) -> dict[str, Any]:
    parse_dm3 = need_module(path, "nionswift_plugin.DM_IO.parse_dm3", "Gatan DigitalMicrograph (DM3/DM4)")
    utils = need_module(path, "nionswift_plugin.DM_IO.dm3_image_utils", "Gatan DigitalMicrograph (DM3/DM4)")
    try:
        with _PARSER_LOCK, open(path, "rb", buffering=1 << 20) as handle:
            return utils.fix_strings(parse_dm3.dm_read_header(handle))
    except OSError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # the parser raises AssertionError, struct.error, KeyError... on a damaged file
        raise _fail(path, f"cannot be read as a DigitalMicrograph file ({type(exc).__name__}: {exc})") from exc


def _axis_nm(dimension: Any) -> float | None:
    if not isinstance(dimension, dict):
        return None
    unit = dimension.get("Units")
    unit = "Å" if isinstance(unit, str) and unit.strip() == "A" else unit
    return _to_nm(dimension.get("Scale"), unit)


def _acquired(bar: dict[str, Any]) -> datetime | None:
    date, time = bar.get("Acquisition Date"), bar.get("Acquisition Time")
    if not (isinstance(date, str) and isinstance(time, str)):
        return None
    for fmt in ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S"):
        try:
            return datetime.strptime(f"{date.strip()} {time.strip()}", fmt)
        except ValueError:
            continue
    return None


def _metadata(tags: dict[str, Any]) -> dict[str, Any]:
    info = tags.get("Microscope Info") if isinstance(tags.get("Microscope Info"), dict) else {}
    scan = tags.get("DigiScan") if isinstance(tags.get("DigiScan"), dict) else {}
    found: dict[str, Any] = {}
    mode = " ".join(str(info.get(k, "")) for k in ("Illumination Mode", "Operation Mode")).upper()
    if "STEM" in mode or "SCANNING" in mode or scan:
        found["modality"] = "STEM"
    elif info:
        found["modality"] = "TEM"
    extra: dict[str, Any] = {}
    for key, name in (("Voltage", "hv_V"), ("Indicated Magnification", "magnification")):
        value = finite_or_none(info.get(key))
        if value:
            extra[name] = value
    found["extra"] = extra
    dwell_us = finite_or_none(scan.get("Sample Time"))
    found["dwell_s"] = _clean(dwell_us * 1e-6) if dwell_us and dwell_us > 0 else None
    stage = info.get("Stage Position") if isinstance(info.get("Stage Position"), dict) else {}
    sx, sy = finite_or_none(stage.get("Stage X")), finite_or_none(stage.get("Stage Y"))
    found["stage_xy_m"] = (_clean(sx * 1e-6), _clean(sy * 1e-6)) if sx is not None and sy is not None else None
    found["acquired_at"] = _acquired(tags.get("DataBar") if isinstance(tags.get("DataBar"), dict) else {})
    return found


def read_dm(path: Path, max_bytes: int | None) -> VendorStack:
    """The image of a DM3/DM4 file as (N, H, W) (N > 1: a 3-D series, each slice a frame) with its calibration
    (nm per axis) and metadata; InputFileError for spectra, RGB, complex data or a damaged file."""
    tree = _tree(path)
    images = tree.get("ImageList") or []
    if not images or not isinstance(images[-1], dict) or "ImageData" not in images[-1]:
        raise _fail(path, "DigitalMicrograph file holds no image")
    entry = images[-1]
    image_data = entry["ImageData"]
    tags = entry.get("ImageTags") if isinstance(entry.get("ImageTags"), dict) else {}
    meta_format = str((tags.get("Meta Data") or {}).get("Format", "")).lower() if isinstance(
        tags.get("Meta Data"), dict) else ""
    if "spectrum" in meta_format:
        raise _fail(path, f"is a DigitalMicrograph {meta_format}, not an image; refscope reads images")
    if image_data.get("DataType") == _DM_RGB:
        raise _fail(path, "is an RGB DigitalMicrograph image; refscope needs one grayscale channel")
    dims = [int(d) for d in image_data.get("Dimensions", [])]
    utils = need_module(path, "nionswift_plugin.DM_IO.dm3_image_utils", "Gatan DigitalMicrograph (DM3/DM4)")
    dm_type = utils.dm_image_dtypes.get(image_data.get("DataType"))
    if dm_type is None:
        raise _fail(path, f"unsupported DigitalMicrograph data type {image_data.get('DataType')!r}")
    dtype = check_pixel_type(path, dm_type[0] if dm_type[0] not in ("Bool",) else "bool")
    check_stack_header(path, tuple(reversed(dims)), dtype, max_bytes)
    try:
        data = np.asarray(utils.imagedatadict_to_ndarray(image_data))
    except Exception as exc:  # noqa: BLE001 - the parser asserts on inconsistent headers
        raise _fail(path, f"DigitalMicrograph image data do not match their header ({type(exc).__name__})") from exc
    data = as_stack(path, data)
    calibration = (image_data.get("Calibrations") or {}).get("Dimension") or []
    x_nm = _axis_nm(calibration[0]) if len(calibration) > 0 else None
    y_nm = _axis_nm(calibration[1]) if len(calibration) > 1 else None
    pixel, per_axis = square_pixel(y_nm, x_nm)
    note = None
    if x_nm is None or y_nm is None:
        units = [str(d.get("Units", "")) for d in calibration[:2] if isinstance(d, dict)]
        note = f"its DigitalMicrograph calibration has no length unit (units {units})"
    found = _metadata(tags)
    parsed = _Parsed(vendor="gatan", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, calibration_note=note,
                     modality=found["modality"] if "modality" in found else None, extra=found["extra"],
                     dwell_s=found["dwell_s"], stage_xy_m=found["stage_xy_m"], acquired_at=found["acquired_at"])
    return VendorStack(data=data, parsed=parsed)

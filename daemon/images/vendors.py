"""Pixel size and acquisition metadata from vendor tags (FEI/Thermo, Zeiss, OME, ImageJ, DigitalMicrograph-saved,
JEOL SightX), descriptions and sidecars.

Each parser turns one page's metadata into a :class:`_Parsed` (pixel size in nm, rows of real image, stage,
time, dwell, detector) before any cropping; :func:`_framed_bar_top` finds a Zeiss-style info box burnt into the
bottom of the pixels. Used by :mod:`refscope.daemon.images.tiff_read`.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from ..frames import pixel_size_problem
from .common import _INFO_KEY, Vendor, _clean, _positive, _to_nm, _unit_nm

_TIME_UNIT_S = {"ps": 1e-12, "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "secs": 1.0}


def _sidecar_pixel_size(path: Path) -> float | None:
    """Pixel size in nm from ``<file>.json`` or ``<stem>.json``, if one exists."""
    for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if sidecar == path or not sidecar.is_file():
            continue
        try:
            document = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{sidecar}: sidecar of {path.name} is not valid JSON ({exc})") from exc
        if not isinstance(document, dict) or "pixel_size_nm" not in document:
            continue
        value = _positive(document["pixel_size_nm"]) if not isinstance(document["pixel_size_nm"], bool) else None
        if value is None:
            raise InputFileError(
                f"{sidecar}: 'pixel_size_nm' must be a positive number of nm, got {document['pixel_size_nm']!r}"
            )
        problem = pixel_size_problem(value)
        if problem is not None:
            raise InputFileError(f"{sidecar}: 'pixel_size_nm' of {path.name}: {problem}")
        return value
    return None


def _parse_datetime(text: str, formats: tuple[str, ...]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


# ------------------------------------------------------------------------------------------- vendor parsers


@dataclass(frozen=True)
class _Parsed:
    """Vendor metadata of one page before cropping: pixel size (nm), bar rows to cut, and the rest."""

    vendor: Vendor
    pixel_size_nm: float | None = None
    image_rows: int | None = None  # rows of real image, when the metadata says so
    stage_xy_m: tuple[float, float] | None = None
    acquired_at: datetime | None = None
    dwell_s: float | None = None
    detector: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    pixel_size_yx_nm: tuple[float, float] | None = None  # per axis (y, x), nm, when the file gives both
    modality: str | None = None  # "SEM", "STEM" or "TEM" when the metadata says
    calibration_note: str | None = None  # why pixel_size_nm is None although the file has a calibration


def square_pixel(y_nm: float | None, x_nm: float | None) -> tuple[float | None, tuple[float, float] | None]:
    """(square pixel size, (y, x)) from per-axis sizes in nm: the size when both agree within 0.1 %, else None (the
    reader refuses unequal ones, :func:`refscope.daemon.images.tiff_read.finish_image`); (None, None) if either is unknown."""
    if y_nm is None or x_nm is None:
        return None, None
    same = abs(y_nm - x_nm) <= 1e-3 * max(y_nm, x_nm)
    return (x_nm if same else None), (y_nm, x_nm)


def _parse_fei(tags: Mapping[str, Any]) -> _Parsed:
    """FEI/Thermo Fisher metadata (INI sections parsed by tifffile); lengths in metres."""
    scan = tags.get("Scan") or tags.get("EScan") or {}
    pixel = _positive(scan.get("PixelWidth"))
    image = tags.get("Image") or {}
    rows = image.get("ResolutionY")
    stage = tags.get("Stage") or {}
    stage_xy = None
    if isinstance(stage.get("StageX"), (int, float)) and isinstance(stage.get("StageY"), (int, float)):
        stage_xy = (float(stage["StageX"]), float(stage["StageY"]))
    user = tags.get("User") or {}
    acquired = None
    if user.get("Date") and user.get("Time"):
        acquired = _parse_datetime(
            f"{user['Date']} {user['Time']}", ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S")
        )
    dwell = _positive(scan.get("Dwelltime", scan.get("Dwell")))
    detectors = tags.get("Detectors") or {}
    detector = detectors.get("Name")
    beam = tags.get("EBeam") or tags.get("Beam") or {}
    extra = {key: float(value) for key, value in (("hv_V", beam.get("HV")),
                                                  ("working_distance_m", stage.get("WorkingDistance", beam.get("WD"))),
                                                  ("beam_current_A", beam.get("BeamCurrent")))
             if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return _Parsed(
        vendor="fei",
        modality="SEM",  # the FEI_HELIOS / FEI_SFEG tags are written by Thermo Fisher SEMs and FIB-SEMs
        extra=extra,
        pixel_size_nm=_clean(pixel * 1e9) if pixel else None,
        image_rows=int(rows) if isinstance(rows, (int, float)) and rows > 0 else None,
        stage_xy_m=stage_xy,
        acquired_at=acquired,
        dwell_s=dwell,
        detector=str(detector) if detector else None,
    )


def _zeiss_value(tags: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    """(value, unit) of a CZ_SEM entry, which tifffile stores as (label, value[, unit])."""
    entry = tags.get(key)
    if isinstance(entry, tuple) and len(entry) >= 2:
        return entry[1], (entry[2] if len(entry) >= 3 else None)
    return None, None


def _parse_zeiss(tags: Mapping[str, Any], width_px: int) -> _Parsed:
    """Zeiss SmartSEM metadata. ``ap_pixel_size`` refers to a reference raster, so the image pixel size is
    ``ap_image_pixel_size`` when present, else the scanned width ``ap_width`` divided by the stored width."""
    pixel = _to_nm(*_zeiss_value(tags, "ap_image_pixel_size"))
    if pixel is None:
        width = _to_nm(*_zeiss_value(tags, "ap_width"))
        pixel = width / width_px if width is not None and width_px > 0 else None
    if pixel is None:
        pixel = _to_nm(*_zeiss_value(tags, "ap_pixel_size"))
    # Stage positions may be 0 or negative (which _to_nm rejects), so convert them here.
    sx, ux = _zeiss_value(tags, "ap_stage_at_x")
    sy, uy = _zeiss_value(tags, "ap_stage_at_y")
    stage_xy = None
    if isinstance(sx, (int, float)) and isinstance(sy, (int, float)):
        fx, fy = _unit_nm(ux), _unit_nm(uy)
        if fx is not None and fy is not None:
            stage_xy = (_clean(sx * fx * 1e-9), _clean(sy * fy * 1e-9))
    date, _ = _zeiss_value(tags, "ap_date")
    time, _ = _zeiss_value(tags, "ap_time")
    acquired = None
    if date and time:
        acquired = _parse_datetime(f"{date} {time}", ("%d %b %Y %H:%M:%S", "%d %B %Y %H:%M:%S", "%d.%m.%Y %H:%M:%S"))
    dwell_value, dwell_unit = _zeiss_value(tags, "dp_dwell_time")
    dwell = None
    if _positive(dwell_value) is not None and str(dwell_unit).lower() in _TIME_UNIT_S:
        dwell = _clean(float(dwell_value) * _TIME_UNIT_S[str(dwell_unit).lower()])
    detector, _ = _zeiss_value(tags, "dp_detector_channel")
    if not detector:
        detector, _ = _zeiss_value(tags, "dp_detector_type")
    rows = None
    store, _ = _zeiss_value(tags, "dp_image_store")  # e.g. "1024 * 768": the scanned raster
    match = re.fullmatch(r"\s*(\d+)\s*\*\s*(\d+)\s*", str(store)) if store else None
    if match and int(match.group(1)) == width_px:
        rows = int(match.group(2))
    return _Parsed(
        vendor="zeiss",
        modality="SEM",
        pixel_size_nm=pixel,
        image_rows=rows,
        stage_xy_m=stage_xy,
        acquired_at=acquired,
        dwell_s=dwell,
        detector=str(detector) if detector else None,
    )


def _parse_ome(xml: str | None) -> _Parsed:
    pixel = None
    if xml:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            root = None
        if root is not None:
            pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
            if pixels:
                attrs = pixels[0].attrib
                pixel = _to_nm(attrs.get("PhysicalSizeX"), attrs.get("PhysicalSizeXUnit", "µm"))
    return _Parsed(vendor="ome", pixel_size_nm=pixel)


def _parse_imagej(ij: Mapping[str, Any], page: Any) -> _Parsed:
    unit = ij.get("unit")
    pixel = None
    resolution = page.tags.get("XResolution")
    if unit is not None and resolution is not None:
        numerator, denominator = resolution.value
        if numerator > 0 and denominator > 0:
            pixel = _to_nm(denominator / numerator, unit)
    extra: dict[str, Any] = {}
    info = ij.get("Info")
    if isinstance(info, str):
        try:
            document = json.loads(info)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get(_INFO_KEY), dict):
            extra = document[_INFO_KEY]
    acquired = None
    if isinstance(extra.get("acquired_at"), str):
        try:
            acquired = datetime.fromisoformat(extra["acquired_at"])
        except ValueError:
            acquired = None
    stage = extra.get("stage_xy_m")
    stage_xy = None
    if isinstance(stage, (list, tuple)) and len(stage) == 2 and all(isinstance(v, (int, float)) for v in stage):
        stage_xy = (float(stage[0]), float(stage[1]))
    detector = extra.get("detector")
    return _Parsed(
        vendor="imagej",
        pixel_size_nm=pixel,
        stage_xy_m=stage_xy,
        acquired_at=acquired,
        dwell_s=_positive(extra.get("dwell_s")),
        detector=detector if isinstance(detector, str) else None,
        extra=extra,
    )


# DigitalMicrograph writes its calibration into private TIFF tags when it saves a TIFF: unit per axis (65003 x,
# 65004 y) and scale per axis (65009 x, 65010 y), in the DM convention (dimension 0 = x).
_DM_TIFF_UNIT_X, _DM_TIFF_UNIT_Y, _DM_TIFF_SCALE_X, _DM_TIFF_SCALE_Y = 65003, 65004, 65009, 65010


def _is_dm_tiff(tags: Any) -> bool:
    return _DM_TIFF_SCALE_X in tags and _DM_TIFF_UNIT_X in tags


def _parse_dm_tiff(tags: Any) -> _Parsed:
    """A TIFF saved by Gatan DigitalMicrograph: pixel size from its private scale/unit tags (65009/65010 with units
    65003/65004); units such as "µm", "nm", "Å" (DM writes "A" for Ångström); an empty unit is unknown."""
    def axis(scale_code: int, unit_code: int) -> float | None:
        scale = tags[scale_code].value if scale_code in tags else None
        unit = tags[unit_code].value if unit_code in tags else None
        return _to_nm(scale, "Å" if str(unit).strip() == "A" else unit)

    x_nm = axis(_DM_TIFF_SCALE_X, _DM_TIFF_UNIT_X)
    y_nm = axis(_DM_TIFF_SCALE_Y, _DM_TIFF_UNIT_Y) if _DM_TIFF_SCALE_Y in tags else x_nm
    pixel, per_axis = square_pixel(y_nm, x_nm)
    note = None if x_nm is not None else "its DigitalMicrograph calibration has no length unit"
    return _Parsed(vendor="gatan", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, calibration_note=note)


def _xml_text(root: ET.Element, path: str) -> str | None:
    node = root.find(path)
    return node.text.strip() if node is not None and node.text else None


def _is_sightx(description: str | None) -> bool:
    return bool(description) and "<TemReporter" in description[:4096]  # type: ignore[index]


def _parse_sightx(description: str) -> _Parsed:
    """JEOL SightX TIFF (an XML ``TemReporter`` in the description): the recorded image's pixel pitch
    (``DrawImageInformation/PixelsPerMeter``, at the camera/display) divided by the magnification
    (``ImageFormingSystem/SelectorValue``); HV from ``ElectronGun/AccelerationVoltage`` (V)."""
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return _Parsed(vendor="jeol", calibration_note="its JEOL SightX XML metadata cannot be parsed")
    ppm_x = _positive(_xml_text(root, "Measurement/MeasurementFormat/DrawImageInformation/PixelsPerMeter/Horizontal"))
    ppm_y = _positive(_xml_text(root, "Measurement/MeasurementFormat/DrawImageInformation/PixelsPerMeter/Vertical"))
    mag = _positive(_xml_text(root, "ImageFormingSystem/SelectorValue"))
    unit = _xml_text(root, "ImageFormingSystem/SelectorUnitString")
    pixel = per_axis = None
    note = None
    if ppm_x and mag and (unit or "X").upper() == "X":
        x_nm = _clean(1e9 / ppm_x / mag)
        y_nm = _clean(1e9 / ppm_y / mag) if ppm_y else x_nm
        pixel, per_axis = square_pixel(y_nm, x_nm)
    else:
        note = "its JEOL SightX metadata has no image magnification (diffraction or camera-length mode?)"
    mode = (_xml_text(root, "Eos/EosMode") or _xml_text(root, "IlluminationSystem/Mode") or "").lower()
    mode = mode.removeprefix("eos").removeprefix("mode")  # "eosTEM", "modeTEM", "eosSTEM"...
    modality = "STEM" if mode.startswith(("stem", "asid")) else "TEM" if mode.startswith("tem") else None
    extra: dict[str, Any] = {}
    hv = _positive(_xml_text(root, "ElectronGun/AccelerationVoltage"))
    if hv:
        extra["hv_V"] = hv
    if mag:
        extra["magnification"] = mag
    acquired = None
    stamp = _xml_text(root, "DateTime")
    if stamp:
        try:
            acquired = datetime.fromisoformat(stamp[:26] if "." in stamp else stamp).replace(tzinfo=None)
        except ValueError:
            acquired = None
    return _Parsed(vendor="jeol", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, modality=modality, extra=extra,
                   acquired_at=acquired, calibration_note=note)


def _parse_description(description: str | None) -> float | None:
    """Pixel size in nm from a tifffile JSON description such as ``{"pixel_size": 0.0075, "unit": "nm"}``."""
    if not description or not description.lstrip().startswith("{"):
        return None
    try:
        document = json.loads(description)
    except json.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if "pixel_size_nm" in document:
        return _positive(document["pixel_size_nm"])
    return _to_nm(document.get("pixel_size"), document.get("unit"))


def _framed_bar_top(data: np.ndarray) -> int | None:
    """First row of a burnt-in info box at the bottom of ``data`` (Zeiss style), or None.

    The box is recognised only by its frame: a row in the bottom 30% that is one constant value across at
    least 90% of the width, a bottom edge (in the last 4 rows) of the same value over the same columns, and the
    same value down the box's left and right edges in between. Natural image content does not draw such frames.
    """
    height, width = data.shape
    if height < 16 or width < 16:
        return None
    bottom = None
    for row in range(height - 1, max(height - 5, 0) - 1, -1):
        span = _long_run(data[row], width)
        if span is not None:
            bottom = (row, span)
            break
    if bottom is None:
        return None
    bottom_row, (left, right, value) = bottom
    for row in range(int(height * 0.7), bottom_row - 2):
        span = _long_run(data[row], width)
        if span is None or span[2] != value or abs(span[0] - left) > 2 or abs(span[1] - right) > 2:
            continue
        box = data[row : bottom_row + 1]
        if np.all(box[:, left] == value) and np.all(box[:, right - 1] == value):
            return row
    return None


def _long_run(row: np.ndarray, width: int) -> tuple[int, int, Any] | None:
    """(start, stop, value) of the longest run of one value in ``row`` if it covers >= 90% of the width."""
    changes = np.flatnonzero(row[1:] != row[:-1]) + 1
    starts = np.concatenate(([0], changes))
    stops = np.concatenate((changes, [row.size]))
    longest = int(np.argmax(stops - starts))
    start, stop = int(starts[longest]), int(stops[longest])
    return (start, stop, row[start]) if stop - start >= 0.9 * width else None


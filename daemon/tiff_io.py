"""Read SEM frames (TIFF/PNG) with their pixel size, and write calibrated TIFFs that Fiji understands.

Reading
-------
:func:`read_image` returns the grayscale pixels in their original dtype, the pixel size in nm and what the
file says about the acquisition. Supported sources of the pixel size, in order of precedence:

1. the ``pixel_size_nm`` argument (overrides everything);
2. the file's own metadata: FEI/Thermo Fisher (``FEI_HELIOS``/``FEI_SFEG`` tag), Zeiss (``CZ_SEM`` tag),
   OME-XML (``PhysicalSizeX``), ImageJ (resolution tags + ``unit``), or a tifffile JSON description carrying
   ``pixel_size`` and ``unit``;
3. a sidecar JSON file ``<file>.json`` (e.g. ``a.png.json``) or ``<stem>.json`` (``a.json``) holding
   ``{"pixel_size_nm": ...}``.

Vendor data bars are cropped: FEI/Thermo images keep rows ``< Image.ResolutionY``; a Zeiss info box burnt into
the bottom of the image (a 1-px framed box spanning the width) is detected from its frame and cut off.

Every problem with an input file raises :class:`~refscope.daemon.errors.InputFileError` whose message starts
with the file path; nothing is ever written to, or deleted from, an input file.

Writing
-------
:func:`write_tiff` writes an ImageJ TIFF (uint8, uint16 or float32) whose resolution tags and ``unit=micron``
carry the pixel size, atomically.
"""
from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from .atomic import atomic_writer, to_jsonable
from .errors import IncompleteFileError, InputFileError

__all__ = [
    "ImageMetadata",
    "LoadedImage",
    "read_image",
    "write_tiff",
    "MAX_SIDE_PX",
    "Vendor",
]

Vendor = Literal["fei", "zeiss", "ome", "imagej", "plain"]

MAX_SIDE_PX = 65536
"""Largest accepted image side in pixels; larger headers are refused before any pixel is read."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_INFO_KEY = "refscope"  # key of our metadata inside the ImageJ "Info" JSON

# Length units found in SEM/ImageJ/OME metadata, in nm.
_UNIT_NM = {
    "pm": 1e-3, "nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "\\u00b5m": 1e3,
    "mm": 1e6, "cm": 1e7, "m": 1e9, "å": 0.1, "angstrom": 0.1,
}
_TIME_UNIT_S = {"ps": 1e-12, "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "secs": 1.0}


@dataclass(frozen=True)
class ImageMetadata:
    """What an image file says about its acquisition (all fields optional except ``vendor``).

    Attributes
    ----------
    vendor : {"fei", "zeiss", "ome", "imagej", "plain"}
        Metadata flavour found in the file ("imagej" includes TIFFs written by :func:`write_tiff`).
    pixel_size_nm : float or None
        Effective pixel size in nm (square pixels), after any override; None if unknown.
    field_of_view_nm : tuple of float or None
        (y, x) extent of the returned pixel array in nm: ``shape * pixel_size_nm``; None if the pixel size
        is unknown.
    stage_xy_m : tuple of float or None
        Stage (x, y) position in metres as reported by the microscope.
    acquired_at : datetime or None
        Acquisition time, naive (the microscope's local clock).
    dwell_s : float or None
        Pixel dwell time in seconds.
    detector : str or None
        Detector name, e.g. "ETD", "InLens".
    data_bar_rows_cropped : int
        Number of rows removed from the bottom of the stored image (vendor data/info bar).
    pixel_size_source : str or None
        Where ``pixel_size_nm`` came from: "argument", "fei", "zeiss", "ome", "imagej", "description",
        "sidecar", or None.
    extra : mapping
        Free-form metadata stored by :func:`write_tiff` (its ``metadata`` argument), else empty.
    """

    vendor: Vendor
    pixel_size_nm: float | None = None
    field_of_view_nm: tuple[float, float] | None = None
    stage_xy_m: tuple[float, float] | None = None
    acquired_at: datetime | None = None
    dwell_s: float | None = None
    detector: str | None = None
    data_bar_rows_cropped: int = 0
    pixel_size_source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedImage:
    """A grayscale frame read from disk.

    Attributes
    ----------
    data : ndarray, shape (H, W)
        Pixels in the file's dtype (uint8, uint16, int*, float32, ...), data bar removed.
    pixel_size_nm : float or None
        Pixel size in nm (same as ``metadata.pixel_size_nm``).
    path : Path
        The file read.
    metadata : ImageMetadata
        Acquisition metadata.
    """

    data: np.ndarray
    pixel_size_nm: float | None
    path: Path
    metadata: ImageMetadata


# --------------------------------------------------------------------------------------------------- helpers


def _fail(path: Path, problem: str, *, incomplete: bool = False) -> InputFileError:
    cls = IncompleteFileError if incomplete else InputFileError
    return cls(f"{path}: {problem}")


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _clean(value: float) -> float:
    """Round a unit-converted value to 12 significant digits (1.12413e-08 m -> 11.2413 nm, not 11.241299999...)."""
    return float(f"{value:.12g}")


def _to_nm(value: Any, unit: Any) -> float | None:
    """A positive length ``value`` in ``unit`` as nm (None if either is unusable)."""
    scale = _UNIT_NM.get(str(unit).strip().lower()) if unit is not None else None
    number = _positive(value)
    return _clean(number * scale) if number is not None and scale is not None else None


def _check_pixel_size_arg(pixel_size_nm: float | None) -> float | None:
    if pixel_size_nm is None:
        return None
    value = _positive(pixel_size_nm)
    if value is None:
        raise ValueError(f"pixel_size_nm must be a positive finite number of nm, got {pixel_size_nm!r}")
    return value


def _sniff(path: Path) -> str:
    """Return "tiff" or "png" from the file's first bytes, or raise InputFileError."""
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "is not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise _fail(path, f"cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise _fail(path, "is empty (0 bytes)", incomplete=True)
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head == _PNG_MAGIC:
        return "png"
    if len(head) < 8 and (_PNG_MAGIC.startswith(head) or any(m.startswith(head) for m in _TIFF_MAGIC)):
        raise _fail(path, f"truncated image header ({size} bytes)", incomplete=True)
    raise _fail(path, f"is not a TIFF or PNG image (file starts with {head!r})")


def _check_shape(path: Path, shape: tuple[int, ...], where: str = "") -> None:
    """Refuse absurd or empty dimensions before any pixel data is read."""
    height, width = int(shape[0]), int(shape[1])
    if height > MAX_SIDE_PX or width > MAX_SIDE_PX:
        raise _fail(path, f"{where}image of {height} x {width} px exceeds the limit of {MAX_SIDE_PX} px per side")
    if height < 1 or width < 1:
        raise _fail(path, f"{where}image has no pixels (shape {height} x {width})")


def _check_dtype(path: Path, dtype: np.dtype | None) -> None:
    if dtype is None:  # tifffile's answer to sample tags it cannot map (and np.dtype(None) would be float64)
        raise _fail(path, "unsupported pixel type (bits per sample / sample format not understood)")
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or dtype.kind not in "uif":
        raise _fail(path, f"unsupported pixel type {dtype} (refscope reads integer or real float pixels)")


def _check_finite(path: Path, data: np.ndarray) -> None:
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise _fail(path, f"contains {bad} NaN or infinite pixel(s)")


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
    return _Parsed(
        vendor="fei",
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
        fx, fy = _UNIT_NM.get(str(ux).strip().lower()), _UNIT_NM.get(str(uy).strip().lower())
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


# ------------------------------------------------------------------------------------------------- readers


def _page_index(path: Path, count: int, page: int | None) -> int:
    if page is None:
        if count > 1:
            raise _fail(path, f"is a multi-page TIFF with {count} pages; pass page=0..{count - 1} to choose one")
        return 0
    if isinstance(page, bool) or not isinstance(page, (int, np.integer)) or not 0 <= page < count:
        raise _fail(path, f"has {count} page(s); page={page!r} does not exist (use 0..{count - 1})")
    return int(page)


def _show_chunks(chunks: tuple[Any, ...]) -> str:
    text = repr(chunks)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_not_truncated(path: Path, tiff_page: Any, file_size: int) -> None:
    offsets, counts = tiff_page.dataoffsets, tiff_page.databytecounts
    if not offsets or not counts:
        raise _fail(path, "truncated TIFF (page has no pixel data)", incomplete=True)
    needed = max(int(o) + int(c) for o, c in zip(offsets, counts))
    if needed > file_size or any(int(c) == 0 for c in counts):
        raise _fail(path, f"truncated TIFF (pixel data needs {needed} bytes, file has {file_size})", incomplete=True)


def _read_tiff(path: Path, page: int | None) -> tuple[np.ndarray, _Parsed]:
    file_size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            # by index (len() walks the IFD chain with loop detection); iterating a circular chain never ends
            pages = [p for p in tif.pages[:] if not getattr(p, "is_reduced", False)]
            if not pages:
                raise _fail(path, "TIFF holds no image")
            index = _page_index(path, len(pages), page)
            tiff_page = pages[index]
            if not isinstance(tiff_page, tifffile.TiffPage):
                tiff_page = tiff_page.aspage()
            shape = tuple(int(s) for s in tiff_page.shape)
            samples = int(getattr(tiff_page, "samplesperpixel", 1))
            photometric = int(tiff_page.photometric) if tiff_page.photometric is not None else None
            if samples > 1 or photometric == 2 or len(shape) == 3 and shape[-1] in (3, 4):
                kind = "RGB" if photometric == 2 or samples in (3, 4) else f"{samples}-channel"
                raise _fail(path, f"is {kind} (shape {shape}); refscope needs one grayscale channel")
            if len(shape) != 2:
                raise _fail(path, f"page {index} has shape {shape}; refscope needs a 2-D grayscale image")
            _check_shape(path, shape)
            _check_dtype(path, tiff_page.dtype)
            chunks = tiff_page.chunks  # decoded segment by segment: bound each (a corrupt tag can hold a list)
            bound = 4 * max(math.prod(shape), 1 << 16)
            if not all(isinstance(c, (int, np.integer)) for c in chunks) or math.prod(chunks) > bound:
                raise _fail(path, f"corrupt TIFF (segments of {_show_chunks(chunks)} px for an image of {shape} px)")
            _check_not_truncated(path, tiff_page, file_size)
            parsed = _tiff_metadata(tif, tiff_page, index, shape)
            data = tiff_page.asarray()
            if photometric == 3:  # palette: accept only a gray colormap
                data = _apply_gray_palette(path, data, tiff_page.colormap, parsed)
            elif photometric == 0 and data.dtype.kind == "u":  # MINISWHITE: 0 is white
                data = np.iinfo(data.dtype).max - data
    except InputFileError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, zlib.error...)
        raise _fail(path, f"cannot be read as a TIFF ({type(exc).__name__}: {exc})") from exc
    return np.asarray(data), parsed


def _tiff_metadata(tif: tifffile.TiffFile, tiff_page: tifffile.TiffPage, index: int, shape: tuple[int, ...]) -> _Parsed:
    tags = tiff_page.tags
    for fei_tag in ("FEI_HELIOS", "FEI_SFEG"):
        if fei_tag in tags and isinstance(tags[fei_tag].value, dict):
            return _parse_fei(tags[fei_tag].value)
    if "CZ_SEM" in tags and isinstance(tags["CZ_SEM"].value, dict):
        return _parse_zeiss(tags["CZ_SEM"].value, shape[1])
    if tif.is_ome:
        return _parse_ome(tif.ome_metadata)
    if tif.is_imagej and tif.imagej_metadata is not None:
        return _parse_imagej(tif.imagej_metadata, tif.pages.first)
    return _Parsed(vendor="plain", pixel_size_nm=_parse_description(tiff_page.description))


def _apply_gray_palette(path: Path, data: np.ndarray, colormap: np.ndarray | None, parsed: _Parsed) -> np.ndarray:
    """Map palette indices through a gray colormap (identity maps keep the stored indices)."""
    if colormap is None or colormap.ndim != 2 or colormap.shape[0] != 3:
        return data
    used = np.unique(data)
    used = used[used < colormap.shape[1]]
    red, green, blue = (colormap[c, used] for c in range(3))
    if not (np.array_equal(red, green) and np.array_equal(red, blue)):
        # Zeiss colours only their info box (logo); allow that if the box is cropped later.
        top = _framed_bar_top(data) if parsed.vendor == "zeiss" else None
        image_part = np.unique(data[:top]) if top is not None else used
        image_part = image_part[image_part < colormap.shape[1]]
        if not np.array_equal(colormap[0, image_part], colormap[1, image_part]) or not np.array_equal(
            colormap[0, image_part], colormap[2, image_part]
        ):
            raise _fail(path, f"is a colour palette image (shape {data.shape}); refscope needs one grayscale channel")
        used = image_part
    levels = colormap[0]
    if levels.max(initial=0) > 255 and data.dtype == np.uint8:
        levels = levels // 257  # 16-bit colormap for 8-bit data
    if np.array_equal(levels[used], used):
        return data
    return levels.astype(data.dtype)[data]


def _read_png(path: Path, page: int | None) -> tuple[np.ndarray, _Parsed]:
    from PIL import Image  # Pillow comes with scikit-image/imageio

    if page not in (None, 0):
        raise _fail(path, f"is a single-image PNG; page={page!r} does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
            _check_shape(path, (height, width))
            mode = image.mode
            if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "La"):
                channels = len(image.getbands())
                kind = "RGB" if channels >= 3 else "gray + alpha"
                raise _fail(
                    path, f"is {kind} (shape ({height}, {width}, {channels})); refscope needs one grayscale channel"
                )
            if mode == "1":
                raise _fail(path, "unsupported pixel type bool (1-bit PNG)")
            image.load()
            if mode == "P":
                palette = np.array(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
                data = np.asarray(image)
                used = np.unique(data)
                used = used[used < len(palette)]
                rgb = palette[used]
                if not (np.array_equal(rgb[:, 0], rgb[:, 1]) and np.array_equal(rgb[:, 0], rgb[:, 2])):
                    raise _fail(
                        path, f"is a colour palette image (shape {data.shape}); refscope needs one grayscale channel"
                    )
                if not np.array_equal(rgb[:, 0], used):
                    data = palette[:, 0][data]
            else:
                data = np.asarray(image)
                if mode == "I" and data.size and data.min() >= 0 and data.max() <= 65535:
                    data = data.astype(np.uint16)  # older Pillow loads 16-bit PNG as int32
    except InputFileError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError("image file is truncated"), zlib errors, bombs
        truncated = "truncated" in str(exc).lower() or isinstance(exc, (EOFError, SyntaxError))
        problem = "truncated PNG" if truncated else "cannot be read as a PNG"
        raise _fail(path, f"{problem} ({type(exc).__name__}: {exc})", incomplete=truncated) from exc
    if data.ndim != 2:
        raise _fail(path, f"is RGB (shape {data.shape}); refscope needs one grayscale channel")
    _check_dtype(path, data.dtype)
    return data, _Parsed(vendor="plain")


def read_image(
    path: str | os.PathLike[str],
    *,
    pixel_size_nm: float | None = None,
    page: int | None = None,
    crop_data_bar: bool = True,
) -> LoadedImage:
    """Read one grayscale SEM frame and its metadata from a TIFF or PNG file.

    Parameters
    ----------
    path : str or PathLike
        TIFF (FEI/Thermo, Zeiss, OME, ImageJ or plain) or PNG file. The format is recognised from the file's
        first bytes, not its extension.
    pixel_size_nm : float, optional
        Pixel size in nm; overrides whatever the file or a sidecar JSON says.
    page : int, optional
        Page of a multi-page TIFF to read (0-based). Required when the file has more than one page.
    crop_data_bar : bool
        Remove the vendor data bar (FEI ``ResolutionY``, Zeiss framed info box) from the bottom. Default True.

    Returns
    -------
    LoadedImage
        ``data`` of shape (H, W) in the file's dtype, the pixel size in nm (None if unknown) and metadata.

    Raises
    ------
    InputFileError
        Missing, empty, truncated (:class:`IncompleteFileError`) or non-image file; RGB/colour image; multi-page
        file without ``page``; unsupported dtype (bool, complex); a side over :data:`MAX_SIDE_PX` px (checked
        from the header, before reading pixels); NaN or infinite pixels; an invalid sidecar JSON.
    ValueError
        ``pixel_size_nm`` is not a positive finite number.
    """
    override = _check_pixel_size_arg(pixel_size_nm)
    file_path = Path(path)
    kind = _sniff(file_path)
    data, parsed = _read_tiff(file_path, page) if kind == "tiff" else _read_png(file_path, page)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    _check_finite(file_path, data)

    cropped = 0
    if crop_data_bar:
        rows = data.shape[0]
        if parsed.image_rows is not None and 0 < parsed.image_rows < rows:
            cropped = rows - parsed.image_rows
        elif parsed.vendor == "zeiss":
            top = _framed_bar_top(data)
            cropped = rows - top if top is not None else 0
        if cropped:
            data = np.ascontiguousarray(data[: rows - cropped])

    if override is not None:
        pixel, source = override, "argument"
    elif parsed.pixel_size_nm is not None:
        pixel, source = parsed.pixel_size_nm, parsed.vendor if parsed.vendor != "plain" else "description"
    else:
        pixel = _sidecar_pixel_size(file_path)
        source = "sidecar" if pixel is not None else None
    fov = (data.shape[0] * pixel, data.shape[1] * pixel) if pixel is not None else None
    metadata = ImageMetadata(
        vendor=parsed.vendor,
        pixel_size_nm=pixel,
        field_of_view_nm=fov,
        stage_xy_m=parsed.stage_xy_m,
        acquired_at=parsed.acquired_at,
        dwell_s=parsed.dwell_s,
        detector=parsed.detector,
        data_bar_rows_cropped=cropped,
        pixel_size_source=source,
        extra=parsed.extra,
    )
    return LoadedImage(data=data, pixel_size_nm=pixel, path=file_path, metadata=metadata)


# ------------------------------------------------------------------------------------------------- writer


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


def write_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    pixel_size_nm: float | None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a grayscale image as an ImageJ TIFF carrying its pixel size, atomically.

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
    with atomic_writer(target, "wb") as handle:
        tifffile.imwrite(handle, data, imagej=True, metadata=ij_metadata, **kwargs)

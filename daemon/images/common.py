"""Shared pieces of refscope's image I/O: the public result types, the side-length limit and unit helpers.

:class:`ImageMetadata` and :class:`LoadedImage` are what :func:`~refscope.daemon.images.read_image` returns;
the private helpers (error construction, positive-number and length-unit conversion to nm) are used by the
vendor parsers, the reader and the writer alike. Re-exported by :mod:`refscope.daemon.images`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import IncompleteFileError, InputFileError
from ..frames import pixel_size_problem

Vendor = Literal["fei", "zeiss", "ome", "imagej", "plain", "gatan", "velox", "emd", "tia", "mrc", "jeol"]

INSTRUMENT_VENDORS: tuple[str, ...] = ("fei", "zeiss", "gatan", "velox", "emd", "tia", "mrc", "jeol")
"""Metadata flavours written by the microscope's own software (whose extras an output carries over); ``"imagej"``
extras are refscope's provenance, ``"ome"``/``"plain"`` carry none."""

MAX_SIDE_PX = 65536
"""Largest accepted image side in pixels; larger headers are refused before any pixel is read."""

_INFO_KEY = "refscope"  # key of our metadata inside the ImageJ "Info" JSON

# Length units found in SEM/ImageJ/OME metadata, in nm.
_UNIT_NM = {
    "pm": 1e-3, "nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "\\u00b5m": 1e3,
    "mm": 1e6, "cm": 1e7, "m": 1e9, "å": 0.1, "angstrom": 0.1, "angstroms": 0.1,
    "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0, "micrometer": 1e3, "micrometers": 1e3, "micrometre": 1e3,
    "meter": 1e9, "metre": 1e9, "picometer": 1e-3,
}


@dataclass(frozen=True)
class ImageMetadata:
    """What an image file says about its acquisition (all fields optional except ``vendor``).

    Attributes
    ----------
    vendor : {"fei", "zeiss", "ome", "imagej", "plain", "gatan", "velox", "emd", "tia", "mrc", "jeol"}
        Metadata flavour found in the file ("imagej" includes TIFFs written by :func:`write_tiff`; "gatan": a DM3/DM4
        file or a TIFF saved by DigitalMicrograph; "velox": Thermo Velox EMD; "emd": Berkeley EMD; "tia": FEI TIA
        SER; "mrc": MRC; "jeol": JEOL SightX TIFF).
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
        Free-form metadata: what :func:`write_tiff` stored (its ``metadata`` argument) in an ImageJ TIFF, else the
        instrument's extras (``hv_V``, ``working_distance_m``, ``beam_current_A``, ``magnification``...), else empty.
    pixel_size_yx_nm : tuple of float or None
        (y, x) pixel size in nm as the file states it (both axes; equal when the format has one pixel size), before
        any override or sidecar; None when the file gives none.
    modality : {"SEM", "STEM", "TEM"} or None
        The kind of acquisition the file's metadata says (imaging mode, detector, format); None if it says nothing.
    frame : int or None
        Index of this image in a stack or series file (0-based); None for a single-image file.
    frames : int
        Number of images in the file this one came from (1 for a single image).
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
    pixel_size_yx_nm: tuple[float, float] | None = None
    modality: str | None = None
    frame: int | None = None
    frames: int = 1


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
    stored_dtype : str or None
        The pixel type the file stores, when ``data`` was converted since (e.g. to float64 for fitting); None:
        ``data.dtype`` is it.
    """

    data: np.ndarray
    pixel_size_nm: float | None
    path: Path
    metadata: ImageMetadata
    stored_dtype: str | None = None

    @property
    def pixel_type(self) -> str:
        """The pixel type the file stores (e.g. ``"uint16"``), whatever ``data`` was converted to since."""
        return self.stored_dtype or self.data.dtype.name


def acquisition_metadata(image: LoadedImage) -> dict[str, Any]:
    """What an output should carry over from its source frame: vendor, source pixel size and pixel type, stage
    position (m), dwell time (s), detector, acquisition time and the vendor's extras (e.g. FEI ``hv_V``,
    ``working_distance_m``); only what the source says."""
    meta = image.metadata
    found: dict[str, Any] = {"source_vendor": meta.vendor,
                             "source_dtype": image.pixel_type}
    for key, value in (("source_pixel_size_nm", image.pixel_size_nm), ("stage_xy_m", meta.stage_xy_m),
                       ("dwell_s", meta.dwell_s), ("detector", meta.detector), ("acquired_at", meta.acquired_at)):
        if value is not None:
            found[key] = list(value) if isinstance(value, tuple) else value
    if meta.modality is not None:
        found["modality"] = meta.modality
    if meta.frame is not None:
        found["source_frame"], found["source_frames"] = meta.frame, meta.frames
    if meta.vendor in INSTRUMENT_VENDORS:  # the microscope's own extras (an ImageJ file's are refscope's provenance)
        found.update({k: v for k, v in dict(meta.extra).items()
                      if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in found})
    return found


# --------------------------------------------------------------------------------------------------- helpers


def _fail(path: Path, problem: str, *, incomplete: bool = False) -> InputFileError:
    cls = IncompleteFileError if incomplete else InputFileError
    return cls(f"{path}: {problem}")


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, else None (metadata numbers may be strings, NaN or missing)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float, else None."""
    number = finite_or_none(value)
    return number if number is not None and number > 0 else None


def _clean(value: float) -> float:
    """Round a unit-converted value to 12 significant digits (1.12413e-08 m -> 11.2413 nm, not 11.241299999...)."""
    return float(f"{value:.12g}")


def _unit_nm(unit: Any) -> float | None:
    """nm per ``unit`` (a length unit string: "nm", "n_m", "µm", "micron", "Å", "m"...); None for an empty or
    unknown unit (an empty unit is "unknown", never 1 nm)."""
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1")
    return _UNIT_NM.get(str(unit).strip().lower().replace("_", "").replace(" ", ""))


def _to_nm(value: Any, unit: Any) -> float | None:
    """A positive length ``value`` in ``unit`` as nm (None if either is unusable)."""
    scale = _unit_nm(unit)
    number = _positive(value)
    return _clean(number * scale) if number is not None and scale is not None else None


def _check_pixel_size_arg(pixel_size_nm: float | None) -> float | None:
    if pixel_size_nm is None:
        return None
    value = _positive(pixel_size_nm)
    if value is None:
        raise ValueError(f"pixel_size_nm must be a positive finite number of nm, got {pixel_size_nm!r}")
    problem = pixel_size_problem(value)
    if problem is not None:
        raise ValueError(f"pixel_size_nm: {problem}")
    return value

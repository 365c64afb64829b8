"""EMD files (HDF5), read with h5py (BSD-3-Clause): Thermo Fisher Velox EMD and Berkeley (NCEM) EMD.

Velox
    Each ``Data/Image/<id>`` group is one detector's image series: ``Data`` of shape (H, W, N) and ``Metadata``
    (a JSON document per frame, NUL-padded bytes). The JSON's ``BinaryResult`` gives the detector name and the
    pixel size per axis (``PixelSize/width|height`` in ``PixelUnitX|Y``); ``Optics/AccelerationVoltage`` (V),
    ``Scan/DwellTime`` (s), ``Acquisition/AcquisitionStartDatetime/DateTime`` (unix s), ``Stage/Position`` (m).
    A file with several detectors (HAADF, DF2, DF4, BF...) gives the one named ``detector`` (default HAADF); the
    others are logged and skipped. A scanning detector makes the frame a STEM frame, a camera a TEM one.
Berkeley EMD (version 0.2)
    Groups under ``data/`` with the attribute ``emd_group_type = 1``: a ``data`` array and one dimension vector per
    axis (``dim1``, ``dim2``, ...; attributes ``name`` and ``units``, e.g. ``n_m`` for nm). The two axes named
    Y and X (else the last two) are the image, another one is the frame axis. The pixel size is the step of the
    dimension vector. ``microscope`` attributes: ``high tension`` (V), ``dwell time`` (s, STEM), ``magnification``.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..common import _clean, _fail, _positive, _to_nm
from ..vendors import _Parsed, square_pixel
from .base import VendorStack, check_stack_header, finite_or_none, need_module

__all__ = ["read_emd", "DEFAULT_DETECTOR"]

_log = logging.getLogger("refscope.ingest")
DEFAULT_DETECTOR = "HAADF"
"""The detector read from a file holding several (``ingest.detector``)."""
_WHAT = "EMD (HDF5: Velox or Berkeley)"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(-1)[0])
    return str(value)


def _choose(path: Path, names: list[str], detector: str | None) -> int:
    """Index of the detector to read among ``names`` (one: that one; several: ``detector``, default HAADF)."""
    if len(names) == 1:
        return 0
    wanted = (detector or DEFAULT_DETECTOR).strip().lower()
    matches = [i for i, name in enumerate(names) if name.strip().lower() == wanted]
    if not matches:
        raise _fail(path, f"holds images from the detectors {', '.join(names)} but none from {wanted.upper()!r}; "
                          "choose one with ingest.detector (refscope enhance/fit/evaluate: --detector)")
    skipped = [name for i, name in enumerate(names) if i != matches[0]]
    _log.info("%s: reading detector %s; skipped %s (ingest.detector)", path, names[matches[0]], ", ".join(skipped))
    return matches[0]


# ------------------------------------------------------------------------------------------------ Velox


def _velox_json(group: Any) -> dict[str, Any]:
    if "Metadata" not in group:
        return {}
    column = np.asarray(group["Metadata"][:, 0], dtype=np.uint8).tobytes().rstrip(b"\0")
    try:
        document = json.loads(column.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def _velox_parsed(meta: dict[str, Any], detector: str) -> _Parsed:
    result = meta.get("BinaryResult") or {}
    size = result.get("PixelSize") or {}
    x_nm = _to_nm(size.get("width"), result.get("PixelUnitX"))
    y_nm = _to_nm(size.get("height"), result.get("PixelUnitY"))
    pixel, per_axis = square_pixel(y_nm, x_nm)
    kinds = {str(d.get("DetectorName")): str(d.get("DetectorType", "")) for d in (meta.get("Detectors") or {}).values()
             if isinstance(d, dict)}
    kind = kinds.get(detector, "ScanningDetector" if meta.get("Scan") else "")
    modality = "STEM" if kind == "ScanningDetector" else "TEM" if kind == "ImagingDetector" else None
    scan = meta.get("Scan") or {}
    dwell = _positive(scan.get("DwellTime")) if modality == "STEM" else None
    stamp = finite_or_none(((meta.get("Acquisition") or {}).get("AcquisitionStartDatetime") or {}).get("DateTime"))
    acquired = datetime.fromtimestamp(stamp) if stamp else None
    position = (meta.get("Stage") or {}).get("Position") or {}
    sx, sy = finite_or_none(position.get("x")), finite_or_none(position.get("y"))
    extra: dict[str, Any] = {}
    hv = _positive((meta.get("Optics") or {}).get("AccelerationVoltage"))
    if hv:
        extra["hv_V"] = hv
    instrument = meta.get("Instrument") or {}
    if instrument.get("InstrumentModel") or instrument.get("InstrumentClass"):
        extra["instrument"] = str(instrument.get("InstrumentModel") or instrument.get("InstrumentClass"))
    note = None if pixel or per_axis else "its Velox metadata has no length pixel size"
    return _Parsed(vendor="velox", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, detector=detector or None,
                   modality=modality, dwell_s=_clean(dwell) if dwell else None, acquired_at=acquired,
                   stage_xy_m=(sx, sy) if sx is not None and sy is not None else None, extra=extra,
                   calibration_note=note)


def _read_velox(path: Path, handle: Any, detector: str | None, max_bytes: int | None) -> VendorStack:
    images = handle.get("Data/Image")
    groups = [images[key] for key in sorted(images.keys())] if images is not None else []
    groups = [g for g in groups if "Data" in g]
    if not groups:
        kinds = ", ".join(sorted(handle["Data"].keys())) if "Data" in handle else "nothing"
        raise _fail(path, f"Velox EMD file holds no image (it holds {kinds}); refscope reads images")
    metas = [_velox_json(g) for g in groups]
    names = [str((m.get("BinaryResult") or {}).get("Detector") or f"image {i}") for i, m in enumerate(metas)]
    index = _choose(path, names, detector)
    dataset = groups[index]["Data"]
    if dataset.ndim != 3:
        raise _fail(path, f"Velox image data of shape {dataset.shape}; expected (height, width, frames)")
    height, width, count = (int(s) for s in dataset.shape)
    check_stack_header(path, (count, height, width), dataset.dtype, max_bytes)
    data = np.moveaxis(np.asarray(dataset[()]), 2, 0)
    parsed = _velox_parsed(metas[index], names[index])
    return VendorStack(data=np.ascontiguousarray(data), parsed=parsed)


# ------------------------------------------------------------------------------------------------ Berkeley


def _berkeley_axes(group: Any, ndim: int) -> tuple[list[str], list[float | None]]:
    names, steps = [], []
    for axis in range(ndim):
        dim = group.get(f"dim{axis + 1}")
        name = _text(dim.attrs.get("name", "")) if dim is not None else ""
        step = None
        if dim is not None and dim.shape and dim.shape[0] >= 2:
            values = np.asarray(dim[:2], dtype=np.float64)
            step = _to_nm(abs(values[1] - values[0]), _text(dim.attrs.get("units", "")))
        names.append(name.strip().upper())
        steps.append(step)
    return names, steps


def _read_berkeley(path: Path, handle: Any, detector: str | None, max_bytes: int | None) -> VendorStack:
    root = handle["data"]
    groups = [(key, root[key]) for key in sorted(root.keys())
              if int(np.asarray(root[key].attrs.get("emd_group_type", 0)).reshape(-1)[0]) == 1 and "data" in root[key]]
    if not groups:
        raise _fail(path, "Berkeley EMD file holds no data group (emd_group_type = 1)")
    key, group = groups[_choose(path, [k for k, _ in groups], detector)]
    dataset = group["data"]
    names, steps = _berkeley_axes(group, dataset.ndim)
    if dataset.ndim not in (2, 3):
        raise _fail(path, f"Berkeley EMD data of shape {dataset.shape}; refscope reads 2-D images or stacks of them")
    y_axis = names.index("Y") if "Y" in names else dataset.ndim - 2
    x_axis = names.index("X") if "X" in names else dataset.ndim - 1
    frame_axes = [a for a in range(dataset.ndim) if a not in (y_axis, x_axis)]
    order = frame_axes + [y_axis, x_axis]
    shape = tuple(int(dataset.shape[a]) for a in order)
    check_stack_header(path, shape, dataset.dtype, max_bytes)
    data = np.transpose(np.asarray(dataset[()]), order).reshape((-1, shape[-2], shape[-1]))
    pixel, per_axis = square_pixel(steps[y_axis], steps[x_axis])
    microscope = handle["microscope"].attrs if "microscope" in handle else {}
    extra: dict[str, Any] = {}
    for attr, name in (("high tension", "hv_V"), ("magnification", "magnification")):
        value = _positive(np.asarray(microscope.get(attr, np.nan)).reshape(-1)[0]) if attr in microscope else None
        if value:
            extra[name] = value
    if "name" in microscope:
        extra["instrument"] = _text(microscope["name"])
    dwell = _positive(np.asarray(microscope["dwell time"]).reshape(-1)[0]) if "dwell time" in microscope else None
    note = None if per_axis else "its EMD dimension vectors have no length unit"
    parsed = _Parsed(vendor="emd", pixel_size_nm=pixel, pixel_size_yx_nm=per_axis, dwell_s=dwell,
                     modality="STEM" if dwell else None, extra=extra, detector=key if len(groups) > 1 else None,
                     calibration_note=note)
    return VendorStack(data=np.ascontiguousarray(data), parsed=parsed)


def read_emd(path: Path, max_bytes: int | None, detector: str | None = None) -> VendorStack:
    """The images of a Velox or Berkeley EMD file as (N, H, W) with their calibration and metadata (module doc);
    ``detector``: which detector of a multi-detector file (default HAADF)."""
    h5py = need_module(path, "h5py", _WHAT)
    try:
        with h5py.File(path, "r") as handle:
            if "Data" in handle and ("Version" in handle or "Data/Image" in handle):
                return _read_velox(path, handle, detector, max_bytes)
            if "data" in handle:
                return _read_berkeley(path, handle, detector, max_bytes)
            raise _fail(path, "is an HDF5 file but neither a Velox nor a Berkeley EMD (no Data/Image or data group)")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if getattr(exc, "args", None) and str(exc).startswith(str(path)):
            raise
        raise _fail(path, f"cannot be read as an EMD (HDF5) file ({type(exc).__name__}: {exc})") from exc

"""Read one grayscale frame from a TIFF or PNG file into an array, validating it, with its metadata.

:func:`read_image` recognises the format from the file's first bytes, refuses anything refscope cannot use
(truncated, RGB, multi-page without ``page``, unsupported dtype, oversized, NaN) with an
:class:`~refscope.daemon.errors.InputFileError`, crops the vendor data bar and resolves the pixel size.
Re-exported by :mod:`refscope.daemon.images`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import InputFileError
from ..frames import pixel_size_problem
from .common import (
    MAX_SIDE_PX,
    ImageMetadata,
    LoadedImage,
    _check_pixel_size_arg,
    _fail,
)
from .vendors import (
    _framed_bar_top,
    _is_dm_tiff,
    _is_sightx,
    _parse_dm_tiff,
    _parse_sightx,
    _parse_description,
    _parse_fei,
    _parse_imagej,
    _parse_ome,
    _parse_zeiss,
    _Parsed,
    _sidecar_pixel_size,
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _head(path: Path, count: int = 8) -> tuple[int, bytes]:
    """(size in bytes, first ``count`` bytes) of an existing, non-empty regular file, else InputFileError."""
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "is not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(count)
    except OSError as exc:
        raise _fail(path, f"cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise _fail(path, "is empty (0 bytes)", incomplete=True)
    return size, head


def _tiff_or_png(path: Path, size: int, head: bytes) -> str | None:
    """"tiff" or "png" from the first bytes ``head``; None for anything else; IncompleteFileError for a file
    shorter than the 8-byte signature it starts."""
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:8] == _PNG_MAGIC:
        return "png"
    if size < 8 and (_PNG_MAGIC.startswith(head) or any(m.startswith(head) for m in _TIFF_MAGIC)):
        raise _fail(path, f"truncated image header ({size} bytes)", incomplete=True)
    return None


def _sniff(path: Path) -> str:
    """Return "tiff" or "png" from the file's first bytes, or raise InputFileError."""
    size, head = _head(path)
    kind = _tiff_or_png(path, size, head)
    if kind is None:
        raise _fail(path, "is not a TIFF or PNG image")  # its content is never echoed (it may be anything)
    return kind


def tiff_page_count(path: Path) -> int:
    """Number of images (pages, reduced-resolution ones left out) of a TIFF; InputFileError if unreadable."""
    try:
        with tifffile.TiffFile(path) as tif:
            return len([p for p in tif.pages[:] if not getattr(p, "is_reduced", False)])
    except MemoryError:
        raise
    except Exception as exc:  # tifffile raises many types
        raise _fail(path, f"cannot be read as a TIFF ({type(exc).__name__}: {exc})") from exc


def _check_shape(path: Path, shape: tuple[int, ...], where: str = "") -> None:
    """Refuse absurd or empty dimensions before any pixel data is read."""
    height, width = int(shape[0]), int(shape[1])
    if height > MAX_SIDE_PX or width > MAX_SIDE_PX:
        raise _fail(path, f"{where}image of {height} x {width} px exceeds the limit of {MAX_SIDE_PX} px per side")
    if height < 1 or width < 1:
        raise _fail(path, f"{where}image has no pixels (shape {height} x {width})")


def _check_decoded_size(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int | None,
                        where: str = "") -> None:
    """Refuse an image whose decoded pixels would exceed ``max_bytes``, from its header, before decoding it
    (a small compressed file can decode to gigabytes)."""
    if max_bytes is None:
        return
    size = math.prod(int(s) for s in shape) * int(itemsize)
    if size > max_bytes:
        raise _fail(path, f"{where}image of {' x '.join(str(int(s)) for s in shape)} px decodes to "
                          f"{size / 2**20:.0f} MB, more than the {max_bytes / 2**20:.0f} MB one input frame may take "
                          "(serve.max_memory_mb)")


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


def _read_tiff(path: Path, page: int | None, max_bytes: int | None) -> tuple[np.ndarray, _Parsed]:
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
            _check_decoded_size(path, shape, np.dtype(tiff_page.dtype).itemsize, max_bytes)
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
    if _is_dm_tiff(tags):
        return _parse_dm_tiff(tags)
    if _is_sightx(tiff_page.description):
        return _parse_sightx(tiff_page.description)
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


_PNG_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
"""Bytes per decoded pixel of the grayscale PNG modes (others, e.g. "I" and "F", decode to 4)."""


def _read_png(path: Path, page: int | None, max_bytes: int | None) -> tuple[np.ndarray, _Parsed]:
    from PIL import Image  # Pillow comes with scikit-image/imageio

    if page not in (None, 0):
        raise _fail(path, f"is a single-image PNG; page={page!r} does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
            _check_shape(path, (height, width))
            mode = image.mode
            _check_decoded_size(path, (height, width), _PNG_MODE_BYTES.get(mode, 4), max_bytes)
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
    max_bytes: int | None = None,
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
    max_bytes : int, optional
        Largest decoded image accepted, bytes (the daemon's per-frame share of ``serve.max_memory_mb``); checked
        from the header's shape and pixel type before any pixel is decoded. None: no limit beyond
        :data:`MAX_SIDE_PX`.

    Returns
    -------
    LoadedImage
        ``data`` of shape (H, W) in the file's dtype, the pixel size in nm (None if unknown) and metadata.

    Raises
    ------
    InputFileError
        Missing, empty, truncated (:class:`IncompleteFileError`) or non-image file; RGB/colour image; multi-page
        file without ``page``; unsupported dtype (bool, complex); a side over :data:`MAX_SIDE_PX` px or more
        than ``max_bytes`` decoded (checked from the header, before reading pixels); a pixel size outside
        :data:`~refscope.daemon.frames.PIXEL_SIZE_RANGE_NM`; NaN or infinite pixels; an invalid sidecar JSON.
    ValueError
        ``pixel_size_nm`` is not a positive finite number.
    """
    override = _check_pixel_size_arg(pixel_size_nm)
    file_path = Path(path)
    kind = _sniff(file_path)
    if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) != max_bytes or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    reader = _read_tiff if kind == "tiff" else _read_png
    data, parsed = reader(file_path, page, max_bytes)
    return finish_image(file_path, data, parsed, override=override, crop_data_bar=crop_data_bar)


def finish_image(path: Path, data: np.ndarray, parsed: _Parsed, *, override: float | None,
                 crop_data_bar: bool = True, frame: int | None = None, frames: int = 1) -> LoadedImage:
    """The :class:`LoadedImage` of one decoded 2-D frame: native byte order, finite pixels checked, the vendor data
    bar cropped, the pixel size resolved (``override`` nm, else the file's metadata, else a sidecar JSON) and
    checked (physical range; non-square pixels are refused: refscope's models assume square pixels).

    Shared by every format reader (:mod:`refscope.daemon.images.readers`); ``frame``/``frames`` place an image of a
    stack or series file.
    """
    file_path = path
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

    per_axis = parsed.pixel_size_yx_nm
    if per_axis is not None and parsed.pixel_size_nm is None:
        raise _fail(file_path, f"has non-square pixels ({per_axis[0]:.6g} nm high x {per_axis[1]:.6g} nm wide); "
                               "refscope needs square pixels: resample the image to square pixels first")
    if override is not None:
        pixel, source = override, "argument"
    elif parsed.pixel_size_nm is not None:
        pixel, source = parsed.pixel_size_nm, parsed.vendor if parsed.vendor != "plain" else "description"
        problem = pixel_size_problem(pixel)
        if problem is not None:
            raise _fail(file_path, f"its {source} metadata gives a {problem}")
    else:
        pixel = _sidecar_pixel_size(file_path)
        source = "sidecar" if pixel is not None else None
    fov = (data.shape[0] * pixel, data.shape[1] * pixel) if pixel is not None else None
    extra = dict(parsed.extra)
    if pixel is None and parsed.calibration_note:
        extra.setdefault("calibration_note", parsed.calibration_note)
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
        extra=extra,
        pixel_size_yx_nm=per_axis or ((parsed.pixel_size_nm,) * 2 if parsed.pixel_size_nm is not None else None),
        modality=parsed.modality,
        frame=frame,
        frames=frames,
    )
    return LoadedImage(data=data, pixel_size_nm=pixel, path=file_path, metadata=metadata)

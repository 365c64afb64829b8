"""One entry for every image file refscope reads: the format is recognised from the first bytes, not the name.

======================  =========================================  ===========================================
format                  recognised by                              read by
======================  =========================================  ===========================================
TIFF (FEI/Thermo,       ``II*\\0`` / ``MM\\0*`` (BigTIFF too)        :mod:`refscope.daemon.images.tiff_read` (tifffile)
Zeiss, OME, ImageJ,
DM-saved, JEOL SightX)
PNG                     ``\\x89PNG``                                :mod:`refscope.daemon.images.tiff_read` (Pillow)
DM3 / DM4               big-endian version 3 / 4                   :mod:`.dm` (nionswift-io, extra ``vendor``)
Velox / Berkeley EMD    HDF5 signature                             :mod:`.emd` (h5py, extra ``vendor``)
TIA SER (+ EMI)         ``II`` + series ID 0x0197                  :mod:`.ser` (refscope's own)
MRC (+ FEI ext. hdr.)   ``MAP`` at byte 208                        :mod:`.mrc` (mrcfile, extra ``vendor``)
======================  =========================================  ===========================================

Refused with a reason naming the file: a TIA ``.emi`` (metadata only: its images are in the ``.ser``), a JEOL
Analysis Station ``.img`` (no permissive reader; export it as TIFF), anything else. A stack or series (a
multi-page TIFF, a 3-D DM image, a multi-frame Velox/SER, an MRC volume) is a list of frames in file order
(:func:`read_frames`); :func:`read_image` reads one of them (``page``).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ...errors import InputFileError
from ..common import LoadedImage, _check_pixel_size_arg, _fail
from ..tiff_read import _head, _tiff_or_png, finish_image, tiff_page_count
from ..tiff_read import read_image as _read_tiff_or_png
from .base import STACK_BYTES_FACTOR, VendorStack
from .dm import read_dm
from .emd import read_emd
from .mrc import looks_like_mrc, read_mrc
from .ser import SER_MAGIC, read_ser

__all__ = ["read_image", "read_frames", "sniff_format", "companion_reason", "DEFAULT_PATTERNS", "IMAGE_SUFFIXES",
           "FORMATS"]

DEFAULT_PATTERNS: tuple[str, ...] = ("*.tif", "*.tiff", "*.png", "*.dm3", "*.dm4", "*.emd", "*.ser", "*.mrc",
                                     "*.mrcs")
"""File-name patterns of the formats refscope reads (``ingest.patterns``' default)."""

IMAGE_SUFFIXES: tuple[str, ...] = tuple(p.removeprefix("*") for p in DEFAULT_PATTERNS)
"""File name endings of :data:`DEFAULT_PATTERNS` (lower case, with the dot)."""

FORMATS: tuple[str, ...] = ("TIFF", "PNG", "DM3/DM4", "Velox/Berkeley EMD", "TIA SER", "MRC")

_HEAD_BYTES = 256
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_DM_MAGIC = (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04")
_EMI_MAGIC = b"JK\x00\x02"


def sniff_format(path: str | os.PathLike[str]) -> str:
    """"tiff", "png", "dm", "emd", "ser" or "mrc" from the file's first bytes; InputFileError (naming the file and
    what it is) for a missing, empty or unreadable file, a TIA ``.emi``, a JEOL ``.img`` or an unknown format."""
    file_path = Path(path)
    size, head = _head(file_path, _HEAD_BYTES)
    kind = _tiff_or_png(file_path, size, head)
    if kind is not None:
        return kind
    if head[:4] in _DM_MAGIC and len(head) >= 16:
        return "dm"
    if head[:8] == _HDF5_MAGIC:
        return "emd"
    if head[:4] == SER_MAGIC:
        return "ser"
    if looks_like_mrc(head):
        return "mrc"
    if head[:4] == _EMI_MAGIC:
        raise _fail(file_path, "is a TIA .emi metadata file; its images are in the matching .ser "
                               f"({file_path.stem}_1.ser), which refscope reads")
    if head[4:8] == b"JED-":
        raise _fail(file_path, "is a JEOL Analysis Station image (.img); refscope has no reader for it: export it "
                               "as TIFF")
    raise _fail(file_path, "is not a TIFF or PNG image, nor another format refscope reads ("
                           + ", ".join(FORMATS[2:]) + ")")  # its content is never echoed (it may be anything)


def companion_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is read together with an image rather than on its own, or None: a TIA ``.emi`` (metadata of
    its ``.ser``) or a pixel-size sidecar JSON (``a.tif.json`` / ``a.json`` beside ``a.tif``)."""
    file_path = Path(path)
    suffix = file_path.suffix.lower()
    if suffix == ".emi":
        series = sorted(file_path.parent.glob(f"{file_path.stem}_*.ser"))
        names = ", ".join(p.name for p in series) or f"{file_path.stem}_1.ser"
        return f"is the TIA metadata file of {names}; it is read with the .ser, not on its own"
    if suffix == ".json":
        image = file_path.with_suffix("")
        if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
            return f"is the sidecar of {image.name}; it is read with that image, not on its own"
        for candidate in file_path.parent.glob(f"{file_path.stem}.*"):
            if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
                return f"is the sidecar of {candidate.name}; it is read with that image, not on its own"
    return None


def _vendor_stack(path: Path, kind: str, max_bytes: int | None, detector: str | None) -> VendorStack:
    if kind == "dm":
        return read_dm(path, max_bytes)
    if kind == "emd":
        return read_emd(path, max_bytes, detector)
    if kind == "ser":
        return read_ser(path, max_bytes)
    return read_mrc(path, max_bytes)


def _check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) != max_bytes or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")


def read_frames(path: str | os.PathLike[str], *, pixel_size_nm: float | None = None, crop_data_bar: bool = True,
                max_bytes: int | None = None, detector: str | None = None) -> list[LoadedImage]:
    """Every image of a file, in file order, each a :class:`LoadedImage` (one for a single-image file).

    Parameters are those of :func:`read_image`; ``max_bytes`` bounds each image (and the whole file to
    :data:`~.base.STACK_BYTES_FACTOR` times it). The images of a stack carry ``metadata.frame`` (0-based) and
    ``metadata.frames``.
    """
    override = _check_pixel_size_arg(pixel_size_nm)
    _check_max_bytes(max_bytes)
    file_path = Path(path)
    kind = sniff_format(file_path)
    if kind in ("tiff", "png"):
        count = tiff_page_count(file_path) if kind == "tiff" else 1
        if count <= 1:
            return [_read_tiff_or_png(file_path, pixel_size_nm=override, crop_data_bar=crop_data_bar,
                                      max_bytes=max_bytes)]
        if max_bytes is not None and count > STACK_BYTES_FACTOR:
            raise _fail(file_path, f"is a TIFF stack of {count} pages; refscope ingests at most {STACK_BYTES_FACTOR} "
                                   "frames from one file (refscope batch reads longer stacks)")
        images = [_read_tiff_or_png(file_path, pixel_size_nm=override, page=i, crop_data_bar=crop_data_bar,
                                    max_bytes=max_bytes) for i in range(count)]
        return [_placed(image, i, count) for i, image in enumerate(images)]
    stack = _vendor_stack(file_path, kind, max_bytes, detector)
    count = stack.data.shape[0]
    return [finish_image(file_path, stack.data[i], stack.parsed, override=override, crop_data_bar=crop_data_bar,
                         frame=i if count > 1 else None, frames=count) for i in range(count)]


def _placed(image: LoadedImage, index: int, count: int) -> LoadedImage:
    return replace(image, metadata=replace(image.metadata, frame=index, frames=count))


def read_image(path: str | os.PathLike[str], *, pixel_size_nm: float | None = None, page: int | None = None,
               crop_data_bar: bool = True, max_bytes: int | None = None, detector: str | None = None) -> LoadedImage:
    """Read one grayscale frame and its metadata from any format refscope reads (module table).

    Parameters
    ----------
    path : str or PathLike
        The image file; its format is recognised from its first bytes, not its name.
    pixel_size_nm : float, optional
        Pixel size in nm; overrides whatever the file or a sidecar JSON says.
    page : int, optional
        Image of a stack or series to read (0-based). Required when the file holds more than one.
    crop_data_bar : bool
        Remove the vendor data bar (FEI ``ResolutionY``, Zeiss framed info box) from the bottom. Default True.
    max_bytes : int, optional
        Largest decoded image accepted, bytes; checked from the header before any pixel is decoded.
    detector : str, optional
        Detector to read from a file holding several (Velox EMD: HAADF, DF2, DF4, BF...); None: HAADF.

    Returns
    -------
    LoadedImage
        ``data`` of shape (H, W) in the file's dtype, the pixel size in nm (None if unknown: never assumed) and
        metadata (vendor, per-axis pixel size, modality, HV/dwell/detector/stage/time where the file says).

    Raises
    ------
    InputFileError
        The file cannot be used; the message starts with its path and says why (format not read, truncated,
        non-square pixels, RGB, spectra, several images without ``page``, a detector not in the file...).
        :class:`~refscope.daemon.errors.MissingReaderError` when the format's optional reader is not installed.
    ValueError
        ``pixel_size_nm`` or ``max_bytes`` is not a positive number.
    """
    file_path = Path(path)
    _check_pixel_size_arg(pixel_size_nm)
    _check_max_bytes(max_bytes)
    kind = sniff_format(file_path)
    if kind in ("tiff", "png"):
        return _read_tiff_or_png(file_path, pixel_size_nm=pixel_size_nm, page=page, crop_data_bar=crop_data_bar,
                                 max_bytes=max_bytes)
    frames = read_frames(file_path, pixel_size_nm=pixel_size_nm, crop_data_bar=crop_data_bar, max_bytes=max_bytes,
                         detector=detector)
    if page is None:
        if len(frames) > 1:
            raise _fail(file_path, f"is a stack of {len(frames)} images; pass page=0..{len(frames) - 1} to choose one")
        return frames[0]
    if isinstance(page, bool) or not isinstance(page, int) or not 0 <= page < len(frames):
        raise InputFileError(f"{file_path}: has {len(frames)} image(s); page={page!r} does not exist "
                             f"(use 0..{len(frames) - 1})")
    return frames[page]

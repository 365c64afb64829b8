"""The image room: read SEM/STEM frames with their pixel size, and write calibrated TIFFs that Fiji understands.

Every room that touches an image file goes through here: the ingest sources and the offline commands read, the
publisher and the offline commands write, the state room records what a model was fitted on. So it sits under
them all, importing only the daemon's foundation (errors, frames, atomic writes).

Reading
-------
:func:`read_image` (one frame) and :func:`read_frames` (every frame of a stack or series) return the grayscale
pixels in their original dtype, the pixel size in nm and what the file says about the acquisition. They read
TIFF, PNG, DM3/DM4, Velox and Berkeley EMD, TIA SER and MRC (:mod:`refscope.daemon.images.readers`, where the
format readers live; re-exported here). Sources of the pixel size, in order of precedence:

1. the ``pixel_size_nm`` argument (overrides everything);
2. the file's own metadata: FEI/Thermo Fisher (``FEI_HELIOS``/``FEI_SFEG`` tag), Zeiss (``CZ_SEM`` tag),
   OME-XML (``PhysicalSizeX``), ImageJ (resolution tags + ``unit``), a TIFF saved by DigitalMicrograph (its
   private scale/unit tags), JEOL SightX (XML: pixels per metre / magnification), a tifffile JSON description
   carrying ``pixel_size`` and ``unit``; the calibration of a DM, EMD, SER or MRC file. An empty or unknown unit
   gives no pixel size (never 1 nm); unequal pixel sizes per axis are refused;
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

The implementation lives in small modules, re-exported here (import from this module):
:mod:`refscope.daemon.images.common` (result types, limits, units), :mod:`refscope.daemon.images.vendors` (vendor metadata, sidecars, data-bar
detection), :mod:`refscope.daemon.images.tiff_read` (validation and reading into arrays) and :mod:`refscope.daemon.images.tiff_write` (the writer).
"""
from __future__ import annotations

from .readers import read_frames, read_image
from .common import MAX_SIDE_PX, ImageMetadata, LoadedImage, Vendor, acquisition_metadata
from .tiff_write import output_pixels, write_tiff

__all__ = [
    "ImageMetadata",
    "LoadedImage",
    "read_image",
    "read_frames",
    "write_tiff",
    "output_pixels",
    "acquisition_metadata",
    "MAX_SIDE_PX",
    "Vendor",
]

"""The file readers of the ingest room: every format SEM and STEM software writes, one entry point.

:func:`read_image` (one frame) and :func:`read_frames` (every frame of a stack or series, in order) recognise the
format from the file's first bytes and return :class:`~refscope.daemon.images.common.LoadedImage` objects: pixels
in the stored dtype, the pixel size in nm (None when the file does not say: never assumed), the per-axis pixel
size, and the vendor metadata (HV, dwell, detector, stage, time, modality). One module per format family:
:mod:`.dm` (DM3/DM4), :mod:`.emd` (Velox and Berkeley EMD), :mod:`.ser` (TIA SER/EMI), :mod:`.mrc` (MRC);
TIFF and PNG (FEI/Thermo, Zeiss, OME, ImageJ, DigitalMicrograph-saved, JEOL SightX) stay in
:mod:`refscope.daemon.images.tiff_read`. :mod:`.dispatch` chooses among them. The DM, EMD and MRC readers need the
optional extra ``vendor`` (``pip install 'refscope[vendor]'``); without it those files are refused with a
:class:`~refscope.daemon.errors.MissingReaderError` saying so.

Imports only the image room's own modules (:mod:`refscope.daemon.images.tiff_read` and friends, :mod:`refscope.daemon.errors`).
"""
from .base import STACK_BYTES_FACTOR, VENDOR_EXTRA, VendorStack
from .dispatch import (DEFAULT_PATTERNS, FORMATS, IMAGE_SUFFIXES, companion_reason, read_frames, read_image,
                       sniff_format)
from .emd import DEFAULT_DETECTOR
from .ser import emi_companion

__all__ = ["read_image", "read_frames", "sniff_format", "companion_reason", "DEFAULT_PATTERNS", "IMAGE_SUFFIXES", "DEFAULT_DETECTOR", "FORMATS",
           "STACK_BYTES_FACTOR", "VENDOR_EXTRA", "VendorStack", "emi_companion"]

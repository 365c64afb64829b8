"""Exceptions raised by the pure image-science core.

Every error names what is wrong and, where it helps, what to do instead. They subclass
``ValueError`` so that callers that only know the standard library still catch them.
"""
from __future__ import annotations

__all__ = ["RefscopeModelError", "ImageError", "RegistrationError", "LibraryError"]


class RefscopeModelError(ValueError):
    """Base class for errors of :mod:`refscope.models`."""


class ImageError(RefscopeModelError):
    """An input array is not a usable grayscale image (wrong rank, RGB, constant, too small, NaN...)."""


class RegistrationError(RefscopeModelError):
    """An HR reference could not be placed inside the LR frame (no overlap, mismatched scale, poor match)."""


class LibraryError(RefscopeModelError):
    """A paired patch library cannot be built or used (too few textured patches, wrong patch size...)."""

"""The domain a model was fitted in (pixel size, pixel type, detector), and how far a frame lies outside it.

A paired library learned on 16-bit FEI frames at 26.98 nm/px has learned that microscope's contrast, noise and
sampling; applied to an 8-bit Zeiss frame at 11.65 nm/px it returned 199-536 for input 0-254 with a grid texture,
silently (issue 15). The fit records where its LR frame came from; ``enhance`` (and anything else that serves a
saved model) compares each frame with it and says what differs -- a pixel size more than
:data:`PIXEL_SIZE_TOLERANCE` away, another pixel type (bit depth), another detector, another kind of
acquisition (a STEM frame served by a model learned on SEM frames, or the reverse: the modality the reader layer
reads from the file's metadata -- imaging mode, detector, format) -- as a warning, or as a refusal with
``--strict``.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputFileError
from ..images.common import LoadedImage

__all__ = ["PIXEL_SIZE_TOLERANCE", "ModelDomain", "DomainWatch", "check_domain"]

PIXEL_SIZE_TOLERANCE = 0.2
"""Relative pixel-size difference beyond which a frame is outside the model's domain (0.2 = 20 %)."""


@dataclass(frozen=True)
class ModelDomain:
    """Where a model's training LR frame came from (any field None when unknown).

    Attributes:
        pixel_size_nm: LR pixel size of the training frame, nm.
        dtype: its stored pixel type (e.g. ``"uint16"``): the bit depth.
        detector: detector name from the vendor metadata (e.g. ``"ETD"``).
        vendor: metadata flavour (``"fei"``, ``"zeiss"``...).
        modality: ``"SEM"``, ``"STEM"`` or ``"TEM"`` as the file's metadata says (imaging mode, scanning
            detector, format: :attr:`~refscope.daemon.images.common.ImageMetadata.modality`).
    """

    pixel_size_nm: float | None = None
    dtype: str | None = None
    detector: str | None = None
    vendor: str | None = None
    modality: str | None = None

    @classmethod
    def of(cls, image: LoadedImage) -> ModelDomain:
        """The domain of ``image`` (its stored pixel type, whatever ``image.data`` was converted to)."""
        return cls(pixel_size_nm=image.pixel_size_nm, dtype=image.pixel_type, detector=image.metadata.detector,
                   vendor=image.metadata.vendor, modality=image.metadata.modality)

    @classmethod
    def of_frame(cls, frame: Any) -> ModelDomain:
        """The domain of a daemon :class:`~refscope.daemon.frames.Frame` (its pixels arrive in the stored type; the
        detector, vendor and modality come from the reader's metadata when the source carried them)."""
        meta = frame.metadata

        def text(key: str) -> str | None:
            value = meta.get(key)
            return str(value) if value else None

        return cls(pixel_size_nm=frame.pixel_size_nm, dtype=frame.data.dtype.name, detector=text("detector"),
                   vendor=text("vendor"), modality=text("modality"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelDomain | None:
        """The domain stored by :meth:`to_dict`; None for a model saved before domains were recorded."""
        if not isinstance(data, Mapping):
            return None
        known = {k: data.get(k) for k in ("pixel_size_nm", "dtype", "detector", "vendor", "modality")}
        return cls(**known)

    def differences(self, other: ModelDomain) -> list[str]:
        """What differs between a frame's domain ``other`` and this (the model's) one, one phrase each."""
        return list(self.differing(other).values())

    def differing(self, other: ModelDomain) -> dict[str, str]:
        """What differs, by kind (``"pixel_size"``, ``"dtype"``, ``"detector"``, ``"modality"``) -> phrase."""
        found = {}
        if self.pixel_size_nm and other.pixel_size_nm:
            ratio = other.pixel_size_nm / self.pixel_size_nm
            if abs(ratio - 1.0) > PIXEL_SIZE_TOLERANCE:
                found["pixel_size"] = (f"pixel size {other.pixel_size_nm:.4g} nm, the model's "
                                       f"{self.pixel_size_nm:.4g} nm (x{ratio:.2f})")
        if self.dtype and other.dtype and self.dtype != other.dtype:
            found["dtype"] = f"pixel type {other.dtype}, the model's {self.dtype} (another bit depth)"
        if self.detector and other.detector and self.detector.strip().lower() != other.detector.strip().lower():
            found["detector"] = f"detector {other.detector}, the model's {self.detector}"
        if self.modality and other.modality and self.modality != other.modality:
            found["modality"] = f"a {other.modality} frame, the model learned on {self.modality} frames"
        return found


def check_domain(source: Any, image: LoadedImage, domain: ModelDomain | None, *, strict: bool = False) -> list[str]:
    """The offline commands' check (``enhance``, ``batch``): a frame outside ``domain`` gets one warning line on
    stderr naming ``source`` and what differs, or with ``strict`` an :class:`~refscope.daemon.errors.InputFileError`
    (exit 2). Returns what differs (empty when ``domain`` is None or the frame is inside it)."""
    if domain is None:
        return []
    differs = domain.differences(ModelDomain.of(image))
    if differs:
        message = f"{source}: outside the model's domain: {'; '.join(differs)}"
        if strict:
            raise InputFileError(message + " (--strict)")
        print(f"warning: {message}", file=sys.stderr)
    return differs


class DomainWatch:
    """The live daemon's domain check: every served frame is compared with the serving model's domain; a frame
    outside it is served all the same (the daemon never stops for it), counted, and logged -- once per change of
    what differs, not once per frame of a stream that stays outside. Thread-safe.

    ``status()`` is the ``domain`` section of the daemon's status: the model's domain (None when unknown: bicubic,
    or a model saved before domains were recorded), ``frames_outside`` (frames served outside it since start) and
    ``last`` (the latest such frame and what differed, or None).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._lock = threading.Lock()
        self._domain: ModelDomain | None = None
        self._outside = 0
        self._last: str | None = None
        self._logged: tuple[tuple[str, str | None], ...] = ()
        self._log = logger if logger is not None else logging.getLogger("refscope.daemon")

    def set_model(self, domain: ModelDomain | None) -> None:
        """The serving model's domain (None: unknown, nothing is checked)."""
        with self._lock:
            self._domain = domain
            self._logged = ()

    def check(self, frame: Any) -> list[str]:
        """What differs between ``frame`` (a :class:`~refscope.daemon.frames.Frame`) and the model's domain."""
        with self._lock:
            domain = self._domain
        if domain is None:
            return []
        seen = ModelDomain.of_frame(frame)
        differing = domain.differing(seen)
        if not differing:
            return []
        differs = list(differing.values())
        message = f"{frame.source}: outside the serving model's domain: {'; '.join(differs)} (served all the same)"
        # what differs (and the frame's detector, type or modality), not the pixel size's exact value, decides
        # whether this is news: one line per change, not one per frame of a stream that stays outside
        kinds = tuple((kind, None if kind == "pixel_size" else str(getattr(seen, kind))) for kind in differing)
        with self._lock:
            self._outside += 1
            self._last = message
            news = kinds != self._logged
            self._logged = kinds
        if news:
            self._log.warning("%s", message)
        return differs

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"model": self._domain.to_dict() if self._domain is not None else None,
                    "frames_outside": self._outside, "last": self._last}

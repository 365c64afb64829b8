"""Which frames are HR references, and which recent LR frame each reference was taken in.

Roles (:func:`classify`, and :class:`RoleClassifier` which keeps the LR stream's pixel size between calls),
first rule that applies wins:

1. an explicit role on the frame (``"lr"`` or ``"hr"``, set by the sender or the folder source);
2. the file-name rule of the ingest configuration (:meth:`IngestConfig.role_for` on the frame's source name:
   ``hr_filename_pattern`` checked first, then ``lr_filename_pattern``);
3. the pixel size: a frame whose pixels are finer than the LR stream's by more than :data:`HR_PIXEL_RATIO`
   (1.2x, i.e. ``lr_pixel_size_nm / frame.pixel_size_nm > 1.2``) is ``"hr"``, any other frame ``"lr"``. While
   the LR stream's pixel size is still unknown, the frame is ``"lr"`` and defines it; a frame without a pixel
   size is ``"lr"`` (it cannot be told apart, and it cannot be paired without one anyway).

So if the very first frame of a session is an HR reference without an explicit role or a matching file name, it
is taken for a live frame; give references a role or a file-name pattern when that can happen.

Zoom series (:func:`decide_role`, :meth:`RoleClassifier.decide`, used by the daemon): a frame that rule 3 alone
calls a reference is, with ``ingest.serve_finer_frames`` (default), *both* the reference for the coarser field
that contains it and a live frame -- the operator zoomed in and is looking at it -- and the live stream moves to
its magnification, so that the next, finer frame is judged against it (1200x -> 5000x -> 12000x). Frames marked
by the sender or the file-name rule keep exactly one role. Each decision carries its reason.

Pairing (:func:`pair_reference`): the :class:`PairingHooks` object chooses which recent LR frames to try for an
HR reference (by default those whose field contains the HR field by stage position and field of view, newest
first); each candidate is registered with :func:`refscope.models.pipeline.register_reference` at the factor
``LR pixel size / HR pixel size`` and cut with :func:`~refscope.models.pipeline.training_grids`; the first that
succeeds wins. All image science is in :mod:`refscope.models`; this module only chooses and reports.
"""
from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

import numpy as np

from refscope.models.errors import RefscopeModelError
from refscope.models.image_ops import as_gray_float
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.registration import PairGeometry, factor_scores

from ..config import IngestConfig
from ..errors import RefscopeError
from ..frames import Frame

__all__ = [
    "HR_PIXEL_RATIO",
    "MAX_REFERENCE_FACTOR",
    "PAIRING_REASONS",
    "PairingError",
    "PairResult",
    "PairingHooks",
    "RecentFrames",
    "RoleClassifier",
    "RoleDecision",
    "classify",
    "decide_role",
    "pair_reference",
]

HR_PIXEL_RATIO = 1.2
"""A frame is an HR reference when the LR stream's pixel size is more than this many times its own."""

PAIRING_REASONS: tuple[str, ...] = (
    "no_lr_frames", "no_candidates", "unusable_image", "unknown_pixel_size", "mismatched_scale",
    "factor_out_of_range", "factor_mismatch", "no_match",
)
"""Reason slugs of :class:`PairingError` (``reason`` attribute), for counting rejections."""

MAX_REFERENCE_FACTOR = 64.0
"""Largest accepted LR/HR pixel-size ratio: a reference finer than that covers too few LR pixels to learn from
(and learning at the output scale S would discard all but (S/factor)² of its pixels); larger ratios are
refused (``factor_out_of_range``) before any registration allocates for them."""
MIN_FIELD_LR_PX = 8
"""A reference's field must span at least this many LR px along each axis (the training grids' minimum)."""
FACTOR_MARGIN = 0.1
"""A reference matches better at another factor when its coarse NCC there beats the nominal one's by more than
this (:func:`refscope.models.registration.factor_scores`); measured on the six ``sem_pairs`` pairs: -0.21 or
less with the true pixel sizes, +0.21 or more with factors wrong by 2x either way."""

_NCC_RE = re.compile(r"best NCC ([-+]?\d+(?:\.\d+)?)")


class PairingError(RefscopeError):
    """An HR reference could not be paired with any recent LR frame.

    The message names the reference's source and says why; ``reason`` is one of :data:`PAIRING_REASONS`,
    ``best_ncc`` the highest registration NCC seen over the candidates (None when none was registered).
    """

    def __init__(self, message: str, *, reason: str, best_ncc: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.best_ncc = best_ncc


# ------------------------------------------------------------------------------------------------ roles


def classify(frame: Frame, *, ingest: IngestConfig, lr_pixel_size_nm: float | None) -> Literal["lr", "hr"]:
    """The role of ``frame``: ``"lr"`` (live frame) or ``"hr"`` (reference scan); rules in the module docstring.

    Args:
        frame: the frame received.
        ingest: the ingest configuration (its file-name patterns).
        lr_pixel_size_nm: the LR stream's pixel size in nm, or None while it is unknown.
    """
    if frame.role in ("lr", "hr"):
        return frame.role  # type: ignore[return-value]
    by_name = ingest.role_for(PurePath(frame.source).name)
    if by_name in ("lr", "hr"):
        return by_name  # type: ignore[return-value]
    if lr_pixel_size_nm is None or frame.pixel_size_nm is None:
        return "lr"
    return "hr" if float(lr_pixel_size_nm) / frame.pixel_size_nm > HR_PIXEL_RATIO else "lr"


@dataclass(frozen=True)
class RoleDecision:
    """What a received frame is, and why.

    Attributes:
        role: ``"lr"`` (a live frame), ``"hr"`` (a reference scan only) or ``"both"`` (a zoom series: a frame finer
            than the live stream -- the reference for the field that contains it -- that is also a live frame at
            its own magnification).
        reason: one line saying which rule decided.
    """

    role: Literal["lr", "hr", "both"]
    reason: str

    @property
    def reference(self) -> bool:
        """The frame goes to the learner as an HR reference."""
        return self.role in ("hr", "both")

    @property
    def live(self) -> bool:
        """The frame is enhanced and published as a live frame."""
        return self.role in ("lr", "both")


def decide_role(frame: Frame, *, ingest: IngestConfig, lr_pixel_size_nm: float | None,
                serve_finer: bool = True) -> RoleDecision:
    """:func:`classify` with its reason; with ``serve_finer`` a frame that is a reference *by its pixel size only*
    (no explicit role, no file-name rule) is ``"both"``: the operator zoomed in, so it is the reference for the
    coarser field and a live frame she is now looking at."""
    if frame.role in ("lr", "hr"):
        return RoleDecision(frame.role, f"role {frame.role!r} given by the sender")  # type: ignore[arg-type]
    by_name = ingest.role_for(PurePath(frame.source).name)
    if by_name in ("lr", "hr"):
        pattern = ingest.hr_filename_pattern if by_name == "hr" else ingest.lr_filename_pattern
        return RoleDecision(by_name, f"file name matches ingest.{by_name}_filename_pattern {pattern!r}")  # type: ignore[arg-type]
    if frame.pixel_size_nm is None:
        return RoleDecision("lr", "no pixel size: taken for a live frame")
    if lr_pixel_size_nm is None:
        return RoleDecision("lr", f"first frame with a pixel size: the live stream is at {frame.pixel_size_nm:.4g} nm/px")
    ratio = float(lr_pixel_size_nm) / frame.pixel_size_nm
    if ratio > HR_PIXEL_RATIO:
        if serve_finer:
            return RoleDecision("both", f"{ratio:.3g}x finer than the live stream ({lr_pixel_size_nm:.4g} nm/px): "
                                "the reference for the field that contains it, and a live frame at its own "
                                f"magnification ({frame.pixel_size_nm:.4g} nm/px)")
        return RoleDecision("hr", f"{ratio:.3g}x finer than the live stream ({lr_pixel_size_nm:.4g} nm/px)")
    if 1.0 / ratio > HR_PIXEL_RATIO:
        return RoleDecision("lr", f"{1.0 / ratio:.3g}x coarser than the live stream: the live stream moves to "
                            f"{frame.pixel_size_nm:.4g} nm/px")
    return RoleDecision("lr", f"at the live stream's magnification ({frame.pixel_size_nm:.4g} nm/px)")


class RoleClassifier:
    """:func:`classify` with memory: the LR stream's pixel size is that of the latest frame classified ``"lr"``
    that has a pixel size (so the first frame defines it, and a magnification change moves it). Thread-safe.

    Args:
        ingest: the ingest configuration.
        lr_pixel_size_nm: a known LR pixel size in nm to start from (e.g. ``ingest.pixel_size_nm``), or None.
    """

    def __init__(self, ingest: IngestConfig, *, lr_pixel_size_nm: float | None = None) -> None:
        self._ingest = ingest
        self._lock = threading.Lock()
        self._lr_pixel_size_nm = lr_pixel_size_nm

    @property
    def lr_pixel_size_nm(self) -> float | None:
        """The LR stream's pixel size in nm, None until a frame with a pixel size was classified ``"lr"``."""
        with self._lock:
            return self._lr_pixel_size_nm

    def __call__(self, frame: Frame) -> Literal["lr", "hr"]:
        """Classify ``frame`` and, when it is ``"lr"`` with a pixel size, make that the LR stream's pixel size."""
        with self._lock:
            role = classify(frame, ingest=self._ingest, lr_pixel_size_nm=self._lr_pixel_size_nm)
            if role == "lr" and frame.pixel_size_nm is not None:
                self._lr_pixel_size_nm = frame.pixel_size_nm
            return role

    def decide(self, frame: Frame, *, serve_finer: bool = True) -> RoleDecision:
        """:func:`decide_role` with memory: every live frame (``"lr"`` or ``"both"``) with a pixel size becomes the
        live stream's magnification, so the operator's current magnification is the one references are judged
        against (a zoom series 1200x -> 5000x -> 12000x: each finer frame is a reference and then the live
        stream)."""
        with self._lock:
            decision = decide_role(frame, ingest=self._ingest, lr_pixel_size_nm=self._lr_pixel_size_nm,
                                   serve_finer=serve_finer)
            if decision.live and frame.pixel_size_nm is not None:
                self._lr_pixel_size_nm = frame.pixel_size_nm
            return decision


# ------------------------------------------------------------------------------------------- recent LR


class RecentFrames:
    """Ring buffer of the ``maxlen`` most recent LR frames (the oldest falls out). Thread-safe.

    Frames are immutable, so keeping them costs only the references -- but the ring keeps their pixels alive, so
    it is also bounded in bytes: with ``max_bytes``, the oldest frames fall out while the pixels held exceed it
    (the newest frame always stays, so the ring holds at most ``max_bytes`` plus one frame).
    """

    def __init__(self, maxlen: int, max_bytes: int | None = None) -> None:
        if int(maxlen) != maxlen or maxlen < 1:
            raise ValueError(f"RecentFrames maxlen must be an integer >= 1, got {maxlen!r}")
        if max_bytes is not None and (int(max_bytes) != max_bytes or max_bytes < 1):
            raise ValueError(f"RecentFrames max_bytes must be an integer >= 1 or None, got {max_bytes!r}")
        self.maxlen = int(maxlen)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._frames: deque[Frame] = deque(maxlen=self.maxlen)
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, frame: Frame) -> None:
        """Append ``frame`` (an LR frame), dropping the oldest while more than ``maxlen`` frames or more than
        ``max_bytes`` of pixels are held."""
        with self._lock:
            if len(self._frames) == self.maxlen:
                self._bytes -= self._frames[0].data.nbytes
            self._frames.append(frame)
            self._bytes += frame.data.nbytes
            self._trim()

    def replace_source(self, frame: Frame) -> bool:
        """Put ``frame`` in place of the held frame with the same ``source`` (the fused version of a live frame:
        references are then paired with what is served); False, and nothing changes, when none is held."""
        with self._lock:
            for index, held in enumerate(self._frames):
                if held.source == frame.source:
                    self._bytes += frame.data.nbytes - held.data.nbytes
                    self._frames[index] = frame
                    self._trim()
                    return True
        return False

    def _trim(self) -> None:
        """Drop the oldest frames while more than ``max_bytes`` of pixels are held (lock held; one stays)."""
        while self.max_bytes is not None and self._bytes > self.max_bytes and len(self._frames) > 1:
            self._bytes -= self._frames.popleft().data.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of pixels held now."""
        with self._lock:
            return self._bytes

    def snapshot(self) -> list[Frame]:
        """The frames held now, oldest first (a copy)."""
        with self._lock:
            return list(self._frames)

    def clear(self) -> None:
        """Forget every frame."""
        with self._lock:
            self._frames.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


# ------------------------------------------------------------------------------------------------ hooks


class PairingHooks:
    """Site-specific choice of the LR frames an HR reference may have been taken in. Subclass to change it.

    Default rule (:meth:`candidates`): when the HR frame and an LR frame both carry ``stage_xy_m`` and
    ``field_of_view_nm``, the LR frame is a candidate only if its field contains the HR field, taking the stage
    position as the centre of the field and allowing ``tolerance`` of the LR field's size for stage error;
    LR frames without that information stay candidates after those known to contain it. An HR frame without
    it makes every recent LR frame a candidate. Within each group, newest (latest received) first. The test
    assumes the stage x/y axes are the image x/y axes up to sign (no scan rotation); override :meth:`contains`
    where that does not hold.

    Args:
        tolerance: slack of the containment test as a fraction of the LR field's extent along each axis.
    """

    def __init__(self, *, tolerance: float = 0.05) -> None:
        if not tolerance >= 0:
            raise ValueError(f"PairingHooks tolerance must be >= 0 (a fraction of the LR field), got {tolerance!r}")
        self.tolerance = float(tolerance)

    def contains(self, lr: Frame, hr: Frame) -> bool | None:
        """Whether ``lr``'s field contains ``hr``'s (stage positions in m, fields in nm), None when unknown."""
        if lr.stage_xy_m is None or lr.field_of_view_nm is None or hr.stage_xy_m is None or hr.field_of_view_nm is None:
            return None
        lr_fov_y, lr_fov_x = lr.field_of_view_nm
        hr_fov_y, hr_fov_x = hr.field_of_view_nm
        dx_nm = abs(hr.stage_xy_m[0] - lr.stage_xy_m[0]) * 1e9
        dy_nm = abs(hr.stage_xy_m[1] - lr.stage_xy_m[1]) * 1e9
        return (dx_nm + hr_fov_x / 2 <= lr_fov_x / 2 * (1 + 2 * self.tolerance)
                and dy_nm + hr_fov_y / 2 <= lr_fov_y / 2 * (1 + 2 * self.tolerance))

    def candidates(self, hr: Frame, recent_lr: Sequence[Frame]) -> list[Frame]:
        """LR frames to try for ``hr``, in the order to try them; ``recent_lr`` is oldest first."""
        newest_first = list(reversed(recent_lr))
        if hr.stage_xy_m is None or hr.field_of_view_nm is None:
            return newest_first
        verdicts = [(lr, self.contains(lr, hr)) for lr in newest_first]
        return [lr for lr, ok in verdicts if ok is True] + [lr for lr, ok in verdicts if ok is None]


# ---------------------------------------------------------------------------------------------- pairing


@dataclass(frozen=True, eq=False)
class PairResult:
    """An HR reference placed in an LR frame, cut into one training pair.

    Attributes:
        hr_source: the HR reference's ``Frame.source``.
        lr_source: the matching LR frame's ``Frame.source``.
        geometry: the registration (offset in LR px, factor in HR px per LR px, rotation in degrees, NCC score).
        box: the overlap in the LR frame, ``((y0, y1), (x0, x1))`` half-open, LR px.
        lr_region: (h, w) float64 LR pixels of the overlap, in the LR frame's units.
        hr_grid: (S·h, S·w) float64 HR reference resampled onto the S-times finer grid of the overlap.
        factor: nominal LR pixel size / HR pixel size used for the registration.
    """

    hr_source: str
    lr_source: str
    geometry: PairGeometry
    box: tuple[tuple[int, int], tuple[int, int]]
    lr_region: np.ndarray
    hr_grid: np.ndarray
    factor: float


def _ncc_of(exc: Exception) -> float | None:
    match = _NCC_RE.search(str(exc))
    return float(match.group(1)) if match else None


def _factor_mismatch(lr: np.ndarray, hr: np.ndarray, factor: float, config: FitConfig) -> str | None:
    """Why the pixel sizes' ``factor`` is wrong (the reference matches clearly better at another factor), or None."""
    scores = factor_scores(lr, hr, factor=factor, max_rotation_deg=config.max_rotation_deg)
    nominal = scores.pop(1.0)
    ratio, best = max(((r, v) for r, v in scores.items() if np.isfinite(v)), key=lambda rv: rv[1],
                      default=(None, float("nan")))
    if ratio is None or not (best > (nominal if np.isfinite(nominal) else -1.0) + FACTOR_MARGIN):
        return None
    return (f"it matches far better {factor * ratio:.3g}x finer (NCC {best:.2f}) than at the {factor:.3g}x its pixel "
            f"sizes say (NCC {nominal:.2f}); one of the pixel sizes is wrong, so it would be learned at the wrong scale")


def pair_reference(hr: Frame, recent_lr: Sequence[Frame], *, config: FitConfig,
                   hooks: PairingHooks | None = None) -> PairResult:
    """Find the recent LR frame that contains the HR reference ``hr`` and cut the training pair.

    Args:
        hr: the HR reference frame (needs a pixel size).
        recent_lr: recent LR frames, oldest first (e.g. :meth:`RecentFrames.snapshot`).
        config: the fit configuration (output scale S, rotation search range).
        hooks: chooses and orders the candidates; default :class:`PairingHooks`.

    Returns the :class:`PairResult` of the first candidate that registers (NCC in ``geometry.score``) and
    overlaps enough. Raises :class:`PairingError` naming ``hr.source`` and the reason otherwise.
    """
    hooks = hooks if hooks is not None else PairingHooks()
    if not recent_lr:
        raise PairingError(f"HR reference {hr.source}: no LR frame received yet to pair it with", reason="no_lr_frames")
    if hr.pixel_size_nm is None:
        raise PairingError(f"HR reference {hr.source}: pixel size unknown, so its scale relative to the LR frames "
                           "cannot be known; set ingest.pixel_size_nm or send pixel sizes", reason="unknown_pixel_size")
    candidates = hooks.candidates(hr, recent_lr)
    if not candidates:
        raise PairingError(f"HR reference {hr.source}: none of the {len(recent_lr)} recent LR frames contains its field "
                           "(by stage position and field of view)", reason="no_candidates")
    try:
        hr_pixels = as_gray_float(hr.data, name=f"HR reference {hr.source}")
    except RefscopeModelError as exc:
        raise PairingError(f"HR reference {hr.source}: unusable image ({exc})", reason="unusable_image") from exc

    scale_problems: list[tuple[str, str]] = []
    factor_problems: list[str] = []
    best_ncc: float | None = None
    registered = 0
    last_problem = ""
    for lr in candidates:
        if lr.pixel_size_nm is None:
            scale_problems.append(("unknown_pixel_size", f"LR frame {lr.source} has no pixel size"))
            continue
        factor = lr.pixel_size_nm / hr.pixel_size_nm
        if factor < config.scale * 0.999:
            scale_problems.append(("mismatched_scale", f"mismatched scale: {hr.source} is only {factor:.3g}x finer than "
                                   f"LR frame {lr.source}, less than the output scale {config.scale}"))
            continue
        field = min(hr.shape) / factor
        if factor > MAX_REFERENCE_FACTOR or field < MIN_FIELD_LR_PX:
            scale_problems.append(("factor_out_of_range", f"{hr.source} is {factor:.3g}x finer than LR frame "
                                   f"{lr.source} (its field spans {field:.3g} LR px); references may be at most "
                                   f"{MAX_REFERENCE_FACTOR:g}x finer and span at least {MIN_FIELD_LR_PX} LR px; "
                                   "check the pixel sizes"))
            continue
        registered += 1
        try:
            lr_pixels = as_gray_float(lr.data, name=f"LR frame {lr.source}")
            geometry = register_reference(lr_pixels, hr_pixels, factor=factor, config=config)
        except RefscopeModelError as exc:
            ncc = _ncc_of(exc)
            if ncc is not None:
                best_ncc = ncc if best_ncc is None else max(best_ncc, ncc)
            last_problem = f"{lr.source}: {exc}"
            continue
        if np.isfinite(geometry.score):
            best_ncc = geometry.score if best_ncc is None else max(best_ncc, geometry.score)
        mismatch = _factor_mismatch(lr_pixels, hr_pixels, factor, config)
        if mismatch is not None:
            factor_problems.append(f"in LR frame {lr.source} {mismatch}")
            continue
        try:
            box, hr_grid = training_grids(lr_pixels, hr_pixels, geometry, scale=config.scale)
        except RefscopeModelError as exc:
            last_problem = f"{lr.source}: {exc}"
            continue
        (y0, y1), (x0, x1) = box
        return PairResult(hr_source=hr.source, lr_source=lr.source, geometry=geometry, box=box,
                          lr_region=lr_pixels[y0:y1, x0:x1], hr_grid=hr_grid, factor=factor)

    if factor_problems:
        raise PairingError(f"HR reference {hr.source} is not paired: {factor_problems[0]}", reason="factor_mismatch",
                           best_ncc=best_ncc)
    if registered == 0:
        reason, detail = scale_problems[0]
        raise PairingError(f"HR reference {hr.source} cannot be paired with any of the {len(candidates)} candidate LR "
                           f"frames: {detail}", reason=reason)
    detail = f" (best NCC {best_ncc:.2f})" if best_ncc is not None else f" ({last_problem})"
    skipped = f"; {len(scale_problems)} more skipped for their pixel size" if scale_problems else ""
    raise PairingError(f"HR reference {hr.source} matches none of the {registered} recent LR frames{detail}{skipped}",
                       reason="no_match", best_ncc=best_ncc)

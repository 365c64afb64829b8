"""One memory budget for everything the daemon (and its trainer) holds, and the sizes derived from it.

``serve.max_memory_mb`` (default :data:`DEFAULT_MAX_MEMORY_MB`) is split into fixed shares, each stated here and
in the README:

========================  =================================================================================
share                     what it covers
========================  =================================================================================
runtime (``RUNTIME_MB``)  the Python process itself: NumPy, SciPy, PyTorch (ONNX export), ONNX Runtime, ZMQ,
                          the catalogue; the daemon never loads PyTorch (:mod:`.export`)
trainer (``TRAINER``)     the background training process (its own PyTorch, the session's pairs, one batch);
                          only when ``trainer.enabled``
learner (``LEARNER``)     registration and library fitting of one reference (candidates are capped to fit),
                          then the short-lived process that exports the promoted model to ONNX (PyTorch
                          lives only there, :mod:`.export`), which starts after the learner's arrays are freed
fusion (``fusion_mb``)    the fusion window's frames (pixels of the newest, spline coefficients of the older
                          ones, :class:`~.fusion_window.FusionWindow`); ``fusion.max_memory_mb`` when fusion
                          may run (``fusion.enabled`` or ``fusion.auto_static_stage``), else nothing; the
                          window's capacity is derived from it (:meth:`MemoryBudget.fusion_frames`)
serving                   the rest: :attr:`MemoryBudget.workspace_share` of it for the model's tiled inference
                          (the tile side is derived from it per model and scale), the remainder for the frame
                          in flight (its enhanced output, confidence map and stream copy) and the enhanced
                          frames waiting to be written
========================  =================================================================================

A frame whose output cannot fit the frame share at the current scale is refused with a reason that names the
budget (``too_large``) before it enters any buffer; an input whose decoded pixels exceed
:attr:`MemoryBudget.input_bytes` is refused from its header, before it is decoded; the learner's recent LR
frames are bounded in bytes (:attr:`MemoryBudget.recent_frames_bytes`). Pure arithmetic: no measurement, no globals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from refscope.models.safe_blend import blend_bytes
from refscope.models.tiling import tile_for_budget

__all__ = ["DEFAULT_MAX_MEMORY_MB", "MIN_SERVING_MB", "FramePlan", "MemoryBudget", "fusion_capacity"]

MB = 1 << 20

DEFAULT_MAX_MEMORY_MB = 1500
"""Default ``serve.max_memory_mb``: daemon and trainer together, MB (MiB)."""

MIN_SERVING_MB = 128
"""Smallest serving share (MB) a budget may leave; a smaller ``serve.max_memory_mb`` is a configuration error."""


FUSION_BYTES_PER_PX = 4
"""What one frame held by the fusion window costs per pixel: one float32 array (the newest frame's pixels, or an
older frame's spline coefficients, which replace its pixels)."""


def fusion_capacity(max_bytes: int, shape: tuple[int, int], window: int) -> int:
    """Frames of ``shape`` (H, W) a fusion window of ``window`` frames holds within ``max_bytes``:
    ``min(window, max_bytes // (4·H·W))``, or 0 when fewer than two fit (fusing needs two; each frame is then
    served alone and nothing is held)."""
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1 or int(window) < 1 or max_bytes < 0:
        raise ValueError(f"fusion capacity needs a positive shape and window and max_bytes >= 0, got {shape!r}, "
                         f"{window!r}, {max_bytes!r}")
    fit = min(int(window), int(max_bytes) // (FUSION_BYTES_PER_PX * height * width))
    return fit if fit >= 2 else 0


@dataclass(frozen=True)
class FramePlan:
    """What serving one frame costs under a budget.

    Attributes:
        in_flight_bytes: bytes held while the frame is served and published (output, confidence, stream copy).
        queued_bytes: bytes one enhanced frame holds while it waits to be written.
        output_queue: enhanced frames of this size that may wait for the writer (>= 1 when ``fits``).
        fits: the frame can be served inside the budget.
        reason: why not (None when it fits).
    """

    in_flight_bytes: int
    queued_bytes: int
    output_queue: int
    fits: bool
    reason: str | None


@dataclass(frozen=True)
class MemoryBudget:
    """The memory budget and its shares (see the module docstring).

    Attributes:
        total_mb: the whole budget, MB (``serve.max_memory_mb``).
        trainer: a background trainer process shares the budget (its share is reserved).
        learner: references are learned in this process (its share is reserved).
        fusion_mb: the fusion window's share, MB (>= 0; 0 when fusion is off).
    """

    total_mb: int = DEFAULT_MAX_MEMORY_MB
    trainer: bool = True
    learner: bool = True
    fusion_mb: float = 0.0

    RUNTIME_MB = 320
    """Resident size of the process before any frame (Python, NumPy/SciPy, ONNX Runtime, ZMQ), MB; measured
    115-220 MB idle, 430-480 MB serving 1536x1024 frames at x4 (which includes the serving share's model workspace
    and newest output)."""
    TRAINER_MB = 480
    """Reserved for the trainer process (PyTorch ~250 MB, the session's pairs, one batch), MB; measured 469 MB
    peak while training on the 2020-02-13 zoom session's pairs at x4."""
    LEARNER_MB = 350
    """Reserved for learning one reference (registration, at most K·L float32 candidate patches, k-means), MB;
    measured 1360 MB above the base for a 1536x1024 HR at x4.17 before the candidates were capped and gathered
    as float32, 300 MB after."""
    workspace_share = 0.3
    """Part of the serving share given to the model's tiled inference; the rest holds frames."""
    INPUT_SHARE = 4
    """One decoded input frame may take at most 1/``INPUT_SHARE`` of the frame share (:attr:`input_bytes`)."""
    RECENT_FRAMES_MB = 96
    """The learner's ring of recent LR frames (the frames a reference may be paired with) holds at most this
    many MB of pixels (the oldest fall out first); part of the runtime share, whose measured idle size leaves
    room for it."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fusion_mb) and self.fusion_mb >= 0):
            raise ValueError(f"the fusion share must be a number of MB >= 0, got {self.fusion_mb!r}")
        if int(self.total_mb) != self.total_mb or self.serving_bytes < MIN_SERVING_MB * MB:
            need = math.ceil(self.reserved_bytes / MB) + MIN_SERVING_MB
            fusion = f" and fusion.max_memory_mb = {self.fusion_mb:g}" if self.fusion_mb else ""
            raise ValueError(f"serve.max_memory_mb = {self.total_mb!r} leaves less than {MIN_SERVING_MB} MB for "
                             f"serving; need an integer >= {need} with "
                             f"{'the trainer' if self.trainer else 'no trainer'}{fusion}")

    @classmethod
    def offline(cls, total_mb: int = DEFAULT_MAX_MEMORY_MB) -> MemoryBudget:
        """The budget of a one-shot command (``enhance``, ``batch``): no trainer, no learner."""
        return cls(total_mb=total_mb, trainer=False, learner=False)

    # ------------------------------------------------------------------------------------------ shares
    @property
    def total_bytes(self) -> int:
        return int(self.total_mb) * MB

    @property
    def reserved_bytes(self) -> int:
        """Runtime + trainer + learner + fusion shares, bytes."""
        return (self.RUNTIME_MB + (self.TRAINER_MB if self.trainer else 0)
                + (self.LEARNER_MB if self.learner else 0)) * MB + self.fusion_bytes

    @property
    def fusion_bytes(self) -> int:
        """The fusion window's frames, bytes (``fusion_mb``)."""
        return int(self.fusion_mb * MB)

    @property
    def serving_bytes(self) -> int:
        """What serving may hold: the budget less the reserved shares, bytes."""
        return self.total_bytes - self.reserved_bytes

    @property
    def workspace_bytes(self) -> int:
        """The model's tiled inference (window, its output, the model's workspace), bytes."""
        return int(self.serving_bytes * self.workspace_share)

    @property
    def frames_bytes(self) -> int:
        """The frame in flight and the frames waiting to be written, bytes."""
        return self.serving_bytes - self.workspace_bytes

    @property
    def input_bytes(self) -> int:
        """Largest decoded input frame (LR frame or HR reference) ingest accepts, bytes; checked from the file's
        header or the message's shape before any pixel is decoded."""
        return self.frames_bytes // self.INPUT_SHARE

    @property
    def recent_frames_bytes(self) -> int:
        """Pixels the learner's ring of recent LR frames may hold, bytes."""
        return self.RECENT_FRAMES_MB * MB

    # ------------------------------------------------------------------------------------------ derived sizes
    def fusion_frames(self, shape: tuple[int, int], *, window: int) -> int:
        """Frames of ``shape`` (H, W) the fusion window holds in its share (:func:`fusion_capacity` of
        :attr:`fusion_bytes`); 0 when fusion is off or fewer than two frames fit."""
        return fusion_capacity(self.fusion_bytes, shape, window)

    def tile(self, *, workspace_bytes_per_px: float, scale: int, halo: int, align: int = 1,
             max_tile: int = 4096) -> int:
        """Core size (input px) of the tiles a model of that workspace is run on at ``scale`` (see
        :func:`refscope.models.tiling.tile_for_budget`), at most ``max_tile`` (``serve.tile``)."""
        return tile_for_budget(self.workspace_bytes, workspace_bytes_per_px=workspace_bytes_per_px, scale=scale,
                               halo=halo, align=align, max_tile=max_tile)

    def plan_frame(self, shape: tuple[int, int], scale: int, *, confidence: bool = True, stream: bool = True,
                   write_confidence: bool = False, queue_limit: int = 64, safe_blend: bool = False) -> FramePlan:
        """Cost of serving an (H, W) LR frame at ``scale`` (float32 outputs of S²·H·W px).

        In flight: the enhanced frame (shared, not copied, by the writer's queue and the stream, which sends it
        zero-copy), the LR frame as float64, and the larger of its confidence map (``confidence``) and the
        temporaries of the blend toward the safe baseline (``safe_blend``, :func:`refscope.models.safe_blend.
        blend_bytes`): the blend runs inside the enhancement and frees them before the quality look makes the map.
        Each *further* frame waiting to be written holds its enhanced frame and, with ``write_confidence``, its
        map; as many wait as the frame share leaves room for, at least the one in flight and at most
        ``queue_limit`` (``publish.output_queue_limit``). ``stream`` is accepted for the caller's clarity; the
        stream costs no copy.
        """
        del stream  # zero-copy: the stream holds the enhanced frame itself
        height, width = (int(v) for v in shape)
        out = 4 * int(scale) ** 2 * height * width
        after = out if confidence else 0  # the map, made after the enhancement
        during = blend_bytes((height, width), int(scale)) if safe_blend else 0  # inside it, freed on return
        in_flight = out + 8 * height * width + max(after, during)
        queued = out * (1 + int(write_confidence))
        room = self.frames_bytes - in_flight
        if room < 0:
            need = math.ceil((self.reserved_bytes + in_flight / (1 - self.workspace_share)) / MB)
            reason = (f"{height}x{width} px at x{scale} needs {math.ceil(in_flight / MB)} MB for its output and "
                      f"confidence map, more than serve.max_memory_mb = {self.total_mb} leaves for frames "
                      f"({self.frames_bytes // MB} MB); raise it to at least {need} or lower the scale")
            return FramePlan(in_flight, queued, 0, False, reason)
        return FramePlan(in_flight, queued, int(max(1, min(int(queue_limit), 1 + room // queued))), True, None)

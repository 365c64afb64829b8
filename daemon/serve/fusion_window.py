"""The live frames of one field kept for multi-frame fusion, and the fused frame served in place of the newest.

:class:`FusionWindow` holds the most recent LR frames of the field being watched (newest first) and, for each,
its motion from the newest frame's coordinates (:class:`refscope.models.fusion.FrameMotion`). A new frame is
registered once, against the previous newest frame, and the stored motions are composed with that one, so the
cost per frame is one registration plus one warp and test per older frame (:func:`refscope.models.fusion.
fuse_frames`). The window restarts with the new frame -- that frame is then served alone -- when:

* fusion is off for it (``enabled`` false and, with ``auto_static_stage``, its stage position is unknown or moved);
* its shape or pixel size differs from the window's (another magnification or scan size);
* its stage position differs from the previous frame's by more than ``stage_tolerance_px`` LR pixels (a stage
  move: the window restarts *with this frame*, so no frame of the old field is fused into it);
* the quality monitor raised drift for the previous frame (a scene, contrast or focus change; ``drift=True``);
* it does not register to the previous frame (a scene change the monitor has not seen yet).

Frames acquired more than ``max_age_s`` before the newest are dropped from the window.

Per-frame work is done once and kept: the newest frame is held as its float32 pixels (the next frame is
registered against them); when the next frame arrives those pixels are replaced by their cubic spline
coefficients (:func:`refscope.models.fusion.spline_coefficients`, the same size), which every later warp of that
frame reads directly, so each call computes one prefilter and one registration however long the window.

Memory: every held frame is one float32 (H, W) array (pixels for the newest, spline coefficients for the
others), ``4·H·W`` bytes; the window holds ``capacity = min(window, max_bytes // (4·H·W))`` of them, so
:attr:`FusionWindow.nbytes` never exceeds ``max_bytes`` -- the fusion share of the daemon's memory budget
(:attr:`refscope.daemon.config.budget.MemoryBudget.fusion_bytes`, ``fusion.max_memory_mb``). A frame size for
which fewer than two frames fit is served alone and nothing is held.
Thread: the serve loop's only; :meth:`status` may be called from any thread.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from refscope.models.errors import RefscopeModelError
from refscope.models.fusion import (FrameMotion, FusionConfig as FusionModelConfig, fuse_frames, register_frame,
                                    spline_coefficients)

from ..config.budget import fusion_capacity

__all__ = ["FusedFrame", "FusionWindow"]


@dataclass(frozen=True, eq=False)
class FusedFrame:
    """What the serve loop enhances in place of a live frame.

    Attributes:
        image: (H, W) the fused frame (float32, the frame's units) -- or the frame's own pixels when served alone.
        count: (H, W) uint16 frames used per pixel, or None when served alone.
        frames: frames fused (1: served alone).
        reset: why the window restarted with this frame (``"stage_moved"``, ``"drift"``, ``"shape"``,
            ``"no_match"``, ``"off"``), or None.
        shift_yx: this frame's registered drift from the previous one (y, x), LR px, or None.
        seconds: time spent on registration and fusion, seconds.
    """

    image: np.ndarray
    count: np.ndarray | None
    frames: int
    reset: str | None
    shift_yx: tuple[float, float] | None
    seconds: float


@dataclass
class _Entry:
    """One held frame: its float32 pixels while it is the newest, then its spline coefficients (never both)."""

    data: np.ndarray | None  # float32 (H, W) pixels (the newest frame only)
    coef: np.ndarray | None  # float32 (H, W) spline coefficients (every older frame)
    t: float
    motion: FrameMotion  # newest frame's coordinates -> this frame's

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.data, self.coef) if a is not None)


class FusionWindow:
    """Recent live frames of one field (see the module docstring).

    Args:
        enabled: fuse every frame.
        auto_static_stage: fuse while the stage position is known and unchanged (when ``enabled`` is false).
        window: frames fused at most, the newest included (>= 1).
        max_age_s: frames older than this before the newest are dropped, seconds.
        stage_tolerance_px: stage moves larger than this (LR px) restart the window.
        max_bytes: most bytes the window's frames may hold (its share of the memory budget,
            :attr:`~refscope.daemon.config.budget.MemoryBudget.fusion_bytes`).
        model_config: registration and test settings (:class:`refscope.models.fusion.FusionConfig`).
    """

    def __init__(self, *, enabled: bool, auto_static_stage: bool = False, window: int = 4, max_age_s: float = 10.0,
                 stage_tolerance_px: float = 0.5, max_bytes: int = 64 << 20,
                 model_config: FusionModelConfig = FusionModelConfig()) -> None:
        if int(window) != window or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if not (max_age_s > 0 and stage_tolerance_px >= 0 and max_bytes >= 0):
            raise ValueError(f"max_age_s must be > 0 (got {max_age_s!r}), stage_tolerance_px >= 0 (got "
                             f"{stage_tolerance_px!r}) and max_bytes >= 0 (got {max_bytes!r})")
        self.enabled = bool(enabled)
        self.auto_static_stage = bool(auto_static_stage)
        self.window = int(window)
        self.max_age_s = float(max_age_s)
        self.stage_tolerance_px = float(stage_tolerance_px)
        self.max_bytes = int(max_bytes)
        self.model_config = model_config
        self._entries: deque[_Entry] = deque()
        self._key: tuple | None = None
        self._stage: tuple[float, float] | None = None
        self._lock = threading.Lock()
        self._stats = {"fused": 0, "alone": 0, "resets": {}, "last_frames": 0, "last_reset": None,
                       "last_shift_yx": None, "last_s": None}

    @classmethod
    def from_config(cls, section, max_bytes: int) -> "FusionWindow":
        """The window the daemon's ``[fusion]`` section describes (:class:`refscope.daemon.config.FusionConfig`),
        within ``max_bytes`` (the budget's fusion share)."""
        return cls(enabled=section.enabled, auto_static_stage=section.auto_static_stage, window=section.window,
                   max_age_s=section.max_age_s, stage_tolerance_px=section.stage_tolerance_px, max_bytes=max_bytes,
                   model_config=FusionModelConfig(merge=section.merge))

    @property
    def active(self) -> bool:
        """True when fusion may run (``enabled`` or ``auto_static_stage``)."""
        return self.enabled or self.auto_static_stage

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes the held frames take (pixels of the newest, spline coefficients of the others); <= ``max_bytes``."""
        return sum(e.nbytes for e in self._entries)

    def clear(self) -> None:
        """Forget every frame (the next one starts a new window)."""
        self._entries.clear()
        self._key = None

    def capacity(self, shape: tuple[int, int]) -> int:
        """Frames of ``shape`` (H, W) the window holds: ``min(window, max_bytes // (4·H·W))``; below 2, none (each
        frame is served alone) -- :func:`refscope.daemon.config.budget.fusion_capacity`."""
        return fusion_capacity(self.max_bytes, shape, self.window)

    def _stage_moved(self, stage: tuple[float, float] | None, pixel_size_nm: float | None) -> bool:
        if stage is None or self._stage is None:
            return False  # an unknown position shows no move (frames without metadata rely on registration)
        moved_m = math.hypot(stage[0] - self._stage[0], stage[1] - self._stage[1])
        if pixel_size_nm is None:
            return moved_m > 0.0
        return moved_m > self.stage_tolerance_px * pixel_size_nm * 1e-9

    def add(self, data: np.ndarray, *, t: float, stage_xy_m: tuple[float, float] | None = None,
            pixel_size_nm: float | None = None, drift: bool = False) -> FusedFrame:
        """Take the newest live frame ((H, W), any real dtype, acquired at unix time ``t``) and return what to serve.

        ``drift``: the quality monitor's drift flag before this frame (a raised flag restarts the window).
        """
        start = time.perf_counter()
        array = np.asarray(data)
        key = (array.shape, None if pixel_size_nm is None else round(float(pixel_size_nm), 9))
        moved = self._stage_moved(stage_xy_m, pixel_size_nm)
        self._stage = stage_xy_m
        reset = None
        if not (self.enabled or (self.auto_static_stage and stage_xy_m is not None and not moved)):
            reset = "off"
        elif self._key is not None and key != self._key:
            reset = "shape"
        elif moved:
            reset = "stage_moved"
        elif drift:
            reset = "drift"
        current = array.astype(np.float32)
        shift = None
        if reset is None and self._entries:
            try:
                step = register_frame(current, self._entries[0].data, config=self.model_config)
            except RefscopeModelError:
                reset = "no_match"
            else:
                shift = step.shift_yx(array.shape)
                for entry in self._entries:
                    entry.motion = step.then(entry.motion)
        if reset is not None:
            self._entries.clear()
        self._key = key
        capacity = self.capacity(array.shape)
        while self._entries and (len(self._entries) >= capacity or t - self._entries[-1].t > self.max_age_s):
            self._entries.pop()  # the oldest
        if self._entries and self._entries[0].coef is None:  # the previous newest is now an older frame
            previous = self._entries[0]
            previous.coef = spline_coefficients(previous.data, order=self.model_config.order)
            previous.data = None
        older = list(self._entries)
        if capacity:
            self._entries.appendleft(_Entry(current, None, float(t), FrameMotion.identity()))
        if not older:
            result = FusedFrame(array, None, 1, reset, shift, time.perf_counter() - start)
        else:
            fused = fuse_frames([current] + [e.coef for e in older],
                                motions=[FrameMotion.identity()] + [e.motion for e in older],
                                coefficients=[None] + [e.coef for e in older], config=self.model_config)
            result = FusedFrame(fused.image.astype(np.float32), fused.count, len(older) + 1, reset, shift,
                                time.perf_counter() - start)
        self._record(result)
        return result

    def _record(self, result: FusedFrame) -> None:
        with self._lock:
            self._stats["fused" if result.frames > 1 else "alone"] += 1
            if result.reset is not None and result.reset != "off":
                resets = self._stats["resets"]
                resets[result.reset] = resets.get(result.reset, 0) + 1
                self._stats["last_reset"] = result.reset
            self._stats["last_frames"] = result.frames
            self._stats["last_shift_yx"] = None if result.shift_yx is None else [round(v, 3) for v in result.shift_yx]
            self._stats["last_s"] = round(result.seconds, 4)

    def status(self) -> dict:
        """The ``fusion`` part of the daemon's status (any thread): ``enabled``, ``auto_static_stage``, ``window``,
        ``frames`` (fused into the last served frame), ``fused`` / ``alone`` (frames served fused / alone so far),
        ``resets`` (by reason), ``last_reset``, ``last_shift_yx`` (LR px), ``last_s`` (fusion time, seconds)."""
        with self._lock:
            stats = dict(self._stats)
            stats["resets"] = dict(stats["resets"])
        stats.update(enabled=self.enabled, auto_static_stage=self.auto_static_stage, window=self.window,
                     frames=stats.pop("last_frames"))
        return stats

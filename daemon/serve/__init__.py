"""The serving room: what it costs to serve a frame and how that is kept inside the memory budget.

Owns :class:`~refscope.daemon.serve.budget.MemoryBudget` (``serve.max_memory_mb`` split into the shares of the
runtime, the trainer, the learner, the serving workspace and the frames in flight) and the fusion window of the
live frames (:class:`~refscope.daemon.serve.fusion_window.FusionWindow`, ``[fusion]``) today; the serving engine,
the ONNX Runtime wrapper and the model slot move here with the daemon's restructuring (issue 14). Imports only
:mod:`refscope.models`.
"""
from .budget import DEFAULT_MAX_MEMORY_MB, FramePlan, MemoryBudget
from .fusion_window import FusedFrame, FusionWindow

__all__ = ["DEFAULT_MAX_MEMORY_MB", "FramePlan", "MemoryBudget", "FusedFrame", "FusionWindow"]

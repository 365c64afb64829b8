"""The serving room: how a frame is enhanced with the current model, fast and inside the memory budget.

:mod:`.engine` holds :class:`~refscope.daemon.serve.engine.ServingEngine` (enhance one LR frame with the current
best model, tiled inside the budget, models swapped atomically); :mod:`.served_model` the one served-model type
every path runs -- live, ``refscope enhance`` and ``refscope batch`` -- (what runs a window, its scale, its own halo
and alignment, workspace, normalisation and provenance); :mod:`.runtime` the ONNX Runtime wrapper
(provider choice, verified sessions, the model slot); :mod:`.champion` which learned model serves;
:mod:`.export` and :mod:`.child` the ONNX export in a helper process, :mod:`.onnx_cache` the cache of exports;
:mod:`.malloc` hands freed memory back to the system; :mod:`.fusion_window` the window of live frames fused
before enhancement (``[fusion]``). Imports the configuration room (the model and serve sections and the memory
budget), the state room and :mod:`refscope.models`.
"""
from .fusion_window import FusedFrame, FusionWindow
from .served_model import ServedModel

__all__ = ["FusedFrame", "FusionWindow", "ServedModel"]

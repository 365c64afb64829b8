"""refscope -- live super-resolution beside a scanning electron microscope, and its Python API.

The same science as the ``refscope`` command, for a notebook or a script (arrays and files in, arrays out)::

    import refscope

    lr = refscope.read_image("LR.tif")               # .data (H, W), .pixel_size_nm, .metadata (vendor, HV, stage...)
    model = refscope.fit(lr, ["HR.tif"], scale=2)    # registers, checks and learns the reference(s): a Model
    sr = model.enhance(lr)                           # (2H, 2W) float64, in the LR frame's intensity units
    model.save("state/")                             # what `refscope enhance state/ ...` serves
    report = refscope.evaluate("LR.tif", "HR.tif")   # 3x4 subimage protocol vs bicubic
    refscope.plot_evaluation(report, "eval.png")     # per-pair/per-subimage ΔPSNR/ΔSSIM and an image panel

Names are resolved on first use (:func:`__getattr__`), so ``import refscope.daemon.cli`` -- every command --
does not pay for the API's imports. The packages underneath: :mod:`refscope.models` (pure image science),
:mod:`refscope.daemon` (files, the live daemon, the commands), :mod:`refscope.tui` (the terminal UI);
:mod:`refscope.napari` is the napari plugin (extra ``napari``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["read_image", "fit", "enhance", "evaluate", "plot_evaluation", "load_model", "Model", "__version__"]

_API = {"read_image", "fit", "enhance", "evaluate", "plot_evaluation", "load_model", "Model"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import _api

        return getattr(_api, name)
    if name == "__version__":
        from refscope.daemon.state.provenance import refscope_version

        return refscope_version()
    raise AttributeError(f"module 'refscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

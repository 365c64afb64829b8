"""The widget of the napari plugin: pick an LR and an HR layer, fit, enhance the LR layer into a new layer.

napari builds the form from :func:`fit_and_enhance`'s signature (magicgui, ``autogenerate: true`` in
``napari.yaml``) and adds the returned layer data to the viewer. The function itself needs neither napari nor Qt:
any object with ``.data``, ``.scale``, ``.translate``, ``.name`` and ``.metadata`` is a layer here.
"""
from typing import Any

import numpy as np

__all__ = ["fit_and_enhance", "layer_pixel_size_nm"]


def layer_pixel_size_nm(layer: Any) -> float:
    """A layer's pixel size in nm: ``metadata["pixel_size_nm"]`` (refscope's reader sets it), else its last
    ``scale`` entry when that is not napari's default 1 (uncalibrated). ValueError naming the layer otherwise."""
    value = (getattr(layer, "metadata", None) or {}).get("pixel_size_nm")
    if not value:
        scale = getattr(layer, "scale", None)
        value = float(scale[-1]) if scale is not None and len(scale) and float(scale[-1]) != 1.0 else None
    if not value or not np.isfinite(value) or value <= 0:
        raise ValueError(f"layer {getattr(layer, 'name', '?')!r}: pixel size unknown; open it with the refscope "
                         "reader or set its scale to the pixel size in nm")
    return float(value)


def fit_and_enhance(lr: "napari.layers.Image", hr: "napari.layers.Image", scale: int = 2,  # noqa: F821
                    library_size: int = 8000, method: str = "paired",
                    force: bool = False) -> "napari.types.LayerDataTuple":  # noqa: F821
    """Fit a paired model on the LR layer and the HR reference layer (a part of the LR field, at least ``scale``
    times finer), and return the LR layer enhanced ``scale`` times as a new image layer: scale = LR pixel size / S,
    placed so that it covers the LR layer exactly; its metadata names the model's sources and method.

    The reference is checked as ``refscope fit`` checks it (registration score; ``force`` learns from it anyway).
    """
    from refscope import _api  # the Python API's fit/Model (imported on first use, as napari calls the widget)

    if lr is None or hr is None:
        raise ValueError("pick an LR layer and an HR reference layer")
    lr_data, hr_data = np.asarray(lr.data), np.asarray(hr.data)
    for layer, data in ((lr, lr_data), (hr, hr_data)):
        if data.ndim != 2:
            raise ValueError(f"layer {layer.name!r}: a 2-D grayscale frame is needed, got shape {data.shape}")
    lr_nm, hr_nm = layer_pixel_size_nm(lr), layer_pixel_size_nm(hr)
    if lr_nm / hr_nm < scale * 0.999:
        raise ValueError(f"layer {hr.name!r} ({hr_nm:.4g} nm/px) is only {lr_nm / hr_nm:.3g}x finer than "
                         f"{lr.name!r} ({lr_nm:.4g} nm/px); x{scale} needs a reference at least {scale}x finer")
    model = _api.fit(lr_data, [hr_data], scale=int(scale), lr_pixel_size_nm=lr_nm, hr_pixel_size_nm=hr_nm,
                     library_size=int(library_size), force=bool(force))
    enhanced = model.enhance(lr_data, method=method).astype(np.float32)
    out_nm = lr_nm / scale
    # napari places pixel centres at index * scale + translate: the enhanced pixels' outer edge meets the LR one
    offset = tuple(float(t) - (lr_nm - out_nm) / 2 for t in (list(getattr(lr, "translate", (0.0, 0.0)))[-2:]))
    metadata = {"pixel_size_nm": out_nm, "scale_unit": "nm", "method": method, "scale": int(scale),
                "lr_layer": lr.name, "hr_layer": hr.name, "library_size": len(model.fitted.library)}
    return enhanced, {"name": f"{lr.name} x{scale} ({method})", "scale": (out_nm, out_nm), "translate": offset,
                      "metadata": metadata, "colormap": "gray"}, "image"

"""The reader of the napari plugin: files refscope reads -> napari layer data with the pixel size as scale."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refscope.daemon.images.readers import IMAGE_SUFFIXES, read_frames
from refscope.daemon.images.common import LoadedImage, acquisition_metadata

__all__ = ["get_reader", "read_layers"]

LayerData = tuple[np.ndarray, dict[str, Any], str]


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """napari's reader hook: :func:`read_layers` for files refscope reads (by suffix), None for anything else
    (napari then asks other readers)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or any(Path(p).suffix.lower() not in IMAGE_SUFFIXES or Path(p).is_dir() for p in paths):
        return None
    return read_layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """One image layer per file: (pixels, layer keyword arguments, ``"image"``).

    The pixels are as stored (uint8/uint16/float; a stack or series as (Z, H, W)); ``scale`` is the pixel size in nm
    per axis (1 on the stack axis) when the file is calibrated, so layers of different magnifications overlay at
    their physical size; ``metadata`` holds ``pixel_size_nm``, ``source`` and the acquisition metadata (vendor,
    HV, working distance, dwell, detector, stage, time) and, for a refscope output, its provenance. A file that
    cannot be read raises an error naming it.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [_layer(Path(p)) for p in paths]


def _layer(path: Path) -> LayerData:
    frames = read_frames(path)
    first: LoadedImage = frames[0]
    data = first.data if len(frames) == 1 else np.stack([f.data for f in frames])
    pixel = first.pixel_size_nm
    metadata: dict[str, Any] = {"source": str(path), "pixel_size_nm": pixel, "scale_unit": "nm",
                                **acquisition_metadata(first)}
    metadata.update({k: v for k, v in first.metadata.extra.items() if k not in metadata})
    kwargs: dict[str, Any] = {"name": path.stem, "metadata": metadata, "colormap": "gray"}
    if pixel:
        kwargs["scale"] = (pixel,) * 2 if data.ndim == 2 else (1.0, pixel, pixel)
    return data, kwargs, "image"

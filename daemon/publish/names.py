"""Output names of the folder publisher and the ownership check behind its no-overwrite rule.

The rule itself (which name a frame's output gets, when an existing file is replaced) is described in
:mod:`refscope.daemon.publish`. Also holds the logger name shared by the publish modules.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import tifffile

__all__ = ["PUBLISH_LOGGER", "output_stem", "output_names"]

PUBLISH_LOGGER = "refscope.publish"
_INFO_KEY = "refscope"  # key of refscope's metadata in the ImageJ "Info" JSON (as in refscope.daemon.images)


# ------------------------------------------------------------------------------------------------ naming


def output_stem(source: str) -> str:
    """File-name stem for the outputs of a frame from ``source``: the file's stem for a path
    (``/acq/frame_012.tif`` -> ``frame_012``; image 3 of a stack, ``/acq/tilt.dm3#3`` -> ``tilt_003``), a
    sanitised form otherwise (``zmq:tcp://h:5555#42`` ->
    ``zmq_tcp_h_5555_42``)."""
    frame = re.fullmatch(r"(.+)#(\d+)", source)
    if frame and "://" not in source and not source.startswith("zmq:"):  # image <index> of a stack file
        stem = f"{Path(frame.group(1)).stem}_{int(frame.group(2)):03d}"
    elif "://" not in source and not source.startswith("zmq:"):
        stem = Path(source).stem
    else:
        stem = source
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "frame"
    return stem[:200]


def output_names(stem: str, scale: int, attempt: int = 1) -> tuple[str, str]:
    """(image name, confidence name) of the ``attempt``-th candidate: ``stem_x2.tif`` /
    ``stem_x2_confidence.tif``, then ``stem_x2-2.tif`` / ``stem_x2-2_confidence.tif``..."""
    base = f"{stem}_x{scale}" + (f"-{attempt}" if attempt > 1 else "")
    return f"{base}.tif", f"{base}_confidence.tif"


def _owner(path: Path) -> tuple[str, float] | None:
    """(source, source_t) recorded by refscope in an existing output, or None if it is not refscope's."""
    try:
        with tifffile.TiffFile(path) as tif:
            ij = tif.imagej_metadata if tif.is_imagej else None
    except Exception:  # unreadable or not a TIFF: not ours
        return None
    info = ij.get("Info") if isinstance(ij, dict) else None
    if not isinstance(info, str):
        return None
    try:
        document = json.loads(info)
    except json.JSONDecodeError:
        return None
    meta = document.get(_INFO_KEY) if isinstance(document, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("source"), str):
        return None
    source_t = meta.get("source_t")
    if not isinstance(source_t, (int, float)) or isinstance(source_t, bool):
        return None
    return meta["source"], float(source_t)


def _is_own(path: Path, source: str, t: float) -> bool:
    owner = _owner(path)
    return owner is not None and owner[0] == source and math.isclose(owner[1], t, rel_tol=0, abs_tol=1e-6)

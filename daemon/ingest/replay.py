"""Replay a past acquisition into a watched folder, in acquisition order, as the microscope wrote it.

``refscope replay SESSION_DIR --into WATCH [--speed N | --gap-s S]`` lets a user try settings on a session she
already has: start ``refscope daemon --watch WATCH`` with those settings, then replay the session into ``WATCH``.

Order and timing: each image's acquisition time comes from its vendor metadata (FEI/Thermo ``[User] Date/Time``,
Zeiss ``AP_DATE``/``AP_TIME``, DM ``DataBar``, Velox/SER/MRC stamps; :func:`.readers.read_frames`); an image
without one falls back to its file modification time, with a warning. Images are copied in time order (ties by
name); the gap before each copy is the real gap divided by ``speed`` (default 1: real time), or a fixed ``gap_s``.
Every copy is atomic -- written under a temporary name the watcher ignores (:data:`refscope.daemon.atomic.
TEMP_MARKER`), then renamed -- so the daemon never sees a partial file; a ``<image>.json`` sidecar, and the
``.emi`` of a TIA ``.ser``, are copied just before their image. The session folder is only read; a file that already exists in ``WATCH`` is never overwritten.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..atomic import atomic_writer
from ..errors import InputFileError, RefscopeError
from ..images.readers import IMAGE_SUFFIXES, read_frames
from ..images.readers.ser import emi_companion

__all__ = ["IMAGE_SUFFIXES", "ReplayError", "ReplayItem", "plan_replay", "replay"]

_log = logging.getLogger("refscope.replay")

# IMAGE_SUFFIXES (from .readers): file name endings replayed (case-insensitive); other files are left out, sidecars
# and TIA .emi files travel with their image.


class ReplayError(RefscopeError, ValueError):
    """A session that cannot be replayed (missing folder, no images, unreadable image, bad timing option)."""


@dataclass(frozen=True)
class ReplayItem:
    """One image of the session.

    Attributes:
        path: the image in the session folder.
        t: acquisition time, unix seconds.
        time_source: ``"metadata"`` (the vendor's acquisition time) or ``"mtime"`` (the file's modification time).
    """

    path: Path
    t: float
    time_source: str


def plan_replay(session_dir: str | Path) -> list[ReplayItem]:
    """The images of ``session_dir`` (not recursive) in acquisition order.

    Raises :class:`ReplayError` naming the folder when it is missing or holds no image, or naming the file when an
    image cannot be read (a session with a broken file is replayed by nobody's rules: fix or remove it first).
    """
    folder = Path(session_dir)
    if not folder.is_dir():
        raise ReplayError(f"{folder}: no such folder (the session to replay)")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ReplayError(f"{folder}: no images to replay (looked for {', '.join(IMAGE_SUFFIXES)})")
    items = []
    for path in paths:
        try:
            acquired = read_frames(path)[0].metadata.acquired_at
        except InputFileError as exc:
            raise ReplayError(f"{path}: cannot be replayed: {exc}") from None
        if isinstance(acquired, datetime):
            items.append(ReplayItem(path, acquired.timestamp(), "metadata"))
        else:
            _log.warning("%s: no acquisition time in its metadata; using its modification time", path)
            items.append(ReplayItem(path, path.stat().st_mtime, "mtime"))
    return sorted(items, key=lambda item: (item.t, item.path.name))


def _copy_atomic(source: Path, target: Path) -> None:
    if target.exists():
        raise ReplayError(f"{target}: already exists; replay never overwrites a file in the watched folder")
    with open(source, "rb") as src, atomic_writer(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def replay(items: Sequence[ReplayItem], into: str | Path, *, speed: float | None = None, gap_s: float | None = None,
           sleep: Callable[[float], None] = time.sleep,
           report: Callable[[ReplayItem, Path, float], None] | None = None) -> list[Path]:
    """Copy ``items`` into the folder ``into`` in order, waiting between copies; returns the copied paths.

    ``speed`` (> 0) divides the real gaps between acquisition times; ``gap_s`` (>= 0 s) replaces them (give at
    most one; neither: real time). ``report(item, target, waited_s)`` is called after each copy. Raises
    :class:`ReplayError` for bad options, a missing target folder or a name that already exists there.
    """
    if speed is not None and gap_s is not None:
        raise ReplayError("give either speed or gap_s, not both")
    if speed is not None and not speed > 0:
        raise ReplayError(f"speed must be a number > 0, got {speed!r}")
    if gap_s is not None and not gap_s >= 0:
        raise ReplayError(f"gap_s must be a number of seconds >= 0, got {gap_s!r}")
    folder = Path(into)
    if not folder.is_dir():
        raise ReplayError(f"{folder}: no such folder (the watched folder to replay into)")
    copied: list[Path] = []
    previous: float | None = None
    for item in items:
        wait = 0.0
        if previous is not None:
            wait = float(gap_s) if gap_s is not None else max(0.0, item.t - previous) / (speed or 1.0)
        previous = item.t
        if wait > 0:
            sleep(wait)
        target = folder / item.path.name
        sidecar = item.path.with_name(item.path.name + ".json")
        companion = emi_companion(item.path) if item.path.suffix.lower() == ".ser" else None
        for extra in (sidecar, companion):
            if extra is not None and extra.is_file() and not (folder / extra.name).exists():
                _copy_atomic(extra, folder / extra.name)
        _copy_atomic(item.path, target)
        copied.append(target)
        if report is not None:
            report(item, target, wait)
    return copied


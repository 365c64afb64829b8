"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial file.

Data go to a temporary file in the target's own folder (named ``.{name}.tmp-<random>``), which is flushed and
fsync-ed and then renamed over the target with :func:`os.replace`; finally the folder itself is fsync-ed so the
rename survives a power cut. If anything fails before the rename, the temporary file is removed and the
target is left untouched.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_json", "to_jsonable", "TEMP_MARKER"]

TEMP_MARKER = ".tmp-"
"""Temporary files are named ``"." + target name + TEMP_MARKER + random hex``; watchers should ignore them."""


def _open_temp(directory: Path, name: str, mode: str, encoding: str) -> tuple[IO[Any], Path]:
    """Create and open a new temporary file next to the target; return the open file and its path."""
    for _ in range(100):
        temp = directory / f".{name}{TEMP_MARKER}{secrets.token_hex(4)}"
        try:
            # Exclusive creation ("x"), permissions 0o666 minus the umask like any open(): outputs stay readable.
            if mode == "w":
                return open(temp, "x", encoding=encoding, newline=""), temp
            return open(temp, "xb"), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: could not create a unique temporary file for {name}")


def _fsync_directory(directory: Path) -> None:
    """Flush a folder's entry table so that a completed rename survives a crash (a no-op on Windows)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network shares) refuse to fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` atomically when the ``with`` block ends without error.

    Parameters
    ----------
    path : str or PathLike
        Final file path. Its folder must exist. An existing file there is replaced.
    mode : {"wb", "w"}
        Binary (default) or text mode.
    encoding : str
        Text encoding, used only with ``mode="w"``.

    Yields
    ------
    file object
        A seekable file in the same folder as ``path``, named ``.{name}.tmp-<random>``.

    Notes
    -----
    On error inside the block the temporary file is deleted, the exception propagates and ``path`` keeps its
    previous content (or stays absent).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"{target}: folder {directory} does not exist")
    handle, temp = _open_temp(directory, target.name, mode, encoding)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars/arrays, tuples, paths and datetimes to plain JSON types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON (with a final newline) to ``path`` atomically.

    Serialisation happens before any file is created, so an unserialisable object (or NaN, which strict JSON
    forbids) raises ``TypeError``/``ValueError`` and leaves nothing behind. numpy values, paths and datetimes
    are converted by :func:`to_jsonable`.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False, default=to_jsonable, ensure_ascii=False) + "\n"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate escapes): \u-escaped, json.loads restores it
        data = (json.dumps(obj, indent=indent, allow_nan=False, default=to_jsonable, ensure_ascii=True) + "\n").encode()
    atomic_write_bytes(path, data)

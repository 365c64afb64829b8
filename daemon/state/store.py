"""Checksummed storage of named array bundles (fitted models) in a state folder.

A state named ``lib`` is two files in ``state_dir``:

- ``lib.npz`` -- the arrays, an uncompressed ``.npz`` (zip of ``.npy`` files) readable by ``numpy.load``;
- ``lib.json`` -- the manifest: the caller's ``manifest`` dict plus the SHA-256 and size of ``lib.npz``.

Both are written atomically and the manifest is the commit point: a save writes the new arrays beside the
current ones (``lib.npz.next``), then the manifest, then renames ``lib.npz.next`` to ``lib.npz``. A save
interrupted before the manifest leaves the previous state loadable; one interrupted after it leaves the new
state loadable (from ``lib.npz.next``): :func:`load_arrays` returns the arrays whose checksum the manifest
holds, never mixed old and new arrays, and reports a ``.npz`` that matches nothing as corrupt.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json, to_jsonable
from ..errors import StateError

__all__ = ["save_arrays", "load_arrays", "has_state", "state_paths", "state_sha256", "STATE_FORMAT",
           "STATE_FORMAT_VERSION"]

STATE_FORMAT = "refscope-state"
STATE_FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LOAD_ATTEMPTS = 3


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".npz", ".json")):
        raise ValueError(
            f"invalid state name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit, "
            "without a file extension"
        )
    return name


def state_paths(state_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Return ``(npz_path, manifest_path)`` of the state ``name`` in ``state_dir`` (they need not exist)."""
    _check_name(name)
    folder = Path(state_dir)
    return folder / f"{name}.npz", folder / f"{name}.json"


def state_sha256(state_dir: str | os.PathLike[str], name: str) -> str | None:
    """SHA-256 of state ``name``'s weights as its manifest records it (the state's identity), None if unreadable."""
    try:
        document = json.loads(state_paths(state_dir, name)[1].read_text(encoding="utf-8"))
        return str(document["refscope_state"]["npz_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_state(state_dir: str | os.PathLike[str], name: str) -> bool:
    """True when the manifest of state ``name`` exists (the state may still fail its checksum on load)."""
    return state_paths(state_dir, name)[1].is_file()


def _npz_bytes(arrays: Mapping[str, np.ndarray], where: str) -> bytes:
    """Serialise ``arrays`` as an uncompressed .npz (the layout ``np.savez`` writes) without pickling."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise ValueError(f"{where}: invalid array name {key!r} (letters, digits, '_', '-', '.')")
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"{where}: array {key!r} has dtype object; only numeric/string arrays can be stored")
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_arrays(
    state_dir: str | os.PathLike[str],
    name: str,
    arrays: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
) -> Path:
    """Save named arrays and a JSON manifest as the state ``name``, atomically and with a checksum.

    Parameters
    ----------
    state_dir : str or PathLike
        State folder; created (with parents) if missing.
    name : str
        State name, e.g. ``"library"``; becomes ``<name>.npz`` and ``<name>.json``.
    arrays : mapping of str to ndarray
        Arrays of any shape and numeric dtype (object arrays are refused: they would need pickling).
    manifest : mapping
        JSON-serialisable description (method, scale, pixel sizes in nm, ...). numpy scalars, tuples, paths and
        datetimes are converted to JSON types, so :func:`load_arrays` returns lists for tuples.

    Returns
    -------
    Path
        Path of the written manifest ``<state_dir>/<name>.json``.
    """
    npz_path, manifest_path = state_paths(state_dir, name)
    if not isinstance(manifest, Mapping):
        raise TypeError(f"{manifest_path}: manifest must be a dict, got {type(manifest).__name__}")
    # Serialise everything before touching the disk, so that a bad argument leaves the old state intact.
    user_manifest = json.loads(json.dumps(dict(manifest), allow_nan=False, default=to_jsonable))
    data = _npz_bytes(arrays, str(npz_path))
    document = {
        "refscope_state": {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "name": name,
            "npz_file": npz_path.name,
            "npz_sha256": hashlib.sha256(data).hexdigest(),
            "npz_bytes": len(data),
            "arrays": {
                key: {"dtype": np.asarray(v).dtype.str, "shape": list(np.shape(v))} for key, v in arrays.items()
            },
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "manifest": user_manifest,
    }
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    pending = _pending_path(npz_path)
    atomic_write_bytes(pending, data)  # a crash from here to the manifest: the previous state stays whole
    atomic_write_json(manifest_path, document)  # the commit point
    os.replace(pending, npz_path)  # a crash before this: load_arrays reads the committed arrays from `pending`
    return manifest_path


def _pending_path(npz_path: Path) -> Path:
    """Where :func:`save_arrays` puts new arrays until their manifest commits them."""
    return npz_path.with_name(npz_path.name + ".next")


def _committed_bytes(npz_path: Path, sha256: str) -> bytes | None:
    """The arrays whose checksum is ``sha256``: ``<name>.npz``, or ``<name>.npz.next`` when a save stopped
    between its manifest and its rename (or is between them now); None when neither matches.
    FileNotFoundError when neither exists."""
    found = False
    for path in (npz_path, _pending_path(npz_path), npz_path):  # .npz again: a concurrent save may just have renamed
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        found = True
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    if not found:
        raise FileNotFoundError(npz_path)
    return None


def _read_manifest(manifest_path: Path) -> dict[str, Any]:
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{manifest_path}: is not a valid JSON manifest ({exc}); run `refscope fit` again") from exc
    header = document.get("refscope_state") if isinstance(document, dict) else None
    if not isinstance(header, dict) or header.get("format") != STATE_FORMAT:
        raise StateError(f"{manifest_path}: is not a refscope state manifest (no 'refscope_state' header)")
    if header.get("format_version") != STATE_FORMAT_VERSION:
        raise StateError(
            f"{manifest_path}: state format version {header.get('format_version')!r} is not supported "
            f"(this refscope reads version {STATE_FORMAT_VERSION}); run `refscope fit` again"
        )
    if not isinstance(header.get("npz_sha256"), str) or not isinstance(document.get("manifest"), dict):
        raise StateError(f"{manifest_path}: manifest lacks 'npz_sha256' or 'manifest'; the file is corrupt")
    return document


def load_arrays(state_dir: str | os.PathLike[str], name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load the state ``name`` saved by :func:`save_arrays`, verifying its checksum.

    Parameters
    ----------
    state_dir : str or PathLike
        State folder.
    name : str
        State name.

    Returns
    -------
    arrays : dict of str to ndarray
        The saved arrays, with their dtypes and shapes.
    manifest : dict
        The caller's manifest as JSON types.

    Raises
    ------
    StateError
        No such state ("run `refscope fit` first"), an unreadable manifest, or a ``.npz`` whose SHA-256 does not
        match the manifest ("checksum mismatch, the file is corrupt").
    """
    npz_path, manifest_path = state_paths(state_dir, name)
    if not manifest_path.is_file():
        hint = f" ({npz_path.name} exists without its manifest: an interrupted save)" if npz_path.exists() else ""
        raise StateError(f"no state named {name!r} in {Path(state_dir)}{hint}; run `refscope fit` first")
    for attempt in range(_LOAD_ATTEMPTS):
        document = _read_manifest(manifest_path)
        expected = document["refscope_state"]["npz_sha256"]
        try:
            data = _committed_bytes(npz_path, expected)
        except FileNotFoundError:
            raise StateError(f"{npz_path}: missing, but {manifest_path.name} refers to it; run `refscope fit` again")
        if data is not None:
            break
        # A concurrent save may have replaced the .npz between our two reads: retry if the manifest moved on.
        if attempt + 1 < _LOAD_ATTEMPTS and _read_manifest(manifest_path)["refscope_state"]["npz_sha256"] != expected:
            continue
        raise StateError(
            f"{npz_path}: checksum mismatch, the file is corrupt (or a save was interrupted); run `refscope fit` again"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise StateError(f"{npz_path}: cannot be read as .npz ({exc})") from exc
    return arrays, document["manifest"]

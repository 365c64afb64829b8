"""Exported paired models kept in the state folder, so a model is exported to ONNX once, not at every start.

``refscope enhance`` used to export the saved library to ONNX at every call (PyTorch import and export: 1.3-2.9 s
of an otherwise 1.5 s job), and a restarted daemon did the same for the model it resumes with. The exported
bytes and manifest are stored under ``<state>/onnx-cache/`` keyed by a SHA-256 of everything the export depends
on -- the fitted model (library, intensity map, noise, reconstruction settings, scale), the model version written
into the manifest, and refscope's version -- so a changed model, a changed ``sigma_n`` or a new refscope exports
again. Files are written atomically; an unreadable entry is exported again; at most :data:`MAX_ENTRIES` are kept
(oldest removed: they are refscope's own files, recreated on demand).
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from refscope.models.manifest import ModelManifest

from ..atomic import atomic_write_bytes, atomic_write_json
from ..state.provenance import refscope_version

__all__ = ["CACHE_DIR", "MAX_ENTRIES", "cached_export", "export_key"]

_log = logging.getLogger("refscope.serving")

CACHE_DIR = "onnx-cache"
"""Folder of the cache inside the state folder."""
MAX_ENTRIES = 8
"""Exported models kept at most (each ~0.2 MB for a paired library of 8000 pairs)."""


def export_key(fitted: Any, version: str) -> str:
    """SHA-256 (hex) of what the export of ``fitted`` as model ``version`` depends on. The lazily fitted
    regressors are left out: they are a deterministic function of the rest."""
    digest = hashlib.sha256()
    digest.update(f"refscope {refscope_version()}|version {version}|".encode())
    digest.update(pickle.dumps(replace(fitted, _regressors=None), protocol=4))
    return digest.hexdigest()


def cached_export(folder: Path, fitted: Any, version: str, export: Callable[[], tuple[bytes, ModelManifest]],
                  check: Callable[[bytes, ModelManifest], None] | None = None) -> tuple[bytes, ModelManifest]:
    """The ONNX bytes and manifest of ``fitted`` from ``folder``'s cache, else from ``export()`` (then stored).

    ``check(bytes, manifest)`` (raising for a model that cannot be served) runs on a fresh export before it is
    stored, so that every entry of the cache has passed it and a cache hit need not be checked again (the
    static ONNX checks import the ``onnx`` package: ~0.5 s of a cold ``refscope enhance``)."""
    cache = Path(folder) / CACHE_DIR
    key = export_key(fitted, version)[:32]
    model_path, manifest_path = cache / f"paired-{key}.onnx", cache / f"paired-{key}.json"
    if model_path.is_file() and manifest_path.is_file():
        try:
            data = model_path.read_bytes()
            manifest = ModelManifest.from_dict(json.loads(manifest_path.read_text()))
            _log.info("model v%s: exported ONNX model taken from %s", version, model_path)
            return data, manifest
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("%s: cached export unreadable (%s); exporting again", model_path, exc)
    data, manifest = export()
    if check is not None:
        check(data, manifest)  # raises: nothing stored, the caller serves without it
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(model_path, data)
        atomic_write_json(manifest_path, manifest.to_dict())
        _prune(cache)
    except OSError as exc:  # a read-only state folder: serve anyway, export again next time
        _log.warning("%s: exported model not cached (%s)", cache, exc)
    return data, manifest


def _prune(cache: Path) -> None:
    """Keep the :data:`MAX_ENTRIES` newest exports."""
    models = sorted(cache.glob("paired-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in models[MAX_ENTRIES:]:
        for path in (old, old.with_suffix(".json")):
            path.unlink(missing_ok=True)

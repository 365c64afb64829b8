"""Provenance written into every output refscope makes of a frame: who made it, from what, with which model.

Fields (strings, in the output's metadata next to ``method``/``scale``/``source``): ``refscope_version``;
``source_sha256``, the SHA-256 of the source file's bytes (streamed, the file is only read); ``model_id``,
``"<state>:<sha12>"`` naming the saved model that served (``library`` or ``net``, the first 12 hex digits of its
weights' checksum as its manifest records it), absent for bicubic or an external ONNX model.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from .store import state_sha256

__all__ = ["refscope_version", "file_sha256", "model_id", "provenance"]

_CHUNK = 1 << 20


@lru_cache(maxsize=1)
def refscope_version() -> str:
    """The installed package's version ("unknown" when running from a checkout without metadata)."""
    try:
        from importlib.metadata import version

        return version("refscope")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "unknown"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_id(state_dir: str | os.PathLike[str] | None, method: str) -> str | None:
    """``"net:<sha12>"`` or ``"library:<sha12>"`` of the model in ``state_dir`` serving ``method``; None for
    bicubic, no state folder or an unreadable manifest."""
    if state_dir is None or method == "bicubic":
        return None
    name = "net" if method == "net" else "library"
    sha = state_sha256(Path(state_dir), name)
    return f"{name}:{sha[:12]}" if sha else None


def provenance(source: str | os.PathLike[str], *, model: str | None) -> dict:
    """The provenance fields of one output made from ``source`` by ``model`` (a :func:`model_id` or None)."""
    fields = {"refscope_version": refscope_version(), "source_sha256": file_sha256(source)}
    if model:
        fields["model_id"] = model
    return fields

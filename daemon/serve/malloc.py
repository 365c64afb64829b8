"""Make freed memory go back to the operating system, so that the resident size follows what is in use.

glibc's ``malloc`` raises its mmap threshold dynamically (up to 32 MiB on 64-bit) each time a large block is
freed; from then on, NumPy arrays of a few MiB -- one tile's workspace, a candidate block, an LR frame -- come from
the heap, whose freed pages stay resident. A long-running process that allocates and frees such arrays every
second then grows to the high-water mark of every pattern it ever met. Fixing the threshold (which disables the
dynamic one) makes every block of at least :data:`MMAP_THRESHOLD_BYTES` an ``mmap`` that ``free`` returns at once,
and capping the number of arenas keeps per-thread heaps from multiplying it. Both are ``mallopt`` settings; on a
C library without them (musl, macOS, Windows) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "MAX_ARENAS", "return_freed_memory", "trim"]

_log = logging.getLogger("refscope.daemon")

MMAP_THRESHOLD_BYTES = 1 << 20
"""Blocks at least this large (bytes) are mmapped and returned to the system when freed."""
MAX_ARENAS = 2
"""malloc arenas (per-thread heaps) at most."""

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def return_freed_memory() -> bool:
    """Apply the settings above to this process (call once at start); True when the C library took them."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(libc.mallopt(_M_ARENA_MAX, MAX_ARENAS))
    _log.debug("malloc: mmap threshold %d bytes, %d arenas: %s", MMAP_THRESHOLD_BYTES, MAX_ARENAS,
               "set" if ok else "refused")
    return ok


def trim() -> None:
    """Give the heap's free pages back to the system now (``malloc_trim(0)``), e.g. after learning a reference."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)

"""Helper processes of the daemon (the background trainer's rounds, ONNX exports): they die with the daemon."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal

__all__ = ["die_with_parent"]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a SIGKILLed daemon leaves no orphan helper)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's supervisor polls its children instead
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died while this process started: prctl came too late
        os._exit(1)

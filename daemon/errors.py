"""Exceptions raised by the daemon side of refscope.

Every message names the file (or state directory) concerned and says what is wrong with it, so that the
daemon can log it and move on to the next frame without showing a traceback to the microscope operator.
"""
from __future__ import annotations

__all__ = ["RefscopeError", "InputFileError", "IncompleteFileError", "MissingReaderError", "StateError", "ConfigError", "one_line"]


class RefscopeError(Exception):
    """Base class of every error refscope reports to the operator."""


class InputFileError(RefscopeError):
    """An input image file cannot be used.

    The message always starts with the file path, e.g. ``"/data/frame_012.tif: is RGB (shape (768, 1024, 3));
    refscope needs one grayscale channel"``.
    """


class IncompleteFileError(InputFileError):
    """An input file is empty or shorter than its header says (truncated TIFF/PNG).

    A subclass of :class:`InputFileError`: the file may still be being written by the microscope, so a watcher
    may retry it later instead of rejecting it for good.
    """


class MissingReaderError(InputFileError):
    """An input file is in a format whose reader is an optional extra that is not installed (e.g. h5py for EMD).

    The message names the file, its format and the command that installs the reader
    (``pip install 'refscope[vendor]'``). Not a property of the file: a watcher does not remember it as refused
    for good, so the file is read once the extra is installed and the daemon restarted.
    """


class StateError(RefscopeError):
    """Saved state (a fitted model) is missing, unreadable or fails its checksum."""


class ConfigError(RefscopeError):
    """The configuration is invalid. The message names the key (``"model.scale"``), where the value came from
    and what is allowed; ``key`` holds the dotted key (None when the problem is not one key's, e.g. an
    unreadable file)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a command's error message (an OS error as ``file: reason``)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())

"""Progress of long commands on the terminal (``fit``, ``enhance`` of many files, ``evaluate``): a rich progress
bar on standard error when it is a terminal, nothing otherwise (pipes, logs, ``--quiet``).

rich is already installed with the terminal UI (textual builds on it), so the commands use it instead of a
hand-written bar.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Steps", "progress"]


class Steps:
    """What a command reports: :meth:`advance` after each unit of work, :meth:`say` to name the current step."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def advance(self, amount: float = 1.0) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)


@contextmanager
def progress(description: str, total: float | None, *, quiet: bool = False, stream: Any = None) -> Iterator[Steps]:
    """A progress display for ``total`` units of work (None: a spinner with the elapsed time), on ``stream``
    (default standard error) only when it is a terminal and not ``quiet``; it disappears when done."""
    stream = sys.stderr if stream is None else stream
    if quiet or not getattr(stream, "isatty", lambda: False)():
        yield Steps()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}")]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        yield Steps(bar, bar.add_task(description, total=total))

"""Crash-only workers: one supervision rule for every worker thread of the daemon.

A bad input costs that input, never the process (STYLE 6b; Candea & Fox, "Crash-Only Software"):

* an unexpected exception raised while one input (a file, a message, a reference, an output, a control request,
  a training round) is handled is logged with the input's name, counted under a reason, the input is
  quarantined (the worker's ``quarantine`` callback records it, e.g. in the catalogue, so that a restart does not
  retry it forever) and the worker goes on with the next input;
* a failure of the daemon's own state -- :class:`~refscope.daemon.errors.StateError` (catalogue unwritable or
  closed, state folder gone), ``MemoryError`` of the process, or ``KeyboardInterrupt``/``SystemExit`` -- is not
  an input's fault: it escapes, stops the worker and is handed back to the owner's thread, which stops the
  daemon with an exit code and the reason.

:func:`supervised` applies the rule to one input; :class:`Worker` is the base of a stoppable worker thread (a stop
event, a ``poll(timeout)`` loop instead of blocking calls, the failure stored and re-raised on the owner's thread
by :meth:`Worker.check`) whose every turn runs under that rule.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Self, TypeVar

from .errors import StateError

__all__ = ["WORKER_LOGGER", "BACKGROUND_NICE", "is_state_failure", "lower_priority", "supervised", "Worker"]

WORKER_LOGGER = "refscope.daemon"
_log = logging.getLogger(WORKER_LOGGER)

T = TypeVar("T")

Count = Callable[[str, str], None]
"""``count(reason, message)``: count one failure under ``reason`` (the message names the input)."""
Quarantine = Callable[[str, str], None]
"""``quarantine(input_name, message)``: record the input so that it is not retried (e.g. after a restart)."""


BACKGROUND_NICE = 10
"""Niceness added to the learner's thread so that serving keeps the CPU. Measured on 2 cores: a 1536x1024 frame at
x4 took 2.29 s (p50) while the learner fitted a reference in the same process at equal priority, 1.14 s with the
learner's thread at +10 (1.07 s alone)."""


def lower_priority(nice: int = BACKGROUND_NICE, *, idle: bool = False, where: str = "background work") -> bool:
    """Add ``nice`` to the niceness of the calling thread (Linux gives each thread its own; elsewhere, and in a
    single-threaded child process, this is the process's); with ``idle``, also run it only on CPU time nothing
    else wants (Linux ``SCHED_IDLE``: any other task preempts it at once). Call it before the thread or process
    starts further threads (they inherit it). Returns whether it all worked; where it is not permitted the work
    keeps its priority (logged at debug level)."""
    ok = True
    try:
        if nice:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        _log.debug("%s keeps its priority (%s)", where, exc)
        ok = False
    return ok


def is_state_failure(exc: BaseException) -> bool:
    """True when ``exc`` is a failure of the daemon itself, not of the input being handled: StateError (its own
    state: catalogue, state folder), MemoryError, or anything that is not an ``Exception`` (KeyboardInterrupt,
    SystemExit)."""
    return isinstance(exc, (StateError, MemoryError)) or not isinstance(exc, Exception)


def supervised(action: Callable[[], T], *, worker: str, item: str, count: Count | None = None,
               quarantine: Quarantine | None = None, reason: str | None = None,
               logger: logging.Logger | None = None) -> T | None:
    """Run ``action()`` for one input under the crash-only rule (see the module docstring).

    Args:
        action: handles the input; its result is returned.
        worker: the worker's name (``"learner"``, ``"zmq ingest"``...), in the log and the default reason.
        item: the input's name (file path, ``zmq:...#seq``, reference source...), in the log and the quarantine.
        count: counts the failure, ``count(reason, message)``; None: logged only.
        quarantine: records the input as not to be retried, ``quarantine(item, message)``; a failure of the
            quarantine itself is logged (and a state failure re-raised).
        reason: reason slug; default ``"<worker>_failed"`` with spaces as underscores.

    Returns ``action()``'s result, or None when it failed on this input. A state failure
    (:func:`is_state_failure`) propagates unchanged.
    """
    try:
        return action()
    except BaseException as exc:
        if is_state_failure(exc):
            raise
        slug = reason or f"{worker.replace(' ', '_').replace('-', '_')}_failed"
        message = f"{item}: {worker} failed on this input ({type(exc).__name__}: {exc}); quarantined, going on"
        (logger or _log).error("%s: %s", slug, message, exc_info=exc)
        if count is not None:
            try:
                count(slug, message)
            except Exception:  # noqa: BLE001 - counting must not turn one bad input into a dead worker
                _log.exception("%s: could not count the failure of %s", worker, item)
        if quarantine is not None:
            try:
                quarantine(item, message)
            except BaseException as qexc:
                if is_state_failure(qexc):
                    raise
                _log.error("%s: %s could not be quarantined (%s: %s)", worker, item, type(qexc).__name__, qexc)
        return None


class _Failed(BaseException):
    """Raised by :meth:`Worker.fail` inside a turn: not an ``Exception``, so :func:`supervised` lets it through."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.failure = failure


class Worker:
    """A stoppable worker thread whose every turn runs under the crash-only rule.

    Subclasses implement :meth:`poll_once` (wait at most ``timeout`` seconds for one input and handle it); an
    unexpected exception from a turn is counted (``on_error``) and the loop goes on; a state failure
    (:func:`is_state_failure`) stops the loop and is stored, re-raised on the owner's thread by :meth:`check` and
    :meth:`stop`.

    Args:
        name: thread name and the worker's name in logs and reasons.
        poll_interval_s: the ``timeout`` given to :meth:`poll_once`, seconds (> 0).
        on_error: ``on_error(reason, message)`` for each failed turn.
        on_stopped: ``on_stopped()`` once a failure has stopped the loop (after :meth:`on_failure`), on the worker
            thread: e.g. the owner's request to stop, so that it need not wait for its next :meth:`check`.
    """

    def __init__(self, name: str, *, poll_interval_s: float = 0.1, on_error: Count | None = None,
                 on_stopped: Callable[[], object] | None = None) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"worker {name}: poll_interval_s must be > 0 seconds, got {poll_interval_s!r}")
        self.name = name
        self.poll_interval_s = float(poll_interval_s)
        self._on_error = on_error
        self._on_stopped = on_stopped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.failed_turns = 0

    # subclasses ------------------------------------------------------------------------------------------

    def poll_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for one input and handle it."""
        raise NotImplementedError

    def on_start(self) -> None:
        """Called on the worker thread before the first turn (e.g. to lower the thread's priority)."""

    def on_failure(self, exc: BaseException) -> None:
        """Called on the worker thread when a failure of the daemon's own state stops the loop (before
        :meth:`on_stop`; the failure is then re-raised on the owner's thread by :meth:`check`)."""

    def on_stop(self) -> None:
        """Called on the worker thread when the loop ends (release sockets...)."""

    def fail(self, failure: BaseException) -> None:
        """From inside a turn: stop the loop with ``failure``, handed to the owner like a state failure
        (:meth:`on_failure`, then re-raised by :meth:`check`). For something the worker depends on that no
        further turn can mend, e.g. a frame source whose own thread died. Does not return."""
        raise _Failed(failure)

    # public ----------------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"worker {self.name}: already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Re-raise, on the caller's thread, the failure that stopped the worker (if any)."""
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Ask the loop to end, wait up to ``timeout`` seconds, then re-raise its failure (if any). Idempotent.

        Returns whether the thread has ended (False: a turn still runs after ``timeout``; what it holds, e.g. a
        socket's context, must then be left alone)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        ended = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            ended = not thread.is_alive()
            if not ended:
                _log.error("worker %s did not stop within %s s", self.name, timeout)
        self.check()
        return ended

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # internals -------------------------------------------------------------------------------------------

    def _count(self, reason: str, message: str) -> None:
        self.failed_turns += 1
        if self._on_error is not None:
            self._on_error(reason, message)

    def _run(self) -> None:
        try:
            self.on_start()
            while not self._stop.is_set():
                failed = self.failed_turns
                supervised(lambda: self.poll_once(self.poll_interval_s), worker=self.name, item="one turn",
                           count=self._count)
                if self.failed_turns != failed:  # a turn that keeps failing is not retried in a hot loop
                    self._stop.wait(self.poll_interval_s)
        except BaseException as exc:  # a state failure: stored and re-raised on the owner's thread
            if isinstance(exc, _Failed):
                exc = exc.failure
            _log.critical("worker %s stopped: %s: %s", self.name, type(exc).__name__, exc)
            self._error = exc
            try:
                self.on_failure(exc)
                if self._on_stopped is not None:
                    self._on_stopped()
            except Exception:  # noqa: BLE001 - best effort: the failure itself is what matters
                _log.exception("worker %s: error while reporting its failure", self.name)
        finally:
            try:
                self.on_stop()
            except Exception:  # noqa: BLE001
                _log.exception("worker %s: error while stopping", self.name)

"""Tell a service manager (systemd) how the daemon is doing: ``sd_notify`` without any dependency.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` set to a datagram socket (a path, or ``@name`` in
the abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``. The service sends newline-separated
``KEY=VALUE`` assignments to it (sd_notify(3)):

* ``READY=1`` once it is really serving (``refscope daemon`` sends it right after printing ``ready``);
* ``STATUS=...``, one line shown by ``systemctl status``;
* ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds, else the manager kills and restarts it;
* ``STOPPING=1`` when it begins to stop.

:class:`ServiceNotifications` does all four around a service's run: READY=1 on entry, then a :class:`Watchdog`
thread pings every ``WATCHDOG_USEC / 2`` -- but only while the service's ``check()`` (for refscope,
:meth:`~refscope.daemon.service.daemon.Daemon.check`: every component alive) passes. Once a check fails, the pings stop
for good and ``STOPPING=1`` is sent at once: :meth:`~refscope.daemon.service.daemon.Daemon.run_forever` stops on the
same failure and exits 1, so the manager's stop timeout, not the watchdog, bounds the shutdown, and
``Restart=on-failure`` then starts a fresh process. On exit, ``STOPPING=1`` (if not sent yet).

Without ``$NOTIFY_SOCKET`` (a terminal, a test, a container, Windows) everything here does nothing. Sending never
raises: a notification that cannot be delivered is logged once as a warning and the service goes on.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType

from ..wire.status import DaemonStatus
from ..worker import Worker

__all__ = ["Notifier", "Watchdog", "ServiceNotifications", "watchdog_interval_s", "daemon_status_line"]

_log = logging.getLogger("refscope.daemon.service.sd_notify")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Notifier:
    """Sends ``KEY=VALUE`` assignments to the service manager's notification socket (thread-safe).

    Args:
        address: the socket: a file-system path, or ``@name`` for the abstract namespace (Linux). Default:
            ``$NOTIFY_SOCKET``; unset or empty: a notifier that does nothing (:attr:`enabled` is False).
    """

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = address
        self._target: str | bytes | None = None
        if address and hasattr(socket, "AF_UNIX"):
            if address.startswith("@"):
                self._target = b"\0" + address[1:].encode()
            elif address.startswith("/"):
                self._target = address
            else:  # e.g. vsock:CID:PORT (virtual machines): not supported here
                _log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract; no service notifications", address)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) in one datagram. True if delivered; False when
        disabled or the send failed (logged once). Newlines inside an assignment are replaced by spaces."""
        if self._target is None or not assignments:
            return False
        message = "\n".join(_one_line(a) for a in assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message, self._target)
                return True
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    _log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                return False

    def status(self, text: str) -> bool:
        """Send ``STATUS=<text>`` (one line, shown by ``systemctl status``)."""
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        """Close the socket (a later :meth:`notify` opens a new one). Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two watchdog pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.

    None when no watchdog is requested (``WATCHDOG_USEC`` unset, not a positive integer, or ``WATCHDOG_PID`` set
    to another process's id). ``environ`` defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "").strip())
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None



def status_lines(status: Callable[[], str] | None) -> list[str]:
    """``["STATUS=<status()>"]``, or ``[]`` without a status callable or when it fails (a status is optional)."""
    if status is None:
        return []
    try:
        return [f"STATUS={status()}"]
    except Exception as exc:  # noqa: BLE001 - a status line is optional
        _log.debug("no status line: %s", exc)
        return []


class Watchdog(Worker):
    """A :class:`~refscope.daemon.worker.Worker` sending ``WATCHDOG=1`` every ``interval_s`` seconds while
    ``check()`` passes.

    Args:
        notifier: where the pings go.
        interval_s: seconds between pings (> 0), normally :func:`watchdog_interval_s`.
        check: raises when the service is unhealthy (called before every ping, on this thread).
        status: optional; returns a one-line status sent with each ping (``STATUS=...``); its errors are ignored.
        on_failure: called once, on this thread, with the exception of the first failed check.

    The first ping is sent at :meth:`start`. Its own failure rule: *any* failed check (not only a failure of the
    daemon's state) ends the pings. The thread sends ``STATUS=failed: ...``, calls ``on_failure`` and ends: the
    pings never resume, so a service manager restarts a service that does not stop.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        check: Callable[[], object],
        *,
        status: Callable[[], str] | None = None,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"watchdog interval must be > 0 seconds, got {interval_s!r}")
        super().__init__("refscope-watchdog", poll_interval_s=interval_s)
        self.notifier = notifier
        self.interval_s = float(interval_s)
        self._check = check
        self._status = status
        self._on_check_failed = on_failure
        self.pings = 0
        self.failure: BaseException | None = None
        """The exception of the failed check that ended the pings (None while healthy)."""

    def poll_once(self, timeout: float) -> None:
        """One ping (after a passing check), then wait ``timeout`` seconds or until stopped."""
        try:
            self._check()
        except BaseException as exc:  # noqa: BLE001 - any failure ends the pings; the owner re-raises it
            self._give_up(exc)
            return
        self.notifier.notify("WATCHDOG=1", *status_lines(self._status))
        self.pings += 1
        self._stop.wait(timeout)

    def _give_up(self, exc: BaseException) -> None:
        self.failure = exc
        self._stop.set()  # no more turns
        self.notifier.status(f"failed: {type(exc).__name__}: {exc}")
        _log.error("watchdog: health check failed (%s: %s); no more watchdog pings", type(exc).__name__, exc)
        if self._on_check_failed is not None:
            try:
                self._on_check_failed(exc)
            except Exception:  # noqa: BLE001 - reporting only
                _log.exception("watchdog: on_failure callback failed")

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop pinging and wait up to ``timeout`` seconds for the thread. Idempotent."""
        return super().stop(timeout)


class ServiceNotifications:
    """READY=1, STATUS, watchdog pings and STOPPING=1 around a service's run (a context manager)::

        print("ready", flush=True)
        with ServiceNotifications(daemon.check, status=lambda: daemon_status_line(daemon.status())):
            code = daemon.run_forever()

    Args:
        check: raises when the service is unhealthy; the watchdog pings only while it passes.
        status: optional one-line status, sent with READY=1 and with every ping.
        notifier: default ``Notifier()`` (``$NOTIFY_SOCKET``).
        environ: where ``WATCHDOG_USEC`` / ``WATCHDOG_PID`` are read; default ``os.environ``.

    Does nothing without a notification socket. The watchdog thread runs only when ``WATCHDOG_USEC`` is set.
    """

    def __init__(
        self,
        check: Callable[[], object],
        *,
        status: Callable[[], str] | None = None,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier()
        self._check = check
        self._status = status
        self._environ = environ
        self._stopping_sent = False
        self._stopping_lock = threading.Lock()
        self.watchdog: Watchdog | None = None

    def stopping(self, reason: str = "stopping") -> None:
        """Send ``STOPPING=1`` with ``STATUS=<reason>`` (once; later calls do nothing)."""
        with self._stopping_lock:
            if self._stopping_sent:
                return
            self._stopping_sent = True
        self.notifier.notify("STOPPING=1", f"STATUS={reason}")

    def __enter__(self) -> ServiceNotifications:
        if not self.notifier.enabled:
            return self
        self.notifier.notify("READY=1", *status_lines(self._status))
        interval = watchdog_interval_s(self._environ)
        if interval is not None:
            self.watchdog = Watchdog(self.notifier, interval, self._check, status=self._status,
                                     on_failure=lambda exc: self.stopping(f"stopping: {type(exc).__name__}: {exc}"))
            self.watchdog.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.notifier.enabled:
            self.stopping("stopped" if exc is None else f"stopping: {type(exc).__name__}: {exc}")
        self.notifier.close()


def daemon_status_line(status: DaemonStatus) -> str:
    """One line summing up :meth:`Daemon.status() <refscope.daemon.service.daemon.Daemon.status>` for ``STATUS=``, e.g.
    ``"serving: 120 frames in, 118 out, 0 dropped, 2 errors; model v3 paired on CPUExecutionProvider"``."""
    frames = status.frames
    state = "paused" if status.paused else "serving"
    line = (f"{state}: {frames.in_} frames in, {frames.out} out, {frames.dropped} dropped, {frames.errors} errors; "
            f"model v{status.model_version}")
    method, served_by = status.method, status.model.served_by
    if method:
        line += f" {method}"
    if served_by:
        line += f" on {served_by}"
    return line

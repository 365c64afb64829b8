"""``refscope tui``: argument handling of the operator's terminal UI (textual is imported only when it runs).

::

    refscope tui [--connect tcp://HOST:5560] [--stream EP] [--events EP] [--log-file F]
                 [--curve-server-key server.key --curve-client-key NAME.key_secret]

The stream and event endpoints are taken from the daemon's ``status`` unless given. The UI starts before the
daemon if need be and connects when it appears. Logging goes to ``--log-file`` (or nowhere) while it runs.
A daemon with CURVE security (``[security]``) answers only clients with an authorized key: give the daemon's
public key and this operator's secret key file (``refscope keys generate DIR --name NAME``; the daemon's admin
runs ``refscope keys authorize NAME.key --to AUTHORIZED_DIR``).
"""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DEFAULT_CONTROL", "add_tui_parser", "run_tui_command", "load_run_tui"]

DEFAULT_CONTROL = "tcp://127.0.0.1:5560"


def add_tui_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``tui`` subcommand to ``subparsers``; its handler (``args.handler``) is :func:`run_tui_command`."""
    p = subparsers.add_parser(
        "tui", help="the operator's terminal UI: live view, numbers, events, actions",
        description="Watch a running `refscope daemon`: raw and enhanced frames side by side, counters, drift "
        "signals and events; pause, switch method, adjust σ_n, request a reference, save snapshots. "
        "Press ? in the UI for the keys.")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (to --log-file)")
    p.add_argument("--connect", metavar="EP", default=DEFAULT_CONTROL,
                   help=f"the daemon's control endpoint (default {DEFAULT_CONTROL})")
    p.add_argument("--stream", metavar="EP", help="frame stream PUB endpoint (default: from the daemon's status)")
    p.add_argument("--events", metavar="EP", help="event PUB endpoint (default: from the daemon's status)")
    p.add_argument("--log-file", metavar="F", help="write the log here while the UI runs (default: no log)")
    p.add_argument("--curve-server-key", metavar="FILE",
                   help="the daemon's public CURVE key (server.key), for a daemon with [security] keys")
    p.add_argument("--curve-client-key", metavar="FILE",
                   help="this operator's secret CURVE key file (NAME.key_secret), authorized on the daemon")
    p.set_defaults(handler=run_tui_command)
    return p


def load_run_tui() -> Any:
    """:func:`refscope.tui.app.run_tui` (imports textual), or None when the TUI cannot be loaded here (the live
    demo then prints status lines instead)."""
    try:
        from .app import run_tui
    except ImportError:
        return None
    return run_tui


def run_tui_command(args: argparse.Namespace) -> int:
    """Handler of ``refscope tui``: run the app until the operator quits."""
    from refscope.daemon.wire.curve import load_client_keys

    server_key, client_key = getattr(args, "curve_server_key", None), getattr(args, "curve_client_key", None)
    if (server_key is None) != (client_key is None):
        raise ValueError("--curve-server-key and --curve-client-key go together (the daemon's public key and "
                         "this operator's secret key file)")
    curve = load_client_keys(server_key, client_key) if server_key is not None else None

    from .app import run_tui  # textual is imported here, not by every refscope command

    return run_tui(args.connect, stream=args.stream, events=args.events, log_file=args.log_file, curve=curve)

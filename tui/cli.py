"""``refscope tui``: argument handling of the operator's terminal UI (textual is imported only when it runs).

::

    refscope tui [--connect tcp://HOST:5560] [--stream EP] [--events EP] [--log-file F]

The stream and event endpoints are taken from the daemon's ``status`` unless given. The UI starts before the
daemon if need be and connects when it appears. Logging goes to ``--log-file`` (or nowhere) while it runs.
"""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DEFAULT_CONTROL", "add_tui_parser", "run_tui_command"]

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
    p.set_defaults(handler=run_tui_command)
    return p


def run_tui_command(args: argparse.Namespace) -> int:
    """Handler of ``refscope tui``: run the app until the operator quits."""
    from .app import run_tui  # textual is imported here, not by every refscope command

    return run_tui(args.connect, stream=args.stream, events=args.events, log_file=args.log_file)

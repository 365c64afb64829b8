"""``refscope replay SESSION_DIR --into WATCH [--speed N | --gap-s S]``: argument parsing only (see
:mod:`refscope.daemon.ingest.replay`). Bad input (no such folder, no images, an unreadable image, a name that
already exists in WATCH) ends the command with one line naming the file on stderr and exit code 2."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_replay_parser", "run_replay_command"]


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``replay`` subcommand; its handler (``args.handler``) is :func:`run_replay_command`."""
    p = subparsers.add_parser(
        "replay", help="copy a past acquisition into a watched folder in acquisition order",
        description="Copy the images of SESSION_DIR into the watched folder WATCH in acquisition order (times from "
        "the vendor metadata, else the file's modification time), each copy atomic, with the session's real gaps "
        "(--speed N divides them, --gap-s S replaces them). SESSION_DIR is only read; nothing in WATCH is "
        "overwritten. Run `refscope daemon --watch WATCH ...` to try settings on a session you already have.")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more")
    p.add_argument("session_dir", metavar="SESSION_DIR", help="folder of the acquisition to replay (read only)")
    p.add_argument("--into", required=True, metavar="WATCH", help="the watched folder to copy the images into")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--speed", type=_positive, metavar="N", help="replay N times faster than acquired")
    timing.add_argument("--gap-s", type=_non_negative, metavar="S", help="S seconds between images instead")
    p.set_defaults(handler=run_replay_command)
    return p


def run_replay_command(args: argparse.Namespace) -> int:
    """Plan and run the replay, one line per image copied; returns 0 (errors propagate to the CLI: exit 2)."""
    from ..ingest.replay import plan_replay, replay

    items = plan_replay(args.session_dir)
    print(f"replaying {len(items)} image(s) from {args.session_dir} into {args.into}", flush=True)

    def report(item, target: Path, waited: float) -> None:
        note = "" if item.time_source == "metadata" else " (time from the file's modification time)"
        print(f"+{waited:7.1f} s  {item.path.name} -> {target}{note}", flush=True)

    replay(items, args.into, speed=args.speed, gap_s=args.gap_s, report=report)
    return 0

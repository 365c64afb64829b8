"""The command-line room: argparse only -- parse, build the options, call the offline room or the service.

:mod:`.commands` is ``refscope`` (every subcommand's parser and dispatch); :mod:`.batch`, :mod:`.daemon`,
:mod:`.keys` and :mod:`.replay` hold the parsers of the commands that have their own module. The work itself is
done by :mod:`refscope.daemon.offline` (fit, enhance, evaluate, train, batch, bench, demo, simulate) and
:mod:`refscope.daemon.service` (the daemon). The top of the house: nothing in ``refscope.daemon`` imports it, and
it holds the one line of the daemon that imports :mod:`refscope.tui` (the ``refscope tui`` parser).
"""
from .commands import build_parser, main

__all__ = ["main", "build_parser"]

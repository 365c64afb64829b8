"""refscope.tui — the operator's terminal UI (talks to the daemon only through its published protocol).

``refscope tui [--connect tcp://host:5560]`` runs :class:`RefscopeApp`; :func:`render_halfblock` is the pure
frame-to-terminal-cells renderer it uses. The app and the renderer import textual, so they are loaded on first
use (``import refscope.tui`` stays cheap for the CLI).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["RefscopeApp", "run_tui", "render_halfblock", "FakeDaemon"]

_WHERE = {"RefscopeApp": ".app", "run_tui": ".app", "render_halfblock": ".render", "FakeDaemon": ".simulator"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

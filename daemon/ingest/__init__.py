"""The ingest room: where frames come from.

Today it owns :mod:`.replay` (an acquisition folder played back into a watched folder, in acquisition order); the
folder, ZMQ and in-memory frame sources and the vendor file readers move here with the daemon's restructuring
(issue 14). Imports only the state/wire helpers (:mod:`refscope.daemon.atomic`, the file readers) and
:mod:`refscope.models`; nothing here imports the serving, learning or service rooms.
"""
from .replay import ReplayItem, ReplayError, plan_replay, replay

__all__ = ["ReplayItem", "ReplayError", "plan_replay", "replay"]

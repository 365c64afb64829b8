"""The ingest room: where frames come from.

The :class:`~refscope.daemon.frames.FrameSource` implementations: :mod:`.folder` (files appearing in an
acquisition folder, native events or polling), :mod:`.feed` (a ZMQ PULL/SUB feed in the v1 wire format),
:mod:`.memory` (an in-memory list for tests and a replay of a folder's files for offline runs) and :mod:`.replay`
(a past acquisition played back into a watched folder, in acquisition order). Files are read through the image
room (:mod:`refscope.daemon.images`), messages decoded through the wire room; nothing here imports the
configuration, serving, learning or service rooms.
"""
from .replay import ReplayItem, ReplayError, plan_replay, replay

__all__ = ["ReplayItem", "ReplayError", "plan_replay", "replay"]

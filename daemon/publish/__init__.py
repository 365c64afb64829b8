"""Where enhanced frames go: TIFF files in an output folder, a ZMQ stream for viewers, and a ZMQ event feed.

:class:`FolderPublisher` -- lossless. A worker thread writes each enhanced frame as an ImageJ TIFF carrying its
pixel size (:func:`~refscope.daemon.images.write_tiff`, atomic: a reader never sees a partial file and a
failed write leaves no temporary file). Overflow policy: frames wait in a bounded queue of ``queue_limit``
frames; :meth:`FolderPublisher.submit` blocks up to ``block_s`` seconds while the queue is full, and only if it
is still full after that is the frame dropped -- counted under ``"queue_full"`` and logged, never silently.
A failed write (disk full, permission denied...) is logged and counted by reason; the worker goes on with the
next frame.

Output names and the no-overwrite rule: the enhanced frame of ``/acq/frame_012.tif`` at scale S is
``<out_dir>/frame_012_x{S}.tif`` (and ``frame_012_x{S}_confidence.tif`` when a confidence map is given). Every
output carries, in its ImageJ ``Info`` metadata, the ``source`` and acquisition time ``source_t`` of the frame
it came from. Before writing, the candidate name is checked:

* absent: the frame is written there;
* present and written by refscope from the same frame (same ``source`` and ``source_t``): it is replaced
  atomically (re-processing after a restart, or with a newer model, neither duplicates nor corrupts it;
  counted as ``replaced``);
* present and anything else (not refscope's, or another frame whose file has the same stem, e.g. two
  sub-folders both holding ``image_001.tif``): never touched; the next name ``frame_012_x{S}-2.tif``,
  ``-3``... is tried the same way.

Only the publisher's own worker writes to ``out_dir``, so the check and the write do not race with each other.

:class:`StreamPublisher` -- lossy by design. A PUB socket with ``SNDHWM`` = ``hwm`` sends each enhanced frame
in the v1 wire format (:func:`~refscope.daemon.wire.protocol.encode_enhanced`) without blocking; a frame that cannot
be queued because a viewer is ``hwm`` frames behind is dropped and counted (``ZMQ_XPUB_NODROP`` makes libzmq
report it instead of dropping silently). Viewers therefore always get recent frames and refscope never waits
for them. Note: while any connected viewer is ``hwm`` frames behind, frames are dropped for all viewers, so a
viewer must keep reading (or disconnect).

:class:`EventPublisher` -- a PUB socket of JSON events, each a two-part message ``[b"event", json]`` with
``{"type": ..., "t": <unix seconds>, "payload": {...}}``; same non-blocking, counted-drop policy.

All sockets bind to the endpoint given (``tcp://127.0.0.1:*`` picks a free port; read ``bound_endpoint``).

The code lives in :mod:`.folder` (the folder writer, with :mod:`.spill` for failed writes), :mod:`.names`
(output names, ownership check) and :mod:`.sockets` (the PUB publishers); this module re-exports their public names.
"""
from __future__ import annotations

from .folder import FolderPublisher, PublishedFile, PublishStats
from .names import PUBLISH_LOGGER, output_names, output_stem
from .sockets import EVENT_TYPES, EventPublisher, StreamPublisher, StreamStats

__all__ = [
    "PUBLISH_LOGGER",
    "EVENT_TYPES",
    "PublishedFile",
    "PublishStats",
    "StreamStats",
    "FolderPublisher",
    "StreamPublisher",
    "EventPublisher",
    "output_stem",
    "output_names",
]

"""The wire room: what travels between refscope's processes, and the one place the daemon and the TUI both import.

:mod:`.protocol` is the v1 wire format of frames in and enhanced frames out (its vocabulary in :mod:`.schema`,
header checks in :mod:`.header`, :mod:`.encode` and :mod:`.decode`); :mod:`.sockets` opens a ZMQ socket the one
way every endpoint does; :mod:`.curve` holds the CURVE keys and authentication; :mod:`.control` the control
commands' vocabulary and validation and the client that sends them (the server is the service room's);
:mod:`.status` the ``status`` reply, typed (:class:`~refscope.daemon.wire.status.DaemonStatus`, built by the service
room and read back by the TUI with ``from_dict``) and a training round's result.

Imports only the daemon's foundation (:mod:`refscope.daemon.errors`, :mod:`refscope.daemon.frames`,
:mod:`refscope.daemon.atomic`, :mod:`refscope.daemon.worker`) and pyzmq.
"""

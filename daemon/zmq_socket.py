"""Open a ZMQ socket the one way every refscope endpoint does: options, bind (or connect), real endpoint."""
from __future__ import annotations

from collections.abc import Mapping

import zmq

from .errors import RefscopeError

__all__ = ["open_socket"]


def open_socket(context: zmq.Context, kind: int, endpoint: str, *, options: Mapping[int, object],
                bind: bool = True, what: str) -> tuple[zmq.Socket, str]:
    """Create a ``kind`` socket with LINGER 0 and ``options``, bind (or connect) it to ``endpoint``.

    Returns the socket and the endpoint actually used (``LAST_ENDPOINT``: the real port after ``:*``). On failure
    the socket is closed and :class:`RefscopeError` names ``what`` and the endpoint.
    """
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(option, value)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise RefscopeError(f"{what}: cannot {'bind' if bind else 'connect to'} {endpoint}: {exc}") from exc
    return sock, last.decode() if isinstance(last, bytes) and last else endpoint

"""Open a ZMQ socket the one way every refscope endpoint does: options, security, bind (or connect), real endpoint."""
from __future__ import annotations

from collections.abc import Mapping

import zmq

from .curve import CurveClientKeys, CurveContext, CurveServerKeys
from ..errors import RefscopeError

__all__ = ["open_socket"]


def open_socket(context: zmq.Context, kind: int, endpoint: str, *, options: Mapping[int, object],
                bind: bool = True, what: str,
                curve: CurveServerKeys | CurveClientKeys | None = None) -> tuple[zmq.Socket, str]:
    """Create a ``kind`` socket with LINGER 0 and ``options``, bind (or connect) it to ``endpoint``.

    ``curve`` makes it a CURVE server (:class:`~refscope.daemon.wire.curve.CurveServerKeys`) or client
    (:class:`~refscope.daemon.wire.curve.CurveClientKeys`). Left None, a socket *bound* in a :class:`~refscope.daemon.wire.curve.CurveContext` (the
    daemon's, when ``security.curve_dir`` is set) becomes a CURVE server with the context's keys, so that every
    endpoint of the daemon is secured the same way; otherwise the socket is plain.

    Returns the socket and the endpoint actually used (``LAST_ENDPOINT``: the real port after ``:*``). On failure
    the socket is closed and :class:`RefscopeError` names ``what`` and the endpoint.
    """
    if curve is None and bind and isinstance(context, CurveContext):
        curve = context.server_keys
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(option, value)
        if curve is not None:
            curve.apply(sock)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise RefscopeError(f"{what}: cannot {'bind' if bind else 'connect to'} {endpoint}: {exc}") from exc
    return sock, last.decode() if isinstance(last, bytes) and last else endpoint

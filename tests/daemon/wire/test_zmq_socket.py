"""open_socket: the real endpoint after ':*', and a bind failure named with the endpoint (socket closed)."""
from __future__ import annotations

import pytest
import zmq

from refscope.daemon.errors import RefscopeError
from refscope.daemon.wire.sockets import open_socket


def test_ephemeral_bind_reports_the_real_port_and_a_second_bind_fails_with_the_endpoint():
    context = zmq.Context()
    try:
        sock, bound = open_socket(context, zmq.PUB, "tcp://127.0.0.1:*", options={zmq.SNDHWM: 3}, what="test stream")
        try:
            assert bound.startswith("tcp://127.0.0.1:") and not bound.endswith("*")
            assert sock.getsockopt(zmq.SNDHWM) == 3 and sock.getsockopt(zmq.LINGER) == 0
            with pytest.raises(RefscopeError, match=f"test stream: cannot bind {bound}"):
                open_socket(context, zmq.PUB, bound, options={}, what="test stream")
        finally:
            sock.close(linger=0)
        with pytest.raises(RefscopeError, match="cannot connect to not-an-endpoint"):
            open_socket(context, zmq.PUSH, "not-an-endpoint", options={}, bind=False, what="feed")
    finally:
        context.term()

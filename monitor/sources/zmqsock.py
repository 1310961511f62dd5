"""The receive socket every ZeroMQ source opens: PULL or SUB, connect or bind, from its settings."""

from __future__ import annotations

import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import SourceError


def open_receive_socket(ctx: zmq.asyncio.Context, s: SourceSettings) -> tuple[zmq.asyncio.Socket, str]:
    """Create, configure and connect/bind the socket; returns it and the endpoint actually used
    (a port-0 bind shows the real port). A ZeroMQ error becomes a SourceError naming the source."""
    sock = ctx.socket(zmq.SUB if s.socket == "sub" else zmq.PULL)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, s.rcvhwm)
        if s.socket == "sub":
            # PUB/SUB drops silently when we fall behind: loss shows up in upstream_gaps().
            sock.setsockopt(zmq.SUBSCRIBE, s.topic.encode())
        if s.mode == "bind":
            sock.bind(s.endpoint)
        else:
            sock.connect(s.endpoint)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or s.endpoint
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        what = f"cannot {s.mode} {s.socket} socket to {s.endpoint!r}"
        raise SourceError(f"source {s.name!r}: {what}: {exc}") from exc
    return sock, endpoint

"""Loopback port helper for simulators, the demo, benchmarks and tests."""

from __future__ import annotations

import socket

import zmq
import zmq.asyncio


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def open_send_socket(
    endpoint: str,
    *,
    kind: str = "push",
    mode: str = "bind",
    sndhwm: int = 50,
    linger_ms: int = 0,
) -> zmq.asyncio.Socket:
    """The socket a simulated detector sends on: PUSH or PUB, bound or connected."""
    sock = zmq.asyncio.Context.instance().socket(zmq.PUSH if kind == "push" else zmq.PUB)
    try:
        sock.setsockopt(zmq.LINGER, linger_ms)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        if mode == "bind":
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock

"""The receive socket every ZeroMQ source opens: PULL or SUB, connect or bind, from its settings.

``ZMQ_MAXMSGSIZE`` bounds what libzmq buffers for one message part before we see it: a part
larger than :func:`max_message_bytes` disconnects its sender (counted by :class:`PeerEvents`)
instead of being buffered in full and then rejected. Parts up to that bound still arrive and are
rejected by the decoder as ``oversize`` with a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from monitor.aio import poll_async
from monitor.config import SourceSettings
from monitor.errors import SourceError

log = logging.getLogger("monitor.sources.zmq")


def open_receive_socket(ctx: zmq.asyncio.Context, s: SourceSettings) -> tuple[zmq.asyncio.Socket, str]:
    """Create, configure and connect/bind the socket; returns it and the endpoint actually used
    (a port-0 bind shows the real port). A ZeroMQ error becomes a SourceError naming the source."""
    sock = ctx.socket(zmq.SUB if s.socket == "sub" else zmq.PULL)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes(s))
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


OVERHEAD_BYTES = 1 << 20


def max_message_bytes(s: SourceSettings) -> int:
    """``ZMQ_MAXMSGSIZE`` for a source: twice the largest part its decoder accepts (Stream V2
    carries up to four channels per message), plus 1 MiB for headers and start messages."""
    per_message = (4 if s.kind == "stream2" else 1) * s.max_frame_bytes + OVERHEAD_BYTES
    return 2 * per_message


class PeerEvents:
    """Counts peers that disconnected: a message part over ``ZMQ_MAXMSGSIZE``, or a sender that
    went away (libzmq reports both as a disconnect). Non-blocking; call :meth:`poll` from the
    receive loop."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock
        mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._mon = mon
        self._direct: zmq.SyncSocket = zmq.Socket.shadow(mon.underlying)
        self.disconnects = 0

    def poll(self) -> int:
        """Drain pending monitor events; returns how many disconnects were new."""
        new = 0
        while True:
            try:
                self._direct.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                break  # monitor already closed
            new += 1
        self.disconnects += new
        return new

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):  # the socket is already closed
            self._sock.disable_monitor()
        self._mon.close(linger=0)


class GapCounter:
    """Counts frame numbers skipped by the sender's numbering, per stream within a series."""

    def __init__(self) -> None:
        self.total = 0
        self._last: dict[str, tuple[str, int]] = {}

    def observe(self, stream: str, series: str, index: int) -> int:
        """Record a received frame number; return how many numbers it skipped (0 if none)."""
        if index < 0:
            return 0
        prev = self._last.get(stream)
        self._last[stream] = (series, index)
        if prev is None or prev[0] != series or index <= prev[1] + 1:
            return 0  # first frame, new series, in order, or a backwards jump (restart): reset
        missing = index - prev[1] - 1
        self.total += missing
        return missing

    def reset(self, series: str) -> None:
        """A series started or ended: forget what we know about its numbering."""
        self._last = {k: v for k, v in self._last.items() if v[0] != series}


class ZmqReceiver:
    """The one receive loop of every ZeroMQ source: poll, then drain up to ``burst`` queued
    messages with NOBLOCK receives on a synchronous shadow of the socket (no future per message:
    measurably cheaper at thousands of frames/s), handing each to ``handle``; peer disconnects
    (``ZMQ_MAXMSGSIZE``) are counted. A source is then a decoder plus its protocol state."""

    def __init__(
        self,
        name: str,
        sock: zmq.asyncio.Socket,
        max_bytes: int,
        *,
        poll_ms: int = 50,
        multipart: bool = True,
        burst: int = 256,
    ) -> None:
        self.name = name
        self._sock = sock
        self._max_bytes = max_bytes
        self._poll_ms = poll_ms
        self._multipart = multipart
        self._burst = burst
        self.disconnects = 0

    async def run(self, handle: Callable[[list[zmq.Frame]], Awaitable[None]], stop: asyncio.Event) -> None:
        sock = self._sock
        direct: zmq.SyncSocket = zmq.Socket.shadow(sock.underlying)
        peers = PeerEvents(sock)
        try:
            while not stop.is_set():
                if peers.poll():
                    log.warning(
                        "source %r: a sender disconnected (%d so far: a sender that stopped, or one "
                        "whose message part exceeded ZMQ_MAXMSGSIZE = %d bytes)",
                        self.name, peers.disconnects, self._max_bytes,
                    )  # fmt: skip
                if not await poll_async(sock, self._poll_ms, zmq.POLLIN):
                    continue
                for _ in range(self._burst):
                    try:
                        if self._multipart:
                            parts = direct.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        else:
                            parts = [direct.recv(flags=zmq.NOBLOCK, copy=False)]
                    except zmq.Again:
                        break
                    await handle(parts)
                    if stop.is_set():
                        break
        finally:
            peers.poll()
            self.disconnects = peers.disconnects
            peers.close()

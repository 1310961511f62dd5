"""Small asyncio helpers shared by sources, simulators and the daemon's periodic tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import zmq.asyncio


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; return True if stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def poll_async(sock: zmq.asyncio.Socket, timeout_ms: int, flags: int) -> int:
    """``await sock.poll(timeout_ms, flags)``: the event mask, 0 on timeout. pyzmq's stubs (27.x)
    declare the asyncio socket's ``poll`` with a timeout only; at run time it takes ``flags`` too."""
    poll = cast(Callable[[int, int], Awaitable[int]], sock.poll)
    return await poll(timeout_ms, flags)

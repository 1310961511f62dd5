"""The Source protocol: a coroutine that turns messages into ingest events.

A source never raises on bad input: a message that cannot become a frame is emitted as a
:class:`~monitor.frames.Rejection` with a reason code and one clear log line. ``emit`` may
apply back-pressure (it awaits a bounded queue); sources must not drop on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from monitor.frames import IngestEvent

Emit = Callable[[IngestEvent], Awaitable[None]]


@runtime_checkable
class Source(Protocol):
    name: str

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Emit events until ``stop`` is set (or, for finite sources, the input ends)."""
        ...

    def upstream_gaps(self) -> int:
        """Frames the sender numbered but we never received (PUB/SUB loss, restarts)."""
        ...

"""The Source protocol: a coroutine that turns messages into ingest events.

A source never raises on bad input: a message that cannot become a frame is emitted as a
:class:`~monitor.frames.Rejection` with a reason code and one clear log line. ``emit`` may
apply back-pressure (it awaits a bounded queue); sources must not drop on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from monitor.errors import FrameRejected
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


_traced: set[tuple[str, str]] = set()


def as_rejection(exc: Exception, source: str, logger: logging.Logger) -> FrameRejected:
    """Any decode exception as a rejection: a :class:`FrameRejected` as is, anything else (a
    decoder bug, an ``OverflowError`` from a bignum) as ``internal_error`` naming the exception
    type. The traceback of each unexpected exception type is logged once per source."""
    if isinstance(exc, FrameRejected):
        return exc
    kind = type(exc).__name__
    if (source, kind) not in _traced:
        _traced.add((source, kind))
        logger.error("source %r: unexpected %s while decoding (stored as internal_error)", source, kind,
                     exc_info=exc)  # fmt: skip
    return FrameRejected("internal_error", f"{kind}: {str(exc)[:200]}")

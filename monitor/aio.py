"""Small asyncio helpers shared by sources, simulators and the daemon's periodic tasks."""

from __future__ import annotations

import asyncio


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

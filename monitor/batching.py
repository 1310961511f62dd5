"""Gather frames into batches for the router's pipeline workers: up to ``max_batch`` items,
waiting at most ``max_wait_s`` for more.

Generic over the item type. The batch
list is filled in place (``into``) so a caller cancelled mid-gather still knows which items it
holds and can account for them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

T = TypeVar("T")


async def gather_batch(
    queue: asyncio.Queue[T], max_batch: int, max_wait_s: float = 0.0, into: list[T] | None = None
) -> list[T]:
    """Wait for one item, then take more until ``max_batch`` or until ``max_wait_s`` has passed.

    With ``max_wait_s == 0`` only items already queued join the batch (no added latency).
    """
    batch: list[T] = [] if into is None else into
    batch.append(await queue.get())
    deadline = time.monotonic() + max_wait_s
    while len(batch) < max_batch:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch

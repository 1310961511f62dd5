"""Suite-wide fixtures: async tests must not leak tasks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]
    for t in leaked:
        t.cancel()
    if leaked:
        await asyncio.gather(*leaked, return_exceptions=True)
    assert not leaked, f"test leaked {len(leaked)} task(s): {[t.get_name() for t in leaked]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn) and isinstance(item, pytest.Function):
            item.fixturenames.insert(0, "no_leaked_tasks")  # set up first, checked last

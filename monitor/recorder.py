"""Recorder: the asyncio side of the HDF5 store.

Every write is buffered on the event loop (cheap list appends) and handed, in batches, to ONE
writer thread that owns the h5py file. Nothing is ever dropped: buffers are unbounded and are
flushed every ``flush_interval_s`` and on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from monitor.aio import sleep_unless
from monitor.alerts.model import AlarmEvent
from monitor.errors import InvalidResult, StoreError
from monitor.frames import Disposition
from monitor.pipelines.base import Result
from monitor.store import RunStore
from monitor.telemetry import TelemetrySnapshot

log = logging.getLogger("monitor.recorder")


@dataclass
class _Pending:
    dispositions: list[Disposition] = field(default_factory=list)
    results: dict[str, list[Result]] = field(default_factory=dict)
    alarms: list[AlarmEvent] = field(default_factory=list)
    telemetry: list[TelemetrySnapshot] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.dispositions or self.results or self.alarms or self.telemetry)


class Recorder:
    def __init__(self, open_store: Callable[[], RunStore], flush_interval_s: float) -> None:
        self._open_store = open_store
        self._flush_interval = flush_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._store: RunStore | None = None
        self._pending = _Pending()
        self._lock = asyncio.Lock()
        self.dispositions_written = 0
        self.write_errors = 0
        self.results_refused = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, self._open_store)

    # Loop-thread API: never blocks.
    def add_disposition(self, d: Disposition) -> None:
        self._pending.dispositions.append(d)

    def add_results(self, pipeline: str, results: list[Result]) -> None:
        self._pending.results.setdefault(pipeline, []).extend(results)

    def add_alarm(self, event: AlarmEvent) -> None:
        self._pending.alarms.append(event)

    def add_telemetry(self, snap: TelemetrySnapshot) -> None:
        self._pending.telemetry.append(snap)

    def _write(self, batch: _Pending) -> int:
        store = self._store
        assert store is not None, "Recorder.open() was not awaited"
        for pipeline, results in batch.results.items():
            try:
                store.write_results(pipeline, results)
            except InvalidResult as exc:
                # A pipeline bug: retrying cannot help. Its frames keep their dispositions.
                self.results_refused += len(results)
                log.error("store refused %d result(s) of pipeline %s: %s", len(results), pipeline, exc)
        if batch.dispositions:
            store.write_dispositions(batch.dispositions)
        if batch.alarms:
            store.write_alarm_events(batch.alarms)
        if batch.telemetry:
            store.write_telemetry(batch.telemetry)
        store.flush()
        return len(batch.dispositions)

    async def flush(self) -> None:
        """Write everything buffered so far and flush the file."""
        async with self._lock:
            if self._pending.empty():
                return
            batch, self._pending = self._pending, _Pending()
            loop = asyncio.get_running_loop()
            try:
                self.dispositions_written += await loop.run_in_executor(self._executor, self._write, batch)
            except (StoreError, OSError, RuntimeError) as exc:
                # I/O trouble (disk full, file gone): keep the rows for the next try.
                self.write_errors += 1
                log.error("store write failed (will retry with the next flush): %s", exc)
                self._requeue(batch)

    def _requeue(self, batch: _Pending) -> None:
        newer, self._pending = self._pending, batch
        self._pending.dispositions.extend(newer.dispositions)
        for k, v in newer.results.items():
            self._pending.results.setdefault(k, []).extend(v)
        self._pending.alarms.extend(newer.alarms)
        self._pending.telemetry.extend(newer.telemetry)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_unless(stop, self._flush_interval)
            await self.flush()

    async def close(self) -> None:
        await self.flush()
        if self._store is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

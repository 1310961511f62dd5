"""Recorder: the asyncio side of the HDF5 store.

Every write is buffered on the event loop (cheap list appends) and handed, in batches, to ONE
writer thread that owns the h5py file. Nothing is ever dropped: buffers are flushed every
``flush_interval_s``, on close, and early when the pending result arrays pass
``max_pending_bytes`` (pending results never hold the detector frames themselves).

Recording never stops while the daemon runs: a row the store cannot write (a pipeline's
off-schema result, a number out of the column's range) is refused and counted, and the rest of
its batch is written; I/O errors keep the batch for the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from monitor.alerts.model import AlarmEvent
from monitor.errors import InvalidResult, StoreError
from monitor.frames import Disposition, Frame, Result
from monitor.logutil import RateLimitedLog
from monitor.store import RunStore
from monitor.telemetry import TelemetrySnapshot

log = logging.getLogger("monitor.recorder")

_NO_PIXELS = np.empty((0, 0), dtype=np.uint8)
_INT64 = (-(2**63), 2**63 - 1)
ROW_ERRORS = (InvalidResult, OverflowError, ValueError, TypeError, UnicodeError)
"""What makes one row unwritable (as opposed to I/O trouble, which is retried)."""


def without_pixels(r: Result) -> Result:
    """The result as the store needs it: the frame's identity and metadata, not its pixels."""
    f = r.frame
    if f.array.size == 0:
        return r
    frame = Frame(
        f.stream, f.source, f.series, f.index, _NO_PIXELS, f.t_detector, f.t_received, f.meta, f.seq
    )
    return Result(r.pipeline, frame, r.scalars, r.arrays, r.latency)


def _int64(value: int) -> int:
    return value if _INT64[0] <= value <= _INT64[1] else -1


def sanitized(d: Disposition) -> Disposition:
    """A disposition whose numbers fit the frames table (an out-of-range index becomes -1)."""
    t = [
        v if isinstance(v, float) and math.isfinite(v) else math.nan
        for v in (d.t_detector, d.t_received, d.t_done)
    ]
    return Disposition(
        _int64(d.seq), str(d.source), str(d.stream), str(d.series), _int64(d.index), str(d.pipeline),
        d.status, str(d.reason), t[0], t[1], t[2],
    )  # fmt: skip


@dataclass
class _Pending:
    dispositions: list[Disposition] = field(default_factory=list)
    results: dict[str, list[Result]] = field(default_factory=dict)
    alarms: list[AlarmEvent] = field(default_factory=list)
    telemetry: list[TelemetrySnapshot] = field(default_factory=list)
    nbytes: int = 0
    """Bytes of result arrays held (masks, ROIs): what a flush interval costs in memory."""

    def empty(self) -> bool:
        return not (self.dispositions or self.results or self.alarms or self.telemetry)


class Recorder:
    def __init__(
        self,
        open_store: Callable[[], RunStore],
        flush_interval_s: float,
        max_pending_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._open_store = open_store
        self._flush_interval = flush_interval_s
        self._max_pending = max_pending_bytes
        self._wake = asyncio.Event()
        self.early_flushes = 0
        self.dispositions_refused = 0
        self._refusals = RateLimitedLog(log, interval_s=10.0, what="refused rows")
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
        kept = [without_pixels(r) for r in results]
        self._pending.results.setdefault(pipeline, []).extend(kept)
        for r in kept:
            for a in r.arrays.values():
                self._pending.nbytes += getattr(a, "nbytes", 0)
        if self._pending.nbytes > self._max_pending and not self._wake.is_set():
            self.early_flushes += 1
            self._wake.set()  # flush now rather than hold more than the cap until the next tick

    def add_alarm(self, event: AlarmEvent) -> None:
        self._pending.alarms.append(event)

    def add_telemetry(self, snap: TelemetrySnapshot) -> None:
        self._pending.telemetry.append(snap)

    def _write(self, batch: _Pending) -> int:
        store = self._store
        assert store is not None, "Recorder.open() was not awaited"
        for pipeline, results in batch.results.items():
            self._write_results(store, pipeline, results)
        if batch.dispositions:
            self._write_dispositions(store, batch.dispositions)
        if batch.alarms:
            store.write_alarm_events(batch.alarms)
        if batch.telemetry:
            store.write_telemetry(batch.telemetry)
        store.flush()
        return len(batch.dispositions)

    def _write_results(self, store: RunStore, pipeline: str, results: list[Result]) -> None:
        try:
            store.write_results(pipeline, results)
            return
        except ROW_ERRORS:
            pass  # find the bad result(s): write one at a time below
        for r in results:
            try:
                store.write_results(pipeline, [r])
            except ROW_ERRORS as exc:
                # A pipeline bug or a value out of range: retrying cannot help. Its frame keeps its
                # disposition; the rest of the batch is written.
                self.results_refused += 1
                self._refusals.warn(
                    f"results:{pipeline}",
                    f"store refused a result of pipeline {pipeline} (seq {r.frame.seq}, frame "
                    f"{r.frame.index}): {type(exc).__name__}: {exc}",
                )

    def _write_dispositions(self, store: RunStore, rows: list[Disposition]) -> None:
        try:
            store.write_dispositions(rows)
            return
        except ROW_ERRORS:
            pass
        for d in rows:
            try:
                store.write_dispositions([d])
                continue
            except ROW_ERRORS as exc:
                self._refusals.warn(
                    "dispositions",
                    f"frames row of seq {d.seq} stored with out-of-range fields cleared: {exc}",
                )
            try:
                store.write_dispositions([sanitized(d)])
            except ROW_ERRORS as exc:
                self.dispositions_refused += 1
                log.error("store refused the frames row of seq %s: %s: %s", d.seq, type(exc).__name__, exc)

    async def flush(self) -> None:
        """Write everything buffered so far and flush the file."""
        async with self._lock:
            if self._pending.empty():
                return
            batch, self._pending = self._pending, _Pending()
            loop = asyncio.get_running_loop()
            try:
                self.dispositions_written += await loop.run_in_executor(self._executor, self._write, batch)
            except Exception as exc:  # counted, logged, the rows kept for the next try
                # I/O trouble (disk full, file gone) is expected; anything else gets its traceback.
                expected = isinstance(exc, StoreError | OSError | RuntimeError)
                self.write_errors += 1
                log.error(
                    "store write failed (will retry with the next flush): %s", exc, exc_info=not expected
                )
                self._requeue(batch)

    def _requeue(self, batch: _Pending) -> None:
        newer, self._pending = self._pending, batch
        self._pending.dispositions.extend(newer.dispositions)
        for k, v in newer.results.items():
            self._pending.results.setdefault(k, []).extend(v)
        self._pending.alarms.extend(newer.alarms)
        self._pending.telemetry.extend(newer.telemetry)
        self._pending.nbytes += newer.nbytes

    @property
    def pending_bytes(self) -> int:
        return self._pending.nbytes

    async def run(self, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if not self._wake.is_set():
                    woken = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait(
                        {stopped, woken}, timeout=self._flush_interval, return_when="FIRST_COMPLETED"
                    )
                    woken.cancel()
                self._wake.clear()
                await self.flush()
        finally:
            stopped.cancel()

    async def close(self) -> None:
        await self.flush()
        if self._store is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

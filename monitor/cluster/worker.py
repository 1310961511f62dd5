"""A pipeline worker whose batches run on Ray actors.

Same queue, overload policy, stale skip and result path as :class:`monitor.router.PipelineWorker`
(so every frame keeps exactly one row); only *where* ``process`` runs changes. Stateless
pipelines go to the least-loaded replica with up to ``in_flight`` batches each; keyed pipelines
(:data:`monitor.cluster.KEYED_KINDS`) pin each (stream, series) to one replica, whose calls Ray
runs in submission order. A replica that dies fails its in-flight frames ``worker_lost``; Ray
restarts it; the series it held are reported lost (``series_state_lost``) and start afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
import ray.exceptions

from monitor.batching import gather_batch
from monitor.cluster.actor import Reply, portable
from monitor.cluster.routing import ReplicaTable, SeriesKey
from monitor.frames import Frame, Latency, Result
from monitor.router import BatchOutcome, PipelineWorker

log = logging.getLogger("monitor.cluster")

SeriesLostHandler = Callable[[str, SeriesKey, str], None]
"""(pipeline, (stream, series), why): a keyed series' state is gone; it restarts empty."""


class RayPipelineWorker(PipelineWorker):
    def __init__(self, *args: Any, actors: Sequence[Any], in_flight: int, keyed: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actors = list(actors)
        self.keyed = keyed
        self.table = ReplicaTable(len(self.actors), in_flight)
        self.on_series_lost: SeriesLostHandler | None = None
        self.series_lost = 0
        self.hop_s: list[float] = []
        """Per-batch round trip minus actor compute (bounded; for the bench and telemetry)."""
        self._pending: set[asyncio.Task[None]] = set()
        self._capacity = asyncio.Event()

    # ---- dispatch ---------------------------------------------------------------------------
    async def _wait_for(self, replica: int | None) -> int:
        """A replica with room for one more batch (``replica``: that one, else the least loaded)."""
        while True:
            choice = self.table.least_loaded() if replica is None else replica
            if choice is not None and self.table.in_flight[choice] < self.table.in_flight_limit:
                return choice
            self._capacity.clear()
            await self._capacity.wait()

    def _groups(self, work: list[Frame]) -> list[tuple[int | None, list[Frame]]]:
        if not self.keyed:
            return [(None, work)]
        groups: dict[int, list[Frame]] = {}
        for f in work:  # order within a replica is kept: one series is never reordered
            groups.setdefault(self.table.replica_for((f.stream, f.series)), []).append(f)
        return list(groups.items())

    async def run(self) -> None:
        waiting: list[Frame] = []
        try:
            while True:
                batch: list[Frame] = []
                waiting = batch  # filled in place: frames taken but not sent yet
                await gather_batch(
                    self.queue, self.settings.max_batch, self.settings.max_wait_ms / 1000.0, into=batch
                )
                work = self.drop_stale(batch)
                for _ in range(len(batch) - len(work)):  # stale frames have their row already
                    self.queue.task_done()
                groups = self._groups(work)
                for k, (replica, frames) in enumerate(groups):
                    waiting = [f for _, rest in groups[k:] for f in rest]
                    chosen = await self._wait_for(replica)
                    self._dispatch(chosen, frames)
                waiting = []
        except asyncio.CancelledError:
            for f in waiting:  # taken from the queue, never sent: still one row each
                self.skip(f, "shutdown")
                self.queue.task_done()
            for t in list(self._pending):
                t.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)
            raise

    def _dispatch(self, replica: int, frames: list[Frame]) -> None:
        self.table.in_flight[replica] += 1
        t_start = time.time()
        ref = self.actors[replica].process.remote([portable(f) for f in frames])
        task = asyncio.ensure_future(self._collect(replica, ref, frames, t_start))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # ---- results ----------------------------------------------------------------------------
    async def _collect(self, replica: int, ref: Any, frames: list[Frame], t_start: float) -> None:
        accounted = False
        try:
            try:
                reply: Reply = await ref
            except ray.exceptions.RayTaskError as exc:  # an error the pipeline did not handle
                accounted = True
                self._fault(frames, RuntimeError(f"{exc.cause!r}" if exc.cause else str(exc)[:200]))
                return
            except ray.exceptions.RayError as exc:  # the replica's process or node is gone
                accounted = True
                self._lost(replica, frames, exc)
                return
            if self.table.answered(replica, reply.incarnation) and self.keyed:
                self._series_lost(replica, f"replica {replica} restarted ({reply.incarnation})")
            t_back = time.time()
            if len(self.hop_s) < 100_000:
                self.hop_s.append(max(0.0, t_back - t_start - reply.t_compute))
            if reply.error:
                outcome = BatchOutcome([], [], reply.error)
            else:
                results = [
                    Result(self.name, f, o.scalars, o.arrays, Latency(compute=o.compute_s))
                    for f, o in zip(frames, reply.outputs, strict=True)
                ]
                if self._live_interval is None:
                    outcome = BatchOutcome(results, [])
                else:  # display images off the loop, like the in-process worker
                    loop = asyncio.get_running_loop()
                    outcome = await loop.run_in_executor(self._executor, self.outcome, results)
            accounted = True
            try:
                self._finish(frames, outcome, t_start)
            except Exception as exc:  # a bug after compute must not stop the worker
                log.exception("pipeline %s: handling results failed", self.name)
                self._fail(frames, f"{type(exc).__name__}: {exc}", time.time())
        except asyncio.CancelledError:
            if not accounted:
                for f in frames:
                    self.skip(f, "shutdown")
                accounted = True
            raise
        finally:
            if not accounted:  # pragma: no cover - defensive: every path above accounts
                self._fail(frames, "worker_lost: result never arrived", time.time())
            self.table.in_flight[replica] -= 1
            for _ in frames:
                self.queue.task_done()
            self._capacity.set()

    def _lost(self, replica: int, frames: list[Frame], exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        self._failures.warn(
            "worker_lost", f"pipeline {self.name} replica {replica} lost {len(frames)} frame(s): {why}"
        )
        self._fail(frames, f"worker_lost: {why}", time.time())
        if self.keyed and self.table.replica_died(replica):
            self._series_lost(replica, f"replica {replica} died ({type(exc).__name__})")

    def _series_lost(self, replica: int, why: str) -> None:
        for key in self.table.series_on(replica):
            self.series_lost += 1
            log.warning(
                "series_state_lost: pipeline %s stream %s series %s (%s); it restarts with empty state",
                self.name, key[0], key[1], why,
            )  # fmt: skip
            if self.on_series_lost is not None:
                self.on_series_lost(self.name, key, why)

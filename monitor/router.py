"""Router and pipeline workers: every frame gets a disposition, nothing is dropped silently.

The router runs on the event loop: it numbers every ingest event (``seq``), counts it, routes
frames by stream to pipeline workers, and records rejections. Each worker owns a bounded queue
with a named overload policy and runs its pipeline in an executor thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from monitor.batching import gather_batch
from monitor.config import PipelineSettings
from monitor.frames import Disposition, Frame, Rejection, SeriesEvent, Status
from monitor.live import LiveFrame, LivePoint, display_image
from monitor.logutil import RateLimitedLog
from monitor.pipelines.base import LiveOverlays, Pipeline, Result
from monitor.telemetry import Telemetry

log = logging.getLogger("monitor.router")

ResultsHandler = Callable[[Pipeline, list[Result]], None]
DispositionHandler = Callable[[Disposition], None]


@dataclasses.dataclass(frozen=True, slots=True)
class BatchOutcome:
    results: list[Result]
    live: list[LiveFrame]
    error: str = ""
    points: tuple[LivePoint, ...] = ()


class PipelineWorker:
    def __init__(
        self,
        pipeline: Pipeline,
        settings: PipelineSettings,
        executor: Executor,
        telemetry: Telemetry,
        on_results: ResultsHandler,
        on_disposition: DispositionHandler,
        on_live: Callable[[LiveFrame], None],
        live_interval_s: float | None = 0.2,
        on_points: Callable[[list[LivePoint]], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._executor = executor
        self._telemetry = telemetry
        self._on_results = on_results
        self._on_disposition = on_disposition
        self._on_live = on_live
        self._on_points = on_points
        self._live_interval = live_interval_s
        self._last_live: dict[str, float] = {}
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=settings.queue_size)
        self._failures = RateLimitedLog(log, what="failures")
        self.on_fault: Callable[[str, BaseException], None] | None = None
        """Called (on the loop) when a batch fails outside the pipeline's own error handling."""
        self.dead = ""
        """Why this worker's task ended (set by the supervisor): its frames are stored as failed."""

    @property
    def name(self) -> str:
        return self.pipeline.name

    def skip(self, frame: Frame, reason: str) -> None:
        self._telemetry.skipped[reason] += 1
        self._on_disposition(Disposition.for_frame(frame, self.name, Status.SKIPPED, reason))

    async def submit(self, frame: Frame) -> None:
        if self.dead:  # never block the sources on a worker that is gone
            self._fail([frame], self.dead, time.time())
            return
        if self.settings.policy == "block":
            await self.queue.put(frame)
            return
        if self.queue.full():
            oldest = self.queue.get_nowait()
            self.queue.task_done()
            self.skip(oldest, "overload")
        self.queue.put_nowait(frame)

    def _compute(self, batch: list[Frame]) -> BatchOutcome:
        """Runs in the executor thread: the pipeline plus display downsampling."""
        try:
            results = self.pipeline.process(batch)
        except (
            ValueError,
            TypeError,
            ArithmeticError,
            RuntimeError,
            MemoryError,
            IndexError,
            KeyError,
        ) as exc:
            return BatchOutcome([], [], f"{type(exc).__name__}: {exc}")
        if len(results) != len(batch):
            return BatchOutcome([], [], f"pipeline returned {len(results)} results for {len(batch)} frames")
        return self.outcome(results)

    def outcome(self, results: list[Result]) -> BatchOutcome:
        """Results plus the display images and live points due for them (any thread)."""
        live: list[LiveFrame] = []
        if self._live_interval is None:  # no display attached: don't spend CPU on images
            return BatchOutcome(results, live)
        now = time.monotonic()
        points = tuple(
            LivePoint(
                pipeline=self.name,
                stream=r.frame.stream,
                series=r.frame.series,
                index=r.frame.index,
                t=r.frame.t_received,
                scalars=tuple((k, float(v)) for k, v in r.scalars.items()),
            )
            for r in results
        )
        for res, point in zip(results, points, strict=True):
            stream = res.frame.stream
            if now - self._last_live.get(stream, -1e9) >= self._live_interval:
                self._last_live[stream] = now
                f = res.frame
                image = display_image(f.array)
                overlays: tuple[tuple[str, np.ndarray], ...] = ()
                if isinstance(self.pipeline, LiveOverlays):
                    drawn = self.pipeline.display_overlays(res, (image.shape[0], image.shape[1]))
                    overlays = tuple(drawn.items())
                live.append(
                    LiveFrame(
                        stream=stream,
                        source=f.source,
                        series=f.series,
                        index=f.index,
                        t_received=f.t_received,
                        image=image,
                        scalars=point.scalars,
                        pipeline=self.name,
                        overlays=overlays,
                    )
                )
        return BatchOutcome(results, live, points=points)

    def drop_stale(self, batch: list[Frame], now: float | None = None) -> list[Frame]:
        """Skip (reason ``stale``) the frames older than ``max_latency_ms``; return the rest."""
        limit = self.settings.max_latency_ms / 1000.0
        if limit <= 0:
            return batch
        now = time.time() if now is None else now
        fresh = []
        for f in batch:
            if now - f.t_received > limit:
                self.skip(f, "stale")
            else:
                fresh.append(f)
        return fresh

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[Frame] = []
            work: list[Frame] | None = None
            try:
                await gather_batch(
                    self.queue, self.settings.max_batch, self.settings.max_wait_ms / 1000.0, into=batch
                )
                work = self.drop_stale(batch)
                if not work:
                    continue
                t_start = time.time()
                try:
                    outcome = await loop.run_in_executor(self._executor, self._compute, work)
                except Exception as exc:  # noqa: BLE001 - outside process()'s errors: a fault
                    self._fault(work, exc)
                    continue
                try:
                    self._finish(work, outcome, t_start)
                except Exception as exc:  # a bug after compute must not stop the worker
                    log.exception("pipeline %s: handling results failed", self.name)
                    self._fail(work, f"{type(exc).__name__}: {exc}", time.time())
            except asyncio.CancelledError:
                # Cancelled mid-batch (forced shutdown): account for the frames, then stop.
                for f in batch if work is None else work:
                    self.skip(f, "shutdown")
                raise
            except Exception as exc:
                # The worker itself is dying (a bug outside the batch): its frames still get rows;
                # the supervisor then stores every later frame as failed (``run_dead``).
                dying = batch if work is None else work  # stale frames already have their row
                self._fail(dying, f"worker_dead: {type(exc).__name__}: {exc}", time.time())
                raise
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _fault(self, batch: Sequence[Frame], exc: Exception) -> None:
        """A batch failed outside the pipeline's own error handling (an engine error, a bug in
        ``display_overlays``): its frames are stored as failed and the supervisor is told (alarm,
        traceback once, non-zero exit). The worker carries on with the next batch."""
        self._fail(batch, f"{type(exc).__name__}: {exc}", time.time())
        if self.on_fault is not None:
            self.on_fault(f"pipeline:{self.name}", exc)
        else:
            log.error("pipeline %s: batch failed", self.name, exc_info=exc)

    async def run_dead(self, reason: str) -> None:
        """Stand in for a worker whose task died: every frame queued or routed to it is stored as
        failed with ``reason`` (so ``policy = "block"`` cannot stall the sources)."""
        self.dead = reason
        while True:
            frame = await self.queue.get()
            try:
                self._fail([frame], reason, time.time())
            finally:
                self.queue.task_done()

    def _finish(self, batch: Sequence[Frame], outcome: BatchOutcome, t_start: float) -> None:
        t_done = time.time()
        if outcome.error:
            self._failures.warn(
                outcome.error.split(":", 1)[0],
                f"pipeline {self.name} failed on {len(batch)} frame(s): {outcome.error}",
            )
            self._fail(batch, outcome.error, t_done)
            return
        # Batch latency is accounted back to every frame of the batch.
        results = [
            dataclasses.replace(
                r,
                latency=dataclasses.replace(
                    r.latency,
                    queued=t_start - r.frame.t_received,
                    compute=r.latency.compute or (t_done - t_start),
                    batch_size=len(batch),
                ),
            )
            for r in outcome.results
        ]
        self._on_results(self.pipeline, results)
        for r in results:
            self._telemetry.processed[self.name] += 1
            self._telemetry.rate_out.mark()
            self._telemetry.observe_latency(t_done - r.frame.t_received, self.name)
            self._on_disposition(Disposition.for_frame(r.frame, self.name, Status.PROCESSED, "", t_done))
        for lf in outcome.live:
            self._on_live(lf)
        if self._on_points is not None and outcome.points:
            self._on_points(list(outcome.points))

    def _fail(self, batch: Sequence[Frame], error: str, t_done: float) -> None:
        reason = error.split(":", 1)[0][:60]
        for f in batch:
            self._telemetry.failed[self.name] += 1
            self._on_disposition(Disposition.for_frame(f, self.name, Status.FAILED, reason, t_done))

    def drain_remaining(self, reason: str) -> int:
        """Mark every still-queued frame skipped (shutdown past its deadline). Returns the count."""
        self._failures.flush(f"pipeline {self.name}")
        n = 0
        while not self.queue.empty():
            self.skip(self.queue.get_nowait(), reason)
            self.queue.task_done()
            n += 1
        return n


class Router:
    def __init__(
        self, workers: Sequence[PipelineWorker], telemetry: Telemetry, on_disposition: DispositionHandler
    ) -> None:
        self._telemetry = telemetry
        self._on_disposition = on_disposition
        self._seq = 0
        self.last_seen: dict[str, float] = {}
        self._by_stream: dict[str, list[PipelineWorker]] = {}
        for w in workers:
            for s in w.settings.streams:
                self._by_stream.setdefault(s, []).append(w)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def route(self, event: Frame | Rejection | SeriesEvent) -> None:
        self.last_seen[event.source] = time.monotonic()
        if isinstance(event, SeriesEvent):
            log.info("series %s on %s: %s", event.kind, event.source, event.series)
            return
        seq = self._next_seq()
        self._telemetry.received[event.source] += 1
        self._telemetry.rate_in.mark()
        if isinstance(event, Rejection):
            self._telemetry.rejected[event.reason] += 1
            self._on_disposition(Disposition.for_rejection(dataclasses.replace(event, seq=seq)))
            return
        frame = event.with_seq(seq)
        workers = self._by_stream.get(frame.stream, [])
        if not workers:
            self._telemetry.skipped["no_pipeline"] += 1
            self._on_disposition(Disposition.for_frame(frame, "", Status.SKIPPED, "no_pipeline"))
            return
        for i, w in enumerate(workers):
            try:
                await w.submit(frame)
            except asyncio.CancelledError:
                # Cancelled while blocked on a full queue (forced shutdown): still accounted for.
                for rest in workers[i:]:
                    rest.skip(frame, "shutdown")
                raise

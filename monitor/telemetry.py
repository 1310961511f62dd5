"""Counters and latency histograms: every received message is accounted for here.

Invariant (checked by tests and the ingest benchmark)::

    received == rejected + routed_frames
    per pipeline: routed == processed + skipped + failed + (still queued or computing)

Counters are only touched from the event-loop thread, except :meth:`Telemetry.observe_latency`,
which takes a lock (pipelines report from executor threads).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np


class LatencyWindow:
    """Latencies of the last ``size`` frames, for p50/p99 (seconds)."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles(self) -> tuple[float, float]:
        with self._lock:
            if not self._values:
                return (float("nan"), float("nan"))
            arr = np.fromiter(self._values, dtype=np.float64, count=len(self._values))
        p50, p99 = np.percentile(arr, [50, 99])
        return float(p50), float(p99)


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def mark(self, n: int = 1, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        for _ in range(n):
            self._times.append(t)
        self._trim(t)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        self._trim(t)
        if len(self._times) < 2:
            return 0.0
        span = max(t - self._times[0], 1e-9)
        return len(self._times) / max(span, min(self._window, 1.0))


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """What the dashboard's health panel and the store's telemetry table show."""

    t: float
    received: int
    processed: int
    skipped: int
    rejected: int
    failed: int
    fps_in: float
    fps_out: float
    latency_p50_ms: float
    latency_p99_ms: float
    queue_depth: int
    upstream_gaps: int
    rejected_by_reason: tuple[tuple[str, int], ...] = ()
    skipped_by_reason: tuple[tuple[str, int], ...] = ()
    latency_p99_ms_by_pipeline: tuple[tuple[str, float], ...] = ()
    """Receive → result p99 of each pipeline's last frames (``max_latency_ms`` bounds it)."""


@dataclass
class Telemetry:
    received: Counter[str] = field(default_factory=Counter)  # by source
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    processed: Counter[str] = field(default_factory=Counter)  # by pipeline
    failed: Counter[str] = field(default_factory=Counter)  # by pipeline
    upstream_gaps: Counter[str] = field(default_factory=Counter)  # by source
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    pipeline_latency: dict[str, LatencyWindow] = field(default_factory=dict)
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_out: RateMeter = field(default_factory=RateMeter)
    queue_depth: int = 0

    def observe_latency(self, seconds: float, pipeline: str = "") -> None:
        self.latency.add(seconds)
        if pipeline:
            window = self.pipeline_latency.get(pipeline)
            if window is None:
                window = self.pipeline_latency.setdefault(pipeline, LatencyWindow(512))
            window.add(seconds)

    def snapshot(self) -> TelemetrySnapshot:
        p50, p99 = self.latency.percentiles()
        return TelemetrySnapshot(
            t=time.time(),
            received=sum(self.received.values()),
            processed=sum(self.processed.values()),
            skipped=sum(self.skipped.values()),
            rejected=sum(self.rejected.values()),
            failed=sum(self.failed.values()),
            fps_in=self.rate_in.rate(),
            fps_out=self.rate_out.rate(),
            latency_p50_ms=p50 * 1e3,
            latency_p99_ms=p99 * 1e3,
            queue_depth=self.queue_depth,
            upstream_gaps=sum(self.upstream_gaps.values()),
            rejected_by_reason=tuple(sorted(self.rejected.items())),
            skipped_by_reason=tuple(sorted(self.skipped.items())),
            latency_p99_ms_by_pipeline=tuple(
                (name, w.percentiles()[1] * 1e3) for name, w in sorted(self.pipeline_latency.items())
            ),
        )

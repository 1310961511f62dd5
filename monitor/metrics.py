"""Prometheus ``/metrics`` for the control room's Grafana: the daemon's accounting, scraped.

Counters and gauges are read from the daemon's own state when Prometheus scrapes (no per-frame
work); only the per-pipeline latency histogram is observed per processed frame (one bucket
search, about a microsecond). Served by ``prometheus_client``'s HTTP server in a thread, bound to
127.0.0.1 unless configured otherwise. A port that cannot be bound is one log line and
``operando_metrics_errors_total``; the daemon runs on without metrics.

Metric names (all prefixed ``operando_``):

- ``frames_received_total{source}``, ``frames_processed_total{pipeline}``,
  ``frames_failed_total{pipeline}``, ``frames_skipped_total{reason}``,
  ``messages_rejected_total{reason}``
- ``source_events_total{source,event}``: salvaged frames (``ndattr_repaired``,
  ``ndattr_dropped``), start-message problems (``bad_pixel_mask``), ignored message types
- ``upstream_gaps_total{source}``: frame numbers the sender skipped
- ``queue_depth{pipeline}``, ``processing_latency_seconds{pipeline}`` (histogram, receive → done)
- ``alarm_severity{rule,alarm}`` (EPICS numbering, 0 when cleared), ``alarm_acknowledged{…}``
- ``adapter_actions_total{adapter,outcome}`` for the queue-server and Tiled adapters
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.frames import Disposition, Status

log = logging.getLogger("monitor.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SOURCE_COUNTERS = ("salvaged", "start_problems", "ignored")
"""Optional per-source Counter attributes exported as ``source_events_total``."""


class DaemonView(Protocol):
    """What the metrics read from the daemon (duck-typed: attributes of :class:`monitor.daemon.Daemon`)."""

    telemetry: Any
    workers: Any
    sources: Any
    alarms: Any


class MetricsCollector(Collector):
    """Reads the daemon's counters at scrape time."""

    def __init__(self, daemon: DaemonView, adapters: Callable[[], Mapping[str, Counter[str]]]) -> None:
        self._daemon = daemon
        self._adapters = adapters
        self.errors = 0

    def collect(self) -> Iterable[Metric]:
        d = self._daemon
        t = d.telemetry
        yield _counter("frames_received", "Messages received, by source", "source", t.received)
        yield _counter("frames_processed", "Frames processed, by pipeline", "pipeline", t.processed)
        yield _counter("frames_failed", "Frames a pipeline failed on, by pipeline", "pipeline", t.failed)
        yield _counter("frames_skipped", "Frames skipped (overload, shutdown)", "reason", t.skipped)
        yield _counter("messages_rejected", "Messages rejected, by reason", "reason", t.rejected)
        gaps = {s.name: s.upstream_gaps() for s in d.sources}
        yield _counter("upstream_gaps", "Frame numbers the sender skipped, by source", "source", gaps)
        events = CounterMetricFamily(
            "operando_source_events", "Per-source salvage and protocol events", labels=["source", "event"]
        )
        for s in d.sources:
            for attr in _SOURCE_COUNTERS:
                for event, n in dict(getattr(s, attr, None) or {}).items():
                    events.add_metric([s.name, str(event)], n)
        yield events
        depth = GaugeMetricFamily("operando_queue_depth", "Frames queued per pipeline", labels=["pipeline"])
        for w in d.workers:
            depth.add_metric([w.name], w.queue.qsize())
        yield depth
        labels = ["rule", "alarm"]
        sev = GaugeMetricFamily("operando_alarm_severity", "0 none 1 MINOR 2 MAJOR 3 INVALID", labels=labels)
        acked = GaugeMetricFamily("operando_alarm_acknowledged", "1 if acknowledged", labels=labels)
        for a in d.alarms.alarms() if d.alarms is not None else ():
            active = a.state.value != "cleared"
            sev.add_metric([a.rule, a.id], int(a.severity) if active else 0)
            acked.add_metric([a.rule, a.id], 1 if a.state.value == "acknowledged" else 0)
        yield sev
        yield acked
        actions = CounterMetricFamily(
            "operando_adapter_actions", "Adapter actions by outcome", labels=["adapter", "outcome"]
        )
        for adapter, outcomes in self._adapters().items():
            for outcome, n in dict(outcomes).items():
                actions.add_metric([adapter, outcome], n)
        yield actions
        yield _counter("metrics_errors", "Metrics endpoint failures", "", {"": self.errors})


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"operando_{name}", doc, labels=[label] if label else [])
    for key, n in dict(values).items():  # dict(): one atomic copy under the GIL
        family.add_metric([key] if label else [], n)
    return family


class MetricsServer:
    """``/metrics`` over HTTP, plus the per-pipeline latency histogram the workers feed."""

    def __init__(
        self,
        daemon: DaemonView,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        adapters: Callable[[], Mapping[str, Counter[str]]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = MetricsCollector(daemon, adapters)
        self.registry.register(self.collector)
        self.latency = Histogram(
            "operando_processing_latency_seconds",
            "Receive → processed latency per pipeline",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[str, Any] = {}
        self.host, self.port = host, port
        self.url = ""
        self._server: Any = None
        self._thread: Any = None

    def observe(self, d: Disposition) -> None:
        """Per processed frame: one histogram observation (the only per-frame cost)."""
        if d.status is not Status.PROCESSED:
            return
        child = self._children.get(d.pipeline)
        if child is None:
            child = self._children[d.pipeline] = self.latency.labels(d.pipeline)
        child.observe(d.t_done - d.t_received)

    def start(self) -> str:
        """Bind and serve; on failure log one line, count it, and return ""."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            self.collector.errors += 1
            log.error(
                "metrics: cannot serve /metrics on %s:%d (%s); running without Prometheus metrics",
                self.host, self.port, exc.strerror or exc,
            )  # fmt: skip
            return ""
        port = self._server.server_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}/metrics"
        log.info("Prometheus metrics at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=2.0)
            self._server = None

"""The control room's own tools, wired to the daemon in one place (all optional, all loopback
by default): Prometheus ``/metrics``, the bluesky-queueserver alarm adapter and the Tiled sink.

The daemon calls :meth:`Integrations.start` (alarm sinks to add come back),
:meth:`on_disposition` / :meth:`on_results` per frame, and :meth:`stop`. Each adapter turns a
missing or failing counterpart into one log line and a counter (``outcomes``), never a crash.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from monitor.config import MonitorConfig
from monitor.frames import Disposition

log = logging.getLogger("monitor.integrations")


class Integrations:
    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.metrics: Any = None
        """``monitor.metrics.MetricsServer`` when ``[metrics] enabled``."""
        self.adapters: dict[str, Any] = {}
        """Adapters by name; each has ``outcomes: Counter[str]``."""

    def outcomes(self) -> dict[str, Counter[str]]:
        return {name: a.outcomes for name, a in self.adapters.items()}

    def start(self, daemon: Any) -> list[Any]:
        """Start what is configured; return the alarm sinks to register."""
        if self.cfg.metrics.enabled:
            from monitor.metrics import MetricsServer  # prometheus_client only when enabled

            m = self.cfg.metrics
            self.metrics = MetricsServer(daemon, host=m.host, port=m.port, adapters=self.outcomes)
            self.metrics.start()
        if self.cfg.alerts.queueserver.enabled:
            from monitor.alerts.queueserver import QueueServerAdapter
            from monitor.alerts.sinks import JournalSink

            journal = JournalSink(daemon.journal_path)
            self.adapters["queueserver"] = QueueServerAdapter(self.cfg.alerts.queueserver, journal)
        if self.cfg.tiled.enabled:
            self.adapters["tiled"] = self._tiled(daemon)
        return [a for a in self.adapters.values() if hasattr(a, "emit")]

    def _tiled(self, daemon: Any) -> Any:
        import time

        from monitor.daemon import versions
        from monitor.tiled_sink import TiledSink, run_metadata

        schemas = {p.name: tuple(p.schema().scalars) for p in daemon.pipelines}
        sources = [s.name for s in self.cfg.sources]
        meta = run_metadata(self.cfg.run, time.time(), sources, versions(), schemas, daemon.config_text)
        sink = TiledSink(self.cfg.tiled, daemon.store_path.stem, schemas, meta)
        sink.start()
        return sink

    def on_disposition(self, d: Disposition) -> None:
        if self.metrics is not None:
            self.metrics.observe(d)

    def on_results(self, pipeline: str, results: Sequence[Any]) -> None:
        for a in self.adapters.values():
            if hasattr(a, "on_results"):
                a.on_results(pipeline, results)

    async def stop(self) -> None:
        for a in self.adapters.values():
            await a.stop()
        if self.metrics is not None:
            self.metrics.stop()

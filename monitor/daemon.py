"""Daemon lifecycle: startup → main loop → ordered, time-bounded shutdown.

Like uvicorn: signal handlers only set ``should_exit`` (a second SIGINT sets ``force_exit``).
Shutdown order: stop ingest → drain pipelines → flush and close the store → close sockets
and the dashboard, all within ``daemon.shutdown_timeout_s``. Frames still queued when the
drain deadline passes are stored as skipped (``shutdown``), never lost silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import platform
import signal
import sys
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq
import zmq.asyncio

import monitor
from monitor.aio import sleep_unless
from monitor.alerts.manager import AlarmManager
from monitor.alerts.model import FrameRef
from monitor.alerts.ood import OodAlarms
from monitor.alerts.rules import SilenceRule, ThresholdRule, Verdict
from monitor.alerts.sinks import CallbackSink, JournalSink, LiveSink, ZmqPubSink
from monitor.config import MonitorConfig, SourceSettings
from monitor.display import Display
from monitor.frames import Disposition
from monitor.live import AckResult, LiveState
from monitor.pipelines.base import Pipeline, Result
from monitor.pipelines.registry import build_pipeline
from monitor.recorder import Recorder
from monitor.router import PipelineWorker, Router
from monitor.sources.array10 import Array10Source
from monitor.sources.base import Source
from monitor.sources.replay import ReplaySource
from monitor.store import RunStore
from monitor.telemetry import Telemetry

log = logging.getLogger("monitor.daemon")


def build_source(settings: SourceSettings, context: zmq.asyncio.Context) -> Source:
    if settings.kind == "array10":
        return Array10Source(settings, context)
    if settings.kind == "stream2":
        from monitor.sources.stream2 import Stream2Source  # cbor2 + dectris-compression only when used

        return Stream2Source(settings, context)
    if settings.kind == "bluesky":
        from monitor.sources.bluesky import BlueskySource  # msgpack + h5py reads only when used

        return BlueskySource(settings, context)
    return ReplaySource(settings)


def with_run_label(verdict: Verdict, extra: Mapping[str, object]) -> Verdict:
    """Name the Bluesky run (``scan_id``, ``plan_name``, ``sample`` in ``FrameMeta.extra``) in the message."""
    if "scan_id" not in extra:
        return verdict
    label = f"scan {extra['scan_id']}"
    if extra.get("plan_name"):
        label += f" {extra['plan_name']}"
    if extra.get("sample"):
        label += f", sample {extra['sample']}"
    return dataclasses.replace(verdict, message=f"{verdict.message} [{label}]")


def versions() -> dict[str, str]:
    return {
        "operando-monitor": monitor.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        **_model_backends(),
    }


def _model_backends() -> dict[str, str]:
    """Backend and model hash of every inference runner built (only if the model stack is loaded)."""
    runtime = sys.modules.get("engines.runtime")
    if runtime is None:
        return {}
    return {f"model:{name}": desc for name, desc in runtime.chosen_backends().items()}


def run_path(cfg: MonitorConfig, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    name = cfg.store.filename.format(run=cfg.run, time=stamp)
    path = Path(cfg.store.directory) / name
    n = 1
    while path.exists():
        path = path.with_name(f"{Path(name).stem}-{n}{Path(name).suffix}")
        n += 1
    return path


class Daemon:
    def __init__(
        self,
        cfg: MonitorConfig,
        *,
        config_text: str = "",
        display: type[Display] | None = None,
        store_path: Path | None = None,
    ):
        self.cfg = cfg
        self.config_text = config_text
        self.should_exit = False
        self.force_exit = False
        self.telemetry = Telemetry()
        self.live = LiveState(history=cfg.dashboard.history)
        self.live.pipelines = tuple((p.name, p.kind) for p in cfg.pipelines)
        self.live.ack_handler = self._acknowledge
        self.store_path = store_path or run_path(cfg)
        self.dashboard_url = ""
        self.started = asyncio.Event()
        self._display_cls = display
        self._wants_display = display is not None and cfg.dashboard.enabled
        self._display: Display | None = None
        self._zctx = zmq.asyncio.Context()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, len(cfg.pipelines)),
            thread_name_prefix="pipeline",
        )
        self._stop_ingest = asyncio.Event()
        self._forced = asyncio.Event()
        self._stop_background = asyncio.Event()
        self._threshold_rules = [ThresholdRule(r) for r in cfg.alerts.rules if r.kind == "threshold"]
        self._silence_rules = [SilenceRule(r) for r in cfg.alerts.rules if r.kind == "silence"]
        self.sources: list[Source] = []
        self.recorder = Recorder(self._open_store, cfg.store.flush_interval_s)
        journal_path = Path(cfg.alerts.journal)
        if not journal_path.is_absolute():
            journal_path = Path(cfg.store.directory) / journal_path
        self.journal_path = journal_path
        self.alarms: AlarmManager | None = None
        self.epics: Any = None
        """The EPICS alarm-PV sink (``monitor.alerts.epics.EpicsAlarmSink``) when enabled."""
        self.workers = [
            PipelineWorker(
                build_pipeline(s),
                s,
                self._executor,
                self.telemetry,
                self._on_results,
                self._on_disposition,
                self.live.publish_frame,
                live_interval_s=cfg.dashboard.update_ms / 1000.0 if self._wants_display else None,
                on_points=self.live.publish_points,
            )
            for s in cfg.pipelines
        ]
        self.router = Router(self.workers, self.telemetry, self._on_disposition)
        self._ood_alarms = OodAlarms(self.pipelines)
        self._source_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_tasks: list[asyncio.Task[None]] = []

    @property
    def pipelines(self) -> list[Pipeline]:
        return [w.pipeline for w in self.workers]

    # ---- wiring -------------------------------------------------------------------------
    def _open_store(self) -> RunStore:
        return RunStore(
            self.store_path,
            self.cfg.store,
            {p.name: p.schema() for p in self.pipelines},
            self.config_text,
            versions(),
            [s.name for s in self.cfg.sources],
        )

    def _on_disposition(self, d: Disposition) -> None:
        self.recorder.add_disposition(d)

    def _on_results(self, pipeline: Pipeline, results: list[Result]) -> None:
        self.recorder.add_results(pipeline.name, results)
        if self.alarms is None:
            return
        for r in results:
            ood = self._ood_alarms.verdict(pipeline.name, r)
            if ood is not None:
                f = r.frame
                self.alarms.apply(ood, FrameRef(f.source, f.stream, f.series, f.index, f.seq))
        for rule in self._threshold_rules:
            if rule.pipeline != pipeline.name:
                continue
            for r in results:
                value = r.scalars.get(rule.metric)
                if value is None or self._ood_alarms.suppressed(pipeline.name, r, rule.metric):
                    continue
                verdict = rule.evaluate(r.frame.stream, float(value), r.frame.series)
                if verdict is not None:
                    f = r.frame
                    verdict = with_run_label(verdict, f.meta.extra)
                    self.alarms.apply(verdict, FrameRef(f.source, f.stream, f.series, f.index, f.seq))

    def _acknowledge(self, alarm_id: str, operator: str, token: str) -> AckResult:
        expected = self.cfg.operator_token()
        if not expected:
            return AckResult(False, "acknowledgement disabled: no operator token configured")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            log.warning("rejected acknowledgement of %s by %r: bad operator token", alarm_id, operator)
            return AckResult(False, "rejected: wrong operator token")
        if not operator.strip():
            return AckResult(False, "rejected: operator name is required")
        if self.alarms is None:
            return AckResult(False, "alarms are not running")
        try:
            self.alarms.acknowledge(alarm_id, operator.strip())
        except (KeyError, ValueError) as exc:
            return AckResult(False, f"rejected: {exc.args[0]}")
        return AckResult(True, f"{alarm_id} acknowledged by {operator.strip()}")

    # ---- tasks --------------------------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        while not self._stop_background.is_set():
            self._publish_telemetry()
            await sleep_unless(self._stop_background, self.cfg.daemon.telemetry_interval_s)

    def _publish_telemetry(self) -> None:
        self.telemetry.queue_depth = sum(w.queue.qsize() for w in self.workers)
        for source in self.sources:
            self.telemetry.upstream_gaps[source.name] = source.upstream_gaps()
        snap = self.telemetry.snapshot()
        self.live.publish_health(snap)
        self.recorder.add_telemetry(snap)

    async def _silence_loop(self) -> None:
        t0 = time.monotonic()
        period = min([r.settings.timeout_s for r in self._silence_rules] + [1.0]) / 4
        while not self._stop_background.is_set():
            now = time.monotonic()
            for rule in self._silence_rules:
                since = now - self.router.last_seen.get(rule.source, t0)
                verdict = rule.check(since)
                if verdict is not None and self.alarms is not None:
                    self.alarms.apply(verdict)
            await sleep_unless(self._stop_background, period)

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        journal = JournalSink(self.journal_path)
        sinks = [LiveSink(self.live), CallbackSink("store", self.recorder.add_alarm)]
        if self.cfg.alerts.epics.enabled:
            from monitor.alerts.epics import EpicsAlarmSink  # caproto only when enabled

            self.epics = EpicsAlarmSink(self.cfg.alerts.epics)
            await self.epics.start()
            sinks.append(self.epics)
        if self.cfg.alerts.zmq_pub:
            sinks.append(ZmqPubSink(self.cfg.alerts.zmq_pub))
        latch = frozenset(r.name for r in self.cfg.alerts.rules if r.latch)
        self.alarms = AlarmManager(journal, sinks, latch)
        await self.recorder.open()
        log.info("recording to %s (journal %s)", self.store_path, self.journal_path)
        self.sources = [build_source(s, self._zctx) for s in self.cfg.sources]
        self._worker_tasks = [asyncio.create_task(w.run(), name=f"pipeline:{w.name}") for w in self.workers]
        self._tasks = [
            asyncio.create_task(self.recorder.run(self._stop_background), name="recorder"),
            asyncio.create_task(self._telemetry_loop(), name="telemetry"),
            asyncio.create_task(self._silence_loop(), name="silence"),
        ]
        # Sources route in their own task: no hop through an extra queue per message.
        self._source_tasks = [
            asyncio.create_task(s.run(self.router.route, self._stop_ingest), name=f"source:{s.name}")
            for s in self.sources
        ]
        if self._display_cls is not None and self._wants_display:
            self._display = self._display_cls(self.live, self.cfg.dashboard)
            self.dashboard_url = await self._display.start()
            log.info("dashboard at %s", self.dashboard_url)
        self.started.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self) -> None:
        if self.should_exit:
            log.warning("second SIGINT: forcing exit")
            self.force_exit = True
            self._forced.set()
        self.should_exit = True

    def _on_sigterm(self) -> None:
        self.should_exit = True

    async def serve(self) -> None:
        """Run until a signal (or :meth:`request_exit`), or until every source has finished."""
        await self.start()
        try:
            while not self.should_exit:
                if self._source_tasks and all(t.done() for t in self._source_tasks):
                    for t in self._source_tasks:
                        if t.exception() is not None:
                            log.error("source task %s failed: %r", t.get_name(), t.exception())
                    log.info("all sources finished")
                    break
                await asyncio.sleep(0.05)
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        self.should_exit = True

    async def shutdown(self) -> None:
        deadline = time.monotonic() + self.cfg.daemon.shutdown_timeout_s

        def left(frac: float = 1.0) -> float:
            return max(0.05, (deadline - time.monotonic()) * frac)

        log.info("shutting down: stop ingest")
        self._stop_ingest.set()
        if self._source_tasks:
            _, pending = await asyncio.wait(self._source_tasks, timeout=left(0.2))
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._source_tasks, return_exceptions=True)
        log.info("shutting down: drain")
        if not self.force_exit:
            drained = asyncio.ensure_future(asyncio.gather(*(w.queue.join() for w in self.workers)))
            forced = asyncio.ensure_future(self._forced.wait())
            done, _ = await asyncio.wait({drained, forced}, timeout=left(0.5), return_when=FIRST_COMPLETED)
            await self._cancel([drained, forced])
            if forced in done:
                log.warning("drain abandoned: forced exit")
            elif drained not in done:
                log.warning("drain did not finish within the shutdown timeout")
        # Whatever is still queued is accounted for as skipped.
        skipped = sum(w.drain_remaining("shutdown") for w in self.workers)
        if skipped:
            log.warning("%d queued frame(s) stored as skipped (shutdown)", skipped)
        await self._cancel(self._worker_tasks)
        self._stop_background.set()
        await asyncio.wait(self._tasks, timeout=left(0.5))
        await self._cancel(self._tasks)
        log.info("shutting down: flush store")
        self._publish_telemetry()
        try:
            await asyncio.wait_for(self.recorder.close(), timeout=left())
        except TimeoutError:
            log.error("store did not close within the shutdown timeout")
        log.info("shutting down: close sockets")
        if self._display is not None:
            await self._display.stop()
        if self.alarms is not None:
            if self.epics is not None:
                await self.epics.stop()
            self.alarms.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._zctx.destroy(linger=0)
        snap = self.telemetry.snapshot()
        log.info(
            "shutdown complete: %d received, %d processed, %d skipped %s, %d rejected %s, %d failed, "
            "%d upstream gaps; results in %s",
            snap.received,
            snap.processed,
            snap.skipped,
            dict(snap.skipped_by_reason),
            snap.rejected,
            dict(snap.rejected_by_reason),
            snap.failed,
            snap.upstream_gaps,
            self.store_path,
        )

    @staticmethod
    async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

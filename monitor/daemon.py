"""Daemon lifecycle: startup → main loop → ordered, time-bounded shutdown.

Like uvicorn: signal handlers only set ``should_exit`` (a second SIGINT sets ``force_exit``).
Shutdown order: stop ingest → drain pipelines → flush and close the store → close sockets
and the dashboard, all within ``daemon.shutdown_timeout_s``. Frames still queued when the
drain deadline passes are stored as skipped (``shutdown``), never lost silently.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from engines.isa import detect as cpu_isa
from monitor.aio import sleep_unless
from monitor.alerts.ackguard import TokenGuard
from monitor.alerts.evaluator import AlertEvaluator
from monitor.alerts.evaluator import with_run_label as with_run_label  # re-exported (moved)
from monitor.alerts.manager import AlarmManager
from monitor.alerts.model import Severity
from monitor.alerts.ood import OodAlarms
from monitor.alerts.rules import Verdict
from monitor.alerts.sinks import CallbackSink, JournalSink
from monitor.compose import build_source as build_source  # re-exported (moved to compose)
from monitor.compose import build_workers, close_workers, open_listeners, run_path, versions
from monitor.config import MonitorConfig, redact_secrets
from monitor.display import Display
from monitor.frames import Disposition
from monitor.integrations import Integrations
from monitor.live import AckResult, LiveSink, LiveState
from monitor.pipelines.base import Pipeline, Result
from monitor.preflight import build_pipelines
from monitor.recorder import Recorder
from monitor.router import PipelineWorker, Router
from monitor.sources.base import Source
from monitor.store import RunStore
from monitor.supervise import Supervisor
from monitor.telemetry import Telemetry

log = logging.getLogger("monitor.daemon")


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
        self.live.thresholds = tuple(
            (r.pipeline, r.metric, r.major, r.hysteresis, r.min_count)
            for r in cfg.alerts.rules
            if r.kind == "threshold" and r.major is not None
        )
        self.live.ack_handler = self._acknowledge
        self._ack_guard = TokenGuard()
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
        self.evaluator = AlertEvaluator(cfg.alerts.rules)
        self.sources: list[Source] = []
        self.integrations = Integrations(cfg)
        self.recorder = Recorder(
            self._open_store, cfg.store.flush_interval_s, int(cfg.store.max_pending_mb * 1024 * 1024)
        )
        self.supervisor = Supervisor(self._raise_daemon_alarm)
        self._recorder_restarts = 0
        journal_path = Path(cfg.alerts.journal)
        if not journal_path.is_absolute():
            journal_path = Path(cfg.store.directory) / journal_path
        self.journal_path = journal_path
        self.alarms: AlarmManager | None = None
        self.epics: Any = None
        """The EPICS alarm-PV sink (``monitor.alerts.epics.EpicsAlarmSink``) when enabled."""
        pipelines = build_pipelines(cfg)  # the same checks as `check` (models, options, rule metrics)
        self.workers = build_workers(
            cfg,
            pipelines,
            self._executor,
            self.telemetry,
            self.live,
            self._on_results,
            self._on_disposition,
            wants_display=self._wants_display,
        )
        for w in self.workers:
            w.on_fault = self.supervisor.fault
            if hasattr(w, "on_series_lost"):  # cluster mode: a keyed replica restarted
                w.on_series_lost = self._on_series_lost
        self.router = Router(self.workers, self.telemetry, self._on_disposition)
        self.evaluator.ood = OodAlarms(self.pipelines)
        self._source_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_tasks: list[asyncio.Task[None]] = []

    @property
    def pipelines(self) -> list[Pipeline]:
        return [w.pipeline for w in self.workers]

    @property
    def exit_code(self) -> int:
        """0 after a clean run; :data:`monitor.supervise.EXIT_FAULT` when a component failed."""
        return self.supervisor.exit_code

    def _raise_daemon_alarm(self, verdict: Verdict) -> None:
        if self.alarms is not None:
            self.alarms.apply(verdict)

    # ---- wiring -------------------------------------------------------------------------
    def _open_store(self) -> RunStore:
        return RunStore(
            self.store_path,
            self.cfg.store,
            {p.name: p.schema() for p in self.pipelines},
            redact_secrets(self.config_text),
            versions(),
            [s.name for s in self.cfg.sources],
        )

    def _on_disposition(self, d: Disposition) -> None:
        self.recorder.add_disposition(d)
        self.integrations.on_disposition(d)

    def _on_results(self, pipeline: Pipeline, results: list[Result]) -> None:
        self.recorder.add_results(pipeline.name, results)
        self.integrations.on_results(pipeline.name, results)
        if self.alarms is not None:
            self.evaluator.on_results(pipeline.name, results, self.alarms.apply)

    def _on_series_lost(self, pipeline: str, key: tuple[str, str], why: str) -> None:
        """A keyed series lost its pipeline state (its Ray replica died): a MINOR alarm, stored
        and journalled like every alarm; the series carries on with empty state."""
        stream, series = key
        self._raise_daemon_alarm(
            Verdict(f"series_state_lost:{pipeline}:{stream}:{series}", Severity.MINOR, 1.0, 0.0,
                    f"series_state_lost: {pipeline} lost the state of {stream}/{series} ({why}); "
                    "it restarts empty")
        )  # fmt: skip

    def _acknowledge(self, alarm_id: str, operator: str, token: str) -> AckResult:
        expected = self.cfg.operator_token()
        if not expected:
            return AckResult(False, "acknowledgement disabled: no operator token configured")
        locked = self._ack_guard.locked_for()
        if locked:
            log.warning(
                "refused acknowledgement of %s by %r: locked out after wrong tokens", alarm_id, operator
            )
            return AckResult(False, f"rejected: too many wrong tokens, try again in {locked:.0f} s")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            lockout = self._ack_guard.failed()
            log.warning(
                "rejected acknowledgement of %s by %r: bad operator token (%d wrong so far)%s",
                alarm_id, operator, self._ack_guard.failures,
                f"; acknowledgements locked for {self._ack_guard.lockout_s:.0f} s" if lockout else "",
            )  # fmt: skip
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
        while not self._stop_background.is_set():
            now = time.monotonic()
            if self.alarms is not None:

                def since_last(src: str, now: float = now) -> float:
                    return now - self.router.last_seen.get(src, t0)

                self.evaluator.check_silence(since_last, self.alarms.apply)
            await sleep_unless(self._stop_background, self.evaluator.silence_period_s)

    def _open_listeners(self) -> list[Any]:
        """Every socket and directory opened before anything runs (see :func:`compose.open_listeners`)."""
        self.sources, sinks = open_listeners(self.cfg, self._zctx, self.store_path)
        return sinks

    async def start(self) -> None:
        sinks = self._open_listeners()
        journal = JournalSink(self.journal_path)
        sinks[:0] = [LiveSink(self.live), CallbackSink("store", self.recorder.add_alarm)]
        if self.cfg.alerts.epics.enabled:
            from monitor.alerts.epics import EpicsAlarmSink  # caproto only when enabled

            self.epics = EpicsAlarmSink(self.cfg.alerts.epics)
            await self.epics.start()
            sinks.append(self.epics)
        sinks.extend(self.integrations.start(self))
        latch = frozenset(r.name for r in self.cfg.alerts.rules if r.latch)
        self.alarms = AlarmManager(journal, sinks, latch)
        await self.recorder.open()
        log.info("recording to %s (journal %s)", self.store_path, self.journal_path)
        log.info("CPU: %s", cpu_isa().summary())
        sup = self.supervisor
        self._worker_tasks = [
            sup.watch(asyncio.create_task(w.run(), name=f"pipeline:{w.name}"), f"pipeline:{w.name}",
                      self._worker_died(w))
            for w in self.workers
        ]  # fmt: skip
        self._tasks = [
            self._start_recorder(),
            sup.watch(asyncio.create_task(self._telemetry_loop(), name="telemetry"), "telemetry"),
            sup.watch(asyncio.create_task(self._silence_loop(), name="silence"), "silence"),
        ]
        # Sources route in their own task: no hop through an extra queue per message.
        self._source_tasks = [
            sup.watch(
                asyncio.create_task(s.run(self.router.route, self._stop_ingest), name=f"source:{s.name}"),
                f"source:{s.name}",
            )
            for s in self.sources
        ]
        if self._display_cls is not None and self._wants_display:
            self._display = self._display_cls(self.live, self.cfg.dashboard)
            self.dashboard_url = await self._display.start()
            log.info("dashboard at %s", self.dashboard_url)
        self.started.set()

    def _worker_died(self, worker: PipelineWorker) -> Callable[[BaseException], None]:
        def on_death(exc: BaseException) -> None:
            # Its frames (queued now or routed later) are stored as failed, never as overload.
            reason = f"worker_dead: {type(exc).__name__}: {exc}"
            self._worker_tasks.append(
                asyncio.create_task(worker.run_dead(reason), name=f"dead:{worker.name}")
            )

        return on_death

    def _start_recorder(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self.recorder.run(self._stop_background), name="recorder")
        return self.supervisor.watch(task, "recorder", self._recorder_died)

    def _recorder_died(self, exc: BaseException) -> None:
        # Recording never stops while the daemon runs: restart the flush loop (a few times).
        if self._stop_background.is_set() or self._recorder_restarts >= 5:
            return
        self._recorder_restarts += 1
        log.warning("restarting the recorder (restart %d)", self._recorder_restarts)
        self._tasks.append(self._start_recorder())

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
                    log.info("all sources finished")  # a failed one was reported by the supervisor
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
            drained: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*(w.queue.join() for w in self.workers))
            )
            forced: asyncio.Future[Any] = asyncio.ensure_future(self._forced.wait())
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
        close_workers(self.cfg, self.workers)
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
        await self.integrations.stop()
        if self.alarms is not None:
            if self.epics is not None:
                await self.epics.stop()
            self.alarms.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._zctx.destroy(linger=0)
        snap = self.telemetry.snapshot()
        if self.supervisor.faults:
            log.error("components failed during this run: %s (exit code %d)", self.supervisor.summary(),
                      self.exit_code)  # fmt: skip
        if self.recorder.results_refused or self.recorder.dispositions_refused:
            log.error("the store refused %d result(s) and %d frames row(s)", self.recorder.results_refused,
                      self.recorder.dispositions_refused)  # fmt: skip
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

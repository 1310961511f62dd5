"""Composition root: configuration → sources, pipelines and their workers, alarm sinks, store path.

Everything the daemon runs is built here; :mod:`monitor.daemon` only runs the lifecycle (start,
supervise, shut down in order). To add a source kind, a pipeline kind or an alarm sink, this is
the one module that wires it in (see ``docs/architecture.md``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq
import zmq.asyncio

import monitor
from engines.isa import detect as cpu_isa
from monitor.alerts.sinks import ZmqPubSink
from monitor.config import MonitorConfig, SourceSettings
from monitor.errors import ConfigError, MonitorError
from monitor.frames import Disposition, Result
from monitor.live import LiveState
from monitor.pipelines.base import Pipeline
from monitor.router import PipelineWorker
from monitor.sources.array10 import Array10Source
from monitor.sources.base import Source
from monitor.sources.replay import ReplaySource
from monitor.telemetry import Telemetry


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


def versions() -> dict[str, str]:
    return {
        "operando-monitor": monitor.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cpu": cpu_isa().summary(),  # the instructions inference can use here (int8/bf16 choice)
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


def build_workers(
    cfg: MonitorConfig,
    pipelines: Sequence[Pipeline],
    executor: Executor,
    telemetry: Telemetry,
    live: LiveState,
    on_results: Callable[[Pipeline, list[Result]], None],
    on_disposition: Callable[[Disposition], None],
    *,
    wants_display: bool,
) -> list[PipelineWorker]:
    """One worker (bounded queue, overload policy, executor thread) per configured pipeline;
    with ``[cluster] engine = "ray"`` the workers run ``process`` on Ray actors instead."""
    if cfg.cluster.engine == "ray":
        from monitor.cluster.session import build_ray_workers  # ray only in cluster mode

        return build_ray_workers(
            cfg, pipelines, executor, telemetry, live, on_results, on_disposition, wants_display=wants_display
        )  # type: ignore[return-value]
    return [
        PipelineWorker(
            pipeline,
            s,
            executor,
            telemetry,
            on_results,
            on_disposition,
            live.publish_frame,
            live_interval_s=cfg.dashboard.update_ms / 1000.0 if wants_display else None,
            on_points=live.publish_points,
        )
        for pipeline, s in zip(pipelines, cfg.pipelines, strict=True)
    ]


def close_sources(sources: Sequence[Source]) -> None:
    for source in sources:
        closer = getattr(source, "close", None)
        if callable(closer):
            closer()


def open_listeners(
    cfg: MonitorConfig, context: zmq.asyncio.Context, store_path: Path
) -> tuple[list[Source], list[Any]]:
    """Create the store directory and open every source socket and the alarm PUB socket, before
    anything runs: a busy port or an unwritable directory is a start-up error naming its key
    (exit 2), not a task that dies later. Returns the sources and the extra alarm sinks."""
    try:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("store.directory", f"cannot create {store_path.parent}: {exc.strerror}") from None
    sources: list[Source] = []
    for i, settings in enumerate(cfg.sources):
        source = build_source(settings, context)
        sources.append(source)
        opener = getattr(source, "open", None)
        if callable(opener):
            try:
                opener()
            except MonitorError as exc:
                close_sources(sources)
                raise ConfigError(f"sources[{i}].endpoint", str(exc)) from None
    sinks: list[Any] = []
    if cfg.alerts.zmq_pub:
        try:
            sinks.append(ZmqPubSink(cfg.alerts.zmq_pub))
        except zmq.ZMQError as exc:
            close_sources(sources)
            raise ConfigError("alerts.zmq_pub", f"cannot bind {cfg.alerts.zmq_pub!r}: {exc}") from None
    return sources, sinks


def close_workers(cfg: MonitorConfig, workers: Sequence[PipelineWorker]) -> None:
    """Release what the workers hold outside this process (Ray replicas in cluster mode)."""
    if cfg.cluster.engine == "ray":
        from monitor.cluster.session import shutdown

        shutdown(workers)

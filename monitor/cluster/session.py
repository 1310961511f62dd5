"""Connect to (or start) Ray, place the pipeline replicas, and tear them down at shutdown."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import ray

from monitor.cluster import KEYED_KINDS
from monitor.cluster.actor import PipelineActor
from monitor.cluster.worker import RayPipelineWorker
from monitor.config import ClusterSettings, MonitorConfig, PipelineSettings
from monitor.errors import ConfigError
from monitor.frames import Disposition
from monitor.live import LiveState
from monitor.pipelines.base import Pipeline, Result
from monitor.telemetry import Telemetry

log = logging.getLogger("monitor.cluster")

READY_TIMEOUT_S = 180.0
"""How long replicas may take to start (model load included) before the config is refused."""
_started_here = False


def connect(c: ClusterSettings) -> None:
    """Join the configured Ray cluster (or start a local one); reuse one already joined."""
    global _started_here
    if ray.is_initialized():
        return
    root = str(Path(__file__).resolve().parents[2])  # actors import this checkout of `monitor`
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": env},
    }
    if c.address == "local":
        kwargs["object_store_memory"] = c.object_store_mb * 1024 * 1024
        if c.num_cpus:
            kwargs["num_cpus"] = c.num_cpus
    try:
        ray.init(address=c.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError("cluster.address", f"cannot join Ray at {c.address!r}: {exc}") from None
    _started_here = c.address == "local"
    log.info("ray: joined %s (%s)", c.address, ray.cluster_resources())


def start_replicas(s: PipelineSettings, c: ClusterSettings) -> list[Any]:
    """``replicas`` actors for one pipeline, spread across nodes; waits until all are built."""
    actor_cls = ray.remote(PipelineActor).options(
        num_cpus=s.num_cpus,
        num_gpus=s.num_gpus,
        max_restarts=c.max_restarts,
        max_task_retries=0,  # a lost frame is stored failed/worker_lost, never processed twice
        max_concurrency=1,  # calls run in submission order: a keyed series stays in order
        scheduling_strategy="SPREAD",
    )
    # Actor handles (Any): ray types them as the class itself, whose methods lack ``.remote``.
    actors: list[Any] = [actor_cls.remote(s) for _ in range(s.replicas)]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=READY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise ConfigError(
            f"pipeline {s.name}",
            f"{s.replicas} replica(s) not placed within {READY_TIMEOUT_S:.0f} s "
            f"(asked for {s.num_cpus} CPU, {s.num_gpus} GPU each; cluster has {ray.cluster_resources()})",
        ) from None
    except ray.exceptions.RayActorError as exc:
        raise ConfigError(f"pipeline {s.name}", f"replica failed to start: {exc}") from None
    for i, info in enumerate(infos):
        log.info("pipeline %s replica %d: %s", s.name, i, info["incarnation"])
    return actors


def build_ray_workers(
    cfg: MonitorConfig,
    pipelines: Sequence[Pipeline],
    executor: Executor,
    telemetry: Telemetry,
    live: LiveState,
    on_results: Callable[[Pipeline, list[Result]], None],
    on_disposition: Callable[[Disposition], None],
    *,
    wants_display: bool,
) -> list[RayPipelineWorker]:
    """One :class:`RayPipelineWorker` per pipeline; the local pipeline object stays the schema."""
    connect(cfg.cluster)
    workers = []
    for pipeline, s in zip(pipelines, cfg.pipelines, strict=True):
        worker = RayPipelineWorker(
            pipeline,
            s,
            executor,
            telemetry,
            on_results,
            on_disposition,
            live.publish_frame,
            live_interval_s=cfg.dashboard.update_ms / 1000.0 if wants_display else None,
            on_points=live.publish_points,
            actors=start_replicas(s, cfg.cluster),
            in_flight=cfg.cluster.in_flight,
            keyed=s.kind in KEYED_KINDS,
        )
        workers.append(worker)
    return workers


def shutdown(workers: Sequence[object]) -> None:
    """Kill this daemon's replicas; stop Ray if this process started it."""
    global _started_here
    if not ray.is_initialized():
        return
    for w in workers:
        for actor in getattr(w, "actors", ()):
            ray.kill(actor, no_restart=True)
    if _started_here:
        ray.shutdown()
        _started_here = False

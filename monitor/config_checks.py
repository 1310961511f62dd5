"""Cross-field checks of a loaded configuration (the part of :mod:`monitor.config` that types
alone cannot express): endpoint syntax, the run file name template and its confinement to the
store directory, unique names, ranges, the cluster section. Every failure is a
:class:`~monitor.errors.ConfigError` naming the key."""

from __future__ import annotations

import os
import re
import string
from pathlib import PurePath
from typing import TYPE_CHECKING

from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config import MonitorConfig


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


_ENDPOINT = re.compile(
    r"^tcp://(?:[^:;/]+;)?(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\*|\d+)$"
)


def check_endpoint(value: str, key: str, *, bind: bool) -> None:
    """ZeroMQ endpoint syntax: ``tcp://host:port`` (port 0-65535, ``*`` only to bind),
    ``ipc://path`` or ``inproc://name``."""
    if value.startswith(("ipc://", "inproc://")) and value.partition("://")[2]:
        return
    m = _ENDPOINT.match(value)
    if m is None:
        raise ConfigError(
            key, f"{value!r} is not a ZeroMQ endpoint (tcp://host:port, ipc://path, inproc://name)"
        )
    port = m["port"]
    if port == "*" or m["host"] == "*":
        if not bind:
            raise ConfigError(key, f"{value!r}: '*' is only valid for an endpoint that binds")
        if port == "*":
            return
    if not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{value!r}: port must be 0..65535")
    if int(port) == 0 and not bind:
        raise ConfigError(key, f"{value!r}: port 0 is only valid for an endpoint that binds")


def check_filename(cfg: MonitorConfig) -> str:
    """The run file name the template gives, confined to the store directory unless allowed."""
    template = cfg.store.filename
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError("store.filename", f"bad template {template!r}: {exc}") from None
    for f in fields:
        if f not in ("run", "time"):
            raise ConfigError(
                "store.filename", f"unknown field {{{f}}} in {template!r} (known: {{run}}, {{time}})"
            )
    try:
        name = template.format(run=cfg.run, time="20000101T000000Z")
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise ConfigError("store.filename", f"bad template {template!r}: {exc}") from None
    if not name.strip() or name.endswith(("/", os.sep)):
        raise ConfigError("store.filename", f"template {template!r} gives no file name")
    if not cfg.store.allow_outside_store:
        if any(sep in cfg.run for sep in ("/", "\\")) or cfg.run in ("..", "."):
            raise ConfigError(
                "run", f"run name {cfg.run!r} may not contain a path (allow_outside_store = false)"
            )
        path = PurePath(name)
        if path.is_absolute() or ".." in path.parts:
            raise ConfigError(
                "store.filename",
                f"{template!r} gives {name!r}, outside store.directory (see store.allow_outside_store)",
            )
    return name


def validate(cfg: MonitorConfig) -> MonitorConfig:
    """Cross-field checks that types alone cannot express."""
    _positive(cfg.daemon.shutdown_timeout_s, "daemon.shutdown_timeout_s")
    _positive(cfg.daemon.telemetry_interval_s, "daemon.telemetry_interval_s")
    names: set[str] = set()
    for i, src in enumerate(cfg.sources):
        key = f"sources[{i}]"
        if src.name in names:
            raise ConfigError(f"{key}.name", f"duplicate source name {src.name!r}")
        names.add(src.name)
        if src.kind == "array10" and not src.endpoint:
            raise ConfigError(f"{key}.endpoint", "required for kind 'array10'")
        if src.kind == "stream2" and not src.endpoint:
            raise ConfigError(f"{key}.endpoint", "required for kind 'stream2' (e.g. tcp://detector:31001)")
        if src.kind == "stream2" and src.channel.strip() != src.channel:
            raise ConfigError(f"{key}.channel", f"channel name has surrounding spaces: {src.channel!r}")
        if src.kind == "replay" and not src.path:
            raise ConfigError(f"{key}.path", "required for kind 'replay'")
        if src.kind == "bluesky" and not src.endpoint:
            raise ConfigError(f"{key}.endpoint", "required for kind 'bluesky' (the proxy's out-port)")
        if " " in src.prefix:
            raise ConfigError(f"{key}.prefix", "a bluesky prefix may not contain a space")
        if src.kind != "replay":
            check_endpoint(src.endpoint, f"{key}.endpoint", bind=src.mode == "bind")
        _positive(src.hdf5_timeout_s, f"{key}.hdf5_timeout_s")
        _positive(src.max_frame_bytes, f"{key}.max_frame_bytes")
        _positive(src.rate_hz, f"{key}.rate_hz", allow_zero=True)
    pnames: set[str] = set()
    for i, p in enumerate(cfg.pipelines):
        key = f"pipelines[{i}]"
        if p.name in pnames:
            raise ConfigError(f"{key}.name", f"duplicate pipeline name {p.name!r}")
        pnames.add(p.name)
        _positive(p.queue_size, f"{key}.queue_size")
        _positive(p.max_batch, f"{key}.max_batch")
        _positive(p.max_wait_ms, f"{key}.max_wait_ms", allow_zero=True)
        _positive(p.max_latency_ms, f"{key}.max_latency_ms", allow_zero=True)
        _positive(p.threads, f"{key}.threads")
        if not p.streams:
            raise ConfigError(f"{key}.streams", "must name at least one stream")
    for i, r in enumerate(cfg.alerts.rules):
        key = f"alerts.rules[{i}]"
        if r.kind == "threshold":
            if r.pipeline not in pnames:
                raise ConfigError(f"{key}.pipeline", f"no pipeline named {r.pipeline!r}")
            if not r.metric:
                raise ConfigError(f"{key}.metric", "required for kind 'threshold'")
            if r.minor is None and r.major is None:
                raise ConfigError(key, "a threshold rule needs 'minor' and/or 'major'")
            _positive(r.hysteresis, f"{key}.hysteresis", allow_zero=True)
            _positive(r.min_count, f"{key}.min_count")
        elif r.kind == "silence":
            if r.source not in names:
                raise ConfigError(f"{key}.source", f"no source named {r.source!r}")
            _positive(r.timeout_s, f"{key}.timeout_s")
    qs = cfg.alerts.queueserver
    if qs.enabled:
        _positive(qs.timeout_s, "alerts.queueserver.timeout_s")
        if qs.action == "queue_plan" and not qs.plan_name:
            raise ConfigError("alerts.queueserver.plan_name", "required for action 'queue_plan'")
        rule_names = {r.name for r in cfg.alerts.rules}
        for k, name in enumerate(qs.rules):
            if name not in rule_names:
                raise ConfigError(f"alerts.queueserver.rules[{k}]", f"no rule named {name!r}")
    if cfg.alerts.epics.enabled:
        _positive(cfg.alerts.epics.heartbeat_s, "alerts.epics.heartbeat_s")
        if not cfg.alerts.epics.prefix:
            raise ConfigError("alerts.epics.prefix", "must not be empty")
    if cfg.alerts.zmq_pub:
        check_endpoint(cfg.alerts.zmq_pub, "alerts.zmq_pub", bind=True)
    check_filename(cfg)
    _positive(cfg.store.max_pending_mb, "store.max_pending_mb")
    _positive(cfg.store.flush_interval_s, "store.flush_interval_s")
    _positive(cfg.store.chunk_rows, "store.chunk_rows")
    _positive(cfg.dashboard.update_ms, "dashboard.update_ms")
    if not 0 <= cfg.dashboard.port < 65536:
        raise ConfigError("dashboard.port", f"must be 0..65535, got {cfg.dashboard.port}")
    if cfg.tiled.enabled:
        _positive(cfg.tiled.flush_interval_s, "tiled.flush_interval_s")
        _positive(cfg.tiled.max_pending_rows, "tiled.max_pending_rows")
        _positive(cfg.tiled.timeout_s, "tiled.timeout_s")
        if not cfg.tiled.uri.startswith(("http://", "https://")):
            raise ConfigError("tiled.uri", f"must be an http(s) URL, got {cfg.tiled.uri!r}")
    if not 0 <= cfg.metrics.port < 65536:
        raise ConfigError("metrics.port", f"must be 0..65535, got {cfg.metrics.port}")
    _check_cluster(cfg)
    return cfg


def _check_cluster(cfg: MonitorConfig) -> None:
    c = cfg.cluster
    _positive(c.in_flight, "cluster.in_flight")
    _positive(c.object_store_mb, "cluster.object_store_mb")
    _positive(c.max_restarts, "cluster.max_restarts", allow_zero=True)
    _positive(c.num_cpus, "cluster.num_cpus", allow_zero=True)
    if c.engine == "ray" and not c.address:
        raise ConfigError("cluster.address", '"local" or a Ray cluster address (host:port)')
    for i, p in enumerate(cfg.pipelines):
        _positive(p.replicas, f"pipelines[{i}].replicas")
        _positive(p.num_cpus, f"pipelines[{i}].num_cpus", allow_zero=True)
        _positive(p.num_gpus, f"pipelines[{i}].num_gpus", allow_zero=True)

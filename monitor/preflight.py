"""What `run` checks before it starts, and all that `check` checks: one code path for both.

:func:`monitor.config.load_config` checks types, ranges, endpoint syntax, filename templates and
store confinement. :func:`preflight` adds what needs the pipelines themselves: pipeline names
that can be HDF5 groups, options (parsed by each pipeline), models present with a valid sha256,
result schemas the store accepts, threshold rules on metrics the pipeline's schema has, and a
store directory that can be written. Every problem is a :class:`ConfigError` naming its key.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from monitor.config import MonitorConfig
from monitor.errors import ConfigError, MonitorError
from monitor.pipelines.base import Pipeline
from monitor.pipelines.registry import build_pipeline
from monitor.store import layout as L


def build_pipelines(cfg: MonitorConfig) -> list[Pipeline]:
    """Build every configured pipeline (loading its model) and check the rules against them."""
    check_extras(cfg)
    pipelines: list[Pipeline] = []
    for i, settings in enumerate(cfg.pipelines):
        key = f"pipelines[{i}]"
        try:
            L.check_pipeline_name(settings.name)
        except MonitorError as exc:
            raise ConfigError(f"{key}.name", str(exc)) from None
        try:
            pipeline = build_pipeline(settings)
        except ConfigError:
            raise
        except MonitorError as exc:
            raise ConfigError(key, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any construction failure is a config error here
            raise ConfigError(
                key, f"cannot build pipeline {settings.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            L.results_dtype(settings.name, pipeline.schema())
        except MonitorError as exc:
            raise ConfigError(key, str(exc)) from None
        pipelines.append(pipeline)
    check_rule_metrics(cfg, pipelines)
    return pipelines


def check_rule_metrics(cfg: MonitorConfig, pipelines: list[Pipeline]) -> None:
    scalars = {p.name: p.schema().scalars for p in pipelines}
    for i, rule in enumerate(cfg.alerts.rules):
        if rule.kind != "threshold" or rule.pipeline not in scalars:
            continue
        known = scalars[rule.pipeline]
        if rule.metric not in known:
            raise ConfigError(
                f"alerts.rules[{i}].metric",
                f"pipeline {rule.pipeline!r} has no metric {rule.metric!r} (it has: {', '.join(known)})",
            )


def check_store_directory(cfg: MonitorConfig) -> Path:
    """Create the store directory if needed and prove a file can be written there."""
    directory = Path(cfg.store.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError("store.directory", f"cannot write to {directory}: {exc.strerror or exc}") from None
    return directory


def check_extras(cfg: MonitorConfig) -> None:
    """Optional stacks the configuration needs are installed (``pip install operando-monitor[epics]``)."""
    if cfg.alerts.epics.enabled and importlib.util.find_spec("caproto") is None:
        raise ConfigError(
            "alerts.epics.enabled", "EPICS alarm PVs need caproto: pip install 'operando-monitor[epics]'"
        )
    if cfg.cluster.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("cluster.engine", "engine 'ray' needs: pip install 'operando-monitor[cluster]'")
    for i, p in enumerate(cfg.pipelines):
        if p.backend == "torch" and importlib.util.find_spec("torch") is None:
            raise ConfigError(
                f"pipelines[{i}].backend", "backend 'torch' needs: pip install 'operando-monitor[train]'"
            )


def preflight(cfg: MonitorConfig) -> list[Pipeline]:
    """Everything `run` validates before opening sockets; `check` runs exactly this."""
    check_store_directory(cfg)
    return build_pipelines(cfg)

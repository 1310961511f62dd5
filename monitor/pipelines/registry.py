"""Pipeline kinds by name. The model pipelines register here when they land."""

from __future__ import annotations

from collections.abc import Callable

from monitor.config import PipelineSettings
from monitor.errors import ConfigError
from monitor.pipelines.base import Pipeline
from monitor.pipelines.frame_stats import FrameStatsPipeline

PIPELINE_KINDS: dict[str, Callable[[PipelineSettings], Pipeline]] = {
    "frame_stats": FrameStatsPipeline,
}


def build_pipeline(settings: PipelineSettings) -> Pipeline:
    try:
        factory = PIPELINE_KINDS[settings.kind]
    except KeyError:
        raise ConfigError("pipelines.kind", f"unknown pipeline kind {settings.kind!r}") from None
    return factory(settings)

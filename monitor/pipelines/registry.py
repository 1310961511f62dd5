"""Pipeline kinds by name, imported lazily so `frame_stats` never pulls in the model stack."""

from __future__ import annotations

import importlib

from monitor.config import PipelineSettings
from monitor.errors import ConfigError
from monitor.pipelines.base import Pipeline

PIPELINE_KINDS: dict[str, str] = {
    "frame_stats": "monitor.pipelines.frame_stats:FrameStatsPipeline",
    "early_warning": "monitor.pipelines.early_warning:EarlyWarningPipeline",
    "segmentation": "monitor.pipelines.segmentation:SegmentationPipeline",
    "alignment": "monitor.pipelines.alignment:AlignmentPipeline",
}
"""kind → ``module:factory``; the factory takes the pipeline's :class:`PipelineSettings`."""


def build_pipeline(settings: PipelineSettings) -> Pipeline:
    try:
        target = PIPELINE_KINDS[settings.kind]
    except KeyError:
        raise ConfigError("pipelines.kind", f"unknown pipeline kind {settings.kind!r}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "pipelines.kind", f"pipeline kind {settings.kind!r} is not available: {exc}"
        ) from exc
    return getattr(module, attr)(settings)

"""Pipeline protocol. The typed result records live beside :class:`~monitor.frames.Frame`
(``monitor.frames``) and are re-exported here, so ``from monitor.pipelines.base import Result``
keeps working."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from monitor.frames import ArraySpec, Frame, Latency, Result, ResultSchema

__all__ = ["ArraySpec", "Latency", "LiveOverlays", "Pipeline", "Result", "ResultSchema"]


@runtime_checkable
class Pipeline(Protocol):
    """A per-frame analysis. ``process`` is blocking and runs in an executor thread."""

    name: str
    streams: tuple[str, ...]

    def schema(self) -> ResultSchema: ...

    def process(self, frames: Sequence[Frame]) -> list[Result]: ...


@runtime_checkable
class LiveOverlays(Protocol):
    """Optional: a pipeline that draws on the dashboard returns display-sized extras per result.

    Called in the worker thread only for results that reach the display (sampled at the
    dashboard's update rate), so it may do some work. ``shape`` is the display image's shape.
    """

    def display_overlays(self, result: Result, shape: tuple[int, int]) -> dict[str, np.ndarray]: ...

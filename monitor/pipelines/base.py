"""Pipeline protocol and the typed result record every pipeline returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

from monitor.frames import Frame


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """A per-frame array output (mask, aligned ROI); stored chunked and compressed."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class ResultSchema:
    """What a pipeline writes per frame: named float64 scalars and fixed-shape arrays.

    Declared up front so the store can create every dataset before SWMR mode starts.
    """

    scalars: tuple[str, ...]
    arrays: tuple[ArraySpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Latency:
    """Where the time went for one frame, in seconds."""

    queued: float = 0.0
    compute: float = 0.0
    batch_size: int = 1


_NO_ARRAYS: Mapping[str, np.ndarray] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Result:
    """One pipeline's output for one frame. ``scalars`` keys follow the pipeline's schema."""

    pipeline: str
    frame: Frame
    scalars: Mapping[str, float]
    arrays: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_ARRAYS)
    latency: Latency = field(default_factory=Latency)


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

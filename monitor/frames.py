"""The core types: the one internal frame, a pipeline's result for it (and the schema results
follow), and the records that account for every message. The store, the recorder, the router and
the pipelines all speak these; none of them needs another layer's module for its types."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

_EMPTY: Mapping[str, str | int | float | bool] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """Typed per-frame metadata carried from the wire; ``extra`` is pass-through only."""

    energy_eV: float | None = None
    slice_z: float | None = None
    cycle: int | None = None
    step: int | None = None
    current_mA: float | None = None
    extra: Mapping[str, str | int | float | bool] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Frame:
    """A 2-D detector frame as every pipeline sees it."""

    stream: str
    source: str
    series: str
    index: int
    array: np.ndarray
    t_detector: float
    t_received: float
    meta: FrameMeta = field(default_factory=FrameMeta)
    seq: int = -1
    """Monotonic number the router gives every received message (set by the router)."""

    def __post_init__(self) -> None:
        if self.array.ndim != 2:
            raise ValueError(f"Frame.array must be 2-D, got shape {self.array.shape}")

    def with_seq(self, seq: int) -> Frame:
        """A copy numbered by the router (cheaper than ``dataclasses.replace`` on the hot path)."""
        return Frame(
            self.stream, self.source, self.series, self.index, self.array,
            self.t_detector, self.t_received, self.meta, seq,
        )  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class Rejection:
    """A received message that could not become a frame: counted and stored with its reason."""

    source: str
    reason: str
    detail: str
    t_received: float = field(default_factory=time.time)
    index: int = -1
    seq: int = -1


@dataclass(frozen=True, slots=True)
class SeriesEvent:
    """A control message: a series (run) starts or ends on a source."""

    source: str
    series: str
    kind: str  # "start" | "end"
    t_received: float = field(default_factory=time.time)


IngestEvent = Frame | Rejection | SeriesEvent
"""What a source puts on the ingest queue."""


class Status(enum.IntEnum):
    """Final disposition of a received message for one pipeline (stored as an int)."""

    PROCESSED = 0
    SKIPPED = 1
    REJECTED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class Disposition:
    """One row of the frame-accounting table: what happened to message ``seq``."""

    seq: int
    source: str
    stream: str
    series: str
    index: int
    pipeline: str
    status: Status
    reason: str
    t_detector: float
    t_received: float
    t_done: float

    @classmethod
    def for_frame(
        cls, frame: Frame, pipeline: str, status: Status, reason: str = "", t_done: float | None = None
    ) -> Disposition:
        return cls(
            seq=frame.seq,
            source=frame.source,
            stream=frame.stream,
            series=frame.series,
            index=frame.index,
            pipeline=pipeline,
            status=status,
            reason=reason,
            t_detector=frame.t_detector,
            t_received=frame.t_received,
            t_done=time.time() if t_done is None else t_done,
        )

    @classmethod
    def for_rejection(cls, rej: Rejection) -> Disposition:
        return cls(
            seq=rej.seq,
            source=rej.source,
            stream="",
            series="",
            index=rej.index,
            pipeline="",
            status=Status.REJECTED,
            reason=rej.reason,
            t_detector=float("nan"),
            t_received=rej.t_received,
            t_done=time.time(),
        )

"""The Ray actor that hosts one pipeline replica (plain class; Ray wraps it at runtime).

The daemon ships frames (numpy arrays go through Ray's shared-memory object store) and gets
back only what a row needs: scalars, arrays and compute latency per frame, never the frame
itself. ``incarnation`` changes each time Ray (re)starts the actor, so the daemon can tell that
a keyed series' state was lost.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.config import PipelineSettings
from monitor.frames import Frame


@dataclass(frozen=True, slots=True)
class FrameOutput:
    scalars: dict[str, float]
    arrays: dict[str, np.ndarray]
    compute_s: float


@dataclass(frozen=True, slots=True)
class Reply:
    incarnation: str
    outputs: tuple[FrameOutput, ...] = ()
    error: str = ""
    t_compute: float = 0.0


def portable(frame: Frame) -> Frame:
    """The frame with plain-dict metadata (``MappingProxyType`` does not pickle)."""
    meta = frame.meta
    if isinstance(meta.extra, dict):
        return frame
    return dataclasses.replace(frame, meta=dataclasses.replace(meta, extra=dict(meta.extra)))


_PIPELINE_ERRORS = (ValueError, TypeError, ArithmeticError, RuntimeError, MemoryError, IndexError, KeyError)


class PipelineActor:
    """One replica: builds the pipeline from its settings and processes batches in call order."""

    def __init__(self, settings: PipelineSettings) -> None:
        from monitor.pipelines.registry import build_pipeline  # the model loads in the actor

        self.pipeline = build_pipeline(settings)
        self.incarnation = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def info(self) -> dict[str, str | int]:
        import ray  # only ever called inside a Ray worker

        node = ray.get_runtime_context().get_node_id()
        return {"incarnation": self.incarnation, "pid": os.getpid(), "node": node}

    def process(self, frames: Sequence[Frame]) -> Reply:
        t0 = time.perf_counter()
        try:
            results = self.pipeline.process(list(frames))
        except _PIPELINE_ERRORS as exc:  # the same errors the in-process worker turns into rows
            return Reply(self.incarnation, error=f"{type(exc).__name__}: {exc}")
        if len(results) != len(frames):
            error = f"pipeline returned {len(results)} results for {len(frames)} frames"
            return Reply(self.incarnation, error=error)
        dt = time.perf_counter() - t0
        outputs = tuple(
            FrameOutput(
                {k: float(v) for k, v in r.scalars.items()},
                dict(r.arrays),
                r.latency.compute or dt,
            )
            for r in results
        )
        return Reply(self.incarnation, outputs, t_compute=dt)

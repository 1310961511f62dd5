"""The HDF5 run store: one SWMR file per run, readable while written and after a crash."""

from __future__ import annotations

from monitor.store.layout import (
    ALARMS_DTYPE,
    FORMAT_VERSION,
    FRAMES_DTYPE,
    TELEMETRY_DTYPE,
    results_dtype,
)
from monitor.store.reader import RunAttrs, RunReader
from monitor.store.recovery import clear_status_flags, status_flags
from monitor.store.writer import RunStore

__all__ = [
    "ALARMS_DTYPE",
    "FORMAT_VERSION",
    "FRAMES_DTYPE",
    "TELEMETRY_DTYPE",
    "RunAttrs",
    "RunReader",
    "RunStore",
    "clear_status_flags",
    "results_dtype",
    "status_flags",
]

"""Detector simulators: stream synthetic or recorded frames in each supported protocol.

Test and demo helpers only: runtime code paths never import this package.
"""

from __future__ import annotations

from monitor.sim.array10 import (
    encode_array10,
    run_simulator,
    send_raw,
    series_end,
    series_start,
    synthetic_frames,
)

__all__ = [
    "encode_array10",
    "run_simulator",
    "send_raw",
    "series_end",
    "series_start",
    "synthetic_frames",
]

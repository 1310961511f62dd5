"""LiveState: the latest-wins view the dashboard samples at its own rate.

The daemon writes into it from the event loop; the dashboard reads it from the same loop
(Bokeh server runs on the daemon's loop) or from another thread, so reads copy under a lock.
Nothing here ever blocks the frame path: frames are replaced, never queued.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from monitor.alerts.model import Alarm, AlarmEvent
from monitor.telemetry import TelemetrySnapshot

MAX_DISPLAY_PX = 512
"""Frames are block-reduced so neither side exceeds this before they reach the display."""


@dataclass(frozen=True, slots=True)
class LiveFrame:
    stream: str
    source: str
    series: str
    index: int
    t_received: float
    image: np.ndarray  # float32, at most MAX_DISPLAY_PX per side
    scalars: tuple[tuple[str, float], ...] = ()
    pipeline: str = ""
    overlays: tuple[tuple[str, np.ndarray], ...] = ()
    """Display-sized extras from the pipeline (masks, contours, maps); see ``LiveOverlays``."""


@dataclass(frozen=True, slots=True)
class LivePoint:
    """One result's scalars, kept per pipeline for timelines (every result, not sampled)."""

    pipeline: str
    stream: str
    series: str
    index: int
    t: float
    scalars: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class AckResult:
    ok: bool
    message: str


AckHandler = Callable[[str, str, str], AckResult]
"""(alarm_id, operator, token) → result. Installed by the daemon."""


def display_image(array: np.ndarray, max_px: int = MAX_DISPLAY_PX) -> np.ndarray:
    """Block-average ``array`` down to at most ``max_px`` per side, as float32."""
    a = np.asarray(array)
    fy = max(1, -(-a.shape[0] // max_px))
    fx = max(1, -(-a.shape[1] // max_px))
    if fy == 1 and fx == 1:
        return a.astype(np.float32, copy=True)
    ny, nx = a.shape[0] // fy, a.shape[1] // fx
    trimmed = a[: ny * fy, : nx * fx]
    # Summing the fy*fx strided sub-grids is ~7x faster than reshape(...).mean(axis=(1, 3)).
    out = np.zeros((ny, nx), dtype=np.float32)
    for i in range(fy):
        for j in range(fx):
            out += trimmed[i::fy, j::fx]
    out *= np.float32(1.0 / (fy * fx))
    return out


def _reject_ack(alarm_id: str, operator: str, token: str) -> AckResult:
    return AckResult(False, "acknowledgement is not available (no daemon attached)")


class LiveState:
    def __init__(self, history: int = 600) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, LiveFrame] = {}
        self._health: deque[TelemetrySnapshot] = deque(maxlen=history)
        self._alarms: dict[str, Alarm] = {}
        self._latest: dict[str, LiveFrame] = {}
        self._points: dict[str, deque[LivePoint]] = {}
        self._history = history
        self.pipelines: tuple[tuple[str, str], ...] = ()
        """(name, kind) of each configured pipeline; set by the daemon, read by the display."""
        self.thresholds: tuple[tuple[str, str, float, float, int], ...] = ()
        """(pipeline, metric, major, hysteresis, min_count) of each configured MAJOR threshold
        rule; set by the daemon, read by panels that draw their alarm level."""
        self._version = 0
        self.ack_handler: AckHandler = _reject_ack

    @property
    def version(self) -> int:
        """Increments on every update, so a display can skip redraws when nothing changed."""
        return self._version

    def publish_frame(self, frame: LiveFrame) -> None:
        with self._lock:
            self._frames[frame.stream] = frame
            if frame.pipeline:
                self._latest[frame.pipeline] = frame
            self._version += 1

    def publish_points(self, points: list[LivePoint]) -> None:
        if not points:
            return
        with self._lock:
            for p in points:
                q = self._points.get(p.pipeline)
                if q is None:
                    q = self._points[p.pipeline] = deque(maxlen=self._history)
                q.append(p)
            self._version += 1

    def latest(self, pipeline: str) -> LiveFrame | None:
        """The newest display frame a pipeline published (with its overlays)."""
        with self._lock:
            return self._latest.get(pipeline)

    def points(self, pipeline: str) -> list[LivePoint]:
        with self._lock:
            return list(self._points.get(pipeline, ()))

    def publish_health(self, snap: TelemetrySnapshot) -> None:
        with self._lock:
            self._health.append(snap)
            self._version += 1

    def publish_alarm(self, alarm: Alarm) -> None:
        with self._lock:
            self._alarms[alarm.id] = alarm
            self._version += 1

    def frames(self) -> dict[str, LiveFrame]:
        with self._lock:
            return dict(self._frames)

    def health(self) -> list[TelemetrySnapshot]:
        with self._lock:
            return list(self._health)

    def alarms(self) -> list[Alarm]:
        with self._lock:
            return sorted(self._alarms.values(), key=lambda a: a.t_raised, reverse=True)

    def acknowledge(self, alarm_id: str, operator: str, token: str) -> AckResult:
        return self.ack_handler(alarm_id, operator, token)


class LiveSink:
    """The alarm sink that feeds the dashboard: every alarm transition updates :class:`LiveState`."""

    name = "live"

    def __init__(self, live: LiveState) -> None:
        self._live = live

    def emit(self, event: AlarmEvent) -> None:
        self._live.publish_alarm(event.alarm)

    def close(self) -> None:
        return None

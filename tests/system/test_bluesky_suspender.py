"""A RunEngine plan suspended by ``SuspendBoolHigh`` on the monitor's TRIP when a threshold alarm raises.

1. In-process: AlarmManager → CallbackSink(TripFollower) → TripSignal.
2. Across processes: RunEngine (this process) → Publisher → Proxy (process) → daemon (process:
   bluesky source → frame_stats → saturation alarm → alarm PUB) → ZmqTripFollower → TripSignal.
   The suspender's pre_plan lowers the current and takes a check image; the monitor sees it
   clean, clears the alarm, TRIP falls and the plan resumes to completion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky.suspenders import SuspendBoolHigh
from ophyd.sim import det as sim_det

from monitor.alerts.manager import AlarmManager
from monitor.alerts.rules import ThresholdRule
from monitor.alerts.sinks import CallbackSink, JournalSink
from monitor.alerts.trip_signal import TripFollower, TripSignal, ZmqTripFollower
from monitor.bench.bluesky import wait_port
from monitor.config import RuleSettings
from monitor.sim.bluesky_demo import (
    ImageModel,
    SimHdf5Detector,
    SimPotentiostat,
    make_run_engine,
    start_proxy_process,
)
from monitor.sim.ports import free_port
from tests.helpers import start_daemon


class Recorder:
    """Event times and TRIP transitions, as the RunEngine and the signal saw them."""

    def __init__(self, trip: TripSignal) -> None:
        self.events: list[float] = []
        self.trips: list[tuple[float, int]] = []
        self.stops: list[str] = []
        trip.subscribe(self._on_trip, run=False)

    def _on_trip(self, value: int, **_: Any) -> None:
        self.trips.append((time.monotonic(), int(value)))

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event":
            self.events.append(time.monotonic())
        elif name == "stop":
            self.stops.append(doc["exit_status"])

    def events_between(self, t0: float, t1: float) -> int:
        return sum(t0 <= t <= t1 for t in self.events)


def wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_in_process_trip_suspends_and_resumes(tmp_path: Path) -> None:
    trip = TripSignal()
    manager = AlarmManager(
        JournalSink(tmp_path / "j.jsonl", fsync=False), [CallbackSink("trip", TripFollower(trip).emit)]
    )
    rule = ThresholdRule(RuleSettings(name="sat", kind="threshold", pipeline="stats", metric="f", major=0.01))
    RE = RunEngine({}, context_managers=[])
    suspender = SuspendBoolHigh(trip, sleep=0.05)
    RE.install_suspender(suspender)
    rec = Recorder(trip)
    RE.subscribe(rec)
    window: list[float] = []

    def monitor_side() -> None:
        assert wait_until(lambda: len(rec.events) >= 5, 10)
        verdict = rule.evaluate("frames", 0.5)  # a saturated frame: MAJOR
        assert verdict is not None
        manager.apply(verdict)
        assert wait_until(lambda: suspender.tripped, 5)
        window.append(time.monotonic() + 0.2)  # give the RunEngine one step to notice
        time.sleep(0.8)
        window.append(time.monotonic())
        verdict = rule.evaluate("frames", 0.0)  # back within limits
        assert verdict is not None
        manager.apply(verdict)

    side = threading.Thread(target=monitor_side)
    side.start()
    try:
        RE(bp.count([sim_det], num=20, delay=0.05))
    finally:
        side.join(20)
        manager.close()
    assert [v for _, v in rec.trips] == [1, 0]
    assert len(window) == 2 and rec.events_between(*window) == 0, "events were taken while TRIP was high"
    assert len(rec.events) >= 20 and rec.stops == ["success"]
    assert not suspender.tripped


@pytest.fixture
def proxy() -> Iterator[tuple[int, int]]:
    in_port, out_port = free_port(), free_port()
    proc = start_proxy_process(in_port, out_port)
    try:
        wait_port(out_port)
        wait_port(in_port)
        yield in_port, out_port
    finally:
        proc.terminate()
        proc.wait(10)


def test_monitor_trip_suspends_a_remote_runengine(proxy: tuple[int, int], tmp_path: Path) -> None:
    in_port, out_port = proxy
    alarm_port = free_port()
    config = tmp_path / "monitor.toml"
    config.write_text(
        f"""
run = "suspender"
[[sources]]
name = "bluesky"
kind = "bluesky"
endpoint = "tcp://127.0.0.1:{out_port}"
[[pipelines]]
name = "stats"
kind = "frame_stats"
[store]
directory = "{tmp_path}"
filename = "{{run}}.h5"
[alerts]
zmq_pub = "tcp://127.0.0.1:{alarm_port}"
[[alerts.rules]]
name = "saturation"
kind = "threshold"
pipeline = "stats"
metric = "saturated_fraction"
major = 0.01
[dashboard]
enabled = false
"""
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    trip = TripSignal()
    try:
        wait_port(alarm_port)
        pstat = SimPotentiostat(name="pstat")
        model = ImageModel((32, 32), hot_frames=frozenset({5}))  # the sixth image saturates
        det = SimHdf5Detector(name="det", model=model, potentiostat=pstat, inline=True)

        checks: list[float] = []

        def check_image() -> Iterator[Any]:
            """On suspension: drop the current and take one image for the monitor to judge."""
            checks.append(time.monotonic())
            yield from bps.mv(pstat.current, 0.0)
            yield from bps.trigger_and_read([det, pstat])

        suspender = SuspendBoolHigh(trip, sleep=0.1, pre_plan=check_image)
        with ZmqTripFollower(f"tcp://127.0.0.1:{alarm_port}", trip):
            time.sleep(1.0)  # the daemon's SUB and our alarm SUB connect
            RE, publisher = make_run_engine(f"127.0.0.1:{in_port}", "msgpack")
            RE.install_suspender(suspender)
            rec = Recorder(trip)
            RE.subscribe(rec)
            try:
                RE(bp.count([det, pstat], num=12, delay=0.15))
            finally:
                publisher.close()
    finally:
        daemon.terminate()
        daemon.wait(15)
    log = (tmp_path / "daemon.log").read_text()
    assert [v for _, v in rec.trips] == [1, 0], log[-3000:]
    (t_up, _), (t_down, _) = rec.trips
    # While TRIP was high the RunEngine took only the suspender's check image (plus, at most, the
    # point already in flight when the alarm arrived).
    # (The suspender sees TRIP rise a moment before our own subscriber records it.)
    t_up -= 0.05
    assert len(checks) == 1 and t_up <= checks[0] <= t_down, "the pre_plan ran while TRIP was high"
    assert rec.events_between(t_up, t_down) <= 2
    assert rec.stops == ["success"] and len(rec.events) >= 13
    assert "alarm saturation:frames raise MAJOR" in log and "alarm saturation:frames clear" in log
    assert "[scan 1 count]" in log, "the alarm names the Bluesky run"

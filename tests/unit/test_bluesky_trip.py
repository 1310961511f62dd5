"""TripSignal followers: in-process sink, and the alarm ZMQ PUB on loopback (bad messages counted)."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from monitor.alerts.manager import AlarmManager
from monitor.alerts.model import Severity
from monitor.alerts.rules import Verdict
from monitor.alerts.sinks import JournalSink, ZmqPubSink
from monitor.alerts.trip_signal import TripFollower, TripSignal, ZmqTripFollower
from monitor.sim.ports import free_port


def wait_until(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_follower_as_sink_with_minor_trip_level(tmp_path: Path) -> None:
    trip = TripSignal()
    manager = AlarmManager(
        JournalSink(tmp_path / "j.jsonl", fsync=False), [TripFollower(trip, Severity.MINOR)]
    )
    manager.apply(Verdict("a:x", Severity.MINOR, 1.0, 0.5, "minor"))
    assert trip.get() == 1
    manager.apply(Verdict("a:x", Severity.NO_ALARM, 0.0, 0.5, "ok"))
    assert trip.get() == 0
    manager.apply(Verdict("quiet:det", Severity.INVALID, 9.0, 5.0, "silent"))
    assert trip.get() == 0  # silence alone does not trip unless trip_on_invalid
    manager.close()


def test_zmq_follower_tracks_the_alarm_pub(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    pub = ZmqPubSink(endpoint, ctx)
    manager = AlarmManager(JournalSink(tmp_path / "j.jsonl", fsync=False), [pub])
    trip = TripSignal()
    follower = ZmqTripFollower(endpoint, trip, context=ctx)
    with follower:
        time.sleep(0.3)  # SUB connect (slow joiner)
        manager.apply(Verdict("sat:frames", Severity.MAJOR, 0.5, 0.01, "too bright"))
        assert wait_until(lambda: trip.get() == 1)
        pub._sock.send_multipart([b"alarm", b"{not json"])  # a malformed message: counted, ignored
        manager.apply(Verdict("sat:frames", Severity.NO_ALARM, 0.0, 0.01, "fine"))
        assert wait_until(lambda: trip.get() == 0)
    manager.close()
    ctx.term()
    assert follower.received == 3 and follower.bad == 1

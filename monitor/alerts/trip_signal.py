"""An ophyd ``Signal`` that follows the monitor's TRIP, for Bluesky suspenders without EPICS.

In the daemon's process::

    trip = TripSignal(name="monitor_trip")
    alarm_manager.add_sink(TripFollower(trip))          # or CallbackSink("trip", follower.emit)
    RE.install_suspender(SuspendBoolHigh(trip))

From another process (the RunEngine's), following the daemon's alarm PUB (``[alerts] zmq_pub``)::

    with ZmqTripFollower("tcp://monitor-host:5570", trip):
        RE(plan)

A follower that connects late starts from 0 (PUB keeps no history): what it has not seen
cannot trip it. TRIP is 1 while an alarm of at least ``trip_severity`` is active.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import zmq
from ophyd import Signal

from monitor.alerts.model import AlarmEvent, Severity
from monitor.alerts.sinks import event_from_json
from monitor.alerts.summary import AlarmBoard

log = logging.getLogger("monitor.alerts.trip")


class TripSignal(Signal):
    """0 or 1; read-only for users by convention (the follower writes it)."""

    def __init__(self, *, name: str = "monitor_trip", **kwargs: Any) -> None:
        super().__init__(value=0, name=name, **kwargs)


class TripFollower:
    """An alarm sink that keeps a :class:`TripSignal` equal to the monitor's TRIP."""

    name = "trip_signal"

    def __init__(
        self, signal: Signal, trip_severity: Severity = Severity.MAJOR, trip_on_invalid: bool = False
    ) -> None:
        self.signal = signal
        self.board = AlarmBoard(trip_severity, trip_on_invalid)
        self._lock = threading.Lock()

    def emit(self, event: AlarmEvent) -> None:
        with self._lock:
            trip = int(self.board.update(event).trip)
            if self.signal.get() != trip:
                self.signal.put(trip)

    def close(self) -> None:
        return None


class ZmqTripFollower:
    """Feeds a :class:`TripFollower` from the daemon's alarm PUB in a background thread."""

    def __init__(
        self,
        endpoint: str,
        signal: Signal,
        trip_severity: Severity = Severity.MAJOR,
        trip_on_invalid: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.follower = TripFollower(signal, trip_severity, trip_on_invalid)
        self.received = 0
        self.bad = 0
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trip-follower", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> ZmqTripFollower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"alarm")
        sock.connect(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(100, zmq.POLLIN):
                    continue
                parts = sock.recv_multipart()
                self.received += 1
                try:
                    event = event_from_json(json.loads(parts[-1]))
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    self.bad += 1
                    log.warning("trip follower: ignoring a malformed alarm message: %s", exc)
                    continue
                self.follower.emit(event)
        finally:
            sock.close(linger=0)

"""Alarm sinks: JSON Lines journal (flushed first), ZMQ PUB (JSON, topic ``alarm``). The dashboard's
sink, :class:`monitor.live.LiveSink`, lives with the state it feeds."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import zmq

from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, FrameRef, Severity
from monitor.live import LiveSink as LiveSink  # moved to monitor.live; re-exported


def event_to_json(event: AlarmEvent) -> dict[str, object]:
    a = event.alarm
    frame = None
    if a.frame is not None:
        frame = {
            "source": a.frame.source,
            "stream": a.frame.stream,
            "series": a.frame.series,
            "index": a.frame.index,
            "seq": a.frame.seq,
        }
    return {
        "t": event.t,
        "transition": event.transition,
        "id": a.id,
        "rule": a.rule,
        "severity": a.severity.name,
        "state": a.state.value,
        "message": a.message,
        "value": a.value,
        "threshold": a.threshold,
        "frame": frame,
        "t_raised": a.t_raised,
        "t_changed": a.t_changed,
        "latched": a.latched,
        "acked_by": a.acked_by,
    }


def event_from_json(d: dict[str, object]) -> AlarmEvent:
    """Inverse of :func:`event_to_json` (used by tests and journal readers)."""
    f = d.get("frame")
    frame = None
    if isinstance(f, dict):
        frame = FrameRef(str(f["source"]), str(f["stream"]), str(f["series"]), int(f["index"]), int(f["seq"]))
    alarm = Alarm(
        id=str(d["id"]),
        rule=str(d["rule"]),
        severity=Severity[str(d["severity"])],
        state=AlarmState(str(d["state"])),
        message=str(d["message"]),
        value=float(d["value"]),  # type: ignore[arg-type]
        threshold=float(d["threshold"]),  # type: ignore[arg-type]
        frame=frame,
        t_raised=float(d["t_raised"]),  # type: ignore[arg-type]
        t_changed=float(d["t_changed"]),  # type: ignore[arg-type]
        latched=bool(d["latched"]),
        acked_by=str(d["acked_by"]),
    )
    return AlarmEvent(t=float(d["t"]), transition=str(d["transition"]), alarm=alarm)  # type: ignore[arg-type]


def read_journal(path: str | Path) -> list[AlarmEvent]:
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                if record.get("record") == "action":  # an adapter's action, not an alarm event
                    continue
                events.append(event_from_json(record))
    return events


class JournalSink:
    """Append-only JSON Lines file; every event is flushed (and fsynced) before returning."""

    name = "journal"

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open, closed in close()
        self._fsync = fsync

    def emit(self, event: AlarmEvent) -> None:
        self._fh.write(json.dumps(event_to_json(event), allow_nan=True) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def write_record(self, record: dict[str, object]) -> None:
        """Append a non-alarm record (e.g. ``{"record": "action", ...}`` of an adapter)."""
        self._fh.write(json.dumps(record, allow_nan=True, default=str) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class ZmqPubSink:
    """Publishes ``[b"alarm", json]`` on a bound PUB socket. PUB never blocks the loop."""

    name = "zmq_pub"

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 500)
        self._sock.bind(endpoint)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def emit(self, event: AlarmEvent) -> None:
        try:
            self._sock.send_multipart(
                [b"alarm", json.dumps(event_to_json(event)).encode()], flags=zmq.NOBLOCK
            )
        except zmq.Again as exc:  # PUB with a full queue: report through the manager
            raise OSError(f"alarm PUB queue full: {exc}") from exc

    def close(self) -> None:
        self._sock.close()


class CallbackSink:
    """Forwards events to a callable (the daemon uses it to queue events for the HDF5 store)."""

    def __init__(self, name: str, fn: Callable[[AlarmEvent], None]) -> None:
        self.name = name
        self._fn = fn

    def emit(self, event: AlarmEvent) -> None:
        self._fn(event)

    def close(self) -> None:
        return None

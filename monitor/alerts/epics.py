"""Alarm PVs over EPICS Channel Access: a caproto asyncio server on the daemon's event loop.

PVs (``<prefix>`` from ``[alerts.epics]``), each in its own alarm group:

* ``STATE`` — enum OK/MINOR/MAJOR/INVALID: the highest severity of any alarm not yet cleared;
  PV severity the same, status STATE (TIMEOUT when INVALID: a source fell silent).
* ``SCORE`` — the value that triggered the latest alarm change; status HIHI/HIGH (LOLO/LOW for
  ``below`` rules) with that alarm's severity, INVALID/TIMEOUT while a source is silent.
* ``TRIP`` — 1 while an alarm of at least ``trip_severity`` is active (Bluesky:
  ``SuspendBoolHigh(EpicsSignalRO("<prefix>TRIP"))``); MAJOR/STATE while 1.
* ``MSG`` — text of the top alarm (char waveform, 256 bytes, read as a string).
* ``HEARTBEAT`` — increments every ``heartbeat_s`` while the daemon runs.

Severity is set explicitly on every write (no alarm limits: caproto would recompute them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.asyncio.server import Context
from caproto.server import PVGroup, pvproperty

from monitor.alerts.model import AlarmEvent, Severity
from monitor.alerts.summary import AlarmBoard, AlarmSummary
from monitor.config import EpicsSettings
from monitor.errors import MonitorError

log = logging.getLogger("monitor.alerts.epics")

STATE_STRINGS = ("OK", "MINOR", "MAJOR", "INVALID")
MSG_LENGTH = 256


class MonitorPVs(PVGroup):
    """The monitor's alarm PVs (read-only over CA)."""

    state = pvproperty(
        name="STATE",
        value="OK",
        dtype=ChannelType.ENUM,
        enum_strings=STATE_STRINGS,
        read_only=True,
        alarm_group="state",
        doc="Highest active alarm severity",
    )
    score = pvproperty(
        name="SCORE",
        value=0.0,
        dtype=float,
        precision=4,
        read_only=True,
        alarm_group="score",
        doc="Trigger value",
    )
    trip = pvproperty(name="TRIP", value=0, dtype=int, read_only=True, alarm_group="trip", doc="1: suspend")
    msg = pvproperty(
        name="MSG",
        value="OK",
        dtype=ChannelType.CHAR,
        max_length=MSG_LENGTH,
        report_as_string=True,
        read_only=True,
        alarm_group="msg",
        doc="Top alarm message",
    )
    heartbeat = pvproperty(
        name="HEARTBEAT", value=0, dtype=int, read_only=True, alarm_group="heartbeat", doc="Daemon alive"
    )


def _sev(s: Severity) -> AlarmSeverity:
    return AlarmSeverity(int(s))


def pv_alarm(summary: AlarmSummary) -> dict[str, tuple[AlarmStatus, AlarmSeverity]]:
    """(status, severity) of each PV for a summary (pure; tested without a server)."""
    silent = (AlarmStatus.TIMEOUT, AlarmSeverity.INVALID_ALARM)
    ok = (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
    top = summary.severity
    if top == Severity.INVALID:
        state = silent
    elif top > Severity.NO_ALARM:
        state = (AlarmStatus.STATE, _sev(top))
    else:
        state = ok
    if summary.invalid:
        score = silent
    elif summary.score_severity > Severity.NO_ALARM:
        hi = summary.score_severity == Severity.MAJOR
        if summary.score_above:
            score = (AlarmStatus.HIHI if hi else AlarmStatus.HIGH, _sev(summary.score_severity))
        else:
            score = (AlarmStatus.LOLO if hi else AlarmStatus.LOW, _sev(summary.score_severity))
    else:
        score = ok
    if summary.trip:
        trip = (AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
    else:
        trip = silent if summary.invalid else ok
    return {"state": state, "score": score, "trip": trip, "msg": state}


class EpicsAlarmSink:
    """An :class:`~monitor.alerts.manager.AlarmSink` serving the PVs; ``start``/``stop`` on the loop."""

    name = "epics"

    def __init__(self, settings: EpicsSettings) -> None:
        self.settings = settings
        self.group = MonitorPVs(prefix=settings.prefix)
        self.board = AlarmBoard(Severity[settings.trip_severity], settings.trip_on_invalid)
        self.port = 0
        """The TCP port the CA server listens on (after :meth:`start`)."""
        self.writes = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ctx: Context | None = None

    @property
    def pvnames(self) -> list[str]:
        return list(self.group.pvdb)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Bind the CA server (TCP + UDP search) and start the heartbeat; raises if it cannot."""
        self._loop = asyncio.get_running_loop()
        self._dirty = asyncio.Event()
        # Loopback unless configured ([alerts.epics] interfaces or EPICS_CAS_INTF_ADDR_LIST).
        interfaces = list(self.settings.interfaces) or (
            None if os.environ.get("EPICS_CAS_INTF_ADDR_LIST") else ["127.0.0.1"]
        )
        self._ctx = Context(self.group.pvdb, interfaces)
        up = asyncio.Event()

        async def started(_async_lib: object) -> None:
            up.set()

        server = asyncio.create_task(self._ctx.run(startup_hook=started), name="epics-server")
        waiter = asyncio.create_task(up.wait())
        done, _ = await asyncio.wait({server, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            server.cancel()
            results = await asyncio.gather(server, waiter, return_exceptions=True)
            raise MonitorError(f"EPICS server did not start: {results[0]!r}")
        self.port = int(self._ctx.port)
        self._tasks = [
            server,
            asyncio.create_task(self._heartbeat(), name="epics-heartbeat"),
            asyncio.create_task(self._updater(), name="epics-update"),
        ]
        self._dirty.set()  # publish the initial (OK) state with explicit severities
        log.info("EPICS alarm PVs on CA port %d: %s", self.port, ", ".join(self.pvnames))

    def emit(self, event: AlarmEvent) -> None:
        with self._lock:
            self.board.update(event)
        if self._loop is not None and self._dirty is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dirty.set)

    async def _heartbeat(self) -> None:
        pv = self.group.heartbeat
        n = 0
        while True:
            n = (n + 1) % 2_000_000_000
            await pv.write(n, verify_value=False)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _updater(self) -> None:
        assert self._dirty is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                summary = self.board.summary
            await self._publish(summary)

    async def _publish(self, s: AlarmSummary) -> None:
        g = self.group
        alarms = pv_alarm(s)
        now = time.time()
        values = {
            "state": STATE_STRINGS[int(s.severity)],
            "score": 0.0 if s.score != s.score else float(s.score),
            "trip": int(s.trip),
            "msg": s.message.encode("utf-8", "replace")[: MSG_LENGTH - 1].decode("utf-8", "ignore"),
        }
        for key, value in values.items():
            status, severity = alarms[key]
            pv = getattr(g, key)
            await pv.write(value, status=status, severity=severity, timestamp=now, verify_value=False)
        self.writes += 1

    def close(self) -> None:
        """Synchronous part of shutdown (the alarm manager calls it); :meth:`stop` awaits the tasks."""
        for t in self._tasks:
            t.cancel()

    async def stop(self) -> None:
        self.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

"""The alarm state machine: verdicts in, transitions out to every sink (journal first).

States: (none) → ACTIVE → ACKNOWLEDGED → CLEARED. An escalation re-activates an acknowledged
alarm. When the condition goes away an unlatched alarm clears at once; a latched alarm that is
not yet acknowledged stays ACTIVE (message says the condition cleared) until acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, FrameRef, Severity
from monitor.alerts.rules import Verdict

log = logging.getLogger("monitor.alerts")


@runtime_checkable
class AlarmSink(Protocol):
    name: str

    def emit(self, event: AlarmEvent) -> None: ...

    def close(self) -> None: ...


class AlarmManager:
    def __init__(
        self, journal: AlarmSink, sinks: Sequence[AlarmSink] = (), latch: frozenset[str] = frozenset()
    ):
        """``journal`` is written (and flushed) before any other sink sees an event.

        ``latch`` holds rule names whose alarms latch until acknowledged.
        """
        self._journal = journal
        self._sinks = list(sinks)
        self._latch = latch
        self._alarms: dict[str, Alarm] = {}
        self._condition: dict[str, bool] = {}
        self.sink_errors = 0
        self.journal_errors = 0

    def add_sink(self, sink: AlarmSink) -> None:
        self._sinks.append(sink)

    def alarms(self) -> list[Alarm]:
        return list(self._alarms.values())

    def get(self, alarm_id: str) -> Alarm | None:
        return self._alarms.get(alarm_id)

    def _publish(self, transition: str, alarm: Alarm, now: float) -> AlarmEvent:
        self._alarms[alarm.id] = alarm
        event = AlarmEvent(t=now, transition=transition, alarm=alarm)
        # The journal holds the event before anyone can react to it. If it cannot be written
        # (disk full, unmounted), the alarm still reaches every other sink: an operator must see
        # it even when it cannot be recorded; the failure is logged loudly and counted.
        try:
            self._journal.emit(event)
        except OSError as exc:
            self.journal_errors += 1
            log.critical("ALARM JOURNAL WRITE FAILED for %s (%s): %s", alarm.id, transition, exc)
        for sink in self._sinks:
            try:
                sink.emit(event)
            except OSError as exc:  # a sink's I/O failure must not stop the others
                self.sink_errors += 1
                log.error("alarm sink %s failed for %s: %s", sink.name, alarm.id, exc)
            except Exception as exc:  # a sink's bug must not stop the others (nor the caller)
                self.sink_errors += 1
                log.error("alarm sink %s raised for %s", sink.name, alarm.id, exc_info=exc)
        level = logging.WARNING if alarm.severity >= Severity.MINOR else logging.INFO
        log.log(level, "alarm %s %s %s: %s", alarm.id, transition, alarm.severity.name, alarm.message)
        return event

    def apply(
        self, verdict: Verdict, frame: FrameRef | None = None, now: float | None = None
    ) -> AlarmEvent | None:
        t = time.time() if now is None else now
        rule = verdict.alarm_id.split(":", 1)[0]
        cur = self._alarms.get(verdict.alarm_id)
        active = cur is not None and cur.state is not AlarmState.CLEARED
        self._condition[verdict.alarm_id] = verdict.severity > Severity.NO_ALARM
        if verdict.severity > Severity.NO_ALARM:
            if not active:
                alarm = Alarm(
                    id=verdict.alarm_id,
                    rule=rule,
                    severity=verdict.severity,
                    state=AlarmState.ACTIVE,
                    message=verdict.message,
                    value=verdict.value,
                    threshold=verdict.threshold,
                    frame=frame,
                    t_raised=t,
                    t_changed=t,
                    latched=rule in self._latch,
                )
                return self._publish("raise", alarm, t)
            assert cur is not None
            if verdict.severity == cur.severity:
                return None
            escalate = verdict.severity > cur.severity
            alarm = dataclasses.replace(
                cur,
                severity=verdict.severity,
                state=AlarmState.ACTIVE if escalate else cur.state,
                message=verdict.message,
                value=verdict.value,
                threshold=verdict.threshold,
                frame=frame or cur.frame,
                t_changed=t,
                acked_by="" if escalate else cur.acked_by,
            )
            return self._publish("escalate" if escalate else "deescalate", alarm, t)
        # Condition gone.
        if not active:
            return None
        assert cur is not None
        if cur.latched and cur.state is AlarmState.ACTIVE:
            alarm = dataclasses.replace(
                cur, message=f"{verdict.message} (latched until acknowledged)", t_changed=t
            )
            return self._publish("condition_cleared", alarm, t)
        alarm = dataclasses.replace(
            cur,
            severity=Severity.NO_ALARM,
            state=AlarmState.CLEARED,
            message=verdict.message,
            value=verdict.value,
            t_changed=t,
        )
        return self._publish("clear", alarm, t)

    def acknowledge(self, alarm_id: str, operator: str, now: float | None = None) -> list[AlarmEvent]:
        """Acknowledge an active alarm. Raises KeyError / ValueError with a reason otherwise."""
        t = time.time() if now is None else now
        cur = self._alarms.get(alarm_id)
        if cur is None:
            raise KeyError(f"no alarm with id {alarm_id!r}")
        if cur.state is not AlarmState.ACTIVE:
            raise ValueError(f"alarm {alarm_id!r} is {cur.state.value}, not active")
        acked = dataclasses.replace(cur, state=AlarmState.ACKNOWLEDGED, acked_by=operator, t_changed=t)
        events = [self._publish("acknowledge", acked, t)]
        if not self._condition.get(alarm_id, False):
            cleared = dataclasses.replace(
                acked,
                severity=Severity.NO_ALARM,
                state=AlarmState.CLEARED,
                message=f"cleared on acknowledgement by {operator}",
                t_changed=t,
            )
            events.append(self._publish("clear", cleared, t))
        return events

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
        self._journal.close()

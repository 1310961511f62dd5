"""One summary of every active alarm: what the EPICS PVs and the ophyd TRIP signal publish.

``severity``: the highest severity of any alarm not yet cleared (acknowledging does not lower
it: EPICS semantics). ``trip``: an alarm between ``trip_severity`` and MAJOR is active (INVALID,
a silent source, trips only with ``trip_on_invalid``). Pure and thread-agnostic: callers lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, Severity


@dataclass(frozen=True, slots=True)
class AlarmSummary:
    severity: Severity
    trip: bool
    message: str
    score: float
    """The value that triggered the latest alarm change of a non-INVALID alarm (NaN before any)."""
    score_severity: Severity
    score_above: bool
    """Whether ``score`` was at or above its threshold (for HIGH/HIHI vs LOW/LOLO status)."""
    invalid: bool
    """Some alarm is INVALID (a source fell silent): the other values may be stale."""
    active: int


OK_SUMMARY = AlarmSummary(Severity.NO_ALARM, False, "OK", float("nan"), Severity.NO_ALARM, True, False, 0)


class AlarmBoard:
    def __init__(self, trip_severity: Severity = Severity.MAJOR, trip_on_invalid: bool = False) -> None:
        if not Severity.MINOR <= trip_severity <= Severity.MAJOR:
            raise ValueError(f"trip_severity must be MINOR or MAJOR, got {trip_severity.name}")
        self.trip_severity = trip_severity
        self.trip_on_invalid = trip_on_invalid
        self._active: dict[str, Alarm] = {}
        self._score: Alarm | None = None
        self._summary = OK_SUMMARY

    @property
    def summary(self) -> AlarmSummary:
        return self._summary

    def update(self, event: AlarmEvent) -> AlarmSummary:
        a = event.alarm
        if a.state is AlarmState.CLEARED or a.severity == Severity.NO_ALARM:
            self._active.pop(a.id, None)
        else:
            self._active[a.id] = a
        if a.severity != Severity.INVALID and event.transition != "acknowledge":
            self._score = a
        self._summary = self._summarise()
        return self._summary

    def _summarise(self) -> AlarmSummary:
        alarms = list(self._active.values())
        if alarms:
            top = max(alarms, key=lambda x: (x.severity, x.t_changed))
            severity, message = top.severity, f"{top.severity.name} {top.id}: {top.message}"
            if len(alarms) > 1:
                message += f" (+{len(alarms) - 1} more)"
        else:
            severity, message = Severity.NO_ALARM, "OK"
        invalid = any(x.severity == Severity.INVALID for x in alarms)
        trip = any(
            self.trip_severity <= x.severity <= Severity.MAJOR
            or (self.trip_on_invalid and x.severity == Severity.INVALID)
            for x in alarms
        )
        s = self._score
        score_sev = (
            self._active[s.id].severity if s is not None and s.id in self._active else Severity.NO_ALARM
        )
        return AlarmSummary(
            severity=severity,
            trip=trip,
            message=message,
            score=s.value if s is not None else float("nan"),
            score_severity=score_sev,
            score_above=s is None or not s.value < s.threshold,
            invalid=invalid,
            active=len(alarms),
        )

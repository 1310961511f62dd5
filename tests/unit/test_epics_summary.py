"""AlarmBoard (what STATE/SCORE/TRIP/MSG show) and the PV status/severity mapping, without a server."""

from __future__ import annotations

import math

import pytest
from caproto import AlarmSeverity, AlarmStatus

from monitor.alerts.epics import pv_alarm
from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, Severity
from monitor.alerts.summary import AlarmBoard


def ev(
    aid: str,
    sev: Severity,
    state: AlarmState = AlarmState.ACTIVE,
    value: float = 0.5,
    thr: float = 0.1,
    t: float = 1.0,
    transition: str = "raise",
) -> AlarmEvent:
    alarm = Alarm(aid, aid.split(":")[0], sev, state, f"msg {aid}", value, thr, None, t, t)
    return AlarmEvent(t, transition, alarm)


def test_empty_board_is_ok() -> None:
    s = AlarmBoard().summary
    assert s.severity == Severity.NO_ALARM and not s.trip and s.message == "OK" and math.isnan(s.score)
    assert pv_alarm(s)["state"] == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


def test_major_trips_minor_does_not_and_clear_untrips() -> None:
    b = AlarmBoard()
    s = b.update(ev("sat:frames", Severity.MINOR, value=0.02, thr=0.01))
    assert s.severity == Severity.MINOR and not s.trip and s.score == 0.02
    assert pv_alarm(s)["score"] == (AlarmStatus.HIGH, AlarmSeverity.MINOR_ALARM)
    s = b.update(ev("sat:frames", Severity.MAJOR, value=0.2, transition="escalate"))
    assert s.trip and s.severity == Severity.MAJOR
    assert pv_alarm(s)["trip"] == (AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
    assert pv_alarm(s)["score"] == (AlarmStatus.HIHI, AlarmSeverity.MAJOR_ALARM)
    s = b.update(ev("sat:frames", Severity.MAJOR, AlarmState.ACKNOWLEDGED, 0.2, transition="acknowledge"))
    assert s.trip, "acknowledging does not clear an EPICS alarm"
    s = b.update(ev("sat:frames", Severity.NO_ALARM, AlarmState.CLEARED, value=0.001, transition="clear"))
    assert not s.trip and s.severity == Severity.NO_ALARM and s.active == 0 and s.score == 0.001
    assert pv_alarm(s)["score"] == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


def test_below_rule_reports_low_status() -> None:
    s = AlarmBoard().update(ev("flux:frames", Severity.MAJOR, value=0.01, thr=0.5))
    assert pv_alarm(s)["score"] == (AlarmStatus.LOLO, AlarmSeverity.MAJOR_ALARM)


def test_silence_is_invalid_and_only_trips_when_configured() -> None:
    for trip_on_invalid in (False, True):
        b = AlarmBoard(trip_on_invalid=trip_on_invalid)
        b.update(ev("sat:frames", Severity.MINOR, value=0.03))
        s = b.update(ev("quiet:det", Severity.INVALID, value=7.0, thr=5.0))
        assert s.severity == Severity.INVALID and s.invalid and s.trip is trip_on_invalid
        assert s.score == 0.03, "the silence timer is not a score"
        pv = pv_alarm(s)
        assert pv["state"] == (AlarmStatus.TIMEOUT, AlarmSeverity.INVALID_ALARM)
        assert pv["score"] == (AlarmStatus.TIMEOUT, AlarmSeverity.INVALID_ALARM)
        assert "quiet:det" in s.message and "+1 more" in s.message


def test_trip_severity_minor() -> None:
    b = AlarmBoard(trip_severity=Severity.MINOR)
    assert b.update(ev("a:x", Severity.MINOR)).trip
    with pytest.raises(ValueError, match="MINOR or MAJOR"):
        AlarmBoard(trip_severity=Severity.INVALID)


def test_latched_alarm_keeps_tripping_until_cleared() -> None:
    b = AlarmBoard()
    b.update(ev("sat:frames", Severity.MAJOR))
    s = b.update(ev("sat:frames", Severity.MAJOR, value=0.0, transition="condition_cleared"))
    assert s.trip

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.alerts.manager import AlarmManager
from monitor.alerts.model import AlarmEvent, AlarmState, Severity
from monitor.alerts.rules import SilenceRule, ThresholdRule
from monitor.alerts.sinks import JournalSink, read_journal
from monitor.config import RuleSettings


def rule(**kw: object) -> ThresholdRule:
    base: dict[str, object] = {"name": "r", "kind": "threshold", "pipeline": "p", "metric": "m"}
    base.update(kw)
    return ThresholdRule(RuleSettings(**base))  # type: ignore[arg-type]


def severities(r: ThresholdRule, values: list[float]) -> list[Severity]:
    out, cur = [], Severity.NO_ALARM
    for v in values:
        verdict = r.evaluate("s", v)
        if verdict is not None:
            cur = verdict.severity
        out.append(cur)
    return out


def test_threshold_levels_and_hysteresis() -> None:
    r = rule(minor=0.5, major=0.8, hysteresis=0.1)
    vals = [0.1, 0.55, 0.45, 0.39, 0.85, 0.75, 0.69, 0.2]
    N, MI, MA = Severity.NO_ALARM, Severity.MINOR, Severity.MAJOR
    assert severities(r, vals) == [N, MI, MI, N, MA, MA, MI, N]


def test_min_count_is_a_minimum_duration() -> None:
    r = rule(major=1.0, min_count=3)
    N, MA = Severity.NO_ALARM, Severity.MAJOR
    assert severities(r, [2, 2, 0, 2, 2, 2, 2]) == [N, N, N, N, N, MA, MA]


def test_direction_below() -> None:
    r = rule(minor=10.0, direction="below", hysteresis=1.0)
    N, MI = Severity.NO_ALARM, Severity.MINOR
    assert severities(r, [20, 9, 10.5, 11.5]) == [N, MI, MI, N]


def test_nan_is_ignored() -> None:
    r = rule(major=1.0)
    assert r.evaluate("s", float("nan")) is None


def test_silence_rule() -> None:
    s = SilenceRule(RuleSettings(name="q", kind="silence", source="det", timeout_s=2))
    assert s.check(1.0) is None
    v = s.check(2.5)
    assert v is not None and v.severity is Severity.INVALID
    assert s.check(3.0) is None
    back = s.check(0.1)
    assert back is not None and back.severity is Severity.NO_ALARM


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.events: list[AlarmEvent] = []

    def emit(self, event: AlarmEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class FailingSink(ListSink):
    name = "failing"

    def emit(self, event: AlarmEvent) -> None:
        raise OSError("disk on fire")


def test_state_machine_ack_clear_and_journal_first(tmp_path: Path) -> None:
    journal = JournalSink(tmp_path / "j.jsonl")
    seen: list[int] = []

    class Probe(ListSink):
        def emit(self, event: AlarmEvent) -> None:
            # The journal already holds this event when any other sink sees it.
            seen.append(len(read_journal(tmp_path / "j.jsonl")))
            super().emit(event)

    probe = Probe()
    m = AlarmManager(journal, [FailingSink(), probe])
    r = rule(minor=0.5, major=0.8)
    for v in (0.6, 0.9):
        verdict = r.evaluate("s", v)
        assert verdict is not None
        m.apply(verdict)
    alarm = m.get("r:s")
    assert alarm is not None and alarm.severity is Severity.MAJOR and alarm.state is AlarmState.ACTIVE
    m.acknowledge("r:s", "alice")
    assert m.get("r:s").state is AlarmState.ACKNOWLEDGED  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        m.acknowledge("r:s", "bob")
    with pytest.raises(KeyError):
        m.acknowledge("nope", "bob")
    verdict = r.evaluate("s", 0.1)
    assert verdict is not None
    m.apply(verdict)
    assert m.get("r:s").state is AlarmState.CLEARED  # type: ignore[union-attr]
    transitions = [e.transition for e in probe.events]
    assert transitions == ["raise", "escalate", "acknowledge", "clear"]
    assert seen == [1, 2, 3, 4]
    assert m.sink_errors == 4
    journal.close()
    back = read_journal(tmp_path / "j.jsonl")
    assert [e.transition for e in back] == transitions
    assert back[2].alarm.acked_by == "alice"


def test_latched_alarm_stays_until_acknowledged(tmp_path: Path) -> None:
    m = AlarmManager(JournalSink(tmp_path / "j.jsonl", fsync=False), latch=frozenset({"r"}))
    r = rule(major=1.0)
    m.apply(r.evaluate("s", 2.0))  # type: ignore[arg-type]
    m.apply(r.evaluate("s", 0.0))  # type: ignore[arg-type]
    a = m.get("r:s")
    assert a is not None and a.state is AlarmState.ACTIVE and "latched" in a.message
    events = m.acknowledge("r:s", "op")
    assert [e.transition for e in events] == ["acknowledge", "clear"]
    assert m.get("r:s").state is AlarmState.CLEARED  # type: ignore[union-attr]


def test_escalation_reactivates_acknowledged(tmp_path: Path) -> None:
    m = AlarmManager(JournalSink(tmp_path / "j.jsonl", fsync=False))
    r = rule(minor=0.5, major=0.8)
    m.apply(r.evaluate("s", 0.6))  # type: ignore[arg-type]
    m.acknowledge("r:s", "op")
    m.apply(r.evaluate("s", 0.9))  # type: ignore[arg-type]
    a = m.get("r:s")
    assert (
        a is not None and a.state is AlarmState.ACTIVE and a.severity is Severity.MAJOR and a.acked_by == ""
    )


def test_journal_failure_still_reaches_the_other_sinks(tmp_path: Path) -> None:
    class BrokenJournal(ListSink):
        name = "journal"

        def emit(self, event: AlarmEvent) -> None:
            raise OSError("No space left on device")

    probe = ListSink()
    m = AlarmManager(BrokenJournal(), [probe])
    m.apply(rule(major=1.0).evaluate("s", 2.0))  # type: ignore[arg-type]
    assert [e.transition for e in probe.events] == ["raise"]
    assert m.journal_errors == 1


def test_threshold_reset_on_series_clears_the_previous_runs_alarm() -> None:
    from monitor.alerts.model import Severity
    from monitor.alerts.rules import ThresholdRule
    from monitor.config import RuleSettings

    rule = ThresholdRule(
        RuleSettings(
            name="risk",
            kind="threshold",
            pipeline="ew",
            metric="risk",
            major=0.8,
            hysteresis=0.2,
            min_count=2,
            reset_on_series=True,
        )
    )
    assert rule.evaluate("growth", 0.9, "run-1") is None
    raised = rule.evaluate("growth", 0.9, "run-1")
    assert raised is not None and raised.severity == Severity.MAJOR
    cleared = rule.evaluate("growth", 0.95, "run-2")  # a new run: the old run's alarm is cleared
    assert cleared is not None and cleared.severity == Severity.NO_ALARM and "run-1" in cleared.message
    again = rule.evaluate("growth", 0.95, "run-2")  # and the minimum duration counts afresh
    assert again is not None and again.severity == Severity.MAJOR
    plain = ThresholdRule(RuleSettings(name="r", kind="threshold", pipeline="ew", metric="risk", major=0.8))
    assert plain.evaluate("g", 0.9, "a") is not None and plain.evaluate("g", 0.9, "b") is None  # no reset

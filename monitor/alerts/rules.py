"""Alarm rules: map pipeline results (or source silence) to a desired severity.

Rules are pure state machines over their inputs; :class:`~monitor.alerts.manager.AlarmManager`
turns the desired severity into alarm transitions (raise, ack, latch, clear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.alerts.model import Severity
from monitor.config import RuleSettings


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule wants for one alarm id after seeing one value."""

    alarm_id: str
    severity: Severity
    value: float
    threshold: float
    message: str


class ThresholdRule:
    """Threshold with hysteresis and a minimum duration (``min_count`` consecutive results).

    ``direction="above"``: MINOR when value >= minor, MAJOR when value >= major. A level is
    left only when the value falls below ``level - hysteresis`` (mirrored for ``below``).
    Raising to a higher level needs ``min_count`` consecutive results at that level; falling
    back is immediate once past the hysteresis band. NaN values are ignored (no change).
    """

    def __init__(self, settings: RuleSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.pipeline = settings.pipeline
        self.metric = settings.metric
        self._sign = 1.0 if settings.direction == "above" else -1.0
        self._levels: list[tuple[Severity, float]] = []
        if settings.minor is not None:
            self._levels.append((Severity.MINOR, settings.minor))
        if settings.major is not None:
            self._levels.append((Severity.MAJOR, settings.major))
        self._current: dict[str, Severity] = {}
        self._streak: dict[str, tuple[Severity, int]] = {}
        self._series: dict[str, str] = {}

    def _threshold(self, sev: Severity) -> float:
        for level, value in self._levels:
            if level == sev:
                return value
        return math.nan

    def _raw_level(self, value: float, current: Severity) -> Severity:
        """Level the value is in, with hysteresis applied relative to ``current``."""
        level = Severity.NO_ALARM
        for sev, thr in self._levels:
            s = self._sign
            # To stay at (or below) the current level the hysteresis band applies.
            effective = thr - s * self.settings.hysteresis if sev <= current else thr
            if s * value >= s * effective:
                level = max(level, sev)
        return level

    def evaluate(self, subject: str, value: float, series: str = "") -> Verdict | None:
        """Feed one value for ``subject`` (e.g. a stream); return a verdict when it changes.

        With ``reset_on_series``, the first value of a new series clears the subject's alarm
        (the condition belonged to the previous run) and restarts the minimum-duration count.
        """
        alarm_id = f"{self.name}:{subject}"
        if self.settings.reset_on_series:
            previous = self._series.get(alarm_id)
            self._series[alarm_id] = series
            if previous is not None and previous != series:
                self._streak.pop(alarm_id, None)
                was = self._current.pop(alarm_id, Severity.NO_ALARM)
                level = Severity.NO_ALARM if math.isnan(value) else self._raw_level(value, Severity.NO_ALARM)
                if level > Severity.NO_ALARM and self.settings.min_count > 1:
                    self._streak[alarm_id] = (level, 1)  # this value counts towards the new run's streak
                if was > Severity.NO_ALARM and (level == Severity.NO_ALARM or self.settings.min_count > 1):
                    return Verdict(
                        alarm_id,
                        Severity.NO_ALARM,
                        value,
                        self._threshold(was),
                        f"{self.pipeline}.{self.metric}: new series {series!r}; {previous!r} reset",
                    )
        if math.isnan(value):
            return None
        current = self._current.get(alarm_id, Severity.NO_ALARM)
        level = self._raw_level(value, current)
        if level > current:
            prev_level, count = self._streak.get(alarm_id, (Severity.NO_ALARM, 0))
            count = count + 1 if prev_level == level else 1
            self._streak[alarm_id] = (level, count)
            if count < self.settings.min_count:
                # Not yet at the new level for long enough (the minimum duration).
                return None
        else:
            self._streak.pop(alarm_id, None)
        if level == current:
            return None
        self._current[alarm_id] = level
        thr = self._threshold(level) if level > Severity.NO_ALARM else self._threshold(current)
        word = "above" if self._sign > 0 else "below"
        if level > Severity.NO_ALARM:
            msg = f"{self.pipeline}.{self.metric} = {value:.4g} {word} {level.name} threshold {thr:.4g}"
        else:
            msg = f"{self.pipeline}.{self.metric} = {value:.4g} back within limits"
        return Verdict(alarm_id, level, value, thr, msg)


class SilenceRule:
    """INVALID when a source has sent nothing for ``timeout_s`` (checked by a watchdog)."""

    def __init__(self, settings: RuleSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.source = settings.source
        self.alarm_id = f"{self.name}:{self.source}"
        self._silent = False

    def check(self, seconds_since_last: float) -> Verdict | None:
        silent = seconds_since_last >= self.settings.timeout_s
        if silent == self._silent:
            return None
        self._silent = silent
        if silent:
            return Verdict(
                self.alarm_id,
                Severity.INVALID,
                seconds_since_last,
                self.settings.timeout_s,
                f"source {self.source!r} silent for {seconds_since_last:.1f} s",
            )
        return Verdict(
            self.alarm_id,
            Severity.NO_ALARM,
            seconds_since_last,
            self.settings.timeout_s,
            f"source {self.source!r} is sending again",
        )

"""Alarm types with EPICS severity semantics."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """EPICS alarm severities (same numbering as EPICS)."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3


class AlarmState(enum.Enum):
    CLEARED = "cleared"
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"


@dataclass(frozen=True, slots=True)
class FrameRef:
    source: str
    stream: str
    series: str
    index: int
    seq: int


@dataclass(frozen=True, slots=True)
class Alarm:
    """The current state of one alarm (one rule, one subject)."""

    id: str
    rule: str
    severity: Severity
    state: AlarmState
    message: str
    value: float
    threshold: float
    frame: FrameRef | None
    t_raised: float
    t_changed: float
    latched: bool = False
    acked_by: str = ""


TRANSITIONS = ("raise", "escalate", "deescalate", "condition_cleared", "acknowledge", "clear")
"""Every transition the alarm manager emits (``condition_cleared``: a latched alarm's condition
went away; it stays active until acknowledged)."""


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A transition of an alarm: what the journal, the store and every sink receive."""

    t: float
    transition: str  # one of TRANSITIONS
    alarm: Alarm

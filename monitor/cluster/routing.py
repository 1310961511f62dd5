"""Replica choice without Ray: least-loaded for stateless pipelines, sticky per (stream, series)
for stateful ones, and the bookkeeping that notices a replica lost its state (restart)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

SeriesKey = tuple[str, str]
MAX_KEYS = 10_000
"""Series assignments remembered (oldest forgotten first)."""


@dataclass
class ReplicaTable:
    """In-flight batches per replica and the replica each (stream, series) is pinned to."""

    replicas: int
    in_flight_limit: int
    in_flight: list[int] = field(default_factory=list)
    pinned: OrderedDict[SeriesKey, int] = field(default_factory=OrderedDict)
    incarnation: list[str] = field(default_factory=list)
    """The instance id each replica last answered with ('' until its first reply)."""
    lost_reported: list[bool] = field(default_factory=list)
    """A loss was already reported for the replica's current (dead) incarnation."""

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.in_flight_limit < 1:
            raise ValueError("replicas and in_flight_limit must be >= 1")
        self.in_flight = [0] * self.replicas
        self.incarnation = [""] * self.replicas
        self.lost_reported = [False] * self.replicas

    def least_loaded(self) -> int | None:
        """The replica with the fewest batches in flight, or None when every one is at its limit."""
        best = min(range(self.replicas), key=lambda i: (self.in_flight[i], i))
        return best if self.in_flight[best] < self.in_flight_limit else None

    def replica_for(self, key: SeriesKey) -> int:
        """The replica pinned to this series; a new series goes to the one with fewest series."""
        if key in self.pinned:
            self.pinned.move_to_end(key)
            return self.pinned[key]
        counts = [0] * self.replicas
        for r in self.pinned.values():
            counts[r] += 1
        choice = min(range(self.replicas), key=lambda i: (counts[i], self.in_flight[i], i))
        self.pinned[key] = choice
        while len(self.pinned) > MAX_KEYS:
            self.pinned.popitem(last=False)
        return choice

    def series_on(self, replica: int) -> list[SeriesKey]:
        return [k for k, r in self.pinned.items() if r == replica]

    def replica_died(self, replica: int) -> bool:
        """A call to ``replica`` failed because its process is gone. True the first time for
        this incarnation (report its series' state as lost once)."""
        first = not self.lost_reported[replica]
        self.lost_reported[replica] = True
        return first

    def answered(self, replica: int, incarnation: str) -> bool:
        """A reply came from ``incarnation``. True when the replica restarted since its last reply
        and no loss was reported for it yet (state lost without a failed call)."""
        before = self.incarnation[replica]
        self.incarnation[replica] = incarnation
        if before == incarnation or not before:
            if not before:
                self.lost_reported[replica] = False
            return False
        silent = not self.lost_reported[replica]
        self.lost_reported[replica] = False
        return silent

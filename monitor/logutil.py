"""Logging that stays readable under a flood of identical problems."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter


class RateLimitedLog:
    """One warning line per event, at most one per key per interval (+ a count of the rest)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0, what: str = "events") -> None:
        self._logger = logger
        self._interval = interval_s
        self._what = what
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return
        n = self._suppressed.pop(key, 0)
        more = f" (+{n} more '{key}' {self._what} in the last {now - last:.1f} s)" if n and last else ""
        self._logger.warning("%s%s", message, more)
        self._last[key] = now

    def flush(self, prefix: str) -> None:
        for key, n in sorted(self._suppressed.items()):
            self._logger.warning("%s: %d more '%s' %s not logged individually", prefix, n, key, self._what)
        self._suppressed.clear()


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Bokeh/tornado access logs are noise in a control room console.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("bokeh").setLevel(logging.WARNING)

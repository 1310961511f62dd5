"""Rate limit on wrong operator tokens: an acknowledgement endpoint must not be a password oracle.

After ``max_failures`` wrong tokens within ``window_s``, every acknowledgement is refused for
``lockout_s`` (a right token included), and each refusal is logged (rate-limited) and counted.
"""

from __future__ import annotations

import time
from collections import deque


class TokenGuard:
    def __init__(self, max_failures: int = 5, window_s: float = 60.0, lockout_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.failures = 0
        """Wrong tokens seen in total."""
        self.refused_locked = 0
        """Attempts refused because of a lockout."""
        self._recent: deque[float] = deque()
        self._locked_until = 0.0

    def locked_for(self, now: float | None = None) -> float:
        """Seconds left in a lockout (0 when attempts are accepted)."""
        t = time.monotonic() if now is None else now
        left = self._locked_until - t
        if left > 0:
            self.refused_locked += 1
            return left
        return 0.0

    def failed(self, now: float | None = None) -> bool:
        """Record a wrong token; True when this one starts a lockout."""
        t = time.monotonic() if now is None else now
        self.failures += 1
        self._recent.append(t)
        while self._recent and t - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_failures:
            self._recent.clear()
            self._locked_until = t + self.lockout_s
            return True
        return False

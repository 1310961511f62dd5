"""Supervision of the daemon's tasks: nothing the daemon starts may fail silently.

A task that dies (the recorder, a source, a pipeline worker, a periodic loop), or a fault a
component reports while carrying on (a batch that failed outside the pipeline's own error
handling), is logged with its traceback once per kind, raises a MAJOR alarm
``daemon:<component>``, and makes the daemon's exit code non-zero (:data:`EXIT_FAULT`).
What happens to the component's frames is the caller's ``on_death`` (a dead worker's frames are
stored as failed; a dead recorder is restarted).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from monitor.alerts.model import Severity
from monitor.alerts.rules import Verdict

log = logging.getLogger("monitor.supervise")

EXIT_FAULT = 3
"""Exit code of a run during which a component failed (config and start-up errors exit 2)."""


@dataclass(frozen=True, slots=True)
class Fault:
    component: str
    error: str
    fatal: bool
    """True when the component's task ended; False when it reported the fault and carried on."""


class Supervisor:
    def __init__(self, raise_alarm: Callable[[Verdict], None]) -> None:
        self._raise_alarm = raise_alarm
        self.faults: list[Fault] = []
        self._traced: set[tuple[str, str]] = set()

    @property
    def exit_code(self) -> int:
        return EXIT_FAULT if self.faults else 0

    def watch(
        self,
        task: asyncio.Task[None],
        component: str,
        on_death: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[None]:
        """Report ``task`` if it ends with an exception (a cancelled task is a normal stop)."""

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            assert exc is not None
            self.fault(component, exc, fatal=True)
            if on_death is not None:
                try:
                    on_death(exc)
                except Exception:
                    log.exception("handling the death of %s failed", component)

        task.add_done_callback(done)
        return task

    def fault(self, component: str, exc: BaseException, *, fatal: bool = False) -> None:
        kind = type(exc).__name__
        error = f"{kind}: {exc}"
        self.faults.append(Fault(component, error, fatal))
        what = "died" if fatal else "failed"
        if (component, kind) not in self._traced:
            self._traced.add((component, kind))
            log.error("%s %s: %s", component, what, error, exc_info=exc)
        else:
            log.error("%s %s again: %s", component, what, error)
        message = f"{component} {what}: {error}"[:200]
        try:
            self._raise_alarm(Verdict(f"daemon:{component}", Severity.MAJOR, math.nan, math.nan, message))
        except Exception:
            log.exception("could not raise the alarm for %s", component)

    def summary(self) -> str:
        if not self.faults:
            return ""
        by: dict[str, int] = {}
        for f in self.faults:
            by[f.component] = by.get(f.component, 0) + 1
        return ", ".join(f"{k} x{n}" for k, n in sorted(by.items()))

"""Alarms from a pipeline's out-of-distribution guard (see ``engines.ood``).

A pipeline that guards its input publishes the scalar ``ood`` (1 while the current series is out
of distribution for its model, else 0) and the attribute ``ood_gated`` (metric names). For such
a pipeline :class:`OodAlarms`

* raises a MINOR ``<pipeline>_ood:<stream>`` alarm when ``ood`` becomes 1 and clears it when
  ``ood`` is 0 again (e.g. a new series the model knows);
* tells the daemon to ignore values of the ``ood_gated`` metrics for threshold rules while
  ``ood`` is 1, so a model that does not know the input cannot raise a confident MAJOR
  (penetration, volume fractions). The values are still stored.

Pipelines without ``ood`` in their results are left alone; the mechanism is pipeline-agnostic.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.alerts.model import Severity
from monitor.alerts.rules import Verdict
from monitor.frames import Result
from monitor.pipelines.base import Pipeline


class OodAlarms:
    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self.gated: dict[str, frozenset[str]] = {
            p.name: frozenset(getattr(p, "ood_gated", ())) for p in pipelines if hasattr(p, "ood_gated")
        }
        self._raised: dict[str, bool] = {}

    def verdict(self, pipeline: str, result: Result) -> Verdict | None:
        """A raise/clear of ``<pipeline>_ood:<stream>`` when the result changes the state."""
        if pipeline not in self.gated or "ood" not in result.scalars:
            return None
        flagged = result.scalars["ood"] > 0
        alarm_id = f"{pipeline}_ood:{result.frame.stream}"
        if flagged == self._raised.get(alarm_id, False):
            return None
        self._raised[alarm_id] = flagged
        score = float(result.scalars.get("ood_score", float("nan")))
        if flagged:
            gated = sorted(self.gated[pipeline])
            held = (", ".join(gated[:4]) + (", …" if len(gated) > 4 else "")) or "none"
            msg = (
                f"{pipeline}: input out of distribution for the model (series {result.frame.series!r}, "
                f"score {score:.2f}); results unreliable, alarms held back on {held}"
            )
            return Verdict(alarm_id, Severity.MINOR, score, 1.0, msg)
        msg = f"{pipeline}: input back within the model's training distribution (score {score:.2f})"
        return Verdict(alarm_id, Severity.NO_ALARM, score, 1.0, msg)

    def suppressed(self, pipeline: str, result: Result, metric: str) -> bool:
        """True when a rule on ``metric`` must ignore this result (input out of distribution)."""
        gated = self.gated.get(pipeline)
        return bool(gated) and metric in gated and result.scalars.get("ood", 0.0) > 0  # type: ignore[operator]

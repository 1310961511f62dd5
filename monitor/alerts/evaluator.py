"""Alarm evaluation: pipeline results and source silence → verdicts for the alarm manager.

The daemon calls :meth:`AlertEvaluator.on_results` for every batch of results (on the event
loop) and :meth:`AlertEvaluator.check_silence` from its watchdog; verdicts go to ``apply``
(normally :meth:`monitor.alerts.manager.AlarmManager.apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from monitor.alerts.model import FrameRef
from monitor.alerts.ood import OodAlarms
from monitor.alerts.rules import SilenceRule, ThresholdRule, Verdict
from monitor.config import RuleSettings
from monitor.frames import Result

Apply = Callable[..., object]
"""``apply(verdict, frame_ref=None)``."""


def with_run_label(verdict: Verdict, extra: Mapping[str, object]) -> Verdict:
    """Name the Bluesky run (``scan_id``, ``plan_name``, ``sample`` in ``FrameMeta.extra``) in the message."""
    if "scan_id" not in extra:
        return verdict
    label = f"scan {extra['scan_id']}"
    if extra.get("plan_name"):
        label += f" {extra['plan_name']}"
    if extra.get("sample"):
        label += f", sample {extra['sample']}"
    return dataclasses.replace(verdict, message=f"{verdict.message} [{label}]")


class AlertEvaluator:
    def __init__(self, rules: Sequence[RuleSettings], ood: OodAlarms | None = None) -> None:
        self.threshold_rules = [ThresholdRule(r) for r in rules if r.kind == "threshold"]
        self.silence_rules = [SilenceRule(r) for r in rules if r.kind == "silence"]
        self.ood = ood
        """Out-of-distribution guard of the pipelines that publish ``ood``: its MINOR alarms, and
        the metrics whose rules are held back while a series is out of distribution."""

    @property
    def silence_period_s(self) -> float:
        """How often the watchdog should look (a quarter of the shortest timeout, at most 0.25 s)."""
        return min([r.settings.timeout_s for r in self.silence_rules] + [1.0]) / 4

    def on_results(self, pipeline: str, results: Sequence[Result], apply: Apply) -> None:
        ood = self.ood
        if ood is not None:
            for r in results:
                verdict = ood.verdict(pipeline, r)
                if verdict is not None:
                    f = r.frame
                    apply(verdict, FrameRef(f.source, f.stream, f.series, f.index, f.seq))
        for rule in self.threshold_rules:
            if rule.pipeline != pipeline:
                continue
            for r in results:
                value = r.scalars.get(rule.metric)
                if value is None or (ood is not None and ood.suppressed(pipeline, r, rule.metric)):
                    continue
                verdict = rule.evaluate(r.frame.stream, float(value), r.frame.series)
                if verdict is not None:
                    f = r.frame
                    verdict = with_run_label(verdict, f.meta.extra)
                    apply(verdict, FrameRef(f.source, f.stream, f.series, f.index, f.seq))

    def check_silence(self, since_last: Callable[[str], float], apply: Apply) -> None:
        """``since_last(source)``: seconds since the source last sent anything."""
        for rule in self.silence_rules:
            verdict = rule.check(since_last(rule.source))
            if verdict is not None:
                apply(verdict)

"""The shipped early-warning model's calibrated alarm rule, as daemon rule settings.

The trainer calibrates ``risk >= major`` for ``min_count`` consecutive windows on validation
runs (false alarms <= 5 %) and writes it to the manifest (``extra.alarm_rule``). The demo, the
closed loop and ``replay`` without a config use these rules; ``examples/monitor.toml`` spells
out the same values.

* the MAJOR rule watches ``alarm_risk`` (``risk`` while the series is in distribution, NaN —
  "no change" for a rule — while it is out of distribution) when the model is a forecasting
  one, else ``risk``;
* ``early_warning_ood``: MINOR while the pipeline flags the series out of distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.errors import EngineError
from engines.registry import load_manifest
from monitor.config import RuleSettings

DEFAULT_MODEL = "early_warning_cnn_gru"
OOD_RULE = "early_warning_ood"


@dataclass(frozen=True)
class CalibratedRule:
    metric: str
    major: float
    min_count: int
    hysteresis: float
    forecast: bool


def calibrated_rule(weights_dir: str = "", model: str = "") -> CalibratedRule:
    """The manifest's rule (the legacy default risk >= 0.8 for 3 windows if it has none)."""
    try:
        m = load_manifest(model or DEFAULT_MODEL, weights_dir or None)
    except EngineError:
        return CalibratedRule("risk", 0.8, 3, 0.2, False)
    forecast = any(t.name == "features" for t in m.inputs)
    rule = m.extra.get("alarm_rule")
    if not isinstance(rule, dict):
        return CalibratedRule("risk", 0.8, 3, 0.2, forecast)
    return CalibratedRule(
        "alarm_risk" if forecast else "risk",
        float(rule["major"]),
        int(rule["min_count"]),
        float(rule.get("hysteresis", 0.2)),
        forecast,
    )


def rule_settings(
    name: str, pipeline: str, weights_dir: str = "", model: str = "", reset_on_series: bool = True
) -> tuple[RuleSettings, ...]:
    """The MAJOR risk rule and (forecasting model) the MINOR ``early_warning_ood`` rule."""
    c = calibrated_rule(weights_dir, model)
    rules = [
        RuleSettings(
            name=name,
            kind="threshold",
            pipeline=pipeline,
            metric=c.metric,
            major=c.major,
            hysteresis=c.hysteresis,
            min_count=c.min_count,
            reset_on_series=reset_on_series,
        )
    ]
    if c.forecast:
        rules.append(
            RuleSettings(
                name=OOD_RULE,
                kind="threshold",
                pipeline=pipeline,
                metric="ood",
                minor=0.5,
                hysteresis=0.25,
                min_count=1,
                reset_on_series=reset_on_series,
            )
        )
    return tuple(rules)

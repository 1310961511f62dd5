"""Config of the control-room integrations: loopback defaults, errors that name the key."""

from __future__ import annotations

import pytest

from monitor.config import config_from_dict
from monitor.errors import ConfigError

RULE = {"name": "runaway", "kind": "threshold", "pipeline": "ew", "metric": "score", "major": 0.8}
BASE = {"pipelines": [{"name": "ew", "kind": "frame_stats"}], "alerts": {"rules": [RULE]}}


def with_qs(**qs: object) -> dict:
    return BASE | {"alerts": {"rules": [RULE], "queueserver": {"enabled": True, **qs}}}


def test_defaults_are_loopback_and_off() -> None:
    cfg = config_from_dict({})
    assert not cfg.metrics.enabled and cfg.metrics.host == "127.0.0.1"
    qs = cfg.alerts.queueserver
    assert not qs.enabled and qs.zmq_control_addr.startswith("tcp://127.0.0.1:")
    assert qs.action == "pause_deferred" and qs.min_severity == "MAJOR"


@pytest.mark.parametrize(
    ("qs", "key"),
    [
        ({"action": "queue_plan"}, "alerts.queueserver.plan_name"),
        ({"rules": ["nope"]}, "alerts.queueserver.rules[0]"),
        ({"action": "stop_everything"}, "alerts.queueserver.action"),
        ({"timeout_s": 0}, "alerts.queueserver.timeout_s"),
        ({"plan_kwargs": {"detectors": [1]}}, "alerts.queueserver.plan_kwargs.detectors"),
    ],
)
def test_queueserver_errors_name_the_key(qs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(with_qs(**qs))
    assert key in str(info.value)


def test_metrics_port_range() -> None:
    with pytest.raises(ConfigError, match="metrics.port"):
        config_from_dict({"metrics": {"port": 70000}})

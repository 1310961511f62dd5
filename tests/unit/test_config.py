from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import config_from_dict, load_config
from monitor.errors import ConfigError

GOOD = """
run = "cell7"
[daemon]
shutdown_timeout_s = 3
[[sources]]
name = "det"
kind = "array10"
endpoint = "tcp://127.0.0.1:5555"
socket = "sub"
[[pipelines]]
name = "stats"
kind = "frame_stats"
streams = ["frames", "other"]
[[alerts.rules]]
name = "sat"
kind = "threshold"
pipeline = "stats"
metric = "saturated_fraction"
major = 0.1
hysteresis = 0.01
[[alerts.rules]]
name = "quiet"
kind = "silence"
source = "det"
timeout_s = 2
[dashboard]
port = 0
"""


def test_good_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.run == "cell7"
    assert cfg.daemon.shutdown_timeout_s == 3.0
    assert cfg.sources[0].socket == "sub"
    assert cfg.pipelines[0].streams == ("frames", "other")
    assert cfg.alerts.rules[0].major == 0.1
    assert cfg.alerts.rules[1].kind == "silence"


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"daemon": {"shutdown_timeout_s": "x"}}, "daemon.shutdown_timeout_s", "expected a number"),
        ({"daemon": {"shutdown_timeout_s": -1}}, "daemon.shutdown_timeout_s", "must be > 0"),
        ({"daemon": {"log_level": "LOUD"}}, "daemon.log_level", "expected one of"),
        ({"sources": [{"name": "a", "kind": "carrier-pigeon"}]}, "sources[0].kind", "expected one of"),
        ({"sources": [{"kind": "array10"}]}, "sources[0].name", "required key is missing"),
        ({"sources": [{"name": "a", "kind": "array10"}]}, "sources[0].endpoint", "required"),
        (
            {"sources": [{"name": "a", "kind": "replay", "path": "x", "rate_hz": -2}]},
            "sources[0].rate_hz",
            ">= 0",
        ),
        (
            {"pipelines": [{"name": "p", "kind": "frame_stats", "queue_size": 0}]},
            "pipelines[0].queue_size",
            "> 0",
        ),
        (
            {"pipelines": [{"name": "p", "kind": "frame_stats", "queue_size": 1.5}]},
            "pipelines[0].queue_size",
            "int",
        ),
        (
            {"pipelines": [{"name": "p", "kind": "frame_stats", "streams": "frames"}]},
            "pipelines[0].streams",
            "list",
        ),
        ({"dashboard": {"enabled": "yes"}}, "dashboard.enabled", "true or false"),
        ({"dashboard": {"port": 70000}}, "dashboard.port", "0..65535"),
        (
            {
                "alerts": {
                    "rules": [
                        {"name": "r", "kind": "threshold", "pipeline": "nope", "metric": "m", "major": 1}
                    ]
                }
            },
            "alerts.rules[0].pipeline",
            "no pipeline",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert err.value.key == key
    assert words in str(err.value)
    assert key in str(err.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("run = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples" / "monitor.toml")
    assert cfg.sources and cfg.pipelines

"""Config and start-up errors (issue 12, failure 4): one line naming the key, exit 2, no
traceback; `check` rejects exactly what `run` rejects before it opens sockets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zmq

from monitor.cli import main
from tests.helpers import ROOT, free_port

BASE = """
run = "{run}"
[[sources]]
name = "det"
kind = "array10"
endpoint = "{endpoint}"
mode = "bind"
[[pipelines]]
name = "{pipeline}"
kind = "{kind}"
{pipeline_extra}
[store]
directory = "{directory}"
filename = "{filename}"
{store_extra}
[alerts]
zmq_pub = "{zmq_pub}"
{rules}
[dashboard]
enabled = false
"""


def write(tmp_path: Path, **kw: str) -> str:
    values = {
        "run": "t", "endpoint": f"tcp://127.0.0.1:{free_port()}", "pipeline": "stats",
        "kind": "frame_stats", "pipeline_extra": "", "directory": str(tmp_path / "runs"),
        "filename": "{{run}}.h5", "store_extra": "", "zmq_pub": "", "rules": "",
    }  # fmt: skip
    values.update(kw)
    path = tmp_path / "monitor.toml"
    path.write_text(BASE.format(**values).replace("{{run}}", "{run}"))
    return str(path)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def expect_error(args: list[str], key: str, capsys: pytest.CaptureFixture[str]) -> str:
    rc, err = run_cli(args, capsys)
    errors = [line for line in err.splitlines() if line.startswith("operando-monitor: error:")]
    assert rc == 2, err
    assert len(errors) == 1, err
    assert f"config error at '{key}" in errors[0], errors[0]  # the key (or a key below it)
    return errors[0]


RULE_UNKNOWN_METRIC = """[[alerts.rules]]
name = "r"
kind = "threshold"
pipeline = "stats"
metric = "no_such_metric"
major = 1.0"""

CONFIG_ERRORS = [
    ({"endpoint": "hello"}, "sources[0].endpoint"),
    ({"endpoint": "tcp://nope:99999"}, "sources[0].endpoint"),
    ({"zmq_pub": "tcp://127.0.0.1:70000"}, "alerts.zmq_pub"),
    ({"filename": "{0}.h5"}, "store.filename"),
    ({"filename": "{nope}.h5"}, "store.filename"),
    ({"filename": "{run.h5"}, "store.filename"),
    ({"directory": "/proc/nope"}, "store.directory"),
    ({"rules": RULE_UNKNOWN_METRIC}, "alerts.rules[0].metric"),
    ({"pipeline": "a/b"}, "pipelines[0].name"),
    (
        {"pipeline_extra": "options = { no_such_option = 1 }", "kind": "segmentation"},
        "pipelines.stats.options",
    ),
    ({"pipeline_extra": 'model = "no_such_model"', "kind": "segmentation"}, "pipelines.stats.model"),
    ({"run": "../../x"}, "run"),
    ({"filename": "../../d/{{run}}.h5"}, "store.filename"),
    ({"filename": "/tmp/elsewhere/{{run}}.h5"}, "store.filename"),
]


@pytest.mark.parametrize(("changes", "key"), CONFIG_ERRORS, ids=[k + ":" + str(c) for c, k in CONFIG_ERRORS])
@pytest.mark.parametrize("command", ["check", "run"])
def test_config_errors_exit_2_with_one_line_in_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str], key: str, command: str
) -> None:
    config = write(tmp_path, **changes)
    expect_error([command, "--config", config], key, capsys)


def test_a_model_with_a_wrong_sha256_is_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(ROOT / "engines/weights/xct_unet_fast.json", weights)
    (weights / "xct_unet_fast.onnx").write_bytes(b"not the model the manifest describes")
    extra = f'model = "xct_unet_fast"\nweights_dir = "{weights}"'
    line = expect_error(["check", "--config", write(tmp_path, kind="segmentation", pipeline_extra=extra)],
                        "pipelines.stats.model", capsys)  # fmt: skip
    assert "sha256" in line


def test_store_outside_the_directory_needs_allow_outside_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, filename="../elsewhere/{{run}}.h5", store_extra="allow_outside_store = true")
    rc, err = run_cli(["check", "--config", config], capsys)
    assert rc == 0, err


def test_busy_source_port_and_busy_alarm_pub_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = zmq.Context()
    busy = ctx.socket(zmq.PULL)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        config = write(tmp_path, endpoint=f"tcp://127.0.0.1:{port}")
        assert run_cli(["check", "--config", config], capsys)[0] == 0  # syntax is fine: a start-up error
        expect_error(["run", "--config", config], "sources[0].endpoint", capsys)
        config = write(tmp_path, zmq_pub=f"tcp://127.0.0.1:{port}")
        expect_error(["run", "--config", config], "alerts.zmq_pub", capsys)
    finally:
        busy.close(linger=0)
        ctx.term()
    assert not list((tmp_path / "runs").glob("*.h5")), "no run file for a daemon that never started"


@pytest.mark.parametrize(
    ("extra", "key"),
    [('channel = "threshold_1"', "sources[0].channel"), ('path = "x.h5"', "sources[0].path"),
     ("trust_pickle = true", "sources[0].trust_pickle")],
)  # fmt: skip
def test_a_source_key_of_another_kind_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str
) -> None:
    config = write(tmp_path, endpoint=f'tcp://127.0.0.1:{free_port()}"\n{extra}\n#"')
    expect_error(["check", "--config", config], key, capsys)

"""A real daemon (subprocess) with an array10 source fed growth frames: the early-warning alarm
fires before the ground-truth transition, and not during a run that stays compact.

Uses the shipped ``early_warning_cnn_gru`` weights and runs from the demo's seed range
(500 000+, never used in training). The transitioning run is one the shipped model does warn
about in time (the bench reports how often that happens over 200 runs); the test checks that
the daemon's alarm is exactly what the rule gives offline, before t*, and none for compact growth.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import zmq

from engines.synth.growth import RunSpec, simulate_runs
from engines.train.early_warning_eval import first_alarm
from monitor.alerts.sinks import read_journal
from monitor.config import PipelineSettings
from monitor.errors import StoreError
from monitor.frames import Frame
from monitor.pipelines.early_warning import EarlyWarningPipeline
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.store import RunReader
from tests.helpers import free_port, start_daemon, wait_for

COMPACT = RunSpec(500_101, 0.015)
DENDRITIC = RunSpec(500_200, 0.07)  # compact first, dendritic from t* ≈ 30


def _config(tmp: Path, endpoint: str) -> Path:
    text = f"""
run = "ew"
[daemon]
shutdown_timeout_s = 10.0
telemetry_interval_s = 0.2
[[sources]]
name = "growth"
kind = "array10"
endpoint = "{endpoint}"
mode = "bind"
stream = "growth"
[[pipelines]]
name = "early_warning"
kind = "early_warning"
streams = ["growth"]
queue_size = 256
policy = "block"
[store]
directory = "{tmp / "runs"}"
filename = "{{run}}.h5"
flush_interval_s = 0.1
[[alerts.rules]]
name = "dendrite_risk"
kind = "threshold"
pipeline = "early_warning"
metric = "risk"
major = 0.8
hysteresis = 0.2
min_count = 3
[dashboard]
enabled = false
"""
    path = tmp / "monitor.toml"
    path.write_text(text)
    return path


def _u16(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 40000, 0, 65535).astype(np.uint16)


def _stored(store: Path) -> int:
    try:
        with RunReader(store) as r:
            return len(r.dispositions())
    except StoreError:
        return 0


def test_alarm_fires_before_the_transition_and_not_for_compact_growth(tmp_path: Path) -> None:
    compact, dendritic = simulate_runs([COMPACT, DENDRITIC])
    assert compact.t_star == -1 and dendritic.t_star > 20
    # What the alarm rule says about the shipped model's risk on these frames, computed offline.
    offline = EarlyWarningPipeline(PipelineSettings(name="ew", kind="early_warning"))
    frames = [Frame("growth", "x", "d", i, _u16(im), 0.0, 0.0) for i, im in enumerate(dendritic.images)]
    expected_alarm = first_alarm(np.array([r.scalars["risk"] for r in offline.process(frames)]))
    assert 0 <= expected_alarm < dendritic.t_star
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "daemon.log"
    proc = start_daemon(_config(tmp_path, endpoint), log)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(endpoint)
    store = tmp_path / "runs" / "ew.h5"
    sent = 0
    try:
        for run in (compact, dendritic):
            series = f"growth-run-{run.spec.seed}"
            push.send_multipart(series_start(series))
            for i, img in enumerate(run.images):
                push.send_multipart(encode_array10(_u16(img), frame=i, stream="growth", series=series))
                sent += 1
            push.send_multipart(series_end(series))
        wait_for(lambda: _stored(store) >= sent, 90, f"{sent} frames accounted")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        push.close()
        ctx.term()
    assert code == 0, log.read_text()
    with RunReader(store) as r:
        assert r.status_counts()["PROCESSED"] == sent
        rows = r.results("early_warning")
        assert len(rows) == sent
    raises = [e for e in read_journal(tmp_path / "runs" / "alarms.jsonl") if e.transition == "raise"]
    assert raises, "no alarm raised"
    assert all(e.alarm.frame is not None for e in raises)
    compact_series, dendritic_series = (f"growth-run-{s.seed}" for s in (COMPACT, DENDRITIC))
    assert not [e for e in raises if e.alarm.frame.series == compact_series], "false alarm on compact growth"
    first = next(e for e in raises if e.alarm.frame.series == dendritic_series)
    assert first.alarm.severity.name == "MAJOR"
    assert first.alarm.frame.index == expected_alarm  # the daemon applies the same rule to the same risk
    assert first.alarm.frame.index < dendritic.t_star, (first.alarm.frame.index, dendritic.t_star)

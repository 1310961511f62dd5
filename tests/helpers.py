"""Test helpers shared by system tests (never imported by runtime code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from monitor.sim.ports import free_port as free_port  # re-exported for the system tests

ROOT = Path(__file__).resolve().parents[1]


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def header(**kw: object) -> bytes:
    h: dict[str, object] = {"htype": "array-1.0", "type": "uint16", "shape": [32, 48], "frame": 0}
    h.update(kw)
    return json.dumps(h).encode()


def good_frame(i: int, value: int = 100, sat: int = 0) -> list[bytes]:
    a = np.full((32, 48), value, dtype=np.uint16)
    a.reshape(-1)[:sat] = 65535
    return [header(frame=i, series="s1"), a.tobytes()]


GOOD_PIXELS = bytes(32 * 48 * 2)

# Ten-plus kinds of malformed array-1.0 messages, each with the reason the monitor must give.
MALFORMED: list[tuple[str, list[bytes]]] = [
    ("bad_json", [b"{not json", GOOD_PIXELS]),
    ("bad_json", [b"\xff\xfe\x00garbage", GOOD_PIXELS]),
    ("not_an_object", [b"[1, 2, 3]", GOOD_PIXELS]),
    ("bad_htype", [header(htype="array-9.9"), GOOD_PIXELS]),
    ("bad_htype", [json.dumps({"type": "uint16", "shape": [32, 48]}).encode(), GOOD_PIXELS]),
    ("bad_dtype", [header(type="complex64"), GOOD_PIXELS]),
    ("bad_shape", [header(shape=[32, -48]), GOOD_PIXELS]),
    ("bad_shape", [header(shape=[2, 3, 4]), bytes(48)]),
    ("size_mismatch", [header(), GOOD_PIXELS[:-2]]),
    ("oversize", [header(shape=[100000, 100000]), GOOD_PIXELS]),
    ("missing_parts", [header()]),
    ("extra_parts", [header(), GOOD_PIXELS, b"extra"]),
    ("bad_endianness", [header(endianness="middle"), GOOD_PIXELS]),
    ("unsupported_encoding", [header(encoding="jpeg"), GOOD_PIXELS]),
    ("bad_frame_number", [header(frame="seven"), GOOD_PIXELS]),
    ("bad_metadata", [header(energy_eV="high"), GOOD_PIXELS]),
]


def daemon_config(
    tmp: Path,
    endpoint: str,
    *,
    alarm_pub: str = "",
    dashboard: bool = False,
    dashboard_port: int = 0,
    extra: str = "",
    shutdown_timeout_s: float = 5.0,
) -> Path:
    text = f"""
run = "test"
[daemon]
shutdown_timeout_s = {shutdown_timeout_s}
telemetry_interval_s = 0.2
[[sources]]
name = "det"
kind = "array10"
endpoint = "{endpoint}"
mode = "bind"
max_frame_bytes = 1000000
[[pipelines]]
name = "stats"
kind = "frame_stats"
queue_size = 1000
[store]
directory = "{tmp / "runs"}"
filename = "{{run}}.h5"
flush_interval_s = 0.1
[alerts]
zmq_pub = "{alarm_pub}"
[[alerts.rules]]
name = "saturation"
kind = "threshold"
pipeline = "stats"
metric = "saturated_fraction"
major = 0.01
hysteresis = 0.005
min_count = 2
[dashboard]
enabled = {"true" if dashboard else "false"}
port = {dashboard_port}
operator_token = "letmein"
{extra}
"""
    path = tmp / "monitor.toml"
    path.write_text(text)
    return path


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

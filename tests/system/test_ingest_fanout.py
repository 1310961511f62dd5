"""Ingest fan-out (issue 18): two daemons PULL from one array-1.0 PUSH stream (the detector
binds; ZeroMQ round-robins frames over the connected daemons). Each writes its own run file;
``operando-monitor merge`` gives one view (HDF5 virtual datasets, read with plain h5py and with
RunReader) and one alarm journal merged by time. Every message is one row in exactly one file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.store import RunReader
from tests.helpers import ROOT, free_port, good_frame

N = 120
SATURATED = range(40, 80)  # a block both daemons see enough of (every other frame) to alarm


def _cfg(tmp: Path, name: str, endpoint: str) -> dict[str, object]:
    return {
        "run": f"fan-{name}",
        "sources": [{"name": f"det-{name}", "kind": "array10", "endpoint": endpoint, "mode": "connect"}],
        "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 1000, "policy": "block"}],
        "store": {"directory": str(tmp / name), "filename": "{run}.h5", "flush_interval_s": 0.1},
        "alerts": {
            "rules": [
                {
                    "name": "saturation",
                    "kind": "threshold",
                    "pipeline": "stats",
                    "metric": "saturated_fraction",
                    "major": 0.01,
                    "hysteresis": 0.005,
                    "min_count": 2,
                }
            ]
        },  # fmt: skip
        "dashboard": {"enabled": False},
    }


def _detector(endpoint: str, peers: int, ready: asyncio.Event | None = None) -> None:
    """The detector side: bind PUSH, wait until ``peers`` daemons completed the handshake, send."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10_000)
    mon = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    push.bind(endpoint)
    seen, deadline = 0, time.monotonic() + 30
    while seen < peers and time.monotonic() < deadline:
        if mon.poll(500):
            recv_monitor_message(mon)
            seen += 1
    assert seen == peers, f"only {seen} daemon(s) connected"
    for i in range(N):
        push.send_multipart(good_frame(i, sat=200 if i in SATURATED else 0))
    push.disable_monitor()
    mon.close()
    push.close()
    ctx.term()


async def test_two_daemons_share_one_push_stream_and_merge(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemons = [Daemon(config_from_dict(_cfg(tmp_path, n, endpoint))) for n in ("a", "b")]
    sender = asyncio.create_task(asyncio.to_thread(_detector, endpoint, 2))
    for d in daemons:
        await d.start()
    try:
        await sender
        deadline = time.monotonic() + 30
        while sum(sum(d.telemetry.processed.values()) for d in daemons) < N and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for d in daemons:
            d.request_exit()
            await d.shutdown()
    per = []
    for d in daemons:
        with RunReader(d.store_path) as r:
            per.append(sorted(x.index for x in r.dispositions()))
    assert all(abs(len(p) - N / 2) <= 1 for p in per), [len(p) for p in per]  # round-robin
    assert sorted(per[0] + per[1]) == list(range(N)), "every frame in exactly one daemon's file"

    out = tmp_path / "merged.h5"
    res = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "merge", str(out), *(str(d.store_path) for d in daemons),
         "--journals", *(str(d.journal_path) for d in daemons)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:  # plain h5py: the virtual datasets resolve to both files
        frames = f["entry/frames"][:]
        assert sorted(frames["index"].tolist()) == list(range(N))
        assert {s.decode() for s in frames["source"]} == {"det-a", "det-b"}
        assert f["entry/stats/results"].shape[0] == N
        assert len(f["entry/daemons"]) > 0
    with RunReader(out) as r:
        assert r.rows()["frames"] == N and r.rows()["stats"] == N
        res_rows = r.results("stats")
        sat = res_rows["saturated_fraction"][np.argsort(res_rows["index"])]
        assert (sat[list(SATURATED)] > 0.01).all() and (sat[:40] == 0).all()
    journal = [json.loads(x) for x in out.with_suffix(".alarms.jsonl").read_text().splitlines()]
    assert {rec["daemon"] for rec in journal} == {str(d.journal_path) for d in daemons}
    assert [rec["t"] for rec in journal] == sorted(rec["t"] for rec in journal)
    raised = [rec for rec in journal if rec.get("transition") == "raise"]
    assert {rec["daemon"] for rec in raised} == {str(d.journal_path) for d in daemons}, journal

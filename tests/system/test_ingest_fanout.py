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
from monitor.sim.stream2 import end_message, image_message, start_message
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


def _detector(endpoint: str, peers: int, messages: list[list[bytes]] | None = None) -> None:
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
    if messages is None:
        messages = [good_frame(i, sat=200 if i in SATURATED else 0) for i in range(N)]
    for parts in messages:
        push.send_multipart(parts)
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


async def test_stream2_fan_out_start_and_end_reach_one_daemon(tmp_path: Path) -> None:
    """DECTRIS Stream V2 round-robins like PUSH: ``start`` and ``end`` reach one daemon only.
    The other still stores every image it gets (one row each, logged as joined mid-series)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ids = {"series_id": 7, "series_unique_id": "run-7"}
    img = (np.arange(32 * 48) % 50).astype(np.uint16).reshape(32, 48)
    n = 40
    messages = [[start_message(**ids, shape=(32, 48), dtype="uint16")]]
    messages += [
        [image_message({"threshold_1": img}, compression="none", image_id=i, **ids)] for i in range(n)
    ]
    messages += [[end_message(**ids)]]
    daemons = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path, name, endpoint)
        cfg["sources"] = [{"name": f"det-{name}", "kind": "stream2", "endpoint": endpoint, "mode": "connect"}]
        daemons.append(Daemon(config_from_dict(cfg)))
    sender = asyncio.create_task(asyncio.to_thread(_detector, endpoint, 2, messages))
    for d in daemons:
        await d.start()
    try:
        await sender
        deadline = time.monotonic() + 30
        while sum(sum(d.telemetry.processed.values()) for d in daemons) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for d in daemons:
            d.request_exit()
            await d.shutdown()
    indices = []
    for d in daemons:
        with RunReader(d.store_path) as r:
            rows = r.dispositions()
            assert all(x.status.name == "PROCESSED" for x in rows)
            indices += [x.index for x in rows]
    assert sorted(indices) == list(range(n)), "every image in exactly one daemon's file"
    # start and end each reached exactly one daemon; exactly one daemon saw the start message
    assert sum(d.sources[0].series_events for d in daemons) == 2
    blind = [d for d in daemons if d.sources[0].series is None]
    assert len(blind) == 1, "one daemon never saw the start: no pixel mask, no saturation value"
    with RunReader(blind[0].store_path) as r:
        assert len(r.dispositions()) >= n // 2 - 1  # yet it stored its share of the images

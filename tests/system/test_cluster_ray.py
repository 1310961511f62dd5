"""Cluster mode (issue 18) on a real local multi-node Ray cluster: a head and a second node,
each its own raylet/GCS processes on 127.0.0.1 (``ray.cluster_utils.Cluster``). The daemon keeps
ingest, accounting, store and alarms; pipelines run as Ray actors. Every test checks
rows == messages per pipeline; the fault tests kill a replica's process and a whole node
mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from monitor.alerts.model import AlarmEvent  # noqa: E402
from monitor.cluster.worker import RayPipelineWorker  # noqa: E402
from monitor.config import config_from_dict  # noqa: E402
from monitor.daemon import Daemon  # noqa: E402
from monitor.store import RunReader  # noqa: E402
from tests.helpers import ROOT, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(300)
STORE_MB = 100 * 1024 * 1024
Fault = Callable[[Daemon], Awaitable[None]]
Fault = Callable[[Daemon], Awaitable[None]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": STORE_MB, "include_dashboard": False},
    )
    c.add_node(num_cpus=2, object_store_memory=STORE_MB)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _frame(i: int, series: str) -> list[bytes]:
    a = np.full((32, 48), 100 + (i % 50), dtype=np.uint16)
    h = {"htype": "array-1.0", "type": "uint16", "shape": [32, 48], "frame": i, "series": series}
    return [json.dumps(h).encode(), a.tobytes()]


def _send(endpoint: str, frames: list[tuple[int, str]], pause_s: float = 0.0) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.connect(endpoint)
    for i, series in frames:
        sock.send_multipart(_frame(i, series))
        if pause_s:
            time.sleep(pause_s)
    sock.close()
    ctx.term()


def _config(tmp: Path, endpoint: str, run: str) -> dict[str, object]:
    replica = {"replicas": 2, "num_cpus": 0.5, "queue_size": 5000, "policy": "block", "max_batch": 4}
    return {
        "run": run,
        "daemon": {"shutdown_timeout_s": 60.0},
        "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
        "pipelines": [
            {"name": "stats", "kind": "frame_stats", **replica},
            {"name": "ew", "kind": "early_warning", **replica},
        ],
        "store": {"directory": str(tmp), "filename": "{run}.h5", "flush_interval_s": 0.1},
        "dashboard": {"enabled": False},
        "cluster": {"engine": "ray", "address": "auto", "in_flight": 3},
    }


def _done(daemon: Daemon) -> int:
    t = daemon.telemetry
    return sum(t.processed.values()) + sum(t.failed.values()) + sum(t.skipped.values())


async def _run(
    daemon: Daemon, endpoint: str, frames: list[tuple[int, str]], fault: Fault | None = None
) -> None:
    await daemon.start()
    try:
        sender = asyncio.create_task(asyncio.to_thread(_send, endpoint, frames, 0.002))
        if fault is not None:
            await fault(daemon)
        await sender
        deadline = time.monotonic() + 120
        while _done(daemon) < 2 * len(frames) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()


def _rows(path: Path) -> tuple[dict[str, Counter[tuple[str, str]]], list[AlarmEvent]]:
    by: dict[str, Counter[tuple[str, str]]] = {}
    with RunReader(path) as r:
        rows = r.dispositions()
        for d in rows:
            by.setdefault(d.pipeline, Counter())[(d.status.name, d.reason)] += 1
        return by, list(r.alarms())


def _worker(daemon: Daemon, name: str) -> RayPipelineWorker:
    w = next(w for w in daemon.workers if w.name == name)
    assert isinstance(w, RayPipelineWorker)
    return w


def _messages(n: int) -> list[tuple[int, str]]:
    return [(i, f"s{i % 3}") for i in range(n)]


async def test_replicas_on_two_nodes_every_frame_one_row(cluster: Cluster, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(_config(tmp_path, endpoint, "spread")))
    placed = {ray.get(a.info.remote())["node"] for a in _worker(daemon, "stats").actors}
    assert len(placed) == 2, "SPREAD puts the two replicas on the two nodes"
    ew = _worker(daemon, "ew")
    await _run(daemon, endpoint, _messages(120))
    by, _ = _rows(daemon.store_path)
    for name in ("stats", "ew"):
        assert sum(by[name].values()) == 120, by[name]
        assert by[name][("PROCESSED", "")] == 120, by[name]
    # one series, one replica: three series pinned, both replicas used
    assert len(ew.table.pinned) == 3 and set(ew.table.pinned.values()) == {0, 1}
    with RunReader(daemon.store_path) as r:
        res = np.sort(r.results("ew"), order="index")
        for k in range(3):  # in order per series: the window fills 1/T, 2/T, ... monotonic
            fill = res["window_fill"][res["index"] % 3 == k]
            assert np.all(np.diff(fill) >= 0) and fill[-1] == 1.0, fill


async def _kill_keyed_replica_process(daemon: Daemon) -> None:
    ew = _worker(daemon, "ew")
    while not (sum(ew.table.in_flight) and daemon.telemetry.processed["ew"] > 20):
        await asyncio.sleep(0.005)
    replica = max(range(len(ew.actors)), key=lambda i: ew.table.in_flight[i])
    pid = ray.get(ew.actors[replica].info.remote(), timeout=30)["pid"]
    os.kill(int(pid), signal.SIGKILL)


async def test_replica_process_killed_mid_stream(cluster: Cluster, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(_config(tmp_path, endpoint, "killproc")))
    await _run(daemon, endpoint, _messages(600), _kill_keyed_replica_process)
    by, alarms = _rows(daemon.store_path)
    for name in ("stats", "ew"):
        assert sum(by[name].values()) == 600, by[name]
    ew = by["ew"]
    assert ew[("FAILED", "worker_lost")] >= 1, ew
    assert set(ew) <= {("PROCESSED", ""), ("FAILED", "worker_lost")}, ew
    assert by["stats"][("PROCESSED", "")] == 600
    lost = [a.alarm for a in alarms if a.alarm.id.startswith("series_state_lost:ew:")]
    assert lost and all(a.severity.name == "MINOR" for a in lost), alarms
    with RunReader(daemon.store_path) as r:
        rows = [d for d in r.dispositions() if d.pipeline == "ew"]
    last_lost = max(d.seq for d in rows if d.status.name == "FAILED")
    assert any(d.status.name == "PROCESSED" and d.seq > last_lost for d in rows), "frames after it processed"


async def test_worker_node_dies_mid_stream(cluster: Cluster, tmp_path: Path) -> None:
    """Last in this module: it removes the second node (its raylet and every worker on it)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(_config(tmp_path, endpoint, "killnode")))
    (worker_node,) = cluster.worker_nodes
    on_it = [
        name
        for name in ("stats", "ew")
        for a in _worker(daemon, name).actors
        if ray.get(a.info.remote())["node"] == worker_node.node_id
    ]
    assert on_it, "SPREAD placed replicas on the second node"

    async def remove_node(d: Daemon) -> None:
        while d.telemetry.processed["ew"] < 20:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(cluster.remove_node, worker_node)

    await _run(daemon, endpoint, _messages(600), remove_node)
    by, alarms = _rows(daemon.store_path)
    for name in ("stats", "ew"):
        assert sum(by[name].values()) == 600, by[name]
        assert set(by[name]) <= {("PROCESSED", ""), ("FAILED", "worker_lost")}, by[name]
        assert by[name][("PROCESSED", "")] > 300, by[name]
    assert sum(by[n][("FAILED", "worker_lost")] for n in on_it) >= 1, by
    if "ew" in on_it:
        assert any(a.alarm.id.startswith("series_state_lost:ew:") for a in alarms)

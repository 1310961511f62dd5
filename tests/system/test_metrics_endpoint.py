"""Prometheus /metrics on a running daemon: scraped over real HTTP, parsed with prometheus_client's
text-format parser, checked against what was sent (frames, rejections, gaps, salvage, alarms)."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.sim.ports import free_port
from tests.helpers import good_frame, header
from tests.unit.test_ndpluginzmq_wire import cxx_attr, cxx_header


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _send(endpoint: str, messages: list[list[bytes]]) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for m in messages:
        sock.send_multipart(m)
    sock.close()
    ctx.term()


def config(tmp_path: Path, endpoint: str, port: int) -> dict:
    return {
        "run": "metrics",
        "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
        "pipelines": [{"name": "stats", "kind": "frame_stats", "policy": "block", "queue_size": 64}],
        "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
        "alerts": {"rules": [{"name": "bright", "kind": "threshold", "pipeline": "stats", "metric": "mean",
                              "major": 50.0}]},
        "dashboard": {"enabled": False},
        "metrics": {"enabled": True, "port": port},
    }  # fmt: skip


async def test_metrics_scraped_and_parsed(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(config(tmp_path, endpoint, 0)))
    await daemon.start()
    try:
        url = daemon.integrations.metrics.url
        assert url.startswith("http://127.0.0.1:")
        a = good_frame(0)[1]
        nan_header = cxx_header(
            (32, 48), "uint16", 20, time.time() - 631152000, "", [cxx_attr("T", "float64", math.nan)]
        )
        msgs = [good_frame(i) for i in (0, 1, 2, 6, 7)]  # 3, 4, 5 never sent: 3 upstream gaps
        msgs += [[b"{not json", a], [header(type="complex64", frame=8, series="s1"), a], [nan_header, a]]
        await asyncio.to_thread(_send, endpoint, msgs)
        deadline = time.monotonic() + 15
        while sum(daemon.telemetry.processed.values()) < 6 or daemon.recorder.dispositions_written < 8:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        m = await asyncio.to_thread(scrape, url)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    assert m[("operando_frames_received_total", (("source", "det"),))] == 8
    assert m[("operando_frames_processed_total", (("pipeline", "stats"),))] == 6
    assert m[("operando_messages_rejected_total", (("reason", "bad_json"),))] == 1
    assert m[("operando_messages_rejected_total", (("reason", "bad_dtype"),))] == 1
    assert m[("operando_upstream_gaps_total", (("source", "det"),))] == 3  # 3, 4, 5
    assert m[("operando_source_events_total", (("event", "ndattr_repaired"), ("source", "det")))] == 1
    assert m[("operando_queue_depth", (("pipeline", "stats"),))] == 0
    assert m[("operando_processing_latency_seconds_count", (("pipeline", "stats"),))] == 6
    assert m[("operando_processing_latency_seconds_bucket", (("le", "+Inf"), ("pipeline", "stats")))] == 6
    assert 0 < m[("operando_processing_latency_seconds_sum", (("pipeline", "stats"),))] < 60
    severities = {k: v for k, v in m.items() if k[0] == "operando_alarm_severity"}
    assert list(severities.values()) == [2.0]  # the MAJOR 'bright' alarm (mean 100 > 50)
    assert dict(severities.popitem()[0][1])["rule"] == "bright"
    assert m[("operando_metrics_errors_total", ())] == 0


async def test_port_in_use_is_one_log_line_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(config(tmp_path, endpoint, port)))
    try:
        with caplog.at_level(logging.ERROR, logger="monitor.metrics"):
            await daemon.start()
        await asyncio.to_thread(_send, endpoint, [good_frame(0)])
        deadline = time.monotonic() + 10
        while sum(daemon.telemetry.processed.values()) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
        blocker.close()
    lines = [r for r in caplog.records if r.name == "monitor.metrics"]
    assert len(lines) == 1 and "running without Prometheus metrics" in lines[0].getMessage()
    assert daemon.integrations.metrics.collector.errors == 1


def test_metrics_bind_loopback_by_default() -> None:
    cfg = config_from_dict({"metrics": {"enabled": True}})
    assert cfg.metrics.host == "127.0.0.1"

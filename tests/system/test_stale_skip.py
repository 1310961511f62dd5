"""max_latency_ms: frames older than it at dequeue are skipped as ``stale``, counted and stored,
and every processed frame's receive → result latency stays bounded by it plus one compute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from monitor.config import ConfigError, PipelineSettings, config_from_dict
from monitor.daemon import Daemon
from monitor.frames import Frame
from monitor.pipelines.base import Result
from monitor.store import RunReader
from tests.helpers import free_port
from tests.system.test_daemon_inprocess import SlowPipeline, _send

COMPUTE_S = 0.3


class TimedPipeline(SlowPipeline):
    """A stand-in for a slow model: COMPUTE_S per batch (frames pile up in the queue)."""

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        time.sleep(COMPUTE_S)
        return [Result(self.name, f, {"mean": float(f.array.mean())}) for f in frames]


def _config(tmp_path: Path, endpoint: str, max_latency_ms: float) -> dict[str, object]:
    return {
        "run": "stale",
        "daemon": {"telemetry_interval_s": 0.1},
        "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
        "pipelines": [
            {"name": "stats", "kind": "frame_stats", "queue_size": 50, "max_latency_ms": max_latency_ms}
        ],
        "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
        "dashboard": {"enabled": False},
    }


async def _run(tmp_path: Path, max_latency_ms: float, n: int = 20) -> Daemon:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(config_from_dict(_config(tmp_path, endpoint, max_latency_ms)))
    daemon.workers[0].pipeline = TimedPipeline("stats")
    await daemon.start()
    try:
        await asyncio.to_thread(_send, endpoint, n)
        t = daemon.telemetry
        deadline = time.monotonic() + 30
        while sum(t.processed.values()) + sum(t.skipped.values()) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    return daemon


async def test_stale_frames_are_skipped_counted_and_stored(tmp_path: Path) -> None:
    daemon = await _run(tmp_path, max_latency_ms=500)
    snap = daemon.telemetry.snapshot()
    stale = dict(snap.skipped_by_reason).get("stale", 0)
    assert stale > 5  # 20 frames at once, 0.3 s each: most are older than 0.5 s when their turn comes
    with RunReader(daemon.store_path) as r:
        rows = r.dispositions()
        assert len(r.accounted_seqs()) == 20
        assert sum(d.reason == "stale" for d in rows) == stale
        assert "AVX2" in r.attrs.versions["cpu"] or "no AVX2" in r.attrs.versions["cpu"]  # ISA stored
        results = r.results("stats")
        latency = results["latency_queued"] + results["latency_compute"]
    # fresh results: waited at most max_latency before compute started
    assert len(latency) == 20 - stale and np.all(results["latency_queued"] <= 0.5 + 0.05)
    assert latency.max() < 0.5 + 2 * COMPUTE_S
    p99 = dict(snap.latency_p99_ms_by_pipeline)["stats"]
    assert 0 < p99 < (0.5 + 2 * COMPUTE_S) * 1e3


async def test_without_max_latency_every_frame_is_processed(tmp_path: Path) -> None:
    daemon = await _run(tmp_path, max_latency_ms=0, n=8)
    assert sum(daemon.telemetry.processed.values()) == 8
    assert "stale" not in daemon.telemetry.skipped


def test_negative_max_latency_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config_from_dict(_config(tmp_path, "tcp://127.0.0.1:1", -1))
    assert PipelineSettings(name="p", kind="frame_stats").max_latency_ms == 0


def test_health_panel_shows_stale_skips_and_p99_per_pipeline() -> None:
    from dashboards.panels.health import HealthPanel
    from monitor.telemetry import Telemetry

    t = Telemetry()
    t.skipped["stale"] += 3
    for ms in (10, 20, 900):
        t.observe_latency(ms / 1e3, "segmentation")
    t.observe_latency(0.004, "stats")
    text = HealthPanel._counters_html(t.snapshot())
    assert "stale 3" in text and "p99 by pipeline" in text
    assert "segmentation 8" in text and "stats 4 ms" in text  # p99 of (10, 20, 900) ms is ~883 ms

"""The daemon in-process with stand-in pipelines (named as such): forced shutdown with real
signals, failing and off-schema pipelines, live upstream-gap telemetry. In every case every
frame keeps its disposition."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.frames import Frame
from monitor.pipelines.base import Result, ResultSchema
from monitor.store import RunReader
from tests.helpers import free_port, good_frame


class SlowPipeline:
    """A stand-in for a slow model (0.3 s a frame), so frames pile up in the queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streams = ("frames",)

    def schema(self) -> ResultSchema:
        return ResultSchema(
            scalars=("mean", "std", "min", "max", "p1", "p50", "p99", "saturated_fraction", "dead_fraction")
        )

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        time.sleep(0.3)
        return [Result(self.name, f, {"mean": float(f.array.mean())}) for f in frames]


def _send(endpoint: str, n: int, numbers: list[int] | None = None) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for i in numbers if numbers is not None else range(n):
        sock.send_multipart(good_frame(i))
    sock.close()
    ctx.term()


async def test_second_sigint_forces_and_every_frame_is_accounted(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "forced",
            "daemon": {"shutdown_timeout_s": 20.0},
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 50, "policy": "block"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "dashboard": {"enabled": False},
        }
    )
    daemon = Daemon(cfg)
    daemon.workers[0].pipeline = SlowPipeline("stats")
    loop = asyncio.get_running_loop()
    serve = asyncio.create_task(daemon.serve())
    await daemon.started.wait()
    daemon.install_signal_handlers()
    try:
        await asyncio.to_thread(_send, endpoint, 30)
        while sum(daemon.telemetry.received.values()) < 30:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.2)
        assert daemon.should_exit and not daemon.force_exit
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(serve, timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
    assert daemon.force_exit
    # Forced: far less than draining 30 frames at 0.3 s each would take.
    assert elapsed < 3.0, f"forced shutdown took {elapsed:.2f} s"
    with RunReader(daemon.store_path) as r:
        rows = r.dispositions()
        assert len(r.accounted_seqs()) == 30
        counts = r.status_counts()
        assert counts["PROCESSED"] + counts["SKIPPED"] == 30
        assert counts["SKIPPED"] > 10
        assert {d.reason for d in rows if d.status.name == "SKIPPED"} == {"shutdown"}


class BrokenPipeline(SlowPipeline):
    """Raises on odd frames, like a model hitting a bug on some inputs."""

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        if any(f.index % 2 for f in frames):
            raise RuntimeError("model exploded")
        return [Result(self.name, f, {"mean": 1.0}) for f in frames]


async def test_a_failing_pipeline_fails_its_frames_not_the_daemon(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "failing",
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 50, "policy": "block"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "dashboard": {"enabled": False},
        }
    )
    daemon = Daemon(cfg)
    daemon.workers[0].pipeline = BrokenPipeline("stats")
    await daemon.start()
    try:
        await asyncio.to_thread(_send, endpoint, 10)
        while sum(daemon.telemetry.processed.values()) + sum(daemon.telemetry.failed.values()) < 10:
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    with RunReader(daemon.store_path) as r:
        rows = r.dispositions()
        assert sorted(d.index for d in rows if d.status.name == "FAILED") == [1, 3, 5, 7, 9]
        assert sorted(d.index for d in rows if d.status.name == "PROCESSED") == [0, 2, 4, 6, 8]
        assert {d.reason for d in rows if d.status.name == "FAILED"} == {"RuntimeError"}


async def test_upstream_gaps_show_in_live_telemetry(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "gaps",
            "daemon": {"telemetry_interval_s": 0.1},
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5"},
            "dashboard": {"enabled": False},
        }
    )
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        # Frames 0, 1, then 5: the sender numbered 2, 3, 4 but they never arrived.
        await asyncio.to_thread(_send, endpoint, 3, [0, 1, 5])
        deadline = time.monotonic() + 10
        while not (daemon.live.health() and daemon.live.health()[-1].upstream_gaps == 3):
            assert time.monotonic() < deadline, "upstream gaps never reached the live telemetry"
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()


class OffSchemaPipeline(SlowPipeline):
    """Returns a scalar its schema never declared (a pipeline bug the store must refuse)."""

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        return [Result(self.name, f, {"bogus": 1.0}) for f in frames]


async def test_results_off_schema_are_refused_but_frames_stay_accounted(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "offschema",
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "policy": "block"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "dashboard": {"enabled": False},
        }
    )
    daemon = Daemon(cfg)
    daemon.workers[0].pipeline = OffSchemaPipeline("stats")
    await daemon.start()
    try:
        await asyncio.to_thread(_send, endpoint, 5)
        while daemon.recorder.dispositions_written < 5:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_send, endpoint, 0, [5, 6])  # and the daemon keeps recording
        while daemon.recorder.dispositions_written < 7:
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    assert daemon.recorder.results_refused == 7
    with RunReader(daemon.store_path) as r:
        assert r.status_counts()["PROCESSED"] == 7
        assert len(r.results("stats")) == 0

"""Supervised tasks (issue 12, failure 3): a pipeline fault outside ``process()``, a worker or a
recorder task that dies. Real daemon in-process, real ZeroMQ, real HDF5; stand-in pipelines are
named as such. Every frame keeps a row; the fault raises an alarm, is logged with its traceback
once and makes the exit code non-zero; ``policy = "block"`` never stalls the sources."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import zmq

import monitor.router as router_mod
from engines.errors import EngineError
from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.frames import Frame
from monitor.pipelines.base import Result, ResultSchema
from monitor.store import RunReader
from monitor.supervise import EXIT_FAULT
from tests.helpers import free_port, good_frame

N = 20


class EngineFailsPipeline:
    """A stand-in model pipeline whose inference backend fails (an EngineError at infer)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streams = ("frames",)

    def schema(self) -> ResultSchema:
        return ResultSchema(scalars=("mean",))

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        raise EngineError("onnxruntime: session.run failed")


class OverlayBugPipeline(EngineFailsPipeline):
    """process() works; the dashboard overlay has a bug (runs outside process())."""

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        return [Result(self.name, f, {"mean": 1.0}) for f in frames]

    def display_overlays(self, result: Result, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        raise AttributeError("'NoneType' object has no attribute 'shape'")


def _config(tmp_path: Path, endpoint: str, run: str) -> object:
    return config_from_dict(
        {
            "run": run,
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 2, "policy": "block"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "dashboard": {"enabled": False, "update_ms": 10},
        }
    )


def _send(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for i in range(n):
        sock.send_multipart(good_frame(i))
    sock.close()
    ctx.term()


async def _run(daemon: Daemon, endpoint: str) -> None:
    await daemon.start()
    try:
        await asyncio.wait_for(asyncio.to_thread(_send, endpoint, N), 20)
        deadline = time.monotonic() + 20
        while daemon.recorder.dispositions_written < N:
            assert time.monotonic() < deadline, "frames stalled (policy = block behind a dead worker?)"
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()


def _check(daemon: Daemon, reason: str, caplog: pytest.LogCaptureFixture, exc_name: str) -> None:
    assert daemon.exit_code == EXIT_FAULT
    with RunReader(daemon.store_path) as r:
        rows = r.dispositions()
        assert sorted(d.index for d in rows) == list(range(N)), "every frame has exactly one row"
        assert {(d.status.name, d.reason) for d in rows} == {("FAILED", reason)}
        raised = [e for e in r.alarms() if e.transition == "raise"]
        assert [e.alarm.id for e in raised] == ["daemon:pipeline:stats"]
        assert exc_name in raised[0].alarm.message
    traced = [rec for rec in caplog.records if rec.exc_info and rec.name == "monitor.supervise"]
    assert len(traced) == 1, "the traceback is logged once"


@pytest.mark.parametrize(
    ("pipeline", "exc_name"),
    [(EngineFailsPipeline, "EngineError"), (OverlayBugPipeline, "AttributeError")],
)
async def test_a_fault_outside_process_fails_frames_raises_an_alarm_and_exit_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pipeline: type, exc_name: str
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # A display is needed for overlays to be drawn: the worker samples live frames when one is.
    daemon = Daemon(_config(tmp_path, endpoint, "fault"))  # type: ignore[arg-type]
    daemon.workers[0].pipeline = pipeline("stats")
    daemon.workers[0]._live_interval = 0.0
    await _run(daemon, endpoint)
    _check(daemon, exc_name, caplog, exc_name)


async def test_a_dead_worker_fails_its_frames_and_never_stalls_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    real = router_mod.gather_batch

    async def dies(*args: object, **kw: object) -> object:
        await real(*args, **kw)  # type: ignore[arg-type]
        raise RuntimeError("bug in the worker loop")

    monkeypatch.setattr(router_mod, "gather_batch", dies)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(_config(tmp_path, endpoint, "dead"))  # type: ignore[arg-type]
    await _run(daemon, endpoint)
    _check(daemon, "worker_dead", caplog, "RuntimeError")
    assert daemon.telemetry.skipped["overload"] == 0


async def test_a_dead_recorder_is_restarted_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = _config(tmp_path, endpoint, "recorder")
    daemon = Daemon(cfg)  # type: ignore[arg-type]
    real_flush = daemon.recorder.flush
    calls = {"n": 0}

    async def flaky_flush() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("recorder loop bug")
        await real_flush()

    daemon.recorder.flush = flaky_flush  # type: ignore[method-assign]
    await _run(daemon, endpoint)
    assert daemon.exit_code == EXIT_FAULT
    assert [f.component for f in daemon.supervisor.faults] == ["recorder"]
    with RunReader(daemon.store_path) as r:
        assert r.status_counts()["PROCESSED"] == N
        assert [e.alarm.id for e in r.alarms() if e.transition == "raise"] == ["daemon:recorder"]

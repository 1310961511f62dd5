"""NDPluginZMQ-shaped messages over a real PUSH socket on 127.0.0.1 into Array10Source."""

from __future__ import annotations

import asyncio
import math
import time

import lz4.block
import numpy as np
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, Rejection
from monitor.sim.ports import free_port
from monitor.sources.ad_header import EPICS_EPOCH_OFFSET_S
from monitor.sources.array10 import Array10Source
from tests.unit.test_ndpluginzmq_wire import cxx_attr, cxx_header


async def test_salvaged_frames_are_counted_and_kept() -> None:
    ctx = zmq.asyncio.Context()
    port = free_port()
    src = Array10Source(
        SourceSettings(name="ad", kind="array10", endpoint=f"tcp://127.0.0.1:{port}", mode="bind"), ctx
    )
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(src.run(emit, stop))
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    a = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    ts = time.time() - EPICS_EPOCH_OFFSET_S
    nan = cxx_attr("T", "float64", math.nan)
    try:
        push.send_multipart([cxx_header(a.shape, "uint16", 1, ts, "", [nan]), a.tobytes()])
        push.send_multipart([cxx_header(a.shape, "uint16", 2, ts, "lz4", [b"junk"]), lz4.block.compress(
            a.tobytes(), store_size=False)])  # fmt: skip
        push.send_multipart([cxx_header(a.shape, "uint8", 3, ts, "jpeg", []), b"\xff\xd8"])
        deadline = time.monotonic() + 10
        while len(events) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
        push.close(0)
        ctx.destroy(0)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.index for f in frames] == [1, 2]
    assert all(np.array_equal(f.array, a) for f in frames)
    assert all(abs(f.t_detector - time.time()) < 60 for f in frames)  # EPICS stamp became Unix time
    assert dict(src.salvaged) == {"ndattr_repaired": 1, "ndattr_dropped": 1}
    assert [e.reason for e in events if isinstance(e, Rejection)] == ["unsupported_encoding"]


async def test_ndpluginzmq_simulator_round_trip() -> None:
    """`simulate --protocol ndpluginzmq` (lz4) → Array10Source: every frame salvaged, pixel-exact."""
    from monitor.sim.areadetector import run_areadetector_simulator
    from monitor.sim.array10 import synthetic_frames

    ctx = zmq.asyncio.Context()
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    src = Array10Source(SourceSettings(name="ad", kind="array10", endpoint=endpoint, mode="bind"), ctx)
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(src.run(emit, stop))
    try:
        await run_areadetector_simulator(
            endpoint, rate_hz=0, shape=(40, 56), count=20, codec="lz4", mode="connect", seed=3
        )
        deadline = time.monotonic() + 10
        while len(events) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
        ctx.destroy(0)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.index for f in frames] == list(range(1, 21))
    expected = synthetic_frames((40, 56), dtype="uint16", seed=3)
    for f in frames:
        assert np.array_equal(f.array, next(expected))
        assert f.meta.extra["ndattr_repaired"] is True and f.meta.extra["FilePath"].startswith("C:\\data\\")
        assert abs(f.t_detector - time.time()) < 60
    assert [f.index for f in frames if math.isnan(f.meta.extra["Temperature"])] == [10, 20]
    assert src.salvaged == {"ndattr_repaired": 20}

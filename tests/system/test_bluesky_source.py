"""bluesky's real Publisher → bluesky's Proxy → BlueskySource, each in its own process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq.asyncio

from monitor.bench.bluesky import run_bench, wait_port
from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sim.bluesky_demo import current_ramp, start_proxy_process
from monitor.sim.ports import free_port
from monitor.sources.bluesky import BlueskySource
from monitor.store import RunReader

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def proxy() -> Iterator[tuple[int, int]]:
    in_port, out_port = free_port(), free_port()
    proc = start_proxy_process(in_port, out_port)
    try:
        wait_port(out_port)
        wait_port(in_port)
        yield in_port, out_port
    finally:
        proc.terminate()
        proc.wait(10)


async def publish(in_port: int, *args: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "monitor.sim.bluesky_demo",
        "publish",
        "--address",
        f"127.0.0.1:{in_port}",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode().split()


@pytest.mark.parametrize(
    ("fmt", "storage"),
    [("msgpack", "inline"), ("pickle", "hdf5"), ("json", "inline"), ("msgpack", "stream")],
)
async def test_runengine_documents_across_processes(
    proxy: tuple[int, int], tmp_path: Path, fmt: str, storage: str
) -> None:
    """Images inline, in AD_HDF5 files (resource/datum) or stream_resource/stream_datum rows."""
    in_port, out_port = proxy
    ctx = zmq.asyncio.Context()
    settings = SourceSettings(
        "bs",
        "bluesky",
        endpoint=f"tcp://127.0.0.1:{out_port}",
        trust_pickle=fmt == "pickle",
        current_field="pstat_current",
    )
    source = BlueskySource(settings, ctx)
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    try:
        await asyncio.sleep(0.3)
        n = 25
        args = ["--events", str(n), "--shape", "48", "64", "--format", fmt, "--scans", "2"]
        args += [f"--{storage}", "--save-dir", str(tmp_path)] if storage != "inline" else []
        uids = await publish(in_port, *args)
        deadline = time.monotonic() + 20
        while source.documents["stop"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        ctx.destroy(linger=0)
    frames = [e for e in events if isinstance(e, Frame)]
    assert not [e for e in events if isinstance(e, Rejection)]
    assert len(frames) == 2 * n
    assert [(e.kind, e.series) for e in events if isinstance(e, SeriesEvent)] == [
        ("start", uids[0]),
        ("end", uids[0]),
        ("start", uids[1]),
        ("end", uids[1]),
    ]
    assert [f.index for f in frames] == list(range(1, n + 1)) * 2
    first = frames[0]
    assert first.array.shape == (48, 64) and first.array.dtype == np.uint16
    assert first.meta.extra["plan_name"] == "list_scan" and first.meta.extra["sample"] == "demo-cell"
    assert [f.meta.extra["scan_id"] for f in (frames[0], frames[-1])] == [1, 2]
    # The saturating hot spot appears only above 8 mA (the middle of the 0 → 10 → 0 mA ramp).
    hot = [bool((f.array == 65535).any()) for f in frames[:n]]
    assert hot == [c > 8.0 for c in current_ramp(n, 10.0)]
    if storage != "stream":  # stream frames arrive before their event, without its readings
        assert [f.meta.current_mA for f in frames[:n]] == pytest.approx(current_ramp(n, 10.0))
    docs = source.documents
    assert docs["event"] == 2 * n and docs["descriptor"] == 2
    assert docs["datum"] == (2 * n if storage == "hdf5" else 0)
    assert docs["resource"] == (2 if storage == "hdf5" else 0)
    assert docs["stream_datum"] == (2 * n if storage == "stream" else 0)
    assert docs["stream_resource"] == (2 if storage == "stream" else 0)
    assert source.received == source.accounted()


async def test_untrusted_pickle_is_counted_not_loaded(proxy: tuple[int, int]) -> None:
    in_port, out_port = proxy
    ctx = zmq.asyncio.Context()
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint=f"tcp://127.0.0.1:{out_port}"), ctx)
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    try:
        await asyncio.sleep(0.3)
        await publish(in_port, "--events", "5", "--shape", "8", "8", "--format", "pickle")
        deadline = time.monotonic() + 10
        while source.received < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        ctx.destroy(linger=0)
    assert source.received == 8  # start, descriptor, 5 events, stop
    assert source.rejected == {"pickle_untrusted": 8}
    assert all(isinstance(e, Rejection) and e.reason == "pickle_untrusted" for e in events)


@pytest.mark.slow
async def test_thousand_inline_512_images_all_accounted() -> None:
    """The issue's target: 1000 events with 512×512 images inline, all received and processed."""
    result = await run_bench(events=1000, shape=(512, 512))
    print(f"1000 x 512x512: {result.receive_rate_hz:.0f} ev/s received, {result.end_to_end_rate_hz:.0f} e2e")
    assert result.frames_received == 1000 and result.processed == 1000
    assert result.skipped == 0 and result.rejected == 0 and result.messages == 1003


def test_bluesky_demo_cli(tmp_path: Path) -> None:
    """`operando-monitor bluesky-demo`: RunEngine → Proxy → daemon, results and alarm in the store."""
    cmd = [sys.executable, "-m", "monitor.cli", "bluesky-demo", "--out", str(tmp_path), "--points", "12"]
    cmd += ["--scans", "1", "--delay", "0", "--shape", "32", "32", "--stream", "--no-dashboard"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = Path(proc.stderr.rsplit("results: ", 1)[1].strip())
    with RunReader(store) as reader:
        assert reader.status_counts("stats") == {"PROCESSED": 12, "SKIPPED": 0, "REJECTED": 0, "FAILED": 0}
        raised = [e for e in reader.alarms() if e.transition == "raise"]
    assert raised and raised[0].alarm.rule == "saturation"
    assert "[scan 1 list_scan, sample demo-cell]" in raised[0].alarm.message

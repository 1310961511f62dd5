"""Stream V2 over real ZeroMQ on 127.0.0.1: simulator → Stream2Source → daemon → HDF5.

Every message is accounted for (frames, rejections with their reasons, series events, ignored
types), image_id gaps are counted, masked and NODATA pixels never reach the pipelines.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cbor2
import numpy as np
import pytest
import zmq
import zmq.asyncio

from monitor.config import SourceSettings, config_from_dict
from monitor.daemon import Daemon
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sim.array10 import send_raw
from monitor.sim.ports import free_port
from monitor.sim.stream2 import end_message, image_message, run_simulator, start_message
from monitor.sources.base import Source
from monitor.sources.stream2 import Stream2Source
from monitor.store import RunReader

SHAPE = (8, 12)
IDS = {"series_id": 4, "series_unique_id": "run-4"}
MAX_FRAME_BYTES = 4096


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


class Running:
    """A Stream2Source running as a task, collecting what it emits."""

    def __init__(self, source: Stream2Source) -> None:
        self.source = source
        self.events: list[IngestEvent] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(source.run(self._emit, self.stop))

    async def _emit(self, event: IngestEvent) -> None:
        self.events.append(event)

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {n} events"
            await asyncio.sleep(0.01)

    async def shutdown(self) -> float:
        t0 = time.monotonic()
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=2.0)
        return time.monotonic() - t0


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if not r.task.done():
            r.stop.set()
            await asyncio.wait_for(r.task, timeout=2.0)


def pixels(k: int) -> np.ndarray:
    return ((np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16) * 5 + k) % 900).astype(np.uint16).reshape(SHAPE)


def good(k: int, compression: str = "bslz4") -> bytes:
    return image_message({"threshold_1": pixels(k)}, **IDS, image_id=k, compression=compression)


def tagged(content: object, **kw: object) -> bytes:
    # Another series, so that the rejected image_id 99 does not count as a jump in run-4's numbering.
    msg = {"type": "image", "series_id": 9, "series_unique_id": "junk", "image_id": 99} | kw
    msg["data"] = {"threshold_1": content}
    return cbor2.dumps(cbor2.CBORTag(55799, msg))


def array(content: object, dims: object = list(SHAPE)) -> cbor2.CBORTag:
    return cbor2.CBORTag(40, [dims, content])


RAW = cbor2.CBORTag(69, bytes(SHAPE[0] * SHAPE[1] * 2))
MALFORMED: list[tuple[str, list[bytes]]] = [
    ("extra_parts", [good(0), b"trailer"]),
    ("oversize", [bytes(4 * MAX_FRAME_BYTES + (1 << 20) + 1)]),
    ("bad_cbor", [b"\xff\xfe not cbor"]),
    ("not_a_map", [cbor2.dumps([1, 2, 3])]),
    ("bad_type", [cbor2.dumps({"type": 5})]),
    ("bad_series", [cbor2.dumps({"type": "end", "series_id": "four"})]),
    ("bad_image_id", [tagged(array(RAW), image_id=-3)]),
    ("missing_channel", [tagged(array(RAW)).replace(b"threshold_1", b"threshold_7")]),
    ("bad_array", [tagged(b"just bytes")]),
    ("bad_dtype", [tagged(array(cbor2.CBORTag(87, bytes(16))))]),
    ("bad_shape", [tagged(array(RAW, [SHAPE[0] * SHAPE[1]]))]),
    ("size_mismatch", [tagged(array(cbor2.CBORTag(69, bytes(10))))]),
    ("oversize", [tagged(array(RAW, [64, 64]))]),
    ("bad_compression", [tagged(array(cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zstd", 2, bytes(40)]))))]),
    ("bad_metadata", [tagged(array(RAW), stop_time=[1, 0])]),
    ("bad_metadata", [cbor2.dumps({"type": "start", "series_id": 5, "threshold_energy": [1]})]),
]


def build_messages() -> tuple[list[list[bytes]], list[tuple[str, object]]]:
    """A series with every malformed kind between good images, a skipped image_id, ignored types."""
    mask = np.zeros(SHAPE, dtype=np.uint32)
    mask[0, :3] = 1
    start = start_message(
        **IDS, shape=SHAPE, dtype="uint16", saturation_value=850, pixel_mask={"threshold_1": mask}
    )
    messages: list[list[bytes]] = [[start]]
    expected: list[tuple[str, object]] = [("start", "run-4")]
    for k, (reason, parts) in enumerate(MALFORMED):
        messages += [[good(k, ("bslz4", "lz4", "none")[k % 3])], parts]
        expected += [("frame", k), ("rejected", reason)]
    messages.append([cbor2.dumps({"type": "calibration", "series_id": 4})])  # unused type: still a row
    expected.append(("rejected", "unknown_type"))
    last = len(MALFORMED)
    for k in (last, last + 2):  # image last + 1 never arrives
        messages.append([good(k)])
        expected.append(("frame", k))
    messages.append([end_message(**IDS)])
    expected.append(("end", "run-4"))
    return messages, expected


def expected_pixels(k: int) -> np.ndarray:
    a = pixels(k).copy()
    a[0, :3] = 0  # masked
    a[a > 850] = 0  # above saturation_value: invalid
    return a


async def test_every_message_is_accounted_for(ctx: zmq.asyncio.Context, running: list[Running]) -> None:
    settings = SourceSettings(
        name="det",
        kind="stream2",
        endpoint="tcp://127.0.0.1:0",
        mode="bind",
        max_frame_bytes=MAX_FRAME_BYTES,
        channel="threshold_1",
    )
    source = Stream2Source(settings, ctx, inline_bytes=0)  # every message through the decode thread
    assert isinstance(source, Source)
    endpoint = source.open()
    run = Running(source)
    running.append(run)
    messages, expected = build_messages()
    sent = await asyncio.to_thread(send_raw, endpoint, messages)
    assert sent == len(messages)
    await run.wait_for(len(expected))
    assert await run.shutdown() < 1.0
    assert len(run.events) == len(expected)
    for event, (kind, value) in zip(run.events, expected, strict=True):
        if kind == "frame":
            assert isinstance(event, Frame), f"expected image {value}, got {event}"
            assert (event.index, event.series, event.stream, event.source) == (
                value,
                "run-4",
                "frames",
                "det",
            )
            np.testing.assert_array_equal(event.array, expected_pixels(value))  # type: ignore[arg-type]
            assert event.meta.extra["masked_pixels"] == 3 and event.meta.extra["saturation_value"] == 850
        elif kind == "rejected":
            assert isinstance(event, Rejection), f"expected rejection {value}, got {event}"
            assert (event.reason, event.source) == (value, "det") and event.detail
        else:
            assert isinstance(event, SeriesEvent) and (event.kind, event.series) == (kind, value)
    assert source.received == len(messages)
    assert source.frames + sum(source.rejected.values()) + source.series_events == len(messages)
    assert dict(source.ignored) == {"calibration": 1}
    assert sum(source.rejected.values()) == len(MALFORMED) + 1  # + the unknown type
    assert source.upstream_gaps() == 1


async def test_stop_ends_idle_run_within_a_second(ctx: zmq.asyncio.Context) -> None:
    source = Stream2Source(
        SourceSettings(name="d", kind="stream2", endpoint="tcp://127.0.0.1:0", mode="bind"), ctx
    )
    run = Running(source)
    await asyncio.sleep(0.2)
    assert await run.shutdown() < 1.0 and run.events == []


async def test_simulator_through_daemon_into_hdf5(tmp_path: Path) -> None:
    """Two channels; the daemon routes threshold_2 as stream "threshold_2"; gaps and NODATA never
    reach frame_stats; malformed messages are stored as rejected with their reasons."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "stream2",
            "sources": [
                {"name": "eiger", "kind": "stream2", "endpoint": endpoint, "mode": "bind",
                 "channel": "threshold_2", "stream": "", "max_frame_bytes": MAX_FRAME_BYTES}
            ],
            "pipelines": [
                {"name": "stats", "kind": "frame_stats", "streams": ["threshold_2"], "queue_size": 100,
                 "policy": "block"}
            ],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "dashboard": {"enabled": False},
        }
    )  # fmt: skip
    daemon = Daemon(cfg)
    await daemon.start()
    n_images = 12
    # The daemon routes threshold_2: rename the channel in the malformed images (same length).
    bad = [(r, [p.replace(b"threshold_1", b"threshold_2") for p in parts]) for r, parts in MALFORMED]
    try:
        sent = await run_simulator(
            endpoint, rate_hz=0, shape=(600, 3), count=n_images, mode="connect", dtype="uint16",
            channels=("threshold_1", "threshold_2"), compression="bslz4",
        )  # fmt: skip
        assert sent == n_images
        await asyncio.to_thread(send_raw, endpoint, [parts for _, parts in bad])
        deadline = time.monotonic() + 20
        while daemon.recorder.dispositions_written < n_images + len(bad):
            assert time.monotonic() < deadline, f"{daemon.recorder.dispositions_written} dispositions"
            await asyncio.sleep(0.05)
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    with RunReader(daemon.store_path) as r:
        rows = r.dispositions()
        processed = [d for d in rows if d.status.name == "PROCESSED"]
        assert [d.index for d in processed] == list(range(n_images))
        assert {(d.stream, d.source, d.pipeline) for d in processed} == {("threshold_2", "eiger", "stats")}
        assert len({d.series for d in processed}) == 1 and processed[0].series.startswith("sim-")
        assert all(d.t_received - 5.0 < d.t_detector <= d.t_received + 0.5 for d in processed)
        rejected = [d for d in rows if d.status.name == "REJECTED"]
        assert sorted(d.reason for d in rejected) == sorted(reason for reason, _ in bad), [
            (d.reason, d.index, d.series) for d in rejected
        ]
        assert len(r.accounted_seqs()) == n_images + len(bad)
        results = r.results("stats")
        assert len(results) == n_images
        # The module gap (rows 512-549 of 600) is NODATA on the wire: zeroed, so dead, not saturated.
        assert np.all(results["max"] <= 65534) and np.all(results["dead_fraction"] >= 38 / 600)
        assert np.all(results["saturated_fraction"] == 0.0)


async def test_cli_simulator_binds_like_a_detector(ctx: zmq.asyncio.Context, running: list[Running]) -> None:
    """`operando-monitor simulate --protocol stream2` binds PUSH; the source connects PULL."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [
        sys.executable, "-m", "monitor.cli", "simulate", "--protocol", "stream2", "--endpoint", endpoint,
        "--rate", "0", "--count", "4", "--shape", "16", "24", "--dtype", "uint32", "--compression", "lz4",
        "--channels", "threshold_1", "threshold_2",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    settings = SourceSettings(
        name="eiger", kind="stream2", endpoint=endpoint, channel="threshold_2", stream=""
    )
    run = Running(Stream2Source(settings, ctx))
    running.append(run)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, stderr.decode()
    await run.wait_for(6)
    await run.shutdown()
    frames = [e for e in run.events if isinstance(e, Frame)]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert all(
        f.stream == "threshold_2" and f.array.shape == (16, 24) and f.array.dtype == np.uint32 for f in frames
    )
    assert [e.kind for e in run.events if isinstance(e, SeriesEvent)] == ["start", "end"]


def test_bench_quick_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "stream2.json"
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "bench", "stream2", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "stream2" and data["frame"]["compression"] == "bslz4"
    assert set(data["fps"]) == {"library", "ours", "library_clean", "ours_clean"}
    assert data["ratio"] > 0 and data["ratio_clean"] > 0 and data["source_fps_zmq"] > 0

"""Array10Source over real ZeroMQ sockets on 127.0.0.1: accounting, rejections, gaps, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import SourceError
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sim.array10 import encode_array10, run_simulator, send_raw, series_end, series_start
from monitor.sim.ports import free_port
from monitor.sources.array10 import Array10Source
from monitor.sources.base import Source

MAX_FRAME_BYTES = 4096


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


def settings(socket: str, mode: str, endpoint: str, **kw: object) -> SourceSettings:
    return SourceSettings(
        name="det1",
        kind="array10",
        endpoint=endpoint,
        socket=socket,
        mode=mode,
        **kw,  # type: ignore[arg-type]
    )


class Running:
    """An Array10Source running as a task, collecting what it emits."""

    def __init__(self, source: Array10Source) -> None:
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
        await asyncio.wait_for(self.task, timeout=1.0)
        return time.monotonic() - t0


@pytest.fixture
async def running_sources() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if not r.task.done():
            r.stop.set()
            await asyncio.wait_for(r.task, timeout=2.0)


def good_array(k: int) -> np.ndarray:
    return (np.arange(64, dtype=np.uint16).reshape(8, 8) * 3 + k).astype(np.uint16)


def good(k: int, frame: int | None = None) -> list[bytes]:
    return encode_array10(
        good_array(k), frame=k if frame is None else frame, series="run1", meta={"cycle": 1}
    )


def h(**kw: object) -> bytes:
    base: dict[str, object] = {"htype": "array-1.0", "type": "uint16", "shape": [8, 8], "series": "run1"}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


PIXELS = bytes(128)
MALFORMED: list[tuple[str, list[bytes]]] = [
    ("missing_parts", [h()]),
    ("extra_parts", [h(), PIXELS, b"trailer"]),
    ("bad_json", [b"{this is not json", PIXELS]),
    ("not_an_object", [b"[1, 2, 3]", PIXELS]),
    ("bad_htype", [h(htype="array-9.9"), PIXELS]),
    ("bad_dtype", [h(type="complex128"), PIXELS]),
    ("bad_shape", [h(shape=[2, 4, 16]), PIXELS]),
    ("size_mismatch", [h(), PIXELS[:-2]]),
    ("oversize", [h(shape=[64, 64]), bytes(64 * 64 * 2)]),
    ("bad_endianness", [h(endianness="sideways"), PIXELS]),
    ("unsupported_encoding", [h(encoding="jpeg"), PIXELS]),
    ("bad_frame_number", [h(frame=-5), PIXELS]),
    ("bad_metadata", [h(energy_eV="eight keV"), PIXELS]),
    ("bad_metadata", [h(stream=42), PIXELS]),
]


def build_messages() -> tuple[list[list[bytes]], list[tuple[str, object]]]:
    """Good frames 0..n interleaved with every malformed kind, then frame n+2 (a gap of one)."""
    messages: list[list[bytes]] = [series_start("run1")]
    expected: list[tuple[str, object]] = [("start", "run1")]
    for k, (reason, parts) in enumerate(MALFORMED):
        messages += [good(k), parts]
        expected += [("frame", k), ("rejected", reason)]
    last = len(MALFORMED)
    for k in (last, last + 2, last + 3):  # frame last + 1 is never sent
        messages.append(good(k))
        expected.append(("frame", k))
    messages.append(series_end("run1"))
    expected.append(("end", "run1"))
    return messages, expected


def check_accounting(events: list[IngestEvent], expected: list[tuple[str, object]]) -> None:
    assert len(events) == len(expected)
    n_frames = sum(isinstance(e, Frame) for e in events)
    n_rejected = sum(isinstance(e, Rejection) for e in events)
    n_series = sum(isinstance(e, SeriesEvent) for e in events)
    assert n_frames + n_rejected + n_series == len(expected)
    for event, (kind, value) in zip(events, expected, strict=True):
        if kind == "frame":
            assert isinstance(event, Frame), f"expected frame {value}, got {event}"
            assert event.index == value and event.series == "run1" and event.source == "det1"
            assert event.stream == "frames" and event.meta.cycle == 1
            np.testing.assert_array_equal(event.array, good_array(value))  # type: ignore[arg-type]
        elif kind == "rejected":
            assert isinstance(event, Rejection), f"expected rejection {value}, got {event}"
            assert event.reason == value and event.source == "det1" and event.detail
        else:
            assert event == SeriesEvent("det1", "run1", kind, t_received=event.t_received)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("socket", "mode"), [("pull", "bind"), ("pull", "connect"), ("sub", "connect"), ("sub", "bind")]
)
async def test_every_message_is_accounted_for(
    ctx: zmq.asyncio.Context, running_sources: list[Running], socket: str, mode: str
) -> None:
    port = 0 if mode == "bind" else free_port()
    source = Array10Source(
        settings(socket, mode, f"tcp://127.0.0.1:{port}", max_frame_bytes=MAX_FRAME_BYTES), ctx
    )
    assert isinstance(source, Source)
    endpoint = source.open()
    assert not endpoint.endswith(":0") and endpoint.startswith("tcp://127.0.0.1:")
    run = Running(source)
    running_sources.append(run)
    messages, expected = build_messages()
    sender = "push" if socket == "pull" else "pub"
    peer_mode = "connect" if mode == "bind" else "bind"
    sent = await asyncio.to_thread(send_raw, endpoint, messages, socket=sender, mode=peer_mode, settle_s=0.5)
    assert sent == len(messages) > 30
    await run.wait_for(len(expected))
    assert await run.shutdown() < 1.0
    check_accounting(run.events, expected)
    assert source.upstream_gaps() == 1
    assert source.received == len(messages)
    assert sum(source.rejected.values()) == len(MALFORMED)
    assert source.frames == len(MALFORMED) + 3 and source.series_events == 2


async def test_stop_ends_idle_run_within_a_second(ctx: zmq.asyncio.Context) -> None:
    source = Array10Source(settings("pull", "bind", "tcp://127.0.0.1:0"), ctx)
    run = Running(source)
    await asyncio.sleep(0.2)
    assert await run.shutdown() < 1.0
    assert run.events == []


async def test_simulator_to_source(ctx: zmq.asyncio.Context, running_sources: list[Running]) -> None:
    source = Array10Source(settings("pull", "bind", "tcp://127.0.0.1:0"), ctx)
    endpoint = source.open()
    run = Running(source)
    running_sources.append(run)
    sent = await run_simulator(
        endpoint, rate_hz=0, shape=(32, 48), count=25, mode="connect", series="simrun", context=ctx
    )
    assert sent == 25
    await run.wait_for(27)
    await run.shutdown()
    assert isinstance(run.events[0], SeriesEvent) and run.events[0].kind == "start"
    assert isinstance(run.events[-1], SeriesEvent) and run.events[-1].kind == "end"
    frames = [e for e in run.events if isinstance(e, Frame)]
    assert [f.index for f in frames] == list(range(25))
    assert all(f.array.shape == (32, 48) and f.array.dtype == np.uint16 for f in frames)
    assert all(f.series == "simrun" for f in frames) and source.upstream_gaps() == 0


async def test_simulator_pub_to_sub_at_a_rate(
    ctx: zmq.asyncio.Context, running_sources: list[Running]
) -> None:
    source = Array10Source(settings("sub", "bind", "tcp://127.0.0.1:0"), ctx)
    endpoint = source.open()
    run = Running(source)
    running_sources.append(run)
    t0 = time.monotonic()
    sent = await run_simulator(
        endpoint, rate_hz=100, shape=(16, 16), count=20, socket="pub", mode="connect", context=ctx
    )
    elapsed = time.monotonic() - t0
    assert sent == 20 and elapsed > 0.15  # 20 frames at 100 Hz: ~0.2 s after the settle delay
    await run.wait_for(22)
    await run.shutdown()
    assert [e.index for e in run.events if isinstance(e, Frame)] == list(range(20))


async def test_simulator_stops_when_told(ctx: zmq.asyncio.Context) -> None:
    stop = asyncio.Event()
    port = free_port()
    task = asyncio.create_task(
        run_simulator(f"tcp://127.0.0.1:{port}", rate_hz=0, shape=(8, 8), stop=stop, context=ctx)
    )
    await asyncio.sleep(0.3)  # no peer: PUSH blocks on the series-start message
    stop.set()
    assert await asyncio.wait_for(task, timeout=1.0) == 0


async def test_rejections_are_logged_once_per_reason_per_second(
    ctx: zmq.asyncio.Context, running_sources: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="monitor.sources.array10")
    source = Array10Source(settings("pull", "bind", "tcp://127.0.0.1:0"), ctx)
    endpoint = source.open()
    run = Running(source)
    running_sources.append(run)
    flood = [[b"\x00not json", PIXELS]] * 50 + [[h(type="f16"), PIXELS]] * 5
    await asyncio.to_thread(send_raw, endpoint, flood)
    await run.wait_for(len(flood))
    await run.shutdown()
    assert all(isinstance(e, Rejection) for e in run.events)
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.sources.array10"]
    per_message = [line for line in lines if "rejected message" in line]
    assert len([line for line in per_message if "bad_json" in line]) == 1
    assert len([line for line in per_message if "bad_dtype" in line]) == 1
    assert any("49 more 'bad_json'" in line for line in lines)
    assert any("4 more 'bad_dtype'" in line for line in lines)


async def test_bind_conflict_is_a_source_error(ctx: zmq.asyncio.Context) -> None:
    first = Array10Source(settings("pull", "bind", "tcp://127.0.0.1:0"), ctx)
    endpoint = first.open()
    second = Array10Source(settings("pull", "bind", endpoint), ctx)
    with pytest.raises(SourceError, match="cannot bind"):
        second.open()
    first.close()


async def test_gaps_reset_on_backwards_jump_and_new_series(
    ctx: zmq.asyncio.Context, running_sources: list[Running]
) -> None:
    source = Array10Source(settings("pull", "bind", "tcp://127.0.0.1:0"), ctx)
    endpoint = source.open()
    run = Running(source)
    running_sources.append(run)
    a = good_array(0)
    numbers = [("s1", 0), ("s1", 3), ("s1", 1), ("s1", 2), ("s2", 10), ("s2", 12)]  # gaps: 2 + 0 + 0 + 1
    messages = [encode_array10(a, frame=n, series=s) for s, n in numbers]
    await asyncio.to_thread(send_raw, endpoint, messages)
    await run.wait_for(len(messages))
    await run.shutdown()
    assert source.upstream_gaps() == 3


async def test_reconnects_when_the_detector_restarts(
    ctx: zmq.asyncio.Context, running_sources: list[Running]
) -> None:
    """The detector (PUSH, bind) goes away and comes back on the same port: we keep receiving."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    run = Running(Array10Source(settings("pull", "connect", endpoint), ctx))
    running_sources.append(run)
    for restart in range(2):
        sent = await asyncio.to_thread(
            send_raw,
            endpoint,
            [series_start(f"s{restart}"), *(good(k) for k in range(5)), series_end(f"s{restart}")],
            mode="bind",
        )
        assert sent == 7
        await run.wait_for(7 * (restart + 1))
    frames = [e for e in run.events if isinstance(e, Frame)]
    assert len(frames) == 10
    assert run.source.upstream_gaps() == 0

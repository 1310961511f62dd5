"""ZMQ_MAXMSGSIZE (issue 12, memory): a message part far over max_frame_bytes is never buffered in
full; its sender is disconnected and the disconnect counted; the source keeps receiving."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, Rejection
from monitor.sources.array10 import Array10Source
from monitor.sources.zmqsock import max_message_bytes
from tests.helpers import good_frame, header


def _push(endpoint: str, parts: list[bytes]) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(endpoint)
    s.send_multipart(parts)
    s.close()
    ctx.term()


async def test_a_huge_part_disconnects_its_sender_and_is_counted() -> None:
    settings = SourceSettings(
        "det", "array10", endpoint="tcp://127.0.0.1:0", mode="bind", max_frame_bytes=10_000
    )
    limit = max_message_bytes(settings)
    assert limit == 2 * (10_000 + (1 << 20))
    ctx = zmq.asyncio.Context()
    source = Array10Source(settings, ctx)
    endpoint = source.open()
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    try:
        # Over the decoder's limit but under MAXMSGSIZE: arrives, rejected with a row.
        await asyncio.to_thread(_push, endpoint, [header(shape=[100, 100]), bytes(20_000)])
        # Far over MAXMSGSIZE: libzmq drops the connection instead of buffering it.
        await asyncio.to_thread(_push, endpoint, [header(), bytes(limit + 1)])
        await asyncio.to_thread(_push, endpoint, good_frame(7))
        for _ in range(200):
            if any(isinstance(e, Frame) for e in events):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
        ctx.destroy(linger=0)
    assert [e.reason for e in events if isinstance(e, Rejection)] == ["oversize"]
    assert [e.index for e in events if isinstance(e, Frame)] == [7]
    assert source.received == 2, "the huge message never became a message"
    assert source.disconnects >= 1

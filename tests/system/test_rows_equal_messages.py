"""Property (issue 12): random message sequences of all three protocols (array-1.0, Stream V2,
Bluesky documents) through a real daemon on loopback give exactly one frames row per message
that carries (or claims to carry) a frame, whatever its shape: good, malformed, unknown type or
random bytes. Control messages (series start/end, run documents) are protocol state, not rows."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import cbor2
import msgpack
import msgpack_numpy
import numpy as np
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.sim.stream2 import end_message, image_message, start_message
from monitor.store import RunReader
from tests.helpers import MALFORMED, free_port, good_frame

IMG = (np.arange(12) % 7).astype(np.uint16).reshape(3, 4)
IDS = {"series_id": 4, "series_unique_id": "run-4"}
packb = functools.partial(msgpack.packb, default=msgpack_numpy.encode)

Message = tuple[str, list[bytes], int]
"""(protocol, parts, rows it must produce)."""

# ---- array-1.0: good frames and every malformed kind (each one row) ----------------------------
ARRAY10 = st.one_of(
    st.integers(0, 10**6).map(lambda i: ("array10", good_frame(i), 1)),
    st.sampled_from(MALFORMED).map(lambda m: ("array10", m[1], 1)),
    st.lists(st.binary(max_size=64), min_size=1, max_size=3).map(lambda parts: ("array10", parts, 1)),
)

# ---- Stream V2: start/end are series state (no row); images, unknown types, garbage: one row ----
STREAM2 = st.one_of(
    st.just(("stream2", [start_message(**IDS, shape=(3, 4), dtype="uint16")], 0)),
    st.just(("stream2", [end_message(**IDS)], 0)),
    st.integers(0, 2**40).map(
        lambda i: ("stream2", [image_message({"threshold_1": IMG}, compression="none", image_id=i, **IDS)], 1)
    ),
    st.sampled_from(["calibration", "status", ""]).map(
        lambda t: ("stream2", [cbor2.dumps(cbor2.CBORTag(55799, {"type": t, "series_id": 4}))], 1)
    ),
    st.binary(max_size=64).map(lambda b: ("stream2", [b], 1)),
)


def _doc(name: str, doc: object) -> bytes:
    return b" " + name.encode() + b" " + packb(doc)


def bluesky_run(n_events: int, bad: list[bool], described: bool, uid: int) -> list[Message]:
    """One run: start + descriptor (or neither: events of an unknown descriptor are rejected),
    events with an inline image (a bad image is one rejected row), stop."""
    r, d = f"r{uid}", f"d{uid}"
    desc = {"uid": d, "run_start": r, "name": "primary",
            "data_keys": {"img": {"dtype": "array", "shape": [3, 4], "source": "s"}}}  # fmt: skip
    out: list[Message] = []
    if described:
        out += [
            ("bluesky", [_doc("start", {"uid": r, "time": 1.0})], 0),
            ("bluesky", [_doc("descriptor", desc)], 0),
        ]
    for i in range(n_events):
        img = "not an image" if bad[i % len(bad)] else IMG
        out.append(
            (
                "bluesky",
                [_doc("event", {"descriptor": d, "seq_num": i + 1, "time": 1.0, "data": {"img": img}})],
                1,
            )
        )
    if described:
        out.append(("bluesky", [_doc("stop", {"run_start": r, "exit_status": "success"})], 0))
    return out


BLUESKY_RUNS = st.builds(
    bluesky_run, st.integers(0, 4), st.lists(st.booleans(), min_size=1, max_size=4), st.booleans(),
    st.integers(0, 10**6),
)  # fmt: skip
BLUESKY_JUNK = st.binary(max_size=64).map(lambda b: [("bluesky", [b], 1)])

SEQUENCES = st.tuples(
    st.lists(ARRAY10, max_size=8),
    st.lists(STREAM2, max_size=8),
    st.lists(BLUESKY_RUNS | BLUESKY_JUNK, max_size=3).map(lambda runs: [m for run in runs for m in run]),
)


def _send(endpoints: dict[str, str], messages: list[Message]) -> None:
    ctx = zmq.Context()
    try:
        socks = {}
        for kind in ("array10", "stream2"):
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 5000)
            s.connect(endpoints[kind])
            socks[kind] = s
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 5000)
        pub.connect(endpoints["bluesky"])
        assert pub.poll(10_000), "the bluesky SUB never subscribed"
        pub.recv()  # the subscription: from now on nothing published is dropped
        socks["bluesky"] = pub
        for kind, parts, _ in messages:
            socks[kind].send_multipart(parts)
        for s in socks.values():
            s.close()
    finally:
        ctx.term()


async def _through_daemon(tmp: Path, messages: list[Message], expected: int) -> tuple[int, int]:
    ports = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("array10", "stream2", "bluesky")}
    cfg = config_from_dict(
        {
            "run": "prop",
            "sources": [
                {"name": k, "kind": k, "endpoint": e, "mode": "bind", "max_frame_bytes": 1_000_000}
                for k, e in ports.items()
            ],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 1000, "policy": "block"}],
            "store": {"directory": str(tmp), "filename": "{run}-{time}.h5", "flush_interval_s": 0.05},
            "dashboard": {"enabled": False},
        }
    )
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        await asyncio.to_thread(_send, ports, messages)
        deadline = time.monotonic() + 20
        while daemon.recorder.dispositions_written < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # anything extra would arrive now
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    with RunReader(daemon.store_path) as r:
        frames = r.frames()
        assert len(set(frames["seq"].tolist())) == len(frames), "one row per message, never two"
        return len(frames), daemon.exit_code


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(SEQUENCES, st.randoms(use_true_random=False))
def test_rows_equal_messages(tmp_path_factory, sequences, rnd) -> None:  # type: ignore[no-untyped-def]
    # Interleave the three protocols at random, each keeping its own order.
    queues = [list(q) for q in sequences if q]
    messages: list[Message] = []
    while queues:
        q = rnd.choice(queues)
        messages.append(q.pop(0))
        if not q:
            queues.remove(q)
    expected = sum(rows for _, _, rows in messages)
    tmp = tmp_path_factory.mktemp("prop")
    rows, exit_code = asyncio.run(_through_daemon(tmp, messages, expected))
    assert rows == expected, f"{len(messages)} messages, {expected} must have rows, file has {rows}"
    assert exit_code == 0

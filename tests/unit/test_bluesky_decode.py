"""Bluesky 0MQ message decoding: framing, serialisations, restricted unpickling, garbage."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import SourceSettings
from monitor.errors import FrameRejected
from monitor.frames import IngestEvent, Rejection
from monitor.sources.bluesky import BlueskySource
from monitor.sources.bluesky_docs import (
    REASONS,
    DatumPageDoc,
    DescriptorDoc,
    EventDoc,
    EventPageDoc,
    StartDoc,
    StopDoc,
    StreamDatumDoc,
    StreamResourceDoc,
    decode_message,
    restricted_loads,
    sniff,
)

MAX = 64 * 1024 * 1024
packb = functools.partial(msgpack.packb, default=msgpack_numpy.encode)


def msg(name: str, doc: object, fmt: str = "msgpack", prefix: bytes = b"") -> bytes:
    if fmt == "msgpack":
        payload = packb(doc)
    elif fmt == "json":
        payload = json.dumps(doc).encode()
    else:
        payload = pickle.dumps(doc, protocol=4)
    return prefix + b" " + name.encode() + b" " + payload


def decode(message: bytes, fmt: str = "auto", trust_pickle: bool = False) -> object:
    return decode_message(message, fmt=fmt, trust_pickle=trust_pickle, max_bytes=MAX)[1]  # type: ignore[arg-type]


def reason_of(message: bytes, **kw: object) -> str:
    with pytest.raises(FrameRejected) as info:
        decode(message, **kw)  # type: ignore[arg-type]
    assert info.value.reason in REASONS
    return info.value.reason


START = {"uid": "run-1", "time": 1.0, "scan_id": 7, "plan_name": "count", "sample": {"name": "cell-A"}}
IMG = np.arange(12, dtype=np.uint16).reshape(3, 4)


@pytest.mark.parametrize("fmt", ["msgpack", "json", "pickle"])
def test_start_in_every_format(fmt: str) -> None:
    doc = decode(msg("start", START, fmt), trust_pickle=True)
    assert doc == StartDoc("run-1", 1.0, 7, "count", "cell-A")


@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_event_with_inline_array(fmt: str) -> None:
    ev = {"descriptor": "d1", "seq_num": 3, "time": 2.0, "data": {"img": IMG, "I": 1.5}, "timestamps": {}}
    doc = decode(msg("event", ev, fmt), trust_pickle=True)
    assert isinstance(doc, EventDoc) and doc.seq_num == 3
    np.testing.assert_array_equal(doc.data["img"], IMG)  # type: ignore[arg-type]
    assert doc.data["img"].dtype == np.uint16  # type: ignore[union-attr]


def test_prefix_is_returned() -> None:
    prefix, doc = decode_message(
        msg("stop", {"run_start": "r", "exit_status": "success"}, prefix=b"bl1"),
        fmt="auto",
        trust_pickle=False,
        max_bytes=MAX,
    )
    assert prefix == b"bl1" and doc == StopDoc("r", "success")


def test_sniff() -> None:
    assert sniff(memoryview(pickle.dumps({}, protocol=4))) == "pickle"
    assert sniff(memoryview(b'{"a": 1}')) == "json"
    assert sniff(memoryview(packb({"a": 1}))) == "msgpack"
    assert sniff(memoryview(packb({}))) == "msgpack"  # 0x80 alone is an empty msgpack map


def test_pickle_refused_unless_trusted() -> None:
    assert reason_of(msg("start", START, "pickle")) == "pickle_untrusted"


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/should-never-exist-bluesky",))


def test_restricted_unpickler_blocks_code() -> None:
    evil = msg("start", {"uid": "x", "evil": Boom()}, "pickle")
    assert reason_of(evil, trust_pickle=True) == "unsafe_pickle"
    assert not os.path.exists("/tmp/should-never-exist-bluesky")
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pickle.dumps(functools.partial(print, "x")))


def test_restricted_unpickler_keeps_numpy_and_containers() -> None:
    value = {"a": IMG, "b": np.float64(2.5), "c": (1, 2), "d": {3, 4}, "e": np.int32(7), "f": frozenset([1])}
    for proto in (2, 4, 5):
        out = restricted_loads(pickle.dumps(value, protocol=proto))
        assert isinstance(out, dict)
        np.testing.assert_array_equal(out["a"], IMG)
        assert out["b"] == 2.5 and out["c"] == (1, 2) and out["d"] == {3, 4} and out["e"] == 7


def test_msgpack_object_arrays_are_refused() -> None:
    """msgpack-numpy would pickle.loads an object array's bytes: we refuse instead."""
    bad = packb({"uid": "x", "data": {"nd": True, "type": "|O", "kind": b"O", "shape": [1], "data": b"x"}})
    assert reason_of(b" start " + bad) == "bad_array"
    wrong_size = packb(
        {"a": {b"nd": True, b"type": "<u2", b"kind": b"", b"shape": [4, 4], b"data": b"\0" * 3}}
    )
    assert reason_of(b" start " + wrong_size) == "bad_array"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"nospaces", "bad_framing"),
        (b" start", "bad_framing"),
        (b" \xff\xfe {}", "bad_name"),
        (b" resume {}", "unknown_document"),
        (b" start \x81\xc1", "bad_msgpack"),
        (b" start {not json", "bad_json"),
        (b" start [1, 2]", "not_a_document"),
        (b' start {"time": 1}', "bad_document"),
        (b' event {"descriptor": "d", "seq_num": "one", "data": {}}', "bad_document"),
        (b' event {"descriptor": "d", "seq_num": true, "data": {}}', "bad_document"),
        (b' event_page {"descriptor": "d", "seq_num": [1], "data": {"a": [1, 2]}}', "bad_document"),
        (
            b' stream_datum {"stream_resource": "s", "descriptor": "d", "indices": {"start": 5, "stop": 2}}',
            "bad_document",
        ),
        (b" start \x80\x04\x95garbage", "pickle_untrusted"),
    ],
)
def test_malformed_reasons(message: bytes, reason: str) -> None:
    assert reason_of(message) == reason


def test_oversize() -> None:
    with pytest.raises(FrameRejected) as info:
        decode_message(msg("start", START), fmt="auto", trust_pickle=False, max_bytes=10)
    assert info.value.reason == "oversize"


def test_descriptor_event_page_datum_page_stream_docs() -> None:
    desc = decode(
        msg(
            "descriptor",
            {
                "uid": "d1",
                "run_start": "r",
                "name": "primary",
                "data_keys": {
                    "img": {
                        "dtype": "array",
                        "shape": [3, 4],
                        "source": "x",
                        "external": "STREAM:",
                        "dtype_numpy": "<u2",
                    }
                },
            },
        )
    )
    assert isinstance(desc, DescriptorDoc) and desc.data_keys["img"].external == "STREAM:"
    assert desc.data_keys["img"].shape == (3, 4) and desc.data_keys["img"].dtype_numpy == "<u2"
    page = decode(
        msg(
            "event_page",
            {
                "descriptor": "d1",
                "seq_num": [1, 2],
                "time": [1.0, 2.0],
                "data": {"x": [5, 6]},
                "timestamps": {"x": [1, 2]},
            },
        )
    )
    assert isinstance(page, EventPageDoc) and [e.data["x"] for e in page.events] == [5, 6]
    assert [e.seq_num for e in page.events] == [1, 2]
    dp = decode(
        msg(
            "datum_page",
            {"resource": "res", "datum_id": ["res/0", "res/1"], "datum_kwargs": {"point_number": [0, 1]}},
        )
    )
    assert isinstance(dp, DatumPageDoc) and dp.datums[1].datum_kwargs == {"point_number": 1}
    sres = decode(
        msg(
            "stream_resource",
            {
                "uid": "s1",
                "data_key": "img",
                "mimetype": "application/x-hdf5",
                "uri": "file://localhost/data/x.h5",
                "parameters": {"dataset": "/entry/data/data"},
            },
        )
    )
    assert sres == StreamResourceDoc("s1", "img", "/data/x.h5", "/entry/data/data")
    sd = decode(
        msg(
            "stream_datum",
            {
                "uid": "s1/0",
                "stream_resource": "s1",
                "descriptor": "d1",
                "indices": {"start": 0, "stop": 3},
                "seq_nums": {"start": 1, "stop": 4},
            },
        )
    )
    assert sd == StreamDatumDoc("s1", "d1", 0, 3, 1)


# ---- garbage: no crash, every message counted ----------------------------------------------------
NAMES = st.sampled_from(
    [
        "start",
        "descriptor",
        "event",
        "event_page",
        "stop",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "junk",
        "",
    ]
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
DOCS = st.fixed_dictionaries(
    {},
    optional={
        k: JSONISH | st.text(max_size=4)
        for k in (
            "uid",
            "run_start",
            "descriptor",
            "seq_num",
            "data",
            "data_keys",
            "time",
            "filled",
            "resource",
            "datum_id",
            "datum_kwargs",
            "spec",
            "resource_path",
            "indices",
            "stream_resource",
        )
    },
)


def _payload(draw_fmt: str, doc: object) -> bytes:
    if draw_fmt == "msgpack":
        return packb(doc)
    if draw_fmt == "json":
        return json.dumps(doc).encode()
    return pickle.dumps(doc, protocol=4)


def _run_docs(seq: int, img: object, key: str) -> list[bytes]:
    desc = {
        "uid": "d",
        "run_start": "r",
        "name": "primary",
        "data_keys": {key: {"dtype": "array", "shape": [3, 4], "source": "s"}},
    }
    return [
        msg("start", {"uid": "r", "time": 1.0}),
        msg("descriptor", desc),
        msg("event", {"descriptor": "d", "seq_num": seq, "time": 1.0, "data": {"img": img}}),
        msg("stop", {"run_start": "r", "exit_status": "success"}),
    ]


RUNS = st.builds(
    _run_docs,
    st.integers(-5, 2**40),
    st.one_of(
        st.sampled_from([IMG, IMG.astype(np.float32), IMG[None], IMG.tolist()]),  # good images, mostly
        st.builds(np.zeros, st.tuples(st.integers(0, 3), st.integers(0, 3))),
        JSONISH,
    ),
    st.sampled_from(["img", "img", "img", "other"]),
)
MESSAGES = st.one_of(
    RUNS.flatmap(lambda docs: st.sampled_from(docs)),
    st.binary(max_size=300),
    st.builds(
        lambda n, fmt, d: b" " + n.encode() + b" " + _payload(fmt, d),
        NAMES,
        st.sampled_from(["msgpack", "json", "pickle"]),
        DOCS,
    ),
    st.builds(lambda n, b: b" " + n.encode() + b" " + b, NAMES, st.binary(max_size=200)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES, min_size=1, max_size=12) | RUNS, st.booleans())
def test_garbage_never_crashes_and_every_message_is_counted(messages: list[bytes], trust: bool) -> None:
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1", trust_pickle=trust))
    emitted: list[IngestEvent] = []

    async def emit(event: IngestEvent) -> None:
        emitted.append(event)

    async def feed() -> None:
        for m in messages:
            await source.handle(m, emit)

    asyncio.run(feed())
    assert source.received == len(messages)
    assert source.accounted() == len(messages)
    whole = [e for e in emitted if isinstance(e, Rejection)]
    assert len(whole) == sum(source.rejected.values()) + sum(source.rejected_rows.values())

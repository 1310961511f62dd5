"""Any decode exception of any source is a rejection (issue 12, failure 2): a message never kills
its source, and the next message is decoded as usual."""

from __future__ import annotations

import asyncio
import json

import cbor2
import numpy as np
import pytest
import zmq

import monitor.sources.array10 as array10_mod
from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, Rejection
from monitor.sim.stream2 import image_message, start_message
from monitor.sources.array10 import Array10Source
from monitor.sources.bluesky import BlueskySource
from monitor.sources.stream2 import Stream2Source
from tests.helpers import good_frame

IDS = {"series_id": 4, "series_unique_id": "run-4"}
IMG = (np.arange(60) % 97).astype(np.uint16).reshape(6, 10)


def _collect(handle, messages: list[object]) -> list[IngestEvent]:  # type: ignore[no-untyped-def]
    events: list[IngestEvent] = []

    async def emit(event: IngestEvent) -> None:
        events.append(event)

    async def feed() -> None:
        for m in messages:
            await handle(m, emit)

    asyncio.run(feed())
    return events


def _stream2() -> Stream2Source:
    return Stream2Source(SourceSettings("det", "stream2", endpoint="tcp://127.0.0.1:1"))


def _image(**kw: object) -> list[zmq.Frame]:
    return [zmq.Frame(image_message({"threshold_1": IMG}, compression="none", **(IDS | kw)))]  # type: ignore[arg-type]


def test_stream2_bignum_user_data_is_a_rejection_and_the_source_goes_on() -> None:
    source = _stream2()
    start = [zmq.Frame(start_message(**IDS, shape=(6, 10), dtype="uint16"))]
    bignum = _image(image_id=0, user_data={"energy_eV": 10**400})  # a CBOR bignum (tag 2)
    events = _collect(source._handle, [start, bignum, _image(image_id=1)])
    assert isinstance(events[1], Rejection) and events[1].reason in ("internal_error", "bad_metadata")
    assert isinstance(events[2], Frame) and events[2].index == 1
    assert source.received == 3


def test_stream2_unknown_type_gets_a_row() -> None:
    source = _stream2()
    message = [zmq.Frame(cbor2.dumps(cbor2.CBORTag(55799, {"type": "calibration", "series_id": 4})))]
    (event,) = _collect(source._handle, [message])
    assert isinstance(event, Rejection) and event.reason == "unknown_type"
    assert "calibration" in event.detail


def _bluesky() -> BlueskySource:
    return BlueskySource(SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1"))


def _bs(name: str, doc: object) -> bytes:
    return b" " + name.encode() + b" " + json.dumps(doc).encode()


@pytest.mark.parametrize(
    "event",
    [
        {"descriptor": "d", "seq_num": 1, "time": 10**400, "data": {"img": IMG.tolist()}},
        {"descriptor": "d", "seq_num": 2**63, "time": 1.0, "data": {"img": IMG.tolist()}},
    ],
    ids=["time-10**400", "seq_num-2**63"],
)
def test_bluesky_out_of_range_numbers_are_rejections(event: dict[str, object]) -> None:
    source = _bluesky()
    desc = {"uid": "d", "run_start": "r", "name": "primary",
            "data_keys": {"img": {"dtype": "array", "shape": [6, 10], "source": "s"}}}  # fmt: skip
    good = {"descriptor": "d", "seq_num": 3, "time": 1.0, "data": {"img": IMG.tolist()}}
    messages = [_bs("start", {"uid": "r", "time": 1.0}), _bs("descriptor", desc), _bs("event", event),
                _bs("event", good)]  # fmt: skip
    events = _collect(source.handle, messages)
    rejections = [e for e in events if isinstance(e, Rejection)]
    assert [r.reason for r in rejections] == ["bad_document"]
    assert [e.index for e in events if isinstance(e, Frame)] == [3]


def test_an_unexpected_decoder_exception_is_internal_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise ZeroDivisionError("a decoder bug")

    source = Array10Source(SourceSettings("det", "array10", endpoint="tcp://127.0.0.1:1"))
    monkeypatch.setattr(array10_mod, "decode_array10", broken)
    frames = [[zmq.Frame(p) for p in good_frame(i)] for i in range(3)]
    events = _collect(source._handle, frames)
    assert [(e.reason, e.detail) for e in events if isinstance(e, Rejection)] == [
        ("internal_error", "ZeroDivisionError: a decoder bug")
    ] * 3
    traced = [r for r in caplog.records if r.exc_info and "ZeroDivisionError" in r.getMessage()]
    assert len(traced) == 1, "the traceback is logged once per source and exception type"


def test_bluesky_resource_caches_are_bounded_and_evictions_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.sources.bluesky_runs as bluesky_runs

    monkeypatch.setattr(bluesky_runs, "MAX_RESOURCES", 5)
    monkeypatch.setattr(bluesky_runs, "MAX_DATUMS", 7)
    source = _bluesky()
    messages = [_bs("start", {"uid": "r", "time": 1.0})]
    for i in range(20):  # a run that never stops: resources and datums must not grow without bound
        res = {"uid": f"res{i}", "spec": "AD_HDF5", "root": "/", "resource_path": f"f{i}.h5",
               "resource_kwargs": {}, "run_start": "r"}  # fmt: skip
        messages += [_bs("resource", res), _bs("datum", {"datum_id": f"res{i}/0", "resource": f"res{i}",
                                                          "datum_kwargs": {"point_number": 0}})]  # fmt: skip
    events = _collect(source.handle, messages)
    assert not [e for e in events if isinstance(e, Rejection)], events
    tracker = source.tracker
    assert len(tracker.resources) == 5 and len(tracker.datums) == 7
    assert tracker.evictions == {"resources": 15, "datums": 13}
    assert list(tracker.resources) == [f"res{i}" for i in range(15, 20)]  # the newest are kept

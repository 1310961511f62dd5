"""Property-based garbage for the Stream V2 decoder and source: never a crash, every message counted."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import cbor2
import numpy as np
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config import SourceSettings
from monitor.errors import FrameRejected
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sim.stream2 import end_message, image_message, start_message
from monitor.sources import cbor_arrays
from monitor.sources.stream2 import (
    REASONS,
    SOURCE_REASONS,
    Ignored,
    SeriesStart,
    Stream2Source,
    decode_stream2,
)

MAX_FRAME_BYTES = 4096
IDS = {"series_id": 1, "series_unique_id": "s1"}


def _valid_messages() -> list[bytes]:
    a = (np.arange(48, dtype=np.uint16) * 7).reshape(6, 8)
    mask = np.zeros((6, 8), dtype=np.uint32)
    mask[0, 0] = 1
    out = [
        start_message(**IDS, shape=(6, 8), dtype="uint16", pixel_mask={"threshold_1": mask}, compression=c)
        for c in ("bslz4", "lz4", "none")
    ]
    out += [
        image_message({"threshold_1": a}, **IDS, image_id=i, compression=c)
        for i, c in enumerate(("bslz4", "lz4", "none"))
    ]
    out.append(end_message(**IDS))
    return out


VALID = _valid_messages()

_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
    | st.binary(max_size=24)
)  # fmt: skip
_tags = st.sampled_from([0, 1, 2, 40, 64, 65, 69, 70, 76, 85, 87, 1040, 56500, 55799, 28, 29, 99])
_values = st.recursive(
    _scalars,
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(st.text(max_size=6), c, max_size=4)
        | st.builds(cbor2.CBORTag, _tags, c)
    ),
    max_leaves=10,
)
_fields = st.sampled_from(
    "type series_id series_unique_id image_id data channels pixel_mask saturation_value image_size_x "
    "image_size_y start_time stop_time real_time series_date user_data incident_energy threshold_energy "
    "number_of_images".split()
)
_maps = st.dictionaries(
    _fields, _values | st.sampled_from(["start", "image", "end", "threshold_1"]), max_size=8
)


def _encode(value: object) -> bytes:
    try:
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError):
        return b"\xff"


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    msg = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(msg) - 1, 0)))
        if op == "flip" and msg:
            msg[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del msg[pos:]
        elif op == "insert":
            msg[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif msg:
            del msg[pos : pos + draw(st.integers(1, 16))]
    return bytes(msg)


MESSAGES = st.binary(max_size=200) | _maps.map(_encode) | _values.map(_encode) | _mutated()


def _check(result: object) -> None:
    if isinstance(result, Frame):
        assert result.array.ndim == 2 and 0 < result.array.nbytes <= MAX_FRAME_BYTES
        assert result.array.dtype.isnative and result.index >= 0 and result.source == "det"
        assert isinstance(result.series, str) and isinstance(result.stream, str)
    elif isinstance(result, SeriesStart):
        assert result.event.kind == "start" and result.info.mask_index.ndim == 1
    elif isinstance(result, SeriesEvent):
        assert result.kind == "end"
    else:
        assert isinstance(result, Ignored) and isinstance(result.type, str)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_garbage_only_raises_frame_rejected(message: bytes) -> None:
    try:
        result = decode_stream2(message, source="det", max_frame_bytes=MAX_FRAME_BYTES, t_received=1.0)
    except FrameRejected as exc:
        assert exc.reason in REASONS and exc.detail
        return
    _check(result)


def test_mutations_of_valid_messages_reach_more_than_bad_cbor() -> None:
    """The mutation strategy must exercise the decoder past CBOR parsing (or the test is weak)."""
    reasons: set[str] = set()
    rng = np.random.default_rng(0)
    for k in range(400):
        msg = bytearray(VALID[k % len(VALID)])
        pos = int(rng.integers(0, len(msg)))
        msg[pos] ^= int(rng.integers(1, 256))
        try:
            decode_stream2(bytes(msg), source="det", max_frame_bytes=MAX_FRAME_BYTES)
        except FrameRejected as exc:
            reasons.add(exc.reason)
    assert len(reasons - {"bad_cbor"}) >= 3, reasons


class _Collector:
    def __init__(self) -> None:
        self.events: list[IngestEvent] = []

    async def __call__(self, event: IngestEvent) -> None:
        self.events.append(event)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES | st.sampled_from(VALID), min_size=1, max_size=12))
@example([cbor2.dumps({"type": ""})])  # an empty type: a row with reason unknown_type
def test_source_counts_every_message(messages: list[bytes]) -> None:
    source = Stream2Source(
        SourceSettings(
            name="det", kind="stream2", endpoint="tcp://127.0.0.1:1", max_frame_bytes=MAX_FRAME_BYTES
        )
    )
    emit = _Collector()

    async def feed() -> None:
        for message in messages:
            await source._handle([zmq.Frame(message)], emit)

    asyncio.run(feed())
    source.close()
    n_frames = sum(isinstance(e, Frame) for e in emit.events)
    n_rejected = sum(isinstance(e, Rejection) for e in emit.events)
    n_series = sum(isinstance(e, SeriesEvent) for e in emit.events)
    # Every message is one event, unknown types included (issue 12: each gets a row).
    assert source.received == len(messages) == n_frames + n_rejected + n_series
    assert (source.frames, sum(source.rejected.values()), source.series_events) == (
        n_frames,
        n_rejected,
        n_series,
    )
    assert all(r.reason in SOURCE_REASONS for r in emit.events if isinstance(r, Rejection))


def _plain(value: object) -> object:
    """Normalise decoded CBOR for comparison: views → bytes, tuples → lists, wrappers → fields."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):  # cbor2 returns frozendict inside tags
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, cbor2.CBORTag):
        return ("tag", value.tag, _plain(value.value))
    if isinstance(value, cbor_arrays.MultiDimArray):
        return ("md", list(value.dims), _plain(value.content), value.column_major)
    if isinstance(value, cbor_arrays.TypedArray):
        return ("ta", value.tag, _plain(value.content))
    if isinstance(value, cbor_arrays.CompressedBytes):
        return ("cb", value.algorithm, value.elem_size, _plain(value.data))
    return value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES | st.sampled_from(VALID))
def test_fast_reader_agrees_with_cbor2(message: bytes) -> None:
    """The zero-copy reader either hands over to cbor2 or decodes exactly what cbor2 decodes."""
    outcomes = []
    for fast in (True, False):
        try:
            outcomes.append(("ok", _plain(cbor_arrays.loads(message, fast=fast))))
        except FrameRejected as exc:
            outcomes.append(("rejected", exc.reason))
    assert outcomes[0] == outcomes[1]


def test_fast_reader_takes_the_detector_messages() -> None:
    for message in VALID:
        assert cbor_arrays.read_fast(message) is not None  # no fallback to cbor2 for what we send
    image = cbor_arrays.read_fast(VALID[3])
    payload = image["data"]["threshold_1"].content.content.data  # type: ignore[index, union-attr]
    assert isinstance(payload, memoryview)  # not copied out of the message
